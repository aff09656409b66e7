"""recorder_node: one crash-safe rosbag2 (MCAP) bag per episode, driven by EpisodeEvents.

Thin over :mod:`grrl_teleop.recording`. START opens a bag in the dataset directory, every
subscribed topic is written as received (serialized CDR, stamped with the node clock, i.e. sim
time under ``use_sim_time``), RETRY_KEYFRAME is noted, END/ABORT close the bag and update the
index. A status line shows the episode, elapsed time, retries, per-topic rates and dropped
camera frames.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from std_msgs.msg import String

from grrl_common import contract
from grrl_common.contract import CONTRACT_TOPICS, QosKind, TopicSpec, import_interface, qos_profile
from grrl_common.parameters import Param, declare
from grrl_common.robot import load_robot_description
from grrl_common.runtime import node_main
from grrl_common.stamps import stamp_ns
from grrl_msgs.msg import EpisodeEvent
from grrl_teleop.recording import DatasetIndex, EpisodeBagWriter, EpisodeRecord, make_typestore


class RecorderNode(Node):
    """Writes every contract topic (and the sim's ground truth) into per-episode bags."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("recorder_node", **node_kwargs)
        # our callbacks take their own locks; one reentrant group lets a busy callback (IK,
        # a bag flush) not stall the executor, which would otherwise spin on it
        self._callbacks = ReentrantCallbackGroup()
        p = declare(
            self,
            [
                Param("dataset_dir", "demos", "Dataset directory (bags + index.json)."),
                Param("segment_s", 1.0, "Close an MCAP segment this often (crash loses less).",
                      0.05, 60.0),
                Param("episodes", 0, "Finish after this many closed episodes (0 = never).",
                      0, 10**6),
                Param("record_ground_truth", True,
                      f"Also record {contract.SIM_GROUND_TRUTH} (sim only)."),
                Param("status_period_s", 1.0, "Status line period (0 = off).", 0.0, 60.0),
                Param("robot_description", "", "Robot description YAML ('' = the sim robot)."),
            ],
        )  # fmt: skip
        self.robot = load_robot_description(p["robot_description"] or None)
        self._segment_s = p["segment_s"]
        self._wanted = p["episodes"]
        self._store = make_typestore()
        self.index = DatasetIndex(Path(p["dataset_dir"]))
        self._mark_interrupted()
        self._lock = threading.Lock()
        self._bag: EpisodeBagWriter | None = None
        self._record: EpisodeRecord | None = None
        self._started_wall = 0.0
        self._closed_episodes = 0
        self._rates: dict[str, int] = {}
        # cameras that have delivered a frame since start: only they can drop frames (with
        # state observations none publishes), and one that falls silent then counts as dropping
        self._publishing_cameras: set[str] = set()
        self._instruction = ""
        self.done = threading.Event()
        self.exit_code = 0

        topics = list(CONTRACT_TOPICS)
        for camera in self.robot.cameras.values():
            if camera.topic not in {t.name for t in topics}:
                topics.append(TopicSpec(camera.topic, "sensor_msgs/msg/Image", QosKind.SENSOR))
        if p["record_ground_truth"]:
            topics.append(
                TopicSpec(contract.SIM_GROUND_TRUTH, "std_msgs/msg/String", QosKind.LATCHED)
            )
        self._topics = {t.name: t for t in topics}
        for spec in topics:
            msg_type = import_interface(spec.type_name)
            self.create_subscription(
                msg_type,
                spec.name,
                lambda data, name=spec.name: self._on_message(name, data),
                qos_profile(spec.qos),
                raw=True,
                callback_group=self._callbacks,
            )
        if p["status_period_s"] > 0:
            self.create_timer(p["status_period_s"], self._status, self._callbacks,
                              clock=Clock(clock_type=ClockType.STEADY_TIME))  # fmt: skip
        self.get_logger().info(
            f"recording {len(topics)} topics into {self.index.root} "
            f"({len(self.index.episodes)} episode(s) already there)"
        )

    def _mark_interrupted(self) -> None:
        """Entries left 'complete: false' by a crash stay incomplete, with a note saying so."""
        for record in self.index.episodes:
            if not record.complete and not record.note:
                record.note = "recording interrupted (bag holds the flushed segments)"
        if self.index.episodes:
            self.index.save()

    # --- messages --------------------------------------------------------------------------
    def _on_message(self, topic: str, data: bytes) -> None:
        now_ns = self.get_clock().now().nanoseconds
        self._rates[topic] = self._rates.get(topic, 0) + 1
        if topic == contract.EPISODE_EVENT:
            self._on_event(deserialize_message(data, EpisodeEvent), data, now_ns)
            return
        if topic == contract.INSTRUCTION:
            self._instruction = deserialize_message(data, String).data
        with self._lock:
            if self._bag is not None:
                self._bag.write(topic, now_ns, data)

    def _on_event(self, event: EpisodeEvent, data: bytes, now_ns: int) -> None:
        event_ns = stamp_ns(event.header.stamp)
        with self._lock:
            if event.type == EpisodeEvent.START:
                if self._bag is not None and self._record.episode_id == event.episode_id:
                    return  # a repeated START (latched) of the episode being recorded
                if self._bag is not None:
                    self._close(aborted=True, note="a new episode started before END")
                self._open(event, now_ns)
            if self._bag is None:
                return
            self._bag.write(contract.EPISODE_EVENT, now_ns, data)
            if event.type == EpisodeEvent.RETRY_KEYFRAME:
                self._record.retry_keyframes_ns.append(event_ns)
            elif event.type == EpisodeEvent.END:
                self._record.success = bool(event.success)
                self._close(aborted=False, note=event.note)
            elif event.type == EpisodeEvent.ABORT:
                self._close(aborted=True, note=event.note)

    def _open(self, event: EpisodeEvent, now_ns: int) -> None:
        episode_id = event.episode_id or f"episode_{len(self.index.episodes):05d}"
        name = episode_id
        suffix = 1
        while (self.index.root / name).exists():  # never overwrite an earlier recording
            name, suffix = f"{episode_id}_{suffix}", suffix + 1
        self._bag = EpisodeBagWriter(self.index.root / name, self._store, self._segment_s)
        for topic, spec in self._topics.items():
            self._bag.add_topic(topic, spec.type_name)
        self._record = EpisodeRecord(
            episode_id=episode_id, bag=name, start_ns=now_ns, instruction=self._instruction
        )
        self._started_wall = time.monotonic()
        self.index.upsert(self._record)
        self.get_logger().info(f"episode {episode_id}: recording into {name}/")

    def _close(self, aborted: bool, note: str = "") -> None:
        bag, record = self._bag, self._record
        bag.close()
        record.complete = not aborted
        record.aborted = aborted
        record.note = note
        record.end_ns = max((c.last_ns for c in bag.counts.values()), default=record.start_ns)
        record.duration_s = (record.end_ns - record.start_ns) / 1e9
        record.message_counts = {t: c.messages for t, c in bag.counts.items() if c.messages}
        self.index.upsert(record)
        self._bag = self._record = None
        self._closed_episodes += 1
        outcome = "aborted" if aborted else ("success" if record.success else "failure")
        self.get_logger().info(
            f"episode {record.episode_id}: {outcome}, {record.duration_s:.1f} s, "
            f"{sum(record.message_counts.values())} messages, "
            f"{len(record.retry_keyframes_ns)} retry keyframe(s)"
        )
        if self._wanted and self._closed_episodes >= self._wanted:
            self.done.set()

    # --- status ----------------------------------------------------------------------------
    def status_line(self) -> str:
        with self._lock:
            rates, self._rates = self._rates, {}
            record = self._record
            elapsed = time.monotonic() - self._started_wall if record else 0.0
            counts = dict(self._bag.counts) if self._bag else {}
        period = self.get_parameter("status_period_s").value or 1.0
        dropped = 0
        if record is not None:
            for cam in self.robot.cameras.values():
                got = counts[cam.topic].messages if cam.topic in counts else 0
                if got:
                    self._publishing_cameras.add(cam.topic)
                if cam.topic in self._publishing_cameras:
                    dropped += max(0, int(elapsed * cam.rate_hz) - got - 1)
        shown = ", ".join(
            f"{t.rsplit('/', 2)[-2] if t.endswith('image_raw') else t.rsplit('/', 1)[-1]}"
            f" {n / period:.0f}Hz"
            for t, n in sorted(rates.items())
        )
        if record is None:
            return f"[rec] idle, {self._closed_episodes} episode(s) | {shown or 'no messages'}"
        return (
            f"[rec] {record.episode_id} {elapsed:5.1f}s retries {len(record.retry_keyframes_ns)}"
            f" dropped~{dropped} | {shown}"
        )

    def _status(self) -> None:
        line = self.status_line()
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        else:
            self.get_logger().info(line, throttle_duration_sec=5.0)

    def destroy_node(self) -> None:
        with self._lock:
            if self._bag is not None:  # shutdown mid-episode: keep what we have, incomplete
                self._close(aborted=True, note="recorder stopped during the episode")
        super().destroy_node()


main = node_main(RecorderNode)
