"""The interface contract of SPEC §3: default topic names, their types and QoS.

Topic names are defaults; nodes take remappings and namespaces. Types are given as
``package/msg/Name`` strings so this table can be read without importing message packages
(the recorder uses it to subscribe to every contract topic generically).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class QosKind(StrEnum):
    """The QoS classes the contract uses."""

    SENSOR = "sensor"  # best effort, shallow: a late frame is worth less than a fresh one
    RELIABLE = "reliable"  # every message matters (chunks, progress, markers)
    COMMAND = "command"  # reliable and shallow: a queued stale command must not pile up
    LATCHED = "latched"  # reliable + transient local: late joiners get the latest state


# (reliable?, transient local?, depth) per class
_QOS: dict[QosKind, tuple[bool, bool, int]] = {
    QosKind.SENSOR: (False, False, 5),
    QosKind.RELIABLE: (True, False, 10),
    QosKind.COMMAND: (True, False, 2),
    QosKind.LATCHED: (True, True, 10),
}


def qos_profile(kind: QosKind | str) -> Any:
    """Return the rclpy QoS profile for a contract QoS class.

    rclpy is imported here, not at module level, so that ROS-free cores (a training process
    reading bags) can use the topic names without a ROS install.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable, latched, depth = _QOS[QosKind(kind)]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


@dataclass(frozen=True)
class TopicSpec:
    """One row of the contract table."""

    name: str
    type_name: str  # "package/msg/Name"
    qos: QosKind


CAMERA_NAMES = ("head", "left_wrist", "right_wrist")


def camera_topic(camera: str) -> str:
    """Default image topic of a camera of the robot description."""
    return f"/camera/{camera}/image_raw"


JOINT_STATES = "/joint_states"
INSTRUCTION = "/grrl/instruction"
ACTION_CHUNK = "/grrl/action_chunk"
JOINT_COMMAND = "/grrl/joint_command"
EPISODE_EVENT = "/grrl/episode_event"
PROGRESS = "/grrl/progress"
POLICY_UPDATE = "/grrl/policy_update"
# Coordination of online RL, not recorded (both latched): the newest checkpoint the policy node
# has verified and staged for its next swap point (its answer to a POLICY_UPDATE; nothing until
# the first) and what the online learner has taken in (grrl_msgs/LearnerStatus).
POLICY_LOADED = "/grrl/policy_loaded"
LEARNER_STATUS = "/grrl/learner/status"
MARKERS = "/grrl/markers"
# Object poses from a pose tracker (mocap, fiducials; the sim publishes ground truth): the
# observation of `state`-mode policies. PoseArray in the world frame, objects in the order the
# task names them (frame_id "world"; the sim's order is peg, socket).
OBJECT_POSES = "/grrl/object_poses"
CLOCK = "/clock"
# Sim-only ground truth, never read by training code: the full MuJoCo state (what the scripted
# operator "sees") and the spans of the operator's injected mistakes (for scoring the critic).
SIM_STATE = "/grrl/sim/state"
SIM_GROUND_TRUTH = "/grrl/sim/ground_truth"

START_EPISODE_SERVICE = "/grrl/start_episode"
END_EPISODE_SERVICE = "/grrl/end_episode"
RESET_EPISODE_SERVICE = "/grrl/reset_episode"

CONTRACT_TOPICS: tuple[TopicSpec, ...] = (
    *(TopicSpec(camera_topic(c), "sensor_msgs/msg/Image", QosKind.SENSOR) for c in CAMERA_NAMES),
    TopicSpec(JOINT_STATES, "sensor_msgs/msg/JointState", QosKind.SENSOR),
    TopicSpec(INSTRUCTION, "std_msgs/msg/String", QosKind.LATCHED),
    TopicSpec(ACTION_CHUNK, "grrl_msgs/msg/ActionChunk", QosKind.RELIABLE),
    TopicSpec(JOINT_COMMAND, "trajectory_msgs/msg/JointTrajectory", QosKind.COMMAND),
    TopicSpec(EPISODE_EVENT, "grrl_msgs/msg/EpisodeEvent", QosKind.LATCHED),
    TopicSpec(PROGRESS, "grrl_msgs/msg/Progress", QosKind.RELIABLE),
    TopicSpec(POLICY_UPDATE, "grrl_msgs/msg/PolicyUpdate", QosKind.LATCHED),
    TopicSpec(MARKERS, "visualization_msgs/msg/MarkerArray", QosKind.RELIABLE),
    TopicSpec(OBJECT_POSES, "geometry_msgs/msg/PoseArray", QosKind.SENSOR),
)


def import_interface(type_name: str) -> Any:
    """Import a message or service class from ``package/msg/Name`` (or ``package/srv/Name``).

    Raises ValueError with a readable message for malformed names or unknown types.
    """
    parts = type_name.split("/")
    if len(parts) != 3 or parts[1] not in ("msg", "srv", "action") or not all(parts):
        raise ValueError(f"interface type must look like 'pkg/msg/Name', got {type_name!r}")
    package, kind, name = parts
    try:
        module = importlib.import_module(f"{package}.{kind}")
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"unknown interface type {type_name!r} ({exc})") from None
