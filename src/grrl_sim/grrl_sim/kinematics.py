"""Forward kinematics of the grippers: joint vectors → gripper positions in the world frame.

Built from the same MuJoCo model the simulator steps (``grrl_sim.model``), so a path drawn from a
predicted action chunk lands exactly where the simulated grippers would go. Kinematics only: a
private MjData, arm joint positions written into qpos, ``mj_kinematics``, the ``<arm>_grip`` site
(between the fingertips) read back. Nothing is stepped and the simulation is never touched.
"""

from __future__ import annotations

import mujoco
import numpy as np

from grrl_common.robot import RobotDescription
from grrl_sim.model import ARM_JOINTS, ARM_PREFIX, build_model


class KinematicsUnavailableError(RuntimeError):
    """The robot has no MuJoCo model (no ``sim:`` section in its description)."""


class GripperKinematics:
    """Gripper positions for joint vectors in robot description order.

    One private MjData; safe to use from one thread at a time (give each thread its own instance).
    """

    def __init__(self, robot: RobotDescription, model: mujoco.MjModel | None = None):
        if not robot.sim:
            raise KinematicsUnavailableError(
                f"robot {robot.name!r} ({robot.source or 'no file'}) has no 'sim:' section, so "
                "there is no MuJoCo model to compute gripper positions from"
            )
        self.robot = robot
        # Compiling the scene costs ~50 ms; a caller that already has the model can share it
        # (MjModel is read-only here, only our own MjData is written).
        self.model = model if model is not None else build_model()
        self.data = mujoco.MjData(self.model)
        prefixes = robot.sim.get("joint_prefix", {k: v + "/" for k, v in ARM_PREFIX.items()})
        self._columns: list[np.ndarray] = []  # per arm: its 6 joints' columns in the joint vector
        self._qpos: list[np.ndarray] = []  # per arm: the matching qpos addresses
        self._sites: list[int] = []
        for arm in robot.arms:
            if arm.name not in prefixes:
                raise KinematicsUnavailableError(
                    f"sim.joint_prefix has no entry for arm {arm.name!r}"
                )
            if len(arm.joints) != len(ARM_JOINTS):
                raise KinematicsUnavailableError(
                    f"arm {arm.name!r} has {len(arm.joints)} joints; "
                    f"the sim arm has {len(ARM_JOINTS)}"
                )
            try:
                qpos = [
                    self.model.joint(prefixes[arm.name] + role).qposadr[0] for role in ARM_JOINTS
                ]
                site = self.model.site(f"{arm.name}_grip").id
            except KeyError as exc:
                raise KinematicsUnavailableError(
                    f"MuJoCo model lacks a joint or grip site of arm {arm.name!r}: {exc}"
                ) from None
            start = robot.arm_slice(arm.name).start
            self._columns.append(np.arange(start, start + len(ARM_JOINTS)))
            self._qpos.append(np.asarray(qpos))
            self._sites.append(site)
        self._all_columns = np.concatenate(self._columns)
        self._all_qpos = np.concatenate(self._qpos)
        self._site_ids = np.asarray(self._sites)

    @property
    def arms(self) -> list[str]:
        return [arm.name for arm in self.robot.arms]

    def gripper_positions(self, joints: np.ndarray) -> dict[str, np.ndarray]:
        """World positions (T, 3) of each arm's gripper for joint vectors of shape (T, n).

        A single vector (n,) is taken as T = 1. Positions are clipped to the joint limits first,
        as the robot (and the sim) clip commands, so the path shows where the gripper would go.
        """
        return {arm: pos for arm, (pos, _) in self.gripper_poses(joints).items()}

    def gripper_poses(self, joints: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """World positions (T, 3) and rotation matrices (T, 3, 3) of each arm's gripper site.

        The same clipping and shapes as :meth:`gripper_positions`.
        """
        q = np.atleast_2d(np.asarray(joints, dtype=float))
        n = self.robot.n_joints
        if q.ndim != 2 or q.shape[1] != n:
            raise ValueError(f"joints must have shape (T, {n}), got {np.shape(joints)}")
        if not np.all(np.isfinite(q)):
            raise ValueError("joints must be finite")
        q = np.clip(q, self.robot.lower, self.robot.upper)[:, self._all_columns]
        pos = np.empty((len(self._sites), q.shape[0], 3))
        rot = np.empty((len(self._sites), q.shape[0], 3, 3))
        qpos, xpos, xmat = self.data.qpos, self.data.site_xpos, self.data.site_xmat
        for t in range(q.shape[0]):
            qpos[self._all_qpos] = q[t]
            mujoco.mj_kinematics(self.model, self.data)
            pos[:, t] = xpos[self._site_ids]
            rot[:, t] = xmat[self._site_ids].reshape(-1, 3, 3)
        return {arm: (pos[i], rot[i]) for i, arm in enumerate(self.arms)}
