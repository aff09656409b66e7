"""Validating joint commands before they can reach motors (ROS-free)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grrl_common.robot import RobotDescription

LIMIT_TOLERANCE = 1e-6


def validate_joint_command(
    robot: RobotDescription,
    names: Sequence[str],
    positions: Sequence[float],
    current: np.ndarray,
) -> tuple[np.ndarray | None, str]:
    """Merge a (possibly partial) named position command into ``current``.

    Returns (target, "") when valid, else (None, reason) with a one-line reason naming the
    problem: no positions, names/positions length mismatch, unknown or duplicate joints,
    non-finite values, targets beyond the joint limits.
    """
    positions = np.asarray(positions, dtype=float)
    if positions.size == 0:
        return None, "command has no positions"
    if len(names) != positions.size:
        return None, f"{len(names)} joint names but {positions.size} positions"
    index = {name: i for i, name in enumerate(robot.joint_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        return None, f"unknown joint(s) {', '.join(unknown[:4])}"
    if len(set(names)) != len(names):
        return None, "duplicate joint names"
    if not np.all(np.isfinite(positions)):
        bad = [n for n, p in zip(names, positions, strict=True) if not np.isfinite(p)]
        return None, f"non-finite position for {', '.join(bad[:4])}"
    target = np.array(current, dtype=float, copy=True)
    idx = np.array([index[n] for n in names])
    target[idx] = positions
    lower, upper = robot.lower[idx], robot.upper[idx]
    outside = (positions < lower - LIMIT_TOLERANCE) | (positions > upper + LIMIT_TOLERANCE)
    if outside.any():
        beyond = [
            f"{names[i]}={positions[i]:.4g} not in [{lower[i]:.4g}, {upper[i]:.4g}]"
            for i in np.flatnonzero(outside)[:3]
        ]
        return None, "beyond limits: " + "; ".join(beyond)
    return target, ""


class CommandGate:
    """The last line before the motors: limits, finiteness and a per-step rate bound.

    ``check`` returns the accepted target or None with a reason; a rejected command leaves
    the last accepted target in place (the robot holds).
    """

    def __init__(self, robot: RobotDescription, dt: float, speed_margin: float = 1.5) -> None:
        self.robot = robot
        self.max_step = robot.max_velocity * dt * speed_margin
        self.last: np.ndarray | None = None

    def reset(self, current: np.ndarray) -> None:
        """Start from the robot's measured position (e.g. after an episode reset)."""
        self.last = np.array(current, dtype=float)

    def check(
        self, names: Sequence[str], positions: Sequence[float]
    ) -> tuple[np.ndarray | None, str]:
        if self.last is None:
            return None, "no joint state received yet"
        target, error = validate_joint_command(self.robot, names, positions, self.last)
        if target is None:
            return None, error
        jump = np.abs(target - self.last)
        if np.any(jump > self.max_step):
            worst = int(np.argmax(jump / self.max_step))
            return None, (
                f"too fast: {self.robot.joint_names[worst]} moves {jump[worst]:.3g} in one step "
                f"(max {self.max_step[worst]:.3g})"
            )
        self.last = target
        return target, ""
