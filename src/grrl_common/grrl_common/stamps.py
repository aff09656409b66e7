"""builtin_interfaces/Time to numbers, for rclpy messages and rosbags dataclasses (ROS-free)."""

from __future__ import annotations

from typing import Any

NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    """A Time (``sec``, ``nanosec``) as integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_seconds(stamp: Any) -> float:
    """A Time (``sec``, ``nanosec``) as float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9
