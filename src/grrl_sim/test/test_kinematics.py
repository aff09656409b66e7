"""Gripper forward kinematics agrees with the simulator's own MuJoCo state."""

from __future__ import annotations

import dataclasses
import time

import mujoco
import numpy as np
import pytest

from grrl_common.robot import load_robot_description
from grrl_sim.kinematics import GripperKinematics, KinematicsUnavailableError
from grrl_sim.task import InsertionTask, TaskConfig


@pytest.fixture(scope="module")
def robot():
    return load_robot_description()


@pytest.fixture(scope="module")
def kinematics(robot) -> GripperKinematics:
    return GripperKinematics(robot)


@pytest.fixture(scope="module")
def task(robot) -> InsertionTask:
    return InsertionTask(TaskConfig(), robot)


def test_arms_follow_robot_description(kinematics, robot):
    assert kinematics.arms == [arm.name for arm in robot.arms] == ["left", "right"]


def test_home_pose_matches_sim_after_reset(kinematics, task):
    task.reset(3)
    positions = kinematics.gripper_positions(task.joint_positions()[None])
    for arm in kinematics.arms:
        assert positions[arm].shape == (1, 3)
        np.testing.assert_allclose(positions[arm][0], task.data.site(f"{arm}_grip").xpos, atol=1e-9)


def test_matches_sim_along_a_trajectory(kinematics, task, robot):
    # After some steps the measured joints differ from home; FK of them is where the sim is.
    task.reset(5)
    target = task.home.copy()
    target[robot.arm_slice("left")][:3] += (0.3, 0.2, -0.2)
    for _ in range(10):
        task.step(target)
    # mj_step leaves site_xpos at the positions from before its last integration; refresh them
    mujoco.mj_kinematics(task.model, task.data)
    positions = kinematics.gripper_positions(task.joint_positions()[None])
    for arm in kinematics.arms:
        np.testing.assert_allclose(positions[arm][0], task.data.site(f"{arm}_grip").xpos, atol=1e-6)


def test_mirrored_home_pose_mirrors_grippers_in_x(kinematics, robot, task):
    home = task.home
    np.testing.assert_allclose(robot.mirror_joints(home), home)
    left = kinematics.gripper_positions(home)["left"][0]
    right = kinematics.gripper_positions(home)["right"][0]
    np.testing.assert_allclose(right, left * np.array([-1.0, 1.0, 1.0]), atol=1e-9)
    assert left[0] < 0 < right[0]

    # a non-symmetric pose and its mirror image: gripper positions swap arms and flip in x
    rng = np.random.default_rng(0)
    q = home + rng.uniform(-0.3, 0.3, size=home.shape)
    a = kinematics.gripper_positions(q)
    b = kinematics.gripper_positions(robot.mirror_joints(q))
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(b["right"], a["left"] * flip, atol=1e-9)
    np.testing.assert_allclose(b["left"], a["right"] * flip, atol=1e-9)


def test_waist_turns_gripper_sideways(kinematics, robot, task):
    home = task.home
    turned = np.tile(home, (2, 1))
    waist = robot.joint_names.index("left_waist")
    turned[1, waist] += 0.3
    path = kinematics.gripper_positions(turned)["left"]
    moved = path[1] - path[0]
    # a rotation about the vertical axis: the height stays, the gripper swings in the table plane
    assert abs(moved[2]) < 1e-9
    assert abs(moved[1]) > 0.03
    # the right arm is not affected
    right = kinematics.gripper_positions(turned)["right"]
    np.testing.assert_allclose(right[0], right[1])


def test_shapes_and_validation(kinematics, robot, task):
    chunk = np.tile(task.home, (20, 1))
    positions = kinematics.gripper_positions(chunk)
    assert set(positions) == {"left", "right"}
    assert all(p.shape == (20, 3) for p in positions.values())
    with pytest.raises(ValueError):
        kinematics.gripper_positions(np.zeros((3, robot.n_joints - 1)))
    bad = chunk.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError):
        kinematics.gripper_positions(bad)


def test_robot_without_sim_section_is_refused(robot):
    real = dataclasses.replace(robot, sim={})
    with pytest.raises(KinematicsUnavailableError, match="sim"):
        GripperKinematics(real)


def test_chunk_is_fast(kinematics, task):
    rng = np.random.default_rng(1)
    chunk = task.home + rng.normal(0.0, 0.1, size=(20, task.home.size))
    kinematics.gripper_positions(chunk)
    runs = 50
    start = time.perf_counter()
    for _ in range(runs):
        kinematics.gripper_positions(chunk)
    per_chunk = (time.perf_counter() - start) / runs
    assert per_chunk < 2e-3, f"{per_chunk * 1e3:.2f} ms per 20-step chunk"
