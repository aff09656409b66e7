"""Teleop input devices: leader arms, gamepad and keyboard → joint targets and operator actions.

Every device turns its raw input into a :class:`DeviceOutput`: an optional full joint-position
target in robot order (``RobotDescription.joint_names``) and the operator actions pressed in this
update (start, retry, end success/failure, abort). The module is plain Python/numpy on purpose:
the teleop node converts ``sensor_msgs/JointState`` / ``sensor_msgs/Joy`` / raw terminal bytes into
the plain arguments of ``update`` and does all ROS and terminal I/O, so the mapping logic is tested
without a ROS graph. The sim's ``ScriptedOperator`` fits the same shape:
``DeviceOutput(out.command, [OperatorAction.RETRY] if out.retry else [])``.

Device maps are YAML (``config/gamepad.yaml``, ``config/keyboard.yaml``; leader arms: a
``joints:`` mapping, see :class:`LeaderArmsDevice`), read with :func:`load_device_map`. Every
problem with a map or an input raises :class:`DeviceError` with a one-line message naming the
offending entry or index.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from grrl_common.robot import RobotDescription


class DeviceError(ValueError):
    """A device map or a device input is malformed; the one-line message says where."""


class OperatorAction(enum.Enum):
    """Episode-level operator commands; the values are the keys used in the YAML maps."""

    START = "start"
    RETRY = "retry"
    END_SUCCESS = "end_success"
    END_FAILURE = "end_failure"
    ABORT = "abort"


@dataclass
class DeviceOutput:
    """One update of a device: a new full joint target (robot order) or None, and the actions."""

    target: np.ndarray | None = None
    actions: list[OperatorAction] = field(default_factory=list)


# ----------------------------------------------------------------------------- map helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_device_map(path: str | Path) -> dict[str, Any]:
    """Read a device map YAML; a missing, unparsable or non-mapping file raises DeviceError."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read device map ({_one_line(exc.strerror)})") from None
    except yaml.YAMLError as exc:
        # PyYAML messages span several lines with a caret drawing; keep the first mark only.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise DeviceError(f"{path}: invalid YAML{where}: {_one_line(problem)}") from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise DeviceError(f"{path}: a device map must be a YAML mapping, got {kind}")
    return document


def default_map_path(device: str) -> Path:
    """``config/<device>.yaml`` of grrl_teleop: the installed share directory, else the sources."""
    name = f"{device}.yaml"
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("grrl_teleop")) / "config" / name
        if installed.is_file():
            return installed
    except (ImportError, LookupError):
        pass
    return Path(__file__).resolve().parents[1] / "config" / name


def _section(mapping: Any, key: str, where: str, kind: type, required: bool = True) -> Any:
    if not isinstance(mapping, Mapping):
        raise DeviceError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        if required:
            raise DeviceError(f"{where}: missing '{key}'")
        return kind()
    value = mapping[key]
    if not isinstance(value, kind):
        raise DeviceError(f"{where}: '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _only_keys(entry: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    """Reject unknown keys: a typo ('sacle') must not silently fall back to a default."""
    if not isinstance(entry, Mapping):
        raise DeviceError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise DeviceError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return entry


def _number(value: Any, where: str) -> float:
    # bool is an int subclass; `rate: yes` is a mistake, not 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DeviceError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DeviceError(f"{where}: expected a non-negative integer index, got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise DeviceError(f"{where}: expected true or false, got {value!r}")
    return value


def _state(current: Any, robot: RobotDescription, device: str) -> np.ndarray:
    state = np.asarray(current, dtype=float)
    if state.shape != (robot.n_joints,):
        raise DeviceError(
            f"{device}: current joint state has shape {state.shape}, expected ({robot.n_joints},)"
        )
    return state


def _seed(state: np.ndarray, robot: RobotDescription, device: str) -> np.ndarray:
    # The integrating devices start from the measured state; a NaN there would poison every
    # later target, so refuse it instead of carrying it along.
    if not np.all(np.isfinite(state)):
        bad = [robot.joint_names[i] for i in np.flatnonzero(~np.isfinite(state))]
        raise DeviceError(f"{device}: current joint state is not finite at {', '.join(bad)}")
    return state.copy()


def _roles(robot: RobotDescription) -> dict[str, list[int]]:
    """Joint roles shared by every arm ('waist' → [index of left_waist, index of right_waist])."""
    per_arm: list[dict[str, int]] = []
    for arm in robot.arms:
        start = robot.arm_slice(arm.name).start
        prefix = arm.name + "_"
        per_arm.append(
            {
                (j[len(prefix) :] if j.startswith(prefix) else j): start + k
                for k, j in enumerate(arm.all_joints)
            }
        )
    shared = [r for r in per_arm[0] if all(r in roles for roles in per_arm)]
    return {r: [roles[r] for roles in per_arm] for r in shared}


def _gripper_mask(robot: RobotDescription) -> np.ndarray:
    names = robot.joint_names
    mask = np.zeros(robot.n_joints, dtype=bool)
    for arm in robot.arms:
        mask[names.index(arm.gripper)] = True
    return mask


def _action_bindings(
    section: Mapping[str, Any], where: str, parse: Any
) -> dict[OperatorAction, Any]:
    """The optional ``start/retry/end_success/end_failure/abort`` entries of a map section."""
    return {
        action: parse(section[action.value], f"{where}.{action.value}")
        for action in OperatorAction
        if action.value in section
    }


# ----------------------------------------------------------------------------- leader arms


class LeaderArmsDevice:
    """ALOHA-style leader arms: the leaders' JointState mapped joint by joint onto the followers.

    Map format (``mapping["joints"]``, one entry per follower joint; unmapped joints keep the
    current state)::

        joints:
          left_waist: leader_left_waist                 # same angle
          left_elbow: {joint: leader_left_elbow, scale: 1.0, offset: 0.05}  # scale·q + offset
          left_gripper: {joint: leader_left_gripper,    # two-point calibration:
                         leader: [-0.8, 0.3],           #   leader angle closed, open (rad)
                         follower: [0.021, 0.057]}      #   follower finger closed, open (m)

    Grippers are clipped into their limits (leader grippers overshoot the follower's travel all
    the time, and that is not an error). Arm joints are returned as mapped, unclipped: a leader
    beyond a follower limit is a calibration or safety problem the caller's validation reports.
    """

    def __init__(self, robot: RobotDescription, mapping: Mapping[str, Any]):
        self.robot = robot
        where = "leader map"
        joints = _section(mapping, "joints", where, dict)
        if not joints:
            raise DeviceError(f"{where}: 'joints' maps no follower joint")
        names = robot.joint_names
        grippers = _gripper_mask(robot)
        index, leaders, gain, bias = [], [], [], []
        for follower, entry in joints.items():
            here = f"{where}: joints.{follower}"
            if follower not in names:
                raise DeviceError(f"{here}: {follower!r} is not a joint of robot {robot.name}")
            if isinstance(entry, str):
                entry = {"joint": entry}
            entry = _only_keys(entry, {"joint", "scale", "offset", "leader", "follower"}, here)
            leader = entry.get("joint")
            if not isinstance(leader, str) or not leader:
                raise DeviceError(f"{here}: 'joint' must name a leader joint, got {leader!r}")
            if "leader" in entry or "follower" in entry:
                if "scale" in entry or "offset" in entry:
                    raise DeviceError(f"{here}: give scale/offset or leader/follower, not both")
                lc, lo = self._pair(entry, "leader", here)
                fc, fo = self._pair(entry, "follower", here)
                if lc == lo:
                    raise DeviceError(f"{here}: leader closed and open positions are equal")
                scale = (fo - fc) / (lo - lc)
                offset = fc - scale * lc
            else:
                scale = _number(entry.get("scale", 1.0), f"{here}.scale")
                offset = _number(entry.get("offset", 0.0), f"{here}.offset")
            index.append(names.index(follower))
            leaders.append(leader)
            gain.append(scale)
            bias.append(offset)
        self._index = np.array(index, dtype=int)
        self._leaders = tuple(leaders)
        self._gain = np.array(gain)
        self._bias = np.array(bias)
        self._clip = grippers[self._index]

    @staticmethod
    def _pair(entry: Mapping[str, Any], key: str, where: str) -> tuple[float, float]:
        value = entry.get(key)
        if not isinstance(value, list) or len(value) != 2:
            raise DeviceError(f"{where}.{key}: expected [closed, open], got {value!r}")
        return _number(value[0], f"{where}.{key}[0]"), _number(value[1], f"{where}.{key}[1]")

    @property
    def leader_joints(self) -> tuple[str, ...]:
        """The leader joint names the map reads (the node can check its JointState once)."""
        return self._leaders

    def update(
        self, names: Sequence[str], positions: Sequence[float], current: np.ndarray
    ) -> DeviceOutput:
        """Map a leader JointState (names, positions) to a follower target; never any action."""
        if len(names) != len(positions):
            raise DeviceError(
                f"leader arms: {len(names)} joint names but {len(positions)} positions"
            )
        state = _state(current, self.robot, "leader arms")
        reading = dict(zip(names, positions, strict=True))
        missing = [n for n in self._leaders if n not in reading]
        if missing:
            raise DeviceError(f"leader arms: joint state lacks {', '.join(missing)}")
        leader = np.array([reading[n] for n in self._leaders], dtype=float)
        mapped = self._gain * leader + self._bias
        index = self._index[self._clip]
        mapped[self._clip] = np.clip(
            mapped[self._clip], self.robot.lower[index], self.robot.upper[index]
        )
        target = state.copy()
        target[self._index] = mapped
        return DeviceOutput(target=target, actions=[])


# ----------------------------------------------------------------------------- gamepad


@dataclass(frozen=True)
class _RateBinding:
    """A velocity source: an axis (scaled by its deflection) or a held button (full rate)."""

    source: int  # axis or button index
    rate: float  # signed, rad/s or m/s at full deflection
    deadzone: float
    joints: tuple[int, ...]  # one fixed joint, or the role's joint per arm (arm-relative)

    def joint(self, arm: int) -> int:
        return self.joints[arm] if len(self.joints) > 1 else self.joints[0]


class GamepadDevice:
    """A ``sensor_msgs/Joy`` pad: sticks as joint velocities, buttons as actions (rising edge).

    Map format (``config/gamepad.yaml``)::

        max_dt: 0.1                 # s; longer gaps (a stalled Joy stream) integrate only this
        axes:                       # rate: rad/s (m/s for grippers) at full deflection
          - {axis: 0, joint: waist, rate: 0.8, deadzone: 0.1, invert: false}
        button_rates:               # held buttons as constant signed rates (grippers)
          - {button: 4, joint: gripper, rate: -0.05}
        buttons: {start: 7, retry: 2, end_success: 0, end_failure: 1, abort: 6, switch_arm: 3}

    ``joint`` is a full joint name (always that joint) or a role shared by every arm (``waist``):
    a role drives the active arm, which ``switch_arm`` cycles. Rates are integrated onto the
    device's own target, seeded from ``current`` on the first update and after :meth:`reset`
    (integrating onto the measured state would sag under gravity and creep with tracking lag).
    """

    def __init__(self, robot: RobotDescription, mapping: Mapping[str, Any]):
        self.robot = robot
        where = "gamepad map"
        _only_keys(mapping, {"max_dt", "axes", "button_rates", "buttons"}, where)
        self.max_dt = _number(mapping.get("max_dt", 0.1), f"{where}: max_dt")
        if self.max_dt <= 0:
            raise DeviceError(f"{where}: max_dt must be positive, got {self.max_dt}")
        roles = _roles(robot)
        names = robot.joint_names
        self._rates: list[_RateBinding] = []
        self._button_rates: list[_RateBinding] = []
        for k, entry in enumerate(_section(mapping, "axes", where, list)):
            here = f"{where}: axes[{k}]"
            entry = _only_keys(entry, {"axis", "joint", "rate", "deadzone", "invert"}, here)
            for key in ("axis", "joint", "rate"):
                if key not in entry:
                    raise DeviceError(f"{here}: missing '{key}'")
            rate = _number(entry["rate"], f"{here}.rate")
            if rate <= 0:
                raise DeviceError(f"{here}.rate: must be positive (use invert), got {rate}")
            deadzone = _number(entry.get("deadzone", 0.0), f"{here}.deadzone")
            if not 0.0 <= deadzone < 1.0:
                raise DeviceError(f"{here}.deadzone: must be in [0, 1), got {deadzone}")
            if _flag(entry.get("invert", False), f"{here}.invert"):
                rate = -rate
            joints = self._joints(entry["joint"], names, roles, here)
            self._check_rate(rate, joints, here)
            self._rates.append(
                _RateBinding(_index(entry["axis"], f"{here}.axis"), rate, deadzone, joints)
            )
        for k, entry in enumerate(_section(mapping, "button_rates", where, list, required=False)):
            here = f"{where}: button_rates[{k}]"
            entry = _only_keys(entry, {"button", "joint", "rate"}, here)
            for key in ("button", "joint", "rate"):
                if key not in entry:
                    raise DeviceError(f"{here}: missing '{key}'")
            rate = _number(entry["rate"], f"{here}.rate")
            if rate == 0:
                raise DeviceError(f"{here}.rate: must be non-zero (signed)")
            joints = self._joints(entry["joint"], names, roles, here)
            self._check_rate(rate, joints, here)
            self._button_rates.append(
                _RateBinding(_index(entry["button"], f"{here}.button"), rate, 0.0, joints)
            )
        buttons = _section(mapping, "buttons", where, dict)
        allowed = {a.value for a in OperatorAction} | {"switch_arm"}
        _only_keys(buttons, allowed, f"{where}: buttons")
        self._actions = _action_bindings(buttons, f"{where}: buttons", _index)
        self._switch = (
            _index(buttons["switch_arm"], f"{where}: buttons.switch_arm")
            if "switch_arm" in buttons
            else None
        )
        used = [*self._actions.values(), *([self._switch] if self._switch is not None else [])]
        if len(set(used)) != len(used):
            raise DeviceError(f"{where}: buttons: one button bound to two actions")
        # a held gripper button that also fired an action would end episodes while grasping
        shared = sorted(set(used) & {b.source for b in self._button_rates})
        if shared:
            raise DeviceError(f"{where}: button {shared[0]} is both a rate and an action button")
        self._min_axes = 1 + max((b.source for b in self._rates), default=-1)
        self._min_buttons = 1 + max([*used, *(b.source for b in self._button_rates)], default=-1)
        self._arm = 0
        self._target: np.ndarray | None = None
        self._last_time: float | None = None
        self._last_pressed: np.ndarray | None = None

    @staticmethod
    def _joints(
        name: Any, names: list[str], roles: dict[str, list[int]], where: str
    ) -> tuple[int, ...]:
        if isinstance(name, str) and name in names:
            return (names.index(name),)
        if isinstance(name, str) and name in roles:
            return tuple(roles[name])
        raise DeviceError(f"{where}.joint: {name!r} is neither a joint nor a role of every arm")

    def _check_rate(self, rate: float, joints: tuple[int, ...], where: str) -> None:
        # A rate the robot cannot follow would only build up lag behind the smoother.
        for j in joints:
            if abs(rate) > self.robot.max_velocity[j]:
                raise DeviceError(
                    f"{where}.rate: {abs(rate)} exceeds the velocity limit "
                    f"{self.robot.max_velocity[j]} of {self.robot.joint_names[j]}"
                )

    @property
    def active_arm(self) -> str:
        """The arm that role-mapped axes drive."""
        return self.robot.arms[self._arm].name

    def reset(self) -> None:
        """Re-seed the target from ``current`` next update (after another device moved the arms).

        Button edges and the clock are kept, so a press straddling the reset is not lost or
        repeated.
        """
        self._target = None

    def update(
        self, axes: Sequence[float], buttons: Sequence[int], now_s: float, current: np.ndarray
    ) -> DeviceOutput:
        """Integrate the pad over the time since the last update; target None while idle."""
        if len(axes) < self._min_axes:
            raise DeviceError(
                f"gamepad: map uses axis {self._min_axes - 1} but the input has {len(axes)} axes"
            )
        if len(buttons) < self._min_buttons:
            raise DeviceError(
                f"gamepad: map uses button {self._min_buttons - 1} "
                f"but the input has {len(buttons)} buttons"
            )
        values = np.asarray(axes[: self._min_axes], dtype=float)
        if not np.all(np.isfinite(values)):
            raise DeviceError(
                f"gamepad: axis {int(np.flatnonzero(~np.isfinite(values))[0])} is not finite"
            )
        if not math.isfinite(now_s):
            raise DeviceError(f"gamepad: time {now_s!r} is not finite")
        state = _state(current, self.robot, "gamepad")
        pressed = np.array([bool(b) for b in buttons[: self._min_buttons]], dtype=bool)

        first = self._last_pressed is None
        # The first message is the baseline: a button already held when the node starts (or
        # the stream resumes after a restart) is not a press.
        edges = np.zeros_like(pressed) if first else pressed & ~self._last_pressed
        dt = 0.0 if first else min(max(now_s - self._last_time, 0.0), self.max_dt)
        self._last_pressed, self._last_time = pressed, now_s

        actions = [action for action, button in self._actions.items() if edges[button]]
        if self._switch is not None and edges[self._switch]:
            self._arm = (self._arm + 1) % len(self.robot.arms)
        if self._target is None:
            self._target = _seed(state, self.robot, "gamepad")
        if first:
            return DeviceOutput(target=None, actions=actions)

        velocity = np.zeros(self.robot.n_joints)
        for b in self._rates:
            v = float(np.clip(values[b.source], -1.0, 1.0))
            # rescaled deadzone: output rises from 0 at the deadzone edge, so no step there
            v = (
                0.0
                if abs(v) <= b.deadzone
                else math.copysign(abs(v) - b.deadzone, v) / (1.0 - b.deadzone)
            )
            velocity[b.joint(self._arm)] += b.rate * v
        for b in self._button_rates:
            if pressed[b.source]:
                velocity[b.joint(self._arm)] += b.rate
        # two sources on one joint may add up; each alone was checked against the limit
        velocity = np.clip(velocity, -self.robot.max_velocity, self.robot.max_velocity)
        moving = velocity != 0.0
        if not moving.any():
            return DeviceOutput(target=None, actions=actions)
        moved = self._target[moving] + velocity[moving] * dt
        self._target[moving] = np.clip(moved, self.robot.lower[moving], self.robot.upper[moving])
        return DeviceOutput(target=self._target.copy(), actions=actions)


# ----------------------------------------------------------------------------- keyboard

# Named keys of the map; the input is raw terminal text, where these arrive as characters or
# ANSI escape sequences (arrows: ESC [ A..D, or ESC O A..D in application cursor mode).
_NAMED_KEYS = {
    "tab": "\t",
    "space": " ",
    "enter": "\n",
    "up": "up",
    "down": "down",
    "left": "left",
    "right": "right",
}
_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}


def _key_tokens(text: str) -> list[str]:
    """Split raw key input into keys: single characters (letters lower-cased) or arrow names."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\x1b":
            if i + 2 < len(text) and text[i + 1] in "[O" and text[i + 2] in _ARROWS:
                tokens.append(_ARROWS[text[i + 2]])
                i += 3
                continue
            # another escape sequence (function keys, ...): skip it whole, not as letters
            i += 1
            if i < len(text) and text[i] in "[O":
                i += 1
                while i < len(text) and not ("@" <= text[i] <= "~"):
                    i += 1
                i += 1
            continue
        tokens.append("\n" if c == "\r" else c.lower())
        i += 1
    return tokens


def _key_spec(value: Any, where: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    keys = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9:
            v = str(v)  # YAML reads an unquoted 1 as a number
        if not isinstance(v, str) or not v:
            raise DeviceError(f"{where}: expected a key (a character or a key name), got {v!r}")
        if len(v) == 1:
            keys.append("\n" if v == "\r" else v.lower())
        elif v.lower() in _NAMED_KEYS:
            keys.append(_NAMED_KEYS[v.lower()])
        else:
            raise DeviceError(
                f"{where}: unknown key name {v!r} (use one character or {', '.join(_NAMED_KEYS)})"
            )
    return keys


def _key_label(key: str) -> str:
    return {v: k for k, v in _NAMED_KEYS.items()}.get(key, key)


class KeyboardDevice:
    """Key presses: select a joint of the active arm, step it, switch arm, press actions.

    Map format (``config/keyboard.yaml``; a key is one character or tab/space/enter/up/down/
    left/right)::

        steps: {joint: 0.05, gripper: 0.004}     # per press: rad for arm joints, m for grippers
        keys:
          select: ["1", "2", "3", "4", "5", "6", "7"]   # n-th key: n-th joint of the active arm
          switch_arm: tab
          increase: ["+", "=", up]
          decrease: ["-", down]
          start: s
          retry: r
          end_success: e
          end_failure: f
          abort: a

    Steps go onto the device's own target (seeded from ``current`` on first use and after
    :meth:`reset`) and are clipped into the joint limits: holding a key at a limit must not
    wind up a target the robot can never reach.
    """

    def __init__(self, robot: RobotDescription, mapping: Mapping[str, Any]):
        self.robot = robot
        where = "keyboard map"
        _only_keys(mapping, {"steps", "keys"}, where)
        steps = _only_keys(
            _section(mapping, "steps", where, dict), {"joint", "gripper"}, f"{where}: steps"
        )
        step = {}
        for kind in ("joint", "gripper"):
            if kind not in steps:
                raise DeviceError(f"{where}: steps: missing '{kind}'")
            step[kind] = _number(steps[kind], f"{where}: steps.{kind}")
            if step[kind] <= 0:
                raise DeviceError(f"{where}: steps.{kind}: must be positive, got {step[kind]}")
        grippers = _gripper_mask(robot)
        self._step = np.where(grippers, step["gripper"], step["joint"])
        self._step_text = f"{step['joint']:g} rad, gripper {step['gripper']:g} m"

        keys = _section(mapping, "keys", where, dict)
        fixed = {"select", "switch_arm", "increase", "decrease"}
        _only_keys(keys, fixed | {a.value for a in OperatorAction}, f"{where}: keys")
        for key in ("select", "increase", "decrease"):
            if key not in keys:
                raise DeviceError(f"{where}: keys: missing '{key}'")
        self._bindings: dict[str, tuple[str, Any]] = {}
        self._labels: dict[str, str] = {}

        def bind(name: str, binding: tuple[str, Any], spec: Any) -> None:
            here = f"{where}: keys.{name}"
            keys_of = _key_spec(spec, here)
            for key in keys_of:
                if key in self._bindings:
                    raise DeviceError(f"{here}: key {_key_label(key)!r} is already bound")
                self._bindings[key] = binding
            self._labels[name] = "/".join(_key_label(k) for k in keys_of)

        select = _key_spec(keys["select"], f"{where}: keys.select")
        shortest = min(len(a.all_joints) for a in robot.arms)
        if len(select) > shortest:
            raise DeviceError(
                f"{where}: keys.select: {len(select)} keys but an arm has {shortest} joints"
            )
        for n, key in enumerate(select):
            bind("select", ("select", n), key)
        digits = "".join(select)
        # "1-7" rather than "1/2/3/4/5/6/7" when the select keys are a run of digits
        consecutive = digits.isdigit() and digits in "0123456789" and len(digits) > 2
        self._labels["select"] = (
            f"{digits[0]}-{digits[-1]}" if consecutive else "/".join(_key_label(k) for k in select)
        )
        if "switch_arm" in keys:
            bind("switch_arm", ("switch_arm", None), keys["switch_arm"])
        bind("increase", ("step", 1.0), keys["increase"])
        bind("decrease", ("step", -1.0), keys["decrease"])
        for action in OperatorAction:
            if action.value in keys:
                bind(action.value, ("action", action), keys[action.value])
        self._arm = 0
        self._joint = 0  # index within the active arm's joints (then gripper)
        self._target: np.ndarray | None = None

    @property
    def active_arm(self) -> str:
        return self.robot.arms[self._arm].name

    @property
    def selected_joint(self) -> str:
        """The joint the step keys move."""
        return self.robot.arms[self._arm].all_joints[self._joint]

    def reset(self) -> None:
        """Re-seed the target from ``current`` at the next step (another device moved the arms)."""
        self._target = None

    def describe(self) -> str:
        """One-line help with the active arm and joint, for the node's status line."""
        labels = self._labels
        parts = [
            f"keyboard [{self.active_arm} arm, joint {self._joint + 1}: {self.selected_joint}]",
            f"{labels['select']} select joint",
        ]
        if "switch_arm" in labels:
            parts.append(f"{labels['switch_arm']} switch arm")
        parts.append(f"{labels['increase']} raise, {labels['decrease']} lower ({self._step_text})")
        parts += [
            f"{labels[a.value]} {a.value.replace('_', ' ')}"
            for a in OperatorAction
            if a.value in labels
        ]
        return ", ".join(parts)

    def update(self, keys: str, current: np.ndarray) -> DeviceOutput:
        """Apply the keys pressed since the last update, in order; target None if none stepped."""
        if not isinstance(keys, str):
            raise DeviceError(f"keyboard: keys must be a str, got {type(keys).__name__}")
        state = _state(current, self.robot, "keyboard")
        actions: list[OperatorAction] = []
        stepped = False
        for key in _key_tokens(keys):
            kind, value = self._bindings.get(key, (None, None))
            if kind == "select":
                self._joint = value
            elif kind == "switch_arm":
                # keep the joint number, so "3, tab" is the other arm's elbow
                self._arm = (self._arm + 1) % len(self.robot.arms)
                self._joint = min(self._joint, len(self.robot.arms[self._arm].all_joints) - 1)
            elif kind == "step":
                if self._target is None:
                    self._target = _seed(state, self.robot, "keyboard")
                j = self.robot.arm_slice(self.active_arm).start + self._joint
                self._target[j] = np.clip(
                    self._target[j] + value * self._step[j],
                    self.robot.lower[j],
                    self.robot.upper[j],
                )
                stepped = True
            elif kind == "action":
                actions.append(value)
            # unbound keys are ignored: a stray key must not stop a teleop session
        target = self._target.copy() if stepped else None
        return DeviceOutput(target=target, actions=actions)
