"""The fast CDR decoder gives what rosbags gives, or declines (None) — never something else."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from grrl_learner.cdr import JOINT_STATE, JOINT_TRAJECTORY, POSE_ARRAY, FastDecoder

STORE = get_typestore(Stores.ROS2_JAZZY)
T = STORE.types


def _header(sec: int, nanosec: int, frame: str = ""):
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame
    )


def _f64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _joint_state(names, position, velocity=(), effort=(), frame=""):
    return T["sensor_msgs/msg/JointState"](
        header=_header(-3, 999_999_999, frame), name=list(names), position=_f64(position),
        velocity=_f64(velocity), effort=_f64(effort),
    )  # fmt: skip


def _trajectory(names, points):
    point_type, duration = (
        T["trajectory_msgs/msg/JointTrajectoryPoint"],
        T["builtin_interfaces/msg/Duration"],
    )
    return T["trajectory_msgs/msg/JointTrajectory"](
        header=_header(12, 34, "base"), joint_names=list(names),
        points=[point_type(positions=_f64(p), velocities=_f64(v), accelerations=_f64(a),
                           effort=_f64(()), time_from_start=duration(sec=i, nanosec=7 * i))
                for i, (p, v, a) in enumerate(points)],
    )  # fmt: skip


def _poses(rows):
    point, quat, pose = (T[f"geometry_msgs/msg/{n}"] for n in ("Point", "Quaternion", "Pose"))
    return T["geometry_msgs/msg/PoseArray"](
        header=_header(5, 6, "world"),
        poses=[pose(position=point(x=r[0], y=r[1], z=r[2]),
                    orientation=quat(x=r[3], y=r[4], z=r[5], w=r[6])) for r in rows],
    )  # fmt: skip


def _same(a, b) -> None:
    """Field-by-field equality of a fast-decoded message and rosbags' dataclass."""
    for name in getattr(b, "__dataclass_fields__", {}):
        if name == "__msgtype__":
            continue
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(y, np.ndarray):
            assert np.array_equal(np.asarray(x), y, equal_nan=True), name
        elif isinstance(y, list) and y and hasattr(y[0], "__dataclass_fields__"):
            assert len(x) == len(y), name
            for u, v in zip(x, y, strict=True):
                _same(u, v)
        elif hasattr(y, "__dataclass_fields__"):
            _same(x, y)
        else:
            assert list(x) == list(y) if isinstance(y, list) else x == y, name


CASES = [
    (JOINT_STATE, _joint_state(["a", "bb", "ccc"], [1, 2, 3], [4, 5, 6])),
    (JOINT_STATE, _joint_state(["a", "bb"], [1, 2], [], [7, 8], frame="odd")),  # empty middle
    (JOINT_STATE, _joint_state([], [0.5] * 14)),  # unnamed, robot order
    (JOINT_STATE, _joint_state(["ü", "x"], [np.nan, np.inf], [1, 2])),  # UTF-8, non-finite
    (JOINT_TRAJECTORY, _trajectory(["j1", "j22"], [([1, 2], [3, 4], [5, 6])])),
    (JOINT_TRAJECTORY, _trajectory(["j"], [([1], [], []), ([2], [0], []), ([3], [], [9])])),
    (JOINT_TRAJECTORY, _trajectory(["j"], [])),
    (POSE_ARRAY, _poses([(1, 2, 3, 0, 0, 0, 1), (-1, -2, -3, 0.5, 0.5, 0.5, 0.5)])),
    (POSE_ARRAY, _poses([])),
]


@pytest.mark.parametrize("msgtype,message", CASES)
def test_fast_decoding_equals_rosbags(msgtype: str, message) -> None:
    raw = bytes(STORE.serialize_cdr(message, msgtype))
    decoder = FastDecoder()
    for _ in range(2):  # the second time from the joint-name cache
        fast = decoder.decode(raw, msgtype)
        assert fast is not None
        _same(fast, STORE.deserialize_cdr(raw, msgtype))


def test_declines_what_it_cannot_read_exactly() -> None:
    message = _joint_state(["a", "b"], [1, 2], [3, 4])
    raw = bytes(STORE.serialize_cdr(message, JOINT_STATE))
    decoder = FastDecoder()
    for cut in range(4, len(raw), 3):  # every truncation: None, never a short array
        assert decoder.decode(raw[:cut], JOINT_STATE) is None
    big_endian = bytes(STORE.serialize_cdr(message, JOINT_STATE, little_endian=False))
    assert decoder.decode(big_endian, JOINT_STATE) is None  # rosbags handles that
    assert decoder.decode(raw, "std_msgs/msg/String") is None  # not a hot type
    assert decoder.decode(b"\x00\x01", JOINT_STATE) is None
