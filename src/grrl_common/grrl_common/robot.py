"""The robot description: one YAML per robot, read by every node and tool.

Joint names and order, limits, cameras, control rate and the left/right mirror map. Nothing else
in grrl hard-codes a robot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

LIMIT_KEYS = ("lower", "upper", "velocity", "acceleration", "jerk")


class RobotDescriptionError(ValueError):
    """The robot description file is malformed; the message says where."""


@dataclass(frozen=True)
class CameraSpec:
    name: str
    topic: str
    width: int
    height: int
    rate_hz: float
    sim_camera: str = ""


@dataclass(frozen=True)
class ArmSpec:
    name: str
    joints: tuple[str, ...]
    gripper: str
    # the arm's base frame in the world: end-effector poses are given in it
    base_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_orientation: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # w, x, y, z

    @property
    def all_joints(self) -> tuple[str, ...]:
        return (*self.joints, self.gripper)


@dataclass(frozen=True)
class RobotDescription:
    """A parsed robot description; vectors follow ``joint_names`` order."""

    name: str
    control_rate_hz: float
    arms: tuple[ArmSpec, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    max_jerk: np.ndarray
    cameras: dict[str, CameraSpec]
    mirror_index: np.ndarray  # mirrored[..., mirror_index[i]] = mirror_sign[i] * q[..., i]
    mirror_sign: np.ndarray
    camera_mirror: dict[str, str]  # both directions
    instruction_word_pairs: tuple[tuple[str, str], ...]
    mirror_world_axis: str
    # the end effector's own symmetry axis: a mirrored gripper is this axis reflected too
    mirror_ee_axis: str = "y"
    sim: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def joint_names(self) -> list[str]:
        return [j for arm in self.arms for j in arm.all_joints]

    @property
    def n_joints(self) -> int:
        return len(self.lower)

    def arm_slice(self, arm: str) -> slice:
        start = 0
        for spec in self.arms:
            if spec.name == arm:
                return slice(start, start + len(spec.all_joints))
            start += len(spec.all_joints)
        raise KeyError(f"no arm {arm!r} in robot {self.name}")

    def mirror_joints(self, q: np.ndarray) -> np.ndarray:
        """Mirror joint vectors (shape [..., n]) left↔right with the signed permutation."""
        q = np.asarray(q)
        out = np.empty_like(q)
        out[..., self.mirror_index] = q * self.mirror_sign
        return out

    def within_limits(self, q: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
        """Per-joint mask of positions inside [lower, upper]."""
        return (q >= self.lower - tolerance) & (q <= self.upper + tolerance)


def _need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise RobotDescriptionError(f"{where}: missing '{key}'")
    return mapping[key]


def _limit_key(joint: str, limits: dict[str, Any], arm_names: list[str]) -> str:
    """Limits are given per joint name or per role (the name without the arm prefix)."""
    if joint in limits:
        return joint
    for arm in arm_names:
        if joint.startswith(arm + "_") and joint[len(arm) + 1 :] in limits:
            return joint[len(arm) + 1 :]
    raise RobotDescriptionError(f"joint_limits: no entry for joint {joint!r}")


def _axis(value: Any, where: str) -> str:
    if value not in ("x", "y", "z"):
        raise RobotDescriptionError(f"{where} must be x, y or z, got {value!r}")
    return str(value)


def _base_pose(raw: Any, where: str) -> dict[str, tuple[float, ...]]:
    """``{position: [x, y, z], orientation: [w, x, y, z]}`` (both optional) → ArmSpec fields."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RobotDescriptionError(f"{where} must map position and orientation")
    out: dict[str, tuple[float, ...]] = {}
    for key, size in (("position", 3), ("orientation", 4)):
        if key not in raw:
            continue
        try:
            value = np.asarray(raw[key], dtype=float)
        except (TypeError, ValueError):
            value = np.zeros(0)
        if value.shape != (size,) or not np.all(np.isfinite(value)):
            raise RobotDescriptionError(f"{where}.{key} must be {size} finite numbers")
        if key == "orientation":
            norm = float(np.linalg.norm(value))
            if abs(norm - 1.0) > 1e-3:
                raise RobotDescriptionError(
                    f"{where}.orientation must be a unit quaternion (w, x, y, z)"
                )
            value = value / norm
        out[f"base_{key}"] = tuple(float(v) for v in value)
    return out


def parse_robot_description(document: dict[str, Any], source: str = "<dict>") -> RobotDescription:
    """Validate a robot description mapping; raises RobotDescriptionError naming the problem."""
    where = source
    arms_raw = _need(document, "arms", where)
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise RobotDescriptionError(f"{where}: 'arms' must map arm names to joints and gripper")
    arms = tuple(
        ArmSpec(
            name=arm,
            joints=tuple(_need(raw, "joints", f"{where}: arms.{arm}")),
            gripper=str(_need(raw, "gripper", f"{where}: arms.{arm}")),
            **_base_pose(raw.get("base"), f"{where}: arms.{arm}.base"),
        )
        for arm, raw in arms_raw.items()
    )
    names = [j for arm in arms for j in arm.all_joints]
    if len(set(names)) != len(names):
        raise RobotDescriptionError(f"{where}: duplicate joint names")
    limits_raw = _need(document, "joint_limits", where)
    arm_names = [a.name for a in arms]
    table = np.zeros((len(names), len(LIMIT_KEYS)))
    for i, joint in enumerate(names):
        entry = limits_raw[_limit_key(joint, limits_raw, arm_names)]
        for k, key in enumerate(LIMIT_KEYS):
            value = _need(entry, key, f"{where}: joint_limits of {joint}")
            table[i, k] = float(value)
    if np.any(table[:, 0] >= table[:, 1]) or np.any(table[:, 2:] <= 0):
        raise RobotDescriptionError(f"{where}: joint limits need lower < upper and positive bounds")

    cameras = {
        cam: CameraSpec(
            name=cam,
            topic=str(_need(raw, "topic", f"{where}: cameras.{cam}")),
            width=int(_need(raw, "width", f"{where}: cameras.{cam}")),
            height=int(_need(raw, "height", f"{where}: cameras.{cam}")),
            rate_hz=float(_need(raw, "rate_hz", f"{where}: cameras.{cam}")),
            sim_camera=str(raw.get("sim_camera", "")),
        )
        for cam, raw in (document.get("cameras") or {}).items()
    }

    mirror = _need(document, "mirror", where)
    index = np.arange(len(names))
    sign = np.ones(len(names))
    position = {n: i for i, n in enumerate(names)}
    for joint, pair in (_need(mirror, "joints", f"{where}: mirror") or {}).items():
        if joint not in position or not isinstance(pair, list) or len(pair) != 2:
            raise RobotDescriptionError(f"{where}: mirror.joints.{joint} must be [joint, ±1]")
        other, s = pair
        if other not in position or s not in (1, -1):
            raise RobotDescriptionError(f"{where}: mirror.joints.{joint}: bad target {pair}")
        i, j = position[joint], position[other]
        index[i], index[j] = j, i
        sign[i] = sign[j] = s
    if sorted(index.tolist()) != list(range(len(names))):
        raise RobotDescriptionError(f"{where}: mirror.joints is not a permutation")
    camera_mirror: dict[str, str] = {}
    for a, b in (mirror.get("cameras") or {}).items():
        for cam in (a, b):
            if cam not in cameras:
                raise RobotDescriptionError(f"{where}: mirror.cameras names unknown camera {cam!r}")
        camera_mirror[a], camera_mirror[b] = b, a
    words = tuple((str(a), str(b)) for a, b in (mirror.get("instruction_words") or []))

    return RobotDescription(
        name=str(document.get("name", "robot")),
        control_rate_hz=float(_need(document, "control_rate_hz", where)),
        arms=arms,
        lower=table[:, 0],
        upper=table[:, 1],
        max_velocity=table[:, 2],
        max_acceleration=table[:, 3],
        max_jerk=table[:, 4],
        cameras=cameras,
        mirror_index=index,
        mirror_sign=sign,
        camera_mirror=camera_mirror,
        instruction_word_pairs=words,
        mirror_world_axis=_axis(mirror.get("world_axis", "x"), f"{where}: mirror.world_axis"),
        mirror_ee_axis=_axis(mirror.get("ee_axis", "y"), f"{where}: mirror.ee_axis"),
        sim=dict(document.get("sim") or {}),
        source=source,
    )


def default_robot_description_path() -> Path:
    """The simulated robot's description (grrl_sim's share directory, else its source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("grrl_sim"))
    except (ImportError, LookupError):
        share = Path(__file__).resolve().parents[2] / "grrl_sim"
    return share / "config" / "aloha_viperx_sim.yaml"


def load_robot_description(path: str | Path | None = None) -> RobotDescription:
    """Read a robot description YAML (default: the simulated ALOHA ViperX)."""
    path = Path(path) if path else default_robot_description_path()
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise RobotDescriptionError(f"{path}: cannot read robot description ({detail})") from None
    if not isinstance(document, dict):
        raise RobotDescriptionError(f"{path}: expected a mapping")
    return parse_robot_description(document, str(path))
