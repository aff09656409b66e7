"""Samples and checks for every grrl_msgs interface, used by the interface-check nodes.

The prober sends these samples over DDS and the responder echoes them (topics) or answers
them (services) with :func:`respond`; the prober compares field by field what came back.
"""

from __future__ import annotations

import array
import math
from collections.abc import Sequence
from typing import Any

from builtin_interfaces.msg import Time

from grrl_msgs.msg import (
    ActionChunk,
    EpisodeEvent,
    LearnerStatus,
    PolicyUpdate,
    Progress,
    SimState,
)
from grrl_msgs.srv import EndEpisode, ResetEpisode, StartEpisode

TOPIC_PREFIX = (
    "grrl_check"  # relative: follows the nodes' namespace; never the live contract topics
)

MESSAGE_TYPES: dict[str, type] = {
    "action_chunk": ActionChunk,
    "episode_event": EpisodeEvent,
    "progress": Progress,
    "policy_update": PolicyUpdate,
    "learner_status": LearnerStatus,
    "sim_state": SimState,
}
SERVICE_TYPES: dict[str, type] = {
    "start_episode": StartEpisode,
    "end_episode": EndEpisode,
    "reset_episode": ResetEpisode,
}
AUTO_SEED = 20261124  # the responder's stand-in for a drawn seed, so answers are checkable


def topic(kind: str) -> str:
    return f"{TOPIC_PREFIX}/{kind}"


def echo_topic(kind: str) -> str:
    return f"{TOPIC_PREFIX}/{kind}/echo"


def sample_messages(stamp: Time) -> dict[str, Any]:
    """One message of every grrl_msgs type, with non-default values in every field."""
    horizon, joints = 3, ["left_waist", "left_gripper", "right_waist"]
    chunk = ActionChunk()
    chunk.header.stamp = stamp
    chunk.header.frame_id = "base"
    chunk.chunk_id = 2**40 + 7  # beyond 32 bits: checks the uint64
    chunk.joint_names = joints
    chunk.dt = 0.02
    chunk.horizon = horizon
    chunk.actions = [0.25 * i - 1.0 for i in range(horizon * len(joints))]
    chunk.noise = [(-1.0) ** i * 0.5 * i for i in range(horizon * len(joints))]
    chunk.policy_version = 3
    chunk.inference_ms = 12.5

    event = EpisodeEvent()
    event.header.stamp = stamp
    event.type = EpisodeEvent.RETRY_KEYFRAME
    event.episode_id = "episode-0007"
    event.success = False
    event.source = "interface_prober"
    event.note = "missed insertion, retrying 右 side"

    progress = Progress()
    progress.header.stamp = stamp
    atoms = 11
    progress.distribution = [1.0 / atoms] * atoms
    progress.mean = 0.5
    progress.support_min = 0.0
    progress.support_max = 1.0
    progress.suboptimal = True
    progress.source = "interface_prober"

    update = PolicyUpdate()
    update.header.stamp = stamp
    update.checkpoint_path = "/tmp/grrl/checkpoints/v4/model.safetensors"
    update.sha256 = "ab" * 32
    update.version = 4

    status = LearnerStatus()
    status.header.stamp = stamp
    status.episode_id = "eval-2000004"
    status.episodes = 2**31 + 5  # beyond int32: checks the uint32
    status.policy_version = 3

    state = SimState()
    state.header.stamp = stamp
    state.header.frame_id = "world"
    state.qpos = [0.1 * i - 0.35 for i in range(23)] + [math.pi]
    return {
        "action_chunk": chunk,
        "episode_event": event,
        "progress": progress,
        "policy_update": update,
        "learner_status": status,
        "sim_state": state,
    }


def sample_requests() -> dict[str, Any]:
    """One request of every grrl_msgs service."""
    return {
        "start_episode": StartEpisode.Request(instruction="insert the peg", episode_id=""),
        "end_episode": EndEpisode.Request(success=True, note="clean insertion"),
        "reset_episode": ResetEpisode.Request(seed=-1),
    }


def respond(kind: str, request: Any) -> Any:
    """The responder's answer to a request; every response field depends on the request."""
    if kind == "start_episode":
        episode_id = request.episode_id or "episode-auto-0001"
        return StartEpisode.Response(
            ok=True, message=f"started: {request.instruction}", episode_id=episode_id
        )
    if kind == "end_episode":
        return EndEpisode.Response(
            ok=True,
            message=f"ended success={request.success} note={request.note}",
            episode_id="episode-auto-0001",
        )
    if kind == "reset_episode":
        seed = request.seed if request.seed >= 0 else AUTO_SEED
        return ResetEpisode.Response(ok=True, message=f"reset with seed {seed}", seed=seed)
    raise ValueError(f"unknown service kind {kind!r}")


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, array.array)) or type(value).__name__ == "ndarray"


def field_differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Every field path where two ROS messages differ (floats compared exactly, NaN = NaN)."""
    if hasattr(expected, "get_fields_and_field_types"):
        if type(expected) is not type(actual):
            return [f"{path or '<msg>'}: type {type(actual).__name__} != {type(expected).__name__}"]
        diffs = []
        for name in expected.get_fields_and_field_types():
            diffs += field_differences(
                getattr(expected, name), getattr(actual, name), f"{path}.{name}" if path else name
            )
        return diffs
    if _is_sequence(expected):
        if not _is_sequence(actual) or len(expected) != len(actual):
            got = len(actual) if _is_sequence(actual) else "n/a"
            return [f"{path}: length {got} != {len(expected)}"]
        diffs = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            diffs += field_differences(e, a, f"{path}[{i}]")
        return diffs
    if isinstance(expected, float) and isinstance(actual, float):
        if expected == actual or (math.isnan(expected) and math.isnan(actual)):
            return []
    elif expected == actual:
        return []
    return [f"{path}: {actual!r} != {expected!r}"]


def describe(message: Any) -> str:
    """A one-line summary of a message for logs: fields, long arrays abbreviated."""
    parts = []
    for name in message.get_fields_and_field_types():
        value = getattr(message, name)
        if hasattr(value, "get_fields_and_field_types"):
            if name == "header":
                value = f"{value.stamp.sec}.{value.stamp.nanosec:09d}"
            else:
                value = describe(value)
        elif _is_sequence(value):
            items = list(value)
            shown = ", ".join(_short(v) for v in items[:4])
            value = f"[{shown}{', …' if len(items) > 4 else ''}] (n={len(items)})"
        else:
            value = _short(value)
        parts.append(f"{name}={value}")
    return " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return str(value)


def summary_table(rows: Sequence[tuple[str, str, str]]) -> str:
    """Plain-text table of (interface, result, detail) rows."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'interface'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{name.ljust(width)}  {result.ljust(6)}  {detail}" for name, result, detail in rows]
    return "\n".join(lines)
