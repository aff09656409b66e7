"""The precision insertion task (ROS-free): grasp peg and socket, carry, align, insert.

One arm grasps the peg, the other the socket; which side the peg starts on is drawn per episode
so that the task distribution is left/right mirror-symmetric. Success is a depth check: the
peg's leading end is inside the socket's hole, at least ``insert_depth`` past the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from grrl_common.robot import RobotDescription, load_robot_description
from grrl_sim.model import ARM_JOINTS, ARM_PREFIX, ObjectGeometry, build_model

STAGES = ("peg_grasped", "socket_grasped", "aligned", "inserted")


@dataclass(frozen=True)
class TaskConfig:
    """Episode, control and observation settings of the task."""

    control_rate_hz: float = 50.0
    episode_limit_steps: int = 1000  # 20 s at 50 Hz
    obs_mode: str = "state"  # "state": joint state + object poses; "pixels": + camera images
    image_width: int = 128
    image_height: int = 128
    camera_rate_hz: float = 10.0  # pixels mode: frames are re-rendered at this rate
    insert_depth: float = 0.02  # m past the socket mouth for success
    aligned_tolerance: float = 0.005  # m lateral error of the peg tip to the socket axis
    # inserted for this many consecutive steps = success. Half a second, not a blink: a demo
    # ends at success, so a short hold would end every demo the instant the peg crosses
    # insert_depth, and a policy cloned from them learns to stop right at that edge.
    success_hold_steps: int = 25
    spawn_x: tuple[float, float] = (0.10, 0.20)  # |x| of object centres, on their arm's side
    spawn_y: tuple[float, float] = (0.42, 0.58)
    spawn_yaw_deg: float = 10.0
    geometry: ObjectGeometry = field(default_factory=ObjectGeometry)


@dataclass
class StageFlags:
    peg_grasped: bool = False
    socket_grasped: bool = False
    aligned: bool = False
    inserted: bool = False

    def as_tuple(self) -> tuple[bool, ...]:
        return tuple(getattr(self, s) for s in STAGES)


@dataclass
class Observation:
    """What the robot (and, in state mode, a pose tracker) sees at one control step."""

    step: int
    time: float
    joint_positions: np.ndarray  # robot description order
    joint_velocities: np.ndarray
    object_poses: np.ndarray | None  # state mode: peg (pos, quat wxyz), socket (pos, quat)
    images: dict[str, np.ndarray] | None  # pixels mode: camera name → HxWx3 uint8

    def state_vector(self) -> np.ndarray:
        parts = [self.joint_positions, self.joint_velocities]
        if self.object_poses is not None:
            parts.append(self.object_poses)
        return np.concatenate(parts).astype(np.float32)


@dataclass
class StepResult:
    observation: Observation
    stages: StageFlags
    success: bool
    done: bool
    timeout: bool


def mirror_quat(quat: np.ndarray) -> np.ndarray:
    """Orientation under the world mirror x → −x (conjugation by diag(−1, 1, 1))."""
    w, x, y, z = quat
    return np.array([w, x, -y, -z])


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class InsertionTask:
    """MuJoCo bimanual ViperX with the peg-in-socket task; deterministic given the seed."""

    def __init__(self, config: TaskConfig | None = None, robot: RobotDescription | None = None):
        self.config = config or TaskConfig()
        self.robot = robot or load_robot_description()
        self.model = build_model(self.config.geometry)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.substeps = max(1, round(1.0 / (self.config.control_rate_hz * m.opt.timestep)))
        self.control_dt = self.substeps * m.opt.timestep

        prefixes = self.robot.sim.get(
            "joint_prefix", {k + "": v + "/" for k, v in ARM_PREFIX.items()}
        )
        fingers = self.robot.sim.get("gripper_fingers", ["left_finger", "right_finger"])
        arm_qpos, arm_dof, arm_act, finger_qpos, finger_dof, finger_act = [], [], [], [], [], []
        for arm in self.robot.arms:
            prefix = prefixes[arm.name]
            for role in ARM_JOINTS:
                joint = m.joint(prefix + role)
                arm_qpos.append(joint.qposadr[0])
                arm_dof.append(joint.dofadr[0])
                arm_act.append(self._actuator_for(prefix + role))
            pair = [m.joint(prefix + f) for f in fingers]
            finger_qpos.append([j.qposadr[0] for j in pair])
            finger_dof.append([j.dofadr[0] for j in pair])
            finger_act.append([self._actuator_for(j.name) for j in pair])
        self._arm_qpos = np.array(arm_qpos).reshape(len(self.robot.arms), 6)
        self._arm_dof = np.array(arm_dof).reshape(len(self.robot.arms), 6)
        self._arm_act = np.array(arm_act).reshape(len(self.robot.arms), 6)
        self._finger_qpos = np.array(finger_qpos)
        self._finger_dof = np.array(finger_dof)
        self._finger_act = np.array(finger_act)
        self._finger_geoms = {
            arm.name: {
                m.geom(f"{prefixes[arm.name]}10_left_gripper_finger").id,
                m.geom(f"{prefixes[arm.name]}10_right_gripper_finger").id,
            }
            for arm in self.robot.arms
        }
        self._peg_joint = m.joint("peg_joint")
        self._socket_joint = m.joint("socket_joint")
        self._peg_geom = m.geom("peg").id
        self._socket_geoms = {
            m.geom(n).id
            for n in (
                "socket_top",
                "socket_bottom",
                "socket_side_pos",
                "socket_side_neg",
                "socket_cap",
            )
        }
        self.home = np.tile(np.array(self.robot.sim.get("home"), dtype=float), len(self.robot.arms))
        self._renderer: mujoco.Renderer | None = None
        self._frames: dict[str, np.ndarray] = {}
        self.frame_time = -np.inf
        self.reset(0)

    def _actuator_for(self, joint_name: str) -> int:
        joint_id = self.model.joint(joint_name).id
        for a in range(self.model.nu):
            if self.model.actuator_trnid[a, 0] == joint_id:
                return a
        raise RuntimeError(f"no actuator drives joint {joint_name}")

    # --- episode ---------------------------------------------------------------------------
    def reset(self, seed: int, peg_side: str | None = None) -> Observation:
        """New episode: home pose, objects randomised (peg side too unless given)."""
        rng = np.random.default_rng(seed)
        self.seed = int(seed)
        cfg = self.config
        side = peg_side or ("right" if rng.random() < 0.5 else "left")
        if side not in ("left", "right"):
            raise ValueError(f"peg_side must be 'left' or 'right', got {side!r}")
        self.peg_arm = side
        self.socket_arm = "left" if side == "right" else "right"
        sign = {"left": -1.0, "right": 1.0}

        def spawn() -> tuple[float, float, float]:
            return (
                rng.uniform(*cfg.spawn_x),
                rng.uniform(*cfg.spawn_y),
                np.deg2rad(rng.uniform(-cfg.spawn_yaw_deg, cfg.spawn_yaw_deg)),
            )

        peg_x, peg_y, peg_yaw = spawn()
        socket_x, socket_y, socket_yaw = spawn()
        g = cfg.geometry
        mujoco.mj_resetData(self.model, self.data)
        self._set_arm_positions(self.home)
        self.data.ctrl[:] = 0
        self._apply_command(self.home)
        self._set_free(
            self._peg_joint,
            [sign[side] * peg_x, peg_y, g.peg_half_width],
            yaw_quat(sign[side] * peg_yaw),
        )
        self._set_free(
            self._socket_joint,
            [sign[self.socket_arm] * socket_x, socket_y, g.socket_outer_half_width],
            yaw_quat(sign[self.socket_arm] * socket_yaw),
        )
        mujoco.mj_forward(self.model, self.data)
        self.step_count = 0
        self._inserted_run = 0
        self.reached = StageFlags()
        self.command = self.home.copy()
        self.frame_time = -np.inf
        return self.observe()

    def _set_free(self, joint, pos, quat) -> None:
        adr = joint.qposadr[0]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = quat
        self.data.qvel[joint.dofadr[0] : joint.dofadr[0] + 6] = 0

    def _set_arm_positions(self, q: np.ndarray) -> None:
        q = np.asarray(q).reshape(len(self.robot.arms), 7)
        self.data.qpos[self._arm_qpos] = q[:, :6]
        self.data.qpos[self._finger_qpos[:, 0]] = q[:, 6]
        self.data.qpos[self._finger_qpos[:, 1]] = -q[:, 6]

    def _apply_command(self, q: np.ndarray) -> None:
        q = np.clip(q, self.robot.lower, self.robot.upper).reshape(len(self.robot.arms), 7)
        self.data.ctrl[self._arm_act] = q[:, :6]
        self.data.ctrl[self._finger_act[:, 0]] = q[:, 6]
        self.data.ctrl[self._finger_act[:, 1]] = -q[:, 6]

    def step(self, command: np.ndarray) -> StepResult:
        """Apply one joint-position command (robot order) for one control period."""
        command = np.asarray(command, dtype=float)
        if command.shape != (self.robot.n_joints,) or not np.all(np.isfinite(command)):
            raise ValueError(f"command must be {self.robot.n_joints} finite joint positions")
        self.command = np.clip(command, self.robot.lower, self.robot.upper)
        self._apply_command(self.command)
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
        self.step_count += 1
        stages = self.stage_flags()
        for name in STAGES:
            if getattr(stages, name):
                setattr(self.reached, name, True)
        self._inserted_run = self._inserted_run + 1 if stages.inserted else 0
        success = self._inserted_run >= self.config.success_hold_steps
        timeout = self.step_count >= self.config.episode_limit_steps and not success
        return StepResult(self.observe(), stages, success, success or timeout, timeout)

    # --- observations ----------------------------------------------------------------------
    def _robot_vector(self, values: np.ndarray, arm: np.ndarray, fingers: np.ndarray) -> np.ndarray:
        """Robot-order vector (per arm: 6 joints + gripper) from MuJoCo qpos or qvel."""
        out = np.empty((len(self.robot.arms), 7))
        out[:, :6] = values[arm]
        # the two fingers move symmetrically; report their mean opening
        out[:, 6] = 0.5 * (values[fingers[:, 0]] - values[fingers[:, 1]])
        return out.reshape(-1)

    def joint_positions(self) -> np.ndarray:
        return self._robot_vector(self.data.qpos, self._arm_qpos, self._finger_qpos)

    def joint_velocities(self) -> np.ndarray:
        return self._robot_vector(self.data.qvel, self._arm_dof, self._finger_dof)

    def object_poses(self) -> np.ndarray:
        peg = self.data.qpos[self._peg_joint.qposadr[0] : self._peg_joint.qposadr[0] + 7]
        socket = self.data.qpos[self._socket_joint.qposadr[0] : self._socket_joint.qposadr[0] + 7]
        return np.concatenate([peg, socket]).copy()

    def observe(self) -> Observation:
        images = None
        if self.config.obs_mode == "pixels":
            # frames are re-rendered at the camera rate, independent of the control rate
            if self.data.time - self.frame_time >= 1.0 / self.config.camera_rate_hz - 1e-9:
                self._frames = {cam: self.render(cam) for cam in self.robot.cameras}
                self.frame_time = self.data.time
            images = dict(self._frames)
        return Observation(
            step=self.step_count,
            time=float(self.data.time),
            joint_positions=self.joint_positions(),
            joint_velocities=self.joint_velocities(),
            object_poses=self.object_poses() if self.config.obs_mode == "state" else None,
            images=images,
        )

    def render(
        self, camera: str, width: int | None = None, height: int | None = None
    ) -> np.ndarray:
        """RGB image (HxWx3 uint8) of a robot camera (robot description name)."""
        spec = self.robot.cameras[camera]
        width = width or self.config.image_width
        height = height or self.config.image_height
        if self._renderer is None or (self._renderer.width, self._renderer.height) != (
            width,
            height,
        ):
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = mujoco.Renderer(self.model, height=height, width=width)
        self._renderer.update_scene(self.data, camera=spec.sim_camera or camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- task geometry ---------------------------------------------------------------------
    def site_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        site = self.data.site(name)
        return site.xpos.copy(), site.xmat.reshape(3, 3).copy()

    def peg_pose(self) -> tuple[np.ndarray, np.ndarray]:
        body = self.data.body("peg")
        return body.xpos.copy(), body.xmat.reshape(3, 3).copy()

    def socket_pose(self) -> tuple[np.ndarray, np.ndarray]:
        body = self.data.body("socket")
        return body.xpos.copy(), body.xmat.reshape(3, 3).copy()

    def peg_tip_in_socket(self) -> np.ndarray:
        """The peg end nearer the socket centre, in the socket frame (x along the hole)."""
        g = self.config.geometry
        peg_pos, peg_rot = self.peg_pose()
        socket_pos, socket_rot = self.socket_pose()
        ends = [peg_pos + s * g.peg_half_length * peg_rot[:, 0] for s in (1.0, -1.0)]
        local = [socket_rot.T @ (end - socket_pos) for end in ends]
        return min(local, key=lambda p: np.linalg.norm(p))

    def insertion_depth(self) -> float:
        """How far the peg's leading end is past the socket mouth (negative: outside)."""
        g = self.config.geometry
        tip = self.peg_tip_in_socket()
        # the peg's axis may be off the hole's axis by the clearance (plus a little contact
        # penetration), not more: beyond that the peg would be inside the socket's wall
        clearance = g.socket_inner_half_width - g.peg_half_width + 0.0005
        lateral_inside = max(abs(tip[1]), abs(tip[2])) < clearance
        depth = g.socket_half_length - abs(tip[0])
        return depth if lateral_inside or depth < 0 else -abs(depth)

    def _grasped(self, body_geoms: set[int], arm: str) -> bool:
        touching = set()
        fingers = self._finger_geoms[arm]
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            pair = {c.geom1, c.geom2}
            if pair & body_geoms and pair & fingers:
                touching |= pair & fingers
        return touching == fingers

    def stage_flags(self) -> StageFlags:
        g = self.config.geometry
        peg_z = self.data.body("peg").xpos[2]
        socket_z = self.data.body("socket").xpos[2]
        peg_grasped = (
            self._grasped({self._peg_geom}, self.peg_arm) and peg_z > g.peg_half_width + 0.01
        )
        socket_grasped = (
            self._grasped(self._socket_geoms, self.socket_arm)
            and socket_z > g.socket_outer_half_width + 0.01
        )
        tip = self.peg_tip_in_socket()
        near_mouth = abs(tip[0]) < g.socket_half_length + 0.03
        aligned = bool(near_mouth and np.hypot(tip[1], tip[2]) < self.config.aligned_tolerance)
        inserted = self.insertion_depth() >= self.config.insert_depth
        return StageFlags(
            bool(peg_grasped), bool(socket_grasped), bool(aligned or inserted), bool(inserted)
        )

    # --- state for mirroring and replay ----------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "qpos": self.data.qpos.copy(),
            "qvel": self.data.qvel.copy(),
            "ctrl": self.data.ctrl.copy(),
            "act": self.data.act.copy(),
            "time": np.array(self.data.time),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.data.qpos[:] = state["qpos"]
        self.data.qvel[:] = state["qvel"]
        self.data.ctrl[:] = state["ctrl"]
        self.data.act[:] = state["act"]
        self.data.time = float(state["time"])
        mujoco.mj_forward(self.model, self.data)

    def mirror_state(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The physical state mirrored x → −x: arms swapped by the robot's mirror map."""
        out = {k: v.copy() for k, v in state.items()}
        arms = [a.name for a in self.robot.arms]
        signs = self.robot.mirror_sign.reshape(len(arms), 7)[:, :6]
        for src, dst in ((0, 1), (1, 0)):
            for key, adr in (("qpos", self._arm_qpos), ("qvel", self._arm_dof)):
                out[key][adr[dst]] = state[key][adr[src]] * signs[src]
            out["ctrl"][self._arm_act[dst]] = state["ctrl"][self._arm_act[src]] * signs[src]
            # lateral flip: one arm's left finger becomes the other arm's right finger
            for key, adr in (("qpos", self._finger_qpos), ("qvel", self._finger_dof)):
                out[key][adr[dst, 0]] = -state[key][adr[src, 1]]
                out[key][adr[dst, 1]] = -state[key][adr[src, 0]]
            out["ctrl"][self._finger_act[dst, 0]] = -state["ctrl"][self._finger_act[src, 1]]
            out["ctrl"][self._finger_act[dst, 1]] = -state["ctrl"][self._finger_act[src, 0]]
        for joint in (self._peg_joint, self._socket_joint):
            q, d = joint.qposadr[0], joint.dofadr[0]
            out["qpos"][q] = -state["qpos"][q]
            out["qpos"][q + 3 : q + 7] = mirror_quat(state["qpos"][q + 3 : q + 7])
            out["qvel"][d] = -state["qvel"][d]  # linear velocity: x flips
            out["qvel"][d + 4 : d + 6] = -state["qvel"][d + 4 : d + 6]  # angular: y, z flip
        return out

    def mirror(self) -> None:
        """Mirror the current scene in place (and which arm has the peg)."""
        self.set_state(self.mirror_state(self.get_state()))
        self.peg_arm, self.socket_arm = self.socket_arm, self.peg_arm
