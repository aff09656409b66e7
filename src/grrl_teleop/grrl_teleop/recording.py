"""Crash-safe per-episode rosbag2 recording (ROS-free; messages arrive as CDR bytes).

Each episode is one rosbag2 bag (MCAP storage) written with ``rosbags``. The bag is written in
segments: every ``segment_s`` seconds the current MCAP file is closed and the bag's
``metadata.yaml`` is rewritten atomically to list it. A crash (even ``kill -9``) therefore
loses at most the unflushed tail: the bag on disk always opens with ``rosbags`` and
``ros2 bag`` and holds every closed segment. The dataset index (``index.json``) is also
rewritten atomically; an episode whose entry still says ``"complete": false`` was cut short.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

INDEX_NAME = "index.json"


class RecordingError(RuntimeError):
    """Recording cannot proceed (bad directory, unknown type, ...); one-line message."""


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def make_typestore(msg_dirs: list[Path] | None = None) -> Typestore:
    """ROS 2 Jazzy's types plus our interfaces (``grrl_msgs``) read from their .msg files."""
    store = get_typestore(Stores.ROS2_JAZZY)
    if msg_dirs is None:
        msg_dirs = [grrl_msgs_dir()]
    types: dict[str, Any] = {}
    for directory in msg_dirs:
        package = directory.parent.name
        for path in sorted(directory.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(types)
    return store


def grrl_msgs_dir() -> Path:
    """share/grrl_msgs/msg of the installed interfaces."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("grrl_msgs")) / "msg"
    except (ImportError, LookupError):
        return Path(__file__).resolve().parents[2] / "grrl_msgs" / "msg"


@dataclass
class TopicCounts:
    messages: int = 0
    first_ns: int = 0
    last_ns: int = 0


class EpisodeBagWriter:
    """One episode's bag, written in MCAP segments that are closed every ``segment_s``."""

    def __init__(self, path: Path, typestore: Typestore, segment_s: float = 1.0) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise RecordingError(f"{self.path}: already exists")
        self.path.mkdir(parents=True)
        self._store = typestore
        self._segment_s = segment_s
        self._topics: dict[str, str] = {}  # name -> type
        self._segment: Writer | None = None
        self._segment_dir: Path | None = None
        self._connections: dict[str, Any] = {}
        self._segment_index = 0
        self._segment_opened = 0.0
        self._files: list[dict[str, Any]] = []
        self._topic_counts: dict[str, int] = {}
        self._topic_meta: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, TopicCounts] = {}
        self.closed = False

    def add_topic(self, name: str, type_name: str) -> None:
        if type_name not in self._store.types:
            raise RecordingError(f"cannot record {name}: unknown message type {type_name}")
        self._topics[name] = type_name
        self.counts.setdefault(name, TopicCounts())

    def write(self, topic: str, timestamp_ns: int, cdr: bytes | memoryview) -> None:
        """Append one serialized message; closes a segment when it is ``segment_s`` old."""
        if self.closed:
            raise RecordingError(f"{self.path}: bag already closed")
        if topic not in self._topics:
            raise RecordingError(f"{topic} was not added to {self.path.name}")
        if self._segment is None:
            self._open_segment()
        if topic not in self._connections:
            self._connections[topic] = self._segment.add_connection(
                topic, self._topics[topic], typestore=self._store
            )
        self._segment.write(self._connections[topic], timestamp_ns, cdr)
        c = self.counts[topic]
        c.first_ns = timestamp_ns if c.messages == 0 else min(c.first_ns, timestamp_ns)
        c.last_ns = max(c.last_ns, timestamp_ns)
        c.messages += 1
        if time.monotonic() - self._segment_opened >= self._segment_s:
            self.flush()

    def _open_segment(self) -> None:
        self._segment_dir = self.path / f".segment_{self._segment_index:05d}"
        self._segment = Writer(self._segment_dir, version=9, storage_plugin=StoragePlugin.MCAP)
        self._segment.open()
        self._connections = {}
        self._segment_opened = time.monotonic()

    def flush(self) -> None:
        """Close the current segment and publish it in the bag's metadata.yaml (atomically)."""
        if self._segment is None:
            return
        self._segment.close()
        segment_meta = yaml.safe_load((self._segment_dir / "metadata.yaml").read_text())
        info = segment_meta["rosbag2_bagfile_information"]
        name = f"{self.path.name}_{self._segment_index}.mcap"
        os.replace(self._segment_dir / f"{self._segment_dir.name}.mcap", self.path / name)
        shutil.rmtree(self._segment_dir)
        (entry,) = info["files"]
        entry["path"] = name
        self._files.append(entry)
        for topic in info["topics_with_message_count"]:
            meta = topic["topic_metadata"]
            self._topic_meta[meta["name"]] = meta
            self._topic_counts[meta["name"]] = (
                self._topic_counts.get(meta["name"], 0) + topic["message_count"]
            )
        self._segment = None
        self._segment_index += 1
        self._write_metadata()

    def _write_metadata(self) -> None:
        starts = [f["starting_time"]["nanoseconds_since_epoch"] for f in self._files]
        ends = [s + f["duration"]["nanoseconds"] for s, f in zip(starts, self._files, strict=True)]
        start = min(starts) if starts else 0
        metadata = {
            "rosbag2_bagfile_information": {
                "version": 9,
                "storage_identifier": "mcap",
                "relative_file_paths": [f["path"] for f in self._files],
                "duration": {"nanoseconds": (max(ends) - start) if ends else 0},
                "starting_time": {"nanoseconds_since_epoch": start},
                "message_count": sum(f["message_count"] for f in self._files),
                "topics_with_message_count": [
                    {"topic_metadata": meta, "message_count": self._topic_counts[name]}
                    for name, meta in self._topic_meta.items()
                ],
                "compression_format": "",
                "compression_mode": "",
                "files": self._files,
                "custom_data": None,
                "ros_distro": "jazzy",
            }
        }
        atomic_write(self.path / "metadata.yaml", yaml.safe_dump(metadata, sort_keys=False))

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if not self._files:
            self._write_metadata()  # an empty but valid bag
        self.closed = True


@dataclass
class EpisodeRecord:
    """One entry of the dataset index."""

    episode_id: str
    bag: str
    complete: bool = False
    success: bool | None = None
    aborted: bool = False
    instruction: str = ""
    start_ns: int = 0
    end_ns: int = 0
    duration_s: float = 0.0
    retry_keyframes_ns: list[int] = field(default_factory=list)
    message_counts: dict[str, int] = field(default_factory=dict)
    note: str = ""


class DatasetIndex:
    """The dataset directory's ``index.json``: episodes, success, keyframes, counts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / INDEX_NAME
        self.episodes: list[EpisodeRecord] = []
        if self.path.exists():
            try:
                document = json.loads(self.path.read_text())
                self.episodes = [EpisodeRecord(**e) for e in document["episodes"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise RecordingError(f"{self.path}: unreadable index ({exc})") from None

    def find(self, episode_id: str) -> EpisodeRecord | None:
        return next((e for e in self.episodes if e.episode_id == episode_id), None)

    def upsert(self, record: EpisodeRecord) -> None:
        existing = self.find(record.episode_id)
        if existing is None:
            self.episodes.append(record)
        else:
            self.episodes[self.episodes.index(existing)] = record
        self.save()

    def save(self) -> None:
        document = {
            "format": "grrl-dataset-1",
            "episodes": [asdict(e) for e in self.episodes],
            "summary": {
                "episodes": len(self.episodes),
                "complete": sum(e.complete for e in self.episodes),
                "successful": sum(bool(e.success) for e in self.episodes if e.complete),
            },
        }
        atomic_write(self.path, json.dumps(document, indent=1, ensure_ascii=False))
