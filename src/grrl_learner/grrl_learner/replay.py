"""Replaying recorded episodes onto the ROS graph (``grrl replay``), for offline filtering.

On a ROS 2 install ``ros2 bag play`` does this (launch/replay_filter.launch.py); here, where
rosbag2's player does not exist, :class:`ReplayNode` plays a dataset's bags: each message's
recorded CDR bytes are published as they are (no decode), paced by the recorded time divided
by ``rate``. Publishers are reliable with a deep queue, so a fast replay loses nothing; the
learner node subscribes the same way (its ``replay`` parameter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from grrl_common.contract import INSTRUCTION, JOINT_STATES, import_interface
from grrl_common.parameters import Param, declare
from grrl_common.runtime import node_main
from grrl_learner.episodes import EpisodeError, read_index

# What a lossless replay uses on both ends: reliable, a deep queue, late joiners get nothing.
REPLAY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5000,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


def bag_messages(data: str | Path) -> Iterator[tuple[str, str, int | None, bytes | str]]:
    """(topic, type, recorded time ns, CDR bytes) of every bag of a dataset, in index order.

    A bag without ``/grrl/instruction`` (the latched instruction was published before the
    episode) is preceded by its index entry's instruction as ``(topic, type, None, text)``: what
    the operator's latched topic told the live graph.
    """
    from rosbags.rosbag2 import Reader

    root = Path(data)
    for record in read_index(root):
        bag = root / record.bag
        try:
            with Reader(bag) as reader:
                topics = {c.topic for c in reader.connections}
                if INSTRUCTION not in topics and record.instruction:
                    yield INSTRUCTION, "std_msgs/msg/String", None, record.instruction
                for connection, stamp, raw in reader.messages():
                    yield connection.topic, connection.msgtype, int(stamp), bytes(raw)
        except Exception as exc:  # rosbags raises many kinds on a damaged bag; one line
            raise EpisodeError(f"{bag}: unreadable bag ({type(exc).__name__}: {exc})") from None


class ReplayNode(Node):
    """Publishes a dataset's recorded messages at ``rate`` × the recorded pace, then is done."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("replay_node", **node_kwargs)
        p = declare(
            self,
            [
                Param("data", "", "Dataset directory (index.json + bags).", read_only=True),
                Param("rate", 1.0, "Replay speed (× the recorded pace).", 0.01, 1000.0),
                Param("wait_for_subscribers_s", 30.0,
                      "Wait this long for a subscriber of /joint_states before starting.",
                      0.0, 600.0),
                Param("settle_s", 0.5, "Pause after the subscriber appeared (discovery of the "
                      "remaining topics).", 0.0, 60.0),
            ],
        )  # fmt: skip
        if not p["data"]:
            raise ValueError("replay_node needs the 'data' parameter (a dataset directory)")
        self._p = p
        self.done = threading.Event()
        self.exit_code = 0
        self.published = 0
        self._topic_publishers: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._play, name="replay", daemon=True)
        self._stop = threading.Event()
        # publishers for every topic up front, so subscribers can match before the first message
        from rosbags.rosbag2 import Reader

        records = read_index(p["data"])
        for record in records:
            with Reader(Path(p["data"]) / record.bag) as reader:
                for connection in reader.connections:
                    if connection.topic not in self._topic_publishers:
                        self._topic_publishers[connection.topic] = self.create_publisher(
                            import_interface(connection.msgtype), connection.topic, REPLAY_QOS
                        )
        self._instruction_pub = self._topic_publishers.get(INSTRUCTION) or self.create_publisher(
            String, INSTRUCTION, REPLAY_QOS
        )
        self.get_logger().info(
            f"replaying {len(records)} episode(s) of {p['data']} at {p['rate']}x "
            f"({len(self._topic_publishers)} topics)"
        )
        self._thread.start()

    def _play(self) -> None:
        try:
            deadline = time.monotonic() + self._p["wait_for_subscribers_s"]
            joints = self._topic_publishers.get(JOINT_STATES)
            while joints is not None and joints.get_subscription_count() == 0:
                if time.monotonic() > deadline or self._stop.is_set():
                    self.get_logger().warning("no subscriber of /joint_states; replaying anyway")
                    break
                time.sleep(0.05)
            self._stop.wait(self._p["settle_s"])
            rate = self._p["rate"]
            first_recorded, started = None, time.monotonic()
            for topic, _, stamp, raw in bag_messages(self._p["data"]):
                if self._stop.is_set():
                    return
                if isinstance(raw, str):  # the index's instruction, sent before the episode
                    self._instruction_pub.publish(String(data=raw))
                    continue
                if first_recorded is None:
                    first_recorded = stamp
                due = started + (stamp - first_recorded) * 1e-9 / rate
                delay = due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                self._topic_publishers[topic].publish(raw)
                self.published += 1
            self.get_logger().info(f"replay finished: {self.published} messages")
        except EpisodeError as exc:
            self.get_logger().error(str(exc))
            self.exit_code = 1
        finally:
            self.done.set()

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        super().destroy_node()


main = node_main(ReplayNode)
