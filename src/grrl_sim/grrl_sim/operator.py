"""A scripted noisy operator: a waypoint expert that plays the human teleoperator.

It solves the insertion task from every randomised start, moving the grippers like a person
would — smooth jitter, hesitations — and makes mistakes at configurable rates, each followed by
a real recovery and a "retry" press after a human reaction delay (the retry keyframe):

- missed insertion: aims 6–12 mm off the hole, pushes into the socket's rim, backs off, retries;
- dropped peg: opens the gripper mid-carry, the peg falls, it regrasps the peg where it landed;
- wrong approach: heads for a wrong grasp pose, notices, backs up and approaches correctly.

It also keeps the ground truth of every mistake (start step, retry press, recovery end), which is
only for scoring the critic's filtering, never for training. ROS-free; the teleop node uses it
as an input device and ``grrl_sim`` benchmarks use it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import mujoco
import numpy as np

from grrl_sim.ik import ArmIK, rotation_error
from grrl_sim.task import InsertionTask

GRIPPER_OPEN = 0.05
GRIPPER_CLOSED = 0.021
PITCH = np.deg2rad(60.0)  # the gripper approaches objects tilted 60 degrees down
ROLL_POSTURE_WEIGHT = np.array([0, 0, 0, 0.2, 0, 0.2])  # IK null-space pull of the rolls to 0
CARRY_CLEARANCE = 0.03  # m the peg's carry stops short of the meeting point, away from the socket


@dataclass(frozen=True)
class OperatorConfig:
    """How human the operator is: noise, hesitation and mistake rates (per episode)."""

    jitter_m: float = 0.0  # std of the smooth hand tremor, metres
    jitter_time_constant_s: float = 0.4
    hesitation_probability: float = 0.0  # per phase change
    hesitation_s: tuple[float, float] = (0.3, 1.0)
    missed_insertion_rate: float = 0.0
    dropped_peg_rate: float = 0.0
    wrong_approach_rate: float = 0.0
    reaction_delay_s: tuple[float, float] = (0.2, 0.6)
    speed_m_s: float = 0.25  # cruise speed of the gripper
    insert_speed_m_s: float = 0.03

    @classmethod
    def clean(cls) -> OperatorConfig:
        return cls()

    def with_overrides(self, spec: str) -> OperatorConfig:
        """This config with ``"name=value,name=value"`` applied (a range as ``low:high``), e.g.
        ``"jitter_m=0"``: the noisy operator without its tremor. ValueError names the fields."""
        changes: dict[str, float | tuple[float, float]] = {}
        names = [f.name for f in fields(self)]
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in names or not value:
                raise ValueError(
                    f"operator override {item!r}: expected name=value with a name among "
                    f"{', '.join(names)}"
                )
            try:
                if isinstance(getattr(self, name), tuple):
                    low, high = (float(v) for v in value.split(":"))
                    changes[name] = (low, high)
                else:
                    changes[name] = float(value)
            except ValueError:
                raise ValueError(f"operator override {item!r}: not a number") from None
        return replace(self, **changes)

    @classmethod
    def noisy(cls) -> OperatorConfig:
        return cls(
            jitter_m=0.0015,
            hesitation_probability=0.25,
            missed_insertion_rate=0.35,
            dropped_peg_rate=0.15,
            wrong_approach_rate=0.2,
        )


@dataclass
class Mistake:
    """Ground truth of one injected mistake (control steps)."""

    kind: str  # "missed_insertion", "dropped_peg", "wrong_approach"
    arm: str
    start_step: int
    retry_step: int = -1  # when the operator pressed retry
    end_step: int = -1  # when the recovery brought the task back on track


@dataclass
class Hesitation:
    """Ground truth of one pause: the arm held still from start_step to end_step (inclusive)."""

    arm: str
    start_step: int
    end_step: int


@dataclass
class OperatorOutput:
    command: np.ndarray
    retry: bool = False  # the operator pressed "retry" at this step


def grasp_rotation(yaw: float, pitch: float = PITCH) -> np.ndarray:
    """Gripper orientation: approach axis along ``yaw`` tilted ``pitch`` down, fingers level."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    x = np.array([cy * cp, sy * cp, -sp])
    y = np.array([-sy, cy, 0.0])
    return np.column_stack([x, y, np.cross(x, y)])


def _wrap(angle: float) -> float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass
class _Arm:
    name: str
    ik: ArmIK
    joint_slice: slice
    base_yaw: float  # yaw pointing from this arm's base towards the workspace centre
    target_pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    target_rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    goal_pos: np.ndarray = field(default_factory=lambda: np.zeros(3))
    goal_rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    gripper: float = GRIPPER_OPEN
    speed: float = 0.25
    q: np.ndarray = field(default_factory=lambda: np.zeros(6))
    jitter: np.ndarray = field(default_factory=lambda: np.zeros(3))
    jitter_scale: float = 1.0
    ik_error: float = 0.0
    max_step: np.ndarray = field(default_factory=lambda: np.full(6, np.inf))
    gripper_step: float = np.inf
    gripper_command: float = GRIPPER_OPEN


class ScriptedOperator:
    """Drives an :class:`InsertionTask` through the task, with human-like noise and mistakes.

    Call :meth:`reset` after the task's reset, then :meth:`act` once per control step. The
    operator reads the true scene (a person looks at it); its output is a joint command.
    """

    def __init__(self, task: InsertionTask, config: OperatorConfig | None = None):
        self.task = task
        self.config = config or OperatorConfig.clean()
        robot = task.robot
        self.arms: dict[str, _Arm] = {}
        for index, arm in enumerate(robot.arms):
            sl = robot.arm_slice(arm.name)
            ik = ArmIK(
                task.model,
                f"{arm.name}_grip",
                task._arm_qpos[index],
                task._arm_dof[index],
                robot.lower[sl][:6],
                robot.upper[sl][:6],
            )
            # Keep the wrist unflipped (rolls near zero), as a person does: the flipped branch
            # that the wrist singularity invites ends at the roll joints' limits.
            ik.posture_weight = ROLL_POSTURE_WEIGHT
            self.arms[arm.name] = _Arm(
                arm.name, ik, sl, base_yaw=0.0 if arm.name == "left" else np.pi
            )
            self.arms[arm.name].max_step = robot.max_velocity[sl][:6] * task.control_dt
            self.arms[arm.name].gripper_step = robot.max_velocity[sl][6] * task.control_dt
        self.mistakes: list[Mistake] = []
        self.hesitations: list[Hesitation] = []

    # --- episode ---------------------------------------------------------------------------
    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed + 7_919)
        cfg = self.config
        self.mistakes = []
        self.hesitations = []
        self.step = 0
        self.done = False
        q = self.task.joint_positions()
        for arm in self.arms.values():
            arm.q = q[arm.joint_slice][:6].copy()
            arm.target_pos, arm.target_rot = arm.ik.forward(arm.q)
            arm.goal_pos, arm.goal_rot = arm.target_pos.copy(), arm.target_rot.copy()
            arm.gripper = GRIPPER_OPEN
            arm.gripper_command = float(q[arm.joint_slice][6])
            arm.jitter = np.zeros(3)
            arm.speed = cfg.speed_m_s
        # Which mistakes this episode will contain (drawn up front: deterministic per seed).
        self._plan = {
            "missed_insertion": self.rng.random() < cfg.missed_insertion_rate,
            "dropped_peg": self.rng.random() < cfg.dropped_peg_rate,
            "wrong_approach": self.rng.random() < cfg.wrong_approach_rate,
        }
        self._wrong_approach_arm = self.rng.choice(list(self.arms))
        self._pending_retry: int | None = None
        self._scripts = {
            self.task.peg_arm: self._peg_script(self.arms[self.task.peg_arm]),
            self.task.socket_arm: self._socket_script(self.arms[self.task.socket_arm]),
        }
        self._socket_ready = False

    def act(self) -> OperatorOutput:
        """The operator's command for the current control step."""
        for name, script in self._scripts.items():
            try:
                next(script)
            except StopIteration:
                self.arms[name].goal_pos = self.arms[name].target_pos
        command = np.empty(self.task.robot.n_joints)
        for arm in self.arms.values():
            self._move_target(arm)
            pos = arm.target_pos + arm.jitter * arm.jitter_scale
            q, arm.ik_error = arm.ik.solve(arm.q, pos, arm.target_rot)
            # a hand cannot move a joint faster than the robot allows: near the wrist's
            # singularity IK may ask for a sudden turn, which we spread over several steps
            arm.q = arm.q + np.clip(q - arm.q, -arm.max_step, arm.max_step)
            # fingers close over a few tenths of a second, not in one step
            arm.gripper_command += np.clip(
                arm.gripper - arm.gripper_command, -arm.gripper_step, arm.gripper_step
            )
            command[arm.joint_slice] = np.append(arm.q, arm.gripper_command)
        retry = self._pending_retry is not None and self.step >= self._pending_retry
        if retry:
            self._pending_retry = None
        self.step += 1
        return OperatorOutput(command, retry)

    # --- motion primitives -----------------------------------------------------------------
    def _move_target(self, arm: _Arm) -> None:
        dt = self.task.control_dt
        delta = arm.goal_pos - arm.target_pos
        dist = np.linalg.norm(delta)
        max_step = arm.speed * dt
        if dist > 1e-9:
            # slow down within a few centimetres of the goal, like a hand homing in
            step = min(max_step, max(dist * 0.15, min(dist, 0.0005)))
            arm.target_pos = arm.target_pos + delta * min(1.0, step / dist)
        # rotate towards the goal orientation at a bounded angular speed
        err = _rotvec(arm.goal_rot @ arm.target_rot.T)
        angle = np.linalg.norm(err)
        if angle > 1e-6:
            turn = min(angle, 2.0 * dt)
            arm.target_rot = _rotmat(err / angle * turn) @ arm.target_rot
        cfg = self.config
        if cfg.jitter_m > 0:
            a = dt / cfg.jitter_time_constant_s
            arm.jitter += -a * arm.jitter + cfg.jitter_m * np.sqrt(2 * a) * self.rng.normal(size=3)

    def _arrived(self, arm: _Arm, tolerance: float = 0.004) -> bool:
        """The hand's target is at the goal and the arm can reach it (IK residual small)."""
        return np.linalg.norm(arm.goal_pos - arm.target_pos) < 1e-3 and arm.ik_error < tolerance

    def _wait(self, seconds: float):
        for _ in range(max(1, int(round(seconds / self.task.control_dt)))):
            yield

    def _go(
        self,
        arm: _Arm,
        pos: np.ndarray | Callable[[], np.ndarray],
        rot: np.ndarray,
        speed: float | None = None,
        tolerance: float = 0.004,
        timeout_s: float = 6.0,
    ):
        """Move to a (possibly moving) goal; returns when there or after the timeout."""
        arm.speed = speed or self.config.speed_m_s
        arm.goal_rot = rot
        for _ in range(int(timeout_s / self.task.control_dt)):
            if callable(pos):
                goal = pos()
                if isinstance(goal, tuple):
                    goal, arm.goal_rot = goal
            else:
                goal = pos
            arm.goal_pos = np.asarray(goal, dtype=float)
            if self._arrived(arm, tolerance):
                break
            yield
        yield from self._maybe_hesitate(arm)

    def _maybe_hesitate(self, arm: _Arm):
        if self.rng.random() < self.config.hesitation_probability:
            pause = Hesitation(arm.name, self.step, self.step)
            self.hesitations.append(pause)
            for _ in self._wait(self.rng.uniform(*self.config.hesitation_s)):
                pause.end_step = self.step  # so far: the episode may end inside the pause
                yield

    def _gripper(self, arm: _Arm, value: float, seconds: float = 0.5):
        arm.gripper = value
        yield from self._wait(seconds)

    def _press_retry(self, mistake: Mistake) -> None:
        delay = self.rng.uniform(*self.config.reaction_delay_s)
        mistake.retry_step = self.step + int(round(delay / self.task.control_dt))
        self._pending_retry = mistake.retry_step

    # --- scene reading ---------------------------------------------------------------------
    def _object_grasp(self, body: str, arm: _Arm, offset_along: float = 0.0):
        """Grasp position and yaw for an object lying on the table."""
        pos, rot = self.task.peg_pose() if body == "peg" else self.task.socket_pose()
        axis = rot[:, 0]
        yaw = np.arctan2(axis[1], axis[0])
        # face the object's long axis from this arm's side
        if abs(_wrap(yaw - arm.base_yaw)) > np.pi / 2:
            yaw = _wrap(yaw + np.pi)
            axis = -axis
        grasp = pos + offset_along * axis
        grasp[2] = pos[2] + 0.008
        return grasp, yaw

    # --- the two arms' scripts -------------------------------------------------------------
    def _pick(self, arm: _Arm, body: str, offset_along: float, lift: float = 0.10):
        """Approach, descend, close, lift: the grasp of one object (with its mistakes)."""
        grasp, yaw = self._object_grasp(body, arm, offset_along)
        rot = grasp_rotation(yaw)
        if self._plan["wrong_approach"] and arm.name == self._wrong_approach_arm:
            self._plan["wrong_approach"] = False
            yield from self._wrong_approach(arm, grasp, yaw)
            grasp, yaw = self._object_grasp(body, arm, offset_along)
            rot = grasp_rotation(yaw)
        yield from self._go(arm, grasp + [0, 0, 0.08], rot)
        yield from self._go(arm, grasp, rot, speed=0.1, tolerance=0.003)
        yield from self._gripper(arm, GRIPPER_CLOSED, 0.5)
        yield from self._go(arm, grasp + [0, 0, lift], rot, speed=0.15)

    def _wrong_approach(self, arm: _Arm, grasp: np.ndarray, yaw: float):
        mistake = Mistake("wrong_approach", arm.name, self.step)
        self.mistakes.append(mistake)
        # beside the object (across its long axis) with a wrong yaw; it stops above the table
        # before touching anything: the mistake is the approach, not a collision
        across = np.array([-np.sin(yaw), np.cos(yaw), 0.0]) * self.rng.choice([-1, 1])
        wrong = grasp + across * self.rng.uniform(0.035, 0.05) + [0, 0, 0.05]
        wrong_rot = grasp_rotation(
            yaw + self.rng.choice([-1, 1]) * np.deg2rad(self.rng.uniform(10, 20))
        )
        yield from self._go(arm, wrong + [0, 0, 0.04], wrong_rot)
        yield from self._go(arm, wrong, wrong_rot, speed=0.1)
        self._press_retry(mistake)
        yield from self._wait(self.rng.uniform(*self.config.reaction_delay_s))
        yield from self._go(arm, wrong + [0, 0, 0.04], wrong_rot, speed=0.15)
        yield from self._go(arm, grasp + [0, 0, 0.08], grasp_rotation(yaw))
        mistake.end_step = self.step

    def _socket_script(self, arm: _Arm):
        yield from self._pick(arm, "socket", 0.0)
        hold = self._meeting_point(arm)
        yield from self._go(arm, hold, grasp_rotation(arm.base_yaw), tolerance=0.003)
        self._socket_ready = True
        while True:
            yield

    def _meeting_point(self, arm: _Arm, short_by: float = 0.0) -> np.ndarray:
        """Where this arm meets the other, or ``short_by`` metres before it (on its own side)."""
        side = -1.0 if arm.name == "left" else 1.0
        return np.array([side * (0.07 + short_by), 0.5, 0.22])

    def _peg_script(self, arm: _Arm):
        behind = -0.02  # grasp the peg 2 cm behind its centre, leaving room for the insertion
        while True:
            # the slip happens early in the carry, a few centimetres up
            lift = 0.04 if self._plan["dropped_peg"] else 0.10
            yield from self._pick(arm, "peg", behind, lift)
            if self._plan["dropped_peg"]:
                self._plan["dropped_peg"] = False
                mistake = Mistake("dropped_peg", arm.name, self.step)
                self.mistakes.append(mistake)
                arm.gripper = GRIPPER_OPEN
                self._press_retry(mistake)
                yield from self._wait(0.8)  # watch it fall
                self._recovering = mistake
                continue
            break
        if getattr(self, "_recovering", None) is not None:
            self._recovering.end_step = self.step
            self._recovering = None
        carry_rot = grasp_rotation(arm.base_yaw)
        # carry to a point short of the socket, as a person would: at the meeting point itself
        # the peg's tip would bump the socket's rim before the alignment. Level with it, so the
        # alignment moves mostly along the hole's axis: an imitation that lags behind the
        # demo then errs along the push, not across the bore.
        carry = self._meeting_point(arm, short_by=CARRY_CLEARANCE)
        yield from self._go(arm, carry, carry_rot)
        while not self._socket_ready:
            yield
        tries = 0
        while True:
            yield from self._align(arm, carry_rot, standoff=0.02)
            if self._plan["missed_insertion"] and tries == 0:
                self._plan["missed_insertion"] = False
                yield from self._missed_insertion(arm, carry_rot)
                tries += 1
                continue
            yield from self._insert(arm, carry_rot)
            return

    def _tip_goal(self, arm: _Arm, depth: float, lateral: np.ndarray | None = None):
        """Gripper goal that puts the peg's leading end ``depth`` past the socket mouth."""

        def goal() -> np.ndarray:
            g = self.task.config.geometry
            peg_pos, peg_rot = self.task.peg_pose()
            socket_pos, socket_rot = self.task.socket_pose()
            axis = socket_rot[:, 0]
            if np.dot(axis, peg_pos - socket_pos) < 0:
                axis = -axis  # the mouth facing the peg
            peg_axis = peg_rot[:, 0]
            if np.dot(peg_axis, socket_pos - peg_pos) < 0:
                peg_axis = -peg_axis
            tip = peg_pos + g.peg_half_length * peg_axis
            mouth = socket_pos + g.socket_half_length * axis
            want = mouth - depth * axis
            if lateral is not None:
                want = want + lateral
            grip, grip_rot = self.task.site_pose(f"{arm.name}_grip")
            # turn the gripper so that the peg points into the hole, then place its tip
            turn = _rotation_between(peg_axis, -axis)
            return want - turn @ (tip - grip), turn @ grip_rot

        return goal

    def _align(self, arm: _Arm, rot: np.ndarray, standoff: float):
        arm.jitter_scale = 0.3  # a person steadies the hand for the precise part
        yield from self._go(
            arm, self._tip_goal(arm, -standoff), rot, speed=0.08, tolerance=0.0015, timeout_s=4.0
        )

    def _insert(self, arm: _Arm, rot: np.ndarray):
        yield from self._go(
            arm,
            self._tip_goal(arm, 0.035),
            rot,
            speed=self.config.insert_speed_m_s,
            tolerance=0.002,
            timeout_s=4.0,
        )
        while True:
            yield

    def _missed_insertion(self, arm: _Arm, rot: np.ndarray):
        mistake = Mistake("missed_insertion", arm.name, self.step)
        self.mistakes.append(mistake)
        angle = self.rng.uniform(0, 2 * np.pi)
        miss = self.rng.uniform(0.006, 0.012)
        _, socket_rot = self.task.socket_pose()
        lateral = miss * (np.cos(angle) * socket_rot[:, 1] + np.sin(angle) * socket_rot[:, 2])
        # push gently into the rim: the tip stops at the socket's end face, a few mm short
        yield from self._go(
            arm,
            self._tip_goal(arm, 0.004, lateral),
            rot,
            speed=self.config.insert_speed_m_s,
            tolerance=0.002,
            timeout_s=1.2,
        )
        self._press_retry(mistake)
        yield from self._wait(self.rng.uniform(*self.config.reaction_delay_s))
        yield from self._go(arm, self._tip_goal(arm, -0.03), rot, speed=0.05, timeout_s=2.0)
        mistake.end_step = self.step


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector ``a`` onto ``b``."""
    axis = np.cross(a, b)
    sin, cos = np.linalg.norm(axis), float(np.dot(a, b))
    if sin < 1e-9:
        return np.eye(3)
    return _rotmat(axis / sin * np.arctan2(sin, cos))


def _rotvec(rot: np.ndarray) -> np.ndarray:
    return rotation_error(rot, np.eye(3))


def _rotmat(rotvec: np.ndarray) -> np.ndarray:
    quat = np.empty(4)
    angle = np.linalg.norm(rotvec)
    mujoco.mju_axisAngle2Quat(quat, rotvec / angle if angle > 0 else np.array([1.0, 0, 0]), angle)
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat)
    return mat.reshape(3, 3)
