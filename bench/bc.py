"""BC benchmark: scripted demos (state obs) → ``grrl train-bc`` → ``grrl eval``; one JSON line.

    python bench/bc.py --operator clean --episodes 200 --minutes 20
    python bench/bc.py --operator noisy --episodes 200 --minutes 20   # "BC on all data"

Demos are recorded through the real ROS graph (``grrl collect``: sim + teleop + recorder) into
``--work`` and reused when already there. Training runs under a wall-time budget
(``--minutes``); the policy is then evaluated on ``--eval-episodes`` held-out seeds through the
deployment smoother. Figures: success with its Wilson 95 % CI, per-stage success, train
minutes and steps, collect minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from steps import last_json_line, machine, run_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--operator", choices=["clean", "noisy"], default="clean")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=19.0, help="training wall-time budget")
    parser.add_argument("--steps", type=int, default=12_000, help="schedule length (steps)")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--work", default="runs/bench_bc", help="demos and checkpoints here")
    parser.add_argument("--train-args", default="", help="extra train-bc arguments")
    args = parser.parse_args()

    grrl = shutil.which("grrl")
    if grrl is None:
        sys.exit("bench/bc.py: grrl is not on PATH (source env.sh)")
    work = Path(args.work)
    data = work / f"{args.operator}{args.episodes}"
    collect_minutes = 0.0
    if not (data / "index.json").exists():
        started = time.monotonic()
        run_step([grrl, "collect", "--sim", "--episodes", str(args.episodes), "--obs", "state",
                  "--operator", args.operator, "--seed", "0", "--out", str(data)],
                 echo=False)  # fmt: skip
        collect_minutes = (time.monotonic() - started) / 60
    ckpt = work / f"policy_{args.operator}{args.episodes}"
    started = time.monotonic()
    run_step([grrl, "train-bc", "--data", str(data), "--out", str(ckpt), "--restart",
              "--steps", str(args.steps), "--max-minutes", str(args.minutes),
              *args.train_args.split()], echo=False)  # fmt: skip
    train_minutes = (time.monotonic() - started) / 60
    started = time.monotonic()
    summary = last_json_line(
        run_step(
            [grrl, "eval", "--policy", str(ckpt), "--episodes", str(args.eval_episodes)], echo=False
        )
    )
    meta = json.loads((ckpt / "config.json").read_text())["meta"]
    print(json.dumps({
        "bench": "bc",
        "operator": args.operator,
        "demos": args.episodes,
        "success": summary["success"],
        "ci": summary["ci"],
        "stages": summary["stages"],
        "mean_length_s": summary["mean_length_s"],
        "train_minutes": round(train_minutes, 2),
        "train_steps": meta["step"],
        "transitions": meta["transitions"],
        "collect_minutes": round(collect_minutes, 2),
        "eval_minutes": round((time.monotonic() - started) / 60, 2),
        **machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
