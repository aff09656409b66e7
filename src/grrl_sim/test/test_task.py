"""The task core: determinism, randomised sides, the depth-based success detector, the mirror."""

from __future__ import annotations

import numpy as np
import pytest

from grrl_sim.operator import OperatorConfig, ScriptedOperator
from grrl_sim.task import InsertionTask, TaskConfig


@pytest.fixture(scope="module")
def task() -> InsertionTask:
    return InsertionTask(TaskConfig())


def _run(task: InsertionTask, seed: int, config: OperatorConfig, steps: int | None = None):
    operator = ScriptedOperator(task, config)
    task.reset(seed)
    operator.reset(seed)
    joints, result = [], None
    for _ in range(steps or task.config.episode_limit_steps):
        output = operator.act()
        result = task.step(output.command)
        joints.append(task.joint_positions())
        if result.done:
            break
    return np.array(joints), result, operator


def test_deterministic_per_seed(task):
    first, _, _ = _run(task, 11, OperatorConfig.noisy(), steps=120)
    poses_first = task.object_poses()
    second, _, _ = _run(task, 11, OperatorConfig.noisy(), steps=120)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(poses_first, task.object_poses())
    other, _, _ = _run(task, 12, OperatorConfig.noisy(), steps=120)
    assert not np.array_equal(first, other)


def test_sides_are_randomised_and_mirror_symmetric(task):
    sides = []
    for seed in range(40):
        task.reset(seed)
        sides.append(task.peg_arm)
        peg, socket = task.object_poses()[:3], task.object_poses()[7:10]
        assert np.sign(peg[0]) == (1 if task.peg_arm == "right" else -1)
        assert np.sign(socket[0]) == -np.sign(peg[0])
    assert 10 <= sides.count("left") <= 30


def test_clean_scripted_episode_succeeds_by_depth(task):
    _, result, _ = _run(task, 3, OperatorConfig.clean())
    assert result.success and not result.timeout
    assert task.insertion_depth() >= task.config.insert_depth
    assert task.reached.as_tuple() == (True, True, True, True)


def _place_peg(task: InsertionTask, depth: float, lateral: float) -> None:
    """Put the peg on the socket axis (mouth facing +x), ``depth`` past the mouth, offset in y."""
    g = task.config.geometry
    state = task.get_state()
    socket = task._socket_joint.qposadr[0]
    peg = task._peg_joint.qposadr[0]
    state["qpos"][socket : socket + 7] = [0, 0.5, 0.2, 1, 0, 0, 0]
    tip_x = g.socket_half_length - depth
    state["qpos"][peg : peg + 7] = [tip_x + g.peg_half_length, 0.5 + lateral, 0.2, 1, 0, 0, 0]
    task.set_state(state)


@pytest.mark.parametrize(
    "depth, lateral, inserted",
    [
        (0.03, 0.0, True),  # on axis, 3 cm deep
        (0.021, 0.002, True),  # just past the required depth, inside the clearance
        (0.01, 0.0, False),  # on axis but too shallow: contact alone is not success
        (0.03, 0.008, False),  # near miss: 8 mm off the axis is outside the hole
        (-0.01, 0.0, False),  # in front of the mouth
    ],
)
def test_success_detector_is_a_depth_check(task, depth, lateral, inserted):
    task.reset(0)
    _place_peg(task, depth, lateral)
    assert task.stage_flags().inserted is inserted
    assert task.stage_flags().aligned is (abs(lateral) < task.config.aligned_tolerance)


def test_mirror_map_holds_in_physics():
    """Mirror a state, drive both scenes with mirrored commands: joints stay mirrored.

    The commands sweep every joint of both arms through free space (different motions per arm),
    with the objects resting on the table, for 200 control steps (4 s, 2000 physics steps).
    """
    a, b = InsertionTask(TaskConfig()), InsertionTask(TaskConfig())
    robot = a.robot
    a.reset(5)
    rng = np.random.default_rng(0)
    amplitude = rng.uniform(0.1, 0.35, robot.n_joints) * np.r_[np.ones(6), 0, np.ones(6), 0]
    frequency = rng.uniform(0.2, 0.8, robot.n_joints)
    for step in range(25):  # move away from home first, so the mirrored state is not trivial
        a.step(a.home + amplitude * np.sin(2 * np.pi * frequency * step * a.control_dt))
    b.reset(0)
    b.set_state(a.mirror_state(a.get_state()))
    worst = 0.0
    for step in range(25, 225):
        command = a.home + amplitude * np.sin(2 * np.pi * frequency * step * a.control_dt)
        command[[6, 13]] = 0.03 + 0.02 * np.sin(step * a.control_dt * np.array([3.0, 5.0]))
        a.step(command)
        b.step(robot.mirror_joints(command))
        error = np.abs(b.joint_positions() - robot.mirror_joints(a.joint_positions())).max()
        worst = max(worst, error)
    moved = np.abs(a.joint_positions() - a.home).max()
    assert moved > 0.05  # the arms really moved
    assert worst < 1e-9, worst
    np.testing.assert_allclose(b.object_poses()[:3], a.object_poses()[:3] * [-1, 1, 1], atol=1e-9)


def test_pixels_mode_renders_three_cameras_at_camera_rate():
    task = InsertionTask(
        TaskConfig(obs_mode="pixels", image_width=64, image_height=48, camera_rate_hz=10.0)
    )
    try:
        obs = task.reset(1)
        assert set(obs.images) == {"head", "left_wrist", "right_wrist"}
        assert all(
            img.shape == (48, 64, 3) and img.dtype == np.uint8 for img in obs.images.values()
        )
        assert obs.object_poses is None
        frames, first = 0, task.frame_time
        for _ in range(25):  # 0.5 s at 50 Hz: frames at 10 Hz
            task.step(task.home)
            if task.frame_time != first:
                frames, first = frames + 1, task.frame_time
        assert frames == 5
        assert obs.images["head"].std() > 5  # a real picture, not a blank buffer
    finally:
        task.close()


def test_sim_stamps_carry_into_seconds():
    from grrl_sim.sim_node import _stamp

    for seconds in (10.9999999999, 0.02 * 550, 3.0, 0.0):
        stamp = _stamp(seconds)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert abs(stamp.sec + stamp.nanosec * 1e-9 - seconds) < 1e-9


def test_an_object_dropped_off_the_table_lands_on_the_floor(task: InsertionTask):
    import mujoco

    from grrl_sim.model import FLOOR_Z

    task.reset(0)
    model, data = task.model, task.data
    address = model.joint("peg_joint").qposadr[0]
    data.qpos[address : address + 3] = [0.0, 1.5, 0.3]  # beyond the table's far edge
    for _ in range(2000):  # 4 s of physics
        mujoco.mj_step(model, data)
    z = data.qpos[address + 2]
    assert FLOOR_Z < z < FLOOR_Z + 0.05, z
    task.reset(0)  # leave the shared task as a fresh episode
