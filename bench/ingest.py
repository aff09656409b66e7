"""Ingest speed: recorded bags → Episodes (grrl's reader) vs a raw ``rosbags`` read; one JSON line.

    python bench/ingest.py --data DIR [--episodes 50]

raw: every message of every bag read and CDR-decoded with rosbags (the floor any reader pays);
grrl: ``read_dataset`` — the same reads and decodes, plus stamp ordering, alignment and arrays.
``ratio`` = grrl throughput / raw throughput (messages per second); the target is ≥ 0.8.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from steps import machine

from grrl_learner.episodes import read_dataset, read_index


def raw_read(root: Path, bags: list[str]) -> int:
    store = get_typestore(Stores.ROS2_JAZZY)
    count = 0
    for bag in bags:
        with Reader(root / bag) as reader:
            for connection in reader.connections:  # custom types (grrl_msgs) from the bag
                if connection.msgdef.data and connection.msgtype not in store.types:
                    from rosbags.typesys import get_types_from_msg

                    store.register(get_types_from_msg(connection.msgdef.data, connection.msgtype))
            for connection, _, raw in reader.messages():
                store.deserialize_cdr(raw, connection.msgtype)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="reader processes (1: in-process)")
    args = parser.parse_args()
    root = Path(args.data)
    records = read_index(root)[: args.episodes]
    bags = [r.bag for r in records]
    raw_read(root, bags[:2])  # warm the page cache and imports for both
    started = time.perf_counter()
    messages = raw_read(root, bags)
    raw_s = time.perf_counter() - started
    started = time.perf_counter()
    episodes = read_dataset(root, include_incomplete=True, workers=args.workers,
                            episode_ids=[r.episode_id for r in records])  # fmt: skip
    grrl_s = time.perf_counter() - started
    print(json.dumps({
        "bench": "ingest", "episodes": len(episodes), "messages": messages,
        "raw_msgs_per_s": round(messages / raw_s), "grrl_msgs_per_s": round(messages / grrl_s),
        "ratio": round(raw_s / grrl_s, 3),
        "steps_per_s": round(sum(len(e) for e in episodes) / grrl_s),
        **machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
