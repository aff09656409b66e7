"""Fast CDR decoding of the three hot message types of a recording (ROS-free).

A recorded episode is mostly ``JointState``, ``JointTrajectory`` (commands) and ``PoseArray``
(object poses) at the control rate. rosbags' generic deserializer builds every field with Python
code and checks every string; here the numeric arrays are read with one ``numpy.frombuffer``
each and a repeated block of joint names (the same 14 names in every message) is decoded once.
The result has the attributes the episode assembler reads (``header.stamp``, ``name``,
``position``, ``points[i].positions``, ``poses[i].position.x`` …). Anything unexpected — a
big-endian payload, a truncated buffer — returns None and the caller falls back to rosbags, so
this only ever changes speed. Layout: XCDR1 (what rosbag2 records), alignment relative to the
payload after the 4-byte encapsulation header.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
POSE_ARRAY = "geometry_msgs/msg/PoseArray"

_U32 = struct.Struct("<I")
_STAMP = struct.Struct("<iI")
_F64x7 = struct.Struct("<7d")
_CDR_LE = b"\x00\x01"


class _Truncated(Exception):
    pass


class _Payload:
    """A read cursor over one message's CDR payload (little endian)."""

    __slots__ = ("data", "pos", "_names")

    def __init__(self, data: memoryview, names: dict[bytes, list[str]]) -> None:
        self.data = data
        self.pos = 0
        self._names = names

    def align(self, size: int) -> None:
        self.pos += -self.pos % size

    # struct.error (a short buffer) is caught by FastDecoder.decode like _Truncated
    def u32(self) -> int:
        pos = self.pos + (-self.pos % 4)
        (value,) = _U32.unpack_from(self.data, pos)
        self.pos = pos + 4
        return value

    def string(self) -> str:
        pos = self.pos + (-self.pos % 4)
        (size,) = _U32.unpack_from(self.data, pos)  # including the terminating NUL
        pos += 4
        end = pos + size
        if size == 0 or end > len(self.data):
            raise _Truncated
        self.pos = end
        return bytes(self.data[pos : end - 1]).decode()

    def header(self) -> SimpleNamespace:
        pos = self.pos + (-self.pos % 4)
        sec, nanosec = _STAMP.unpack_from(self.data, pos)
        self.pos = pos + 8
        frame_id = self.string()
        return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def strings(self) -> list[str]:
        """A sequence of strings; a byte block equal to one decoded before is not re-decoded.

        The block starts 4-aligned, so equal bytes are an equal layout and equal names."""
        self.align(4)
        start = self.pos
        for block, names in self._names.items():  # a handful: the joint-name orders seen
            end = start + len(block)
            if bytes(self.data[start:end]) == block:
                self.pos = end
                return names
        names = [self.string() for _ in range(self.u32())]
        if len(self._names) < 16:
            self._names[bytes(self.data[start : self.pos])] = names
        return names

    def float64s(self) -> np.ndarray:
        data = self.data
        pos = self.pos + (-self.pos % 4)
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        if count:
            pos += -pos % 8
        end = pos + 8 * count
        if end > len(data):
            raise _Truncated
        self.pos = end
        return np.frombuffer(data, dtype="<f8", count=count, offset=pos)


def _joint_state(p: _Payload) -> SimpleNamespace:
    header = p.header()
    name = p.strings()
    position, velocity, effort = p.float64s(), p.float64s(), p.float64s()
    return SimpleNamespace(
        header=header, name=name, position=position, velocity=velocity, effort=effort
    )


def _joint_trajectory(p: _Payload) -> SimpleNamespace:
    header = p.header()
    joint_names = p.strings()
    points = []
    for _ in range(p.u32()):
        positions, velocities = p.float64s(), p.float64s()
        accelerations, effort = p.float64s(), p.float64s()
        p.align(4)
        sec, nanosec = _STAMP.unpack_from(p.data, p.pos)
        p.pos += 8
        points.append(SimpleNamespace(
            positions=positions, velocities=velocities, accelerations=accelerations,
            effort=effort, time_from_start=SimpleNamespace(sec=sec, nanosec=nanosec),
        ))  # fmt: skip
    return SimpleNamespace(header=header, joint_names=joint_names, points=points)


def _pose_array(p: _Payload) -> SimpleNamespace:
    header = p.header()
    poses = []
    for _ in range(p.u32()):
        p.align(8)
        x, y, z, qx, qy, qz, qw = _F64x7.unpack_from(p.data, p.pos)
        p.pos += 56
        poses.append(SimpleNamespace(
            position=SimpleNamespace(x=x, y=y, z=z),
            orientation=SimpleNamespace(x=qx, y=qy, z=qz, w=qw),
        ))  # fmt: skip
    return SimpleNamespace(header=header, poses=poses)


_DECODERS: dict[str, Callable[[_Payload], SimpleNamespace]] = {
    JOINT_STATE: _joint_state,
    JOINT_TRAJECTORY: _joint_trajectory,
    POSE_ARRAY: _pose_array,
}


class FastDecoder:
    """``decode(raw, msgtype)``: the message, or None when the generic deserializer must do it.

    One decoder per reader: it remembers the joint-name blocks it has seen.
    """

    def __init__(self) -> None:
        self._names: dict[bytes, list[str]] = {}

    @staticmethod
    def handles(msgtype: str) -> bool:
        return msgtype in _DECODERS

    def decode(self, raw: bytes | memoryview, msgtype: str) -> Any | None:
        decoder = _DECODERS.get(msgtype)
        if decoder is None or len(raw) < 4 or bytes(raw[:2]) != _CDR_LE:
            return None
        payload = _Payload(memoryview(raw)[4:], self._names)
        try:
            return decoder(payload)
        except (_Truncated, struct.error, UnicodeDecodeError, ValueError):
            return None
