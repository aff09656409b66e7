"""Joint-command validation and the command gate: bad input never gets through."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grrl_common.commands import CommandGate, validate_joint_command
from grrl_common.robot import load_robot_description


@pytest.fixture(scope="module")
def robot():
    return load_robot_description()


@pytest.mark.parametrize(
    "names, positions, reason",
    [
        ([], [], "no positions"),
        (["left_waist"], [0.1, 0.2], "1 joint names but 2 positions"),
        (["left_elbw"], [0.1], "unknown joint(s) left_elbw"),
        (["left_waist", "left_waist"], [0.1, 0.1], "duplicate"),
        (["left_waist"], [math.nan], "non-finite position for left_waist"),
        (["right_gripper"], [math.inf], "non-finite"),
        (["left_shoulder"], [2.0], "beyond limits: left_shoulder=2"),
    ],
)
def test_invalid_commands_are_rejected_with_a_reason(robot, names, positions, reason):
    target, error = validate_joint_command(robot, names, positions, np.zeros(robot.n_joints))
    assert target is None and reason in error and "\n" not in error


def test_partial_command_merges_into_current(robot):
    current = np.full(robot.n_joints, 0.03)
    target, error = validate_joint_command(robot, ["right_elbow"], [0.5], current)
    assert error == "" and target[robot.joint_names.index("right_elbow")] == 0.5
    assert np.count_nonzero(target != current) == 1


def test_gate_holds_on_bad_or_too_fast_commands(robot):
    gate = CommandGate(robot, dt=0.02, speed_margin=1.5)
    home = np.array(robot.sim["home"] * 2, dtype=float)
    assert gate.check(robot.joint_names, home)[0] is None  # no state yet: nothing goes out
    gate.reset(home)
    small = home.copy()
    small[0] += 0.05
    accepted, _ = gate.check(robot.joint_names, small)
    assert accepted is not None and accepted[0] == pytest.approx(home[0] + 0.05)
    jump = small.copy()
    jump[0] += 0.5  # 25 rad/s: far beyond 1.5 x 3 rad/s
    rejected, reason = gate.check(robot.joint_names, jump)
    assert rejected is None and "too fast: left_waist" in reason
    assert np.array_equal(gate.last, small)  # the robot holds the last accepted target
    nan = small.copy()
    nan[3] = math.nan
    assert gate.check(robot.joint_names, nan)[0] is None
    assert np.array_equal(gate.last, small)
