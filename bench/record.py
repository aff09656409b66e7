"""Recorder benchmark: three 128x128 cameras at 30 Hz + joint states at 50 Hz into one episode.

    python bench/record.py --seconds 60

A publisher in this process plays the robot; ``recorder_node`` runs as its own process, as on
a robot. Prints one JSON line: dropped messages (published but not in the bag), written MB/s
(bag size over the recording time) and the recorder process's CPU use (percent of one core).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import rclpy
from ament_index_python.packages import get_package_prefix
from rclpy.node import Node
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import Image, JointState
from steps import machine

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.image_codec import numpy_to_image
from grrl_msgs.msg import EpisodeEvent

CAMERAS = ("head", "left_wrist", "right_wrist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="grrl_record_bench_"))
    executable = Path(get_package_prefix("grrl_teleop")) / "lib/grrl_teleop/recorder_node"
    recorder = subprocess.Popen(
        [str(executable), "--ros-args",
         "-p", f"dataset_dir:={out}", "-p", "status_period_s:=0.0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rclpy.init()
    node = Node("record_bench_robot")
    sensor = qos_profile(QosKind.SENSOR)
    images = {c: node.create_publisher(Image, contract.camera_topic(c), sensor) for c in CAMERAS}
    joints = node.create_publisher(JointState, contract.JOINT_STATES, sensor)
    events = node.create_publisher(EpisodeEvent, contract.EPISODE_EVENT,
                                   qos_profile(QosKind.LATCHED))  # fmt: skip
    deadline = time.monotonic() + 30
    while events.get_subscription_count() == 0 or joints.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.05)
        if time.monotonic() > deadline:
            raise SystemExit("recorder did not come up")
    events.publish(EpisodeEvent(type=EpisodeEvent.START, episode_id="bench", source="bench"))
    rclpy.spin_once(node, timeout_sec=0.5)  # let the recorder open the bag
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(8)]
    proc = psutil.Process(recorder.pid)
    proc.cpu_percent(None)
    published = {"images": 0, "joints": 0}
    start = time.monotonic()
    next_image, next_joint = start, start
    while (now := time.monotonic()) < start + args.seconds:
        if now >= next_joint:
            joints.publish(JointState(name=["j"] * 14, position=rng.normal(size=14).tolist()))
            published["joints"] += 1
            next_joint += 1 / 50
        if now >= next_image:
            for publisher in images.values():
                publisher.publish(numpy_to_image(frames[published["images"] % 8], "rgb8"))
            published["images"] += 3
            next_image += 1 / 30
        time.sleep(max(0.0, min(next_joint, next_image) - time.monotonic()))
    elapsed = time.monotonic() - start
    cpu = proc.cpu_percent(None)
    events.publish(EpisodeEvent(type=EpisodeEvent.END, episode_id="bench", success=True,
                                source="bench"))  # fmt: skip
    index = out / "index.json"
    deadline = time.monotonic() + 30
    while '"complete": true' not in (index.read_text() if index.exists() else ""):
        rclpy.spin_once(node, timeout_sec=0.1)
        if time.monotonic() > deadline:
            raise SystemExit("recorder did not close the episode")
    recorder.terminate()
    recorder.wait(timeout=10)
    with Reader(out / "bench") as reader:
        counts = {"images": 0, "joints": 0}
        for connection in reader.connections:
            key = "joints" if connection.topic == contract.JOINT_STATES else "images"
            if connection.topic != contract.EPISODE_EVENT:
                counts[key] += connection.msgcount
    size = sum(p.stat().st_size for p in (out / "bench").glob("*.mcap"))
    print(json.dumps({
        "seconds": round(elapsed, 1),
        "published": published,
        "dropped": sum(published.values()) - sum(counts.values()),
        "written_mb_s": round(size / elapsed / 1e6, 2),
        "cpu_percent": round(cpu, 1),
        **machine(),
    }))  # fmt: skip
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
