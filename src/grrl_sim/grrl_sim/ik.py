"""Damped least-squares inverse kinematics of one arm's gripper site (position + orientation)."""

from __future__ import annotations

import mujoco
import numpy as np


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector rotating ``current`` onto ``target`` (both 3x3, world frame)."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).reshape(-1))
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


class ArmIK:
    """IK for one arm on a private MjData (kinematics only, never touches the simulation)."""

    def __init__(
        self,
        model: mujoco.MjModel,
        site: str,
        qpos_adr: np.ndarray,
        dof_adr: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
    ):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = model.site(site).id
        self.qpos_adr = np.asarray(qpos_adr)
        self.dof_adr = np.asarray(dof_adr)
        self.lower, self.upper = np.asarray(lower), np.asarray(upper)
        self.rest = np.zeros(len(self.qpos_adr))
        self.posture_weight = np.zeros(len(self.qpos_adr))
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.data.qpos[self.qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(
            3, 3
        ).copy()

    def solve(
        self,
        q0: np.ndarray,
        position: np.ndarray,
        rotation: np.ndarray | None,
        iterations: int = 30,
        damping: float = 0.02,
        tolerance: float = 2e-4,
        rotation_weight: float = 0.3,
    ) -> tuple[np.ndarray, float]:
        """Joint positions near ``q0`` putting the site at the pose; returns (q, position error)."""
        q = np.asarray(q0, dtype=float).copy()
        err_norm = np.inf
        for _ in range(iterations):
            self.data.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            pos = self.data.site_xpos[self.site]
            err_p = position - pos
            err_norm = float(np.linalg.norm(err_p))
            if rotation is None:
                err = err_p
            else:
                err_r = rotation_error(rotation, self.data.site_xmat[self.site].reshape(3, 3))
                err = np.concatenate([err_p, rotation_weight * err_r])
                if err_norm < tolerance and np.linalg.norm(err_r) < 5 * tolerance / 0.05:
                    break
            if rotation is None and err_norm < tolerance:
                break
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
            jac = self._jacp[:, self.dof_adr]
            if rotation is not None:
                jac = np.vstack([jac, rotation_weight * self._jacr[:, self.dof_adr]])
            # damped least squares, plus a pull of the posture-weighted joints to rest projected
            # into the task's null space: it only acts where the task leaves freedom (e.g. the
            # wrist singularity), never against tracking
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + damping**2 * np.eye(len(err)))
            dq = pinv @ err
            if self.posture_weight.any():
                null = np.eye(len(q)) - pinv @ jac
                dq += null @ (self.posture_weight * (self.rest - q))
            step = np.linalg.norm(dq)
            if step > 0.3:
                dq *= 0.3 / step
            q = np.clip(q + dq, self.lower, self.upper)
        return q, err_norm
