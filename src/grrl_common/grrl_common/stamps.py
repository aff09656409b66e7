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


def sec_nanosec(seconds: float) -> tuple[int, int]:
    """Float seconds as the (``sec``, ``nanosec``) of a Time or Duration message.

    The whole value is rounded once: rounding only the fraction can give 10⁹ ns, and wrapping
    that to 0 without a carry would stamp a message a second early.
    """
    return divmod(round(seconds * 1e9), NS_PER_S)
