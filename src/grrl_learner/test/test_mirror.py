"""Mirror augmentation: agrees with the simulator's physical mirror, is an involution."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from grrl_common.robot import (
    RobotDescriptionError,
    default_robot_description_path,
    load_robot_description,
    parse_robot_description,
)
from grrl_learner.mirror import (
    mirror_ee_poses,
    mirror_instruction,
    mirror_partner_arms,
    mirror_poses,
    mirror_transform,
)
from grrl_policy.normalization import NormStats
from grrl_sim.kinematics import GripperKinematics
from grrl_sim.operator import OperatorConfig, ScriptedOperator
from grrl_sim.task import InsertionTask

ROBOT = load_robot_description()


def test_state_mirror_matches_the_simulated_mirror_scene():
    task = InsertionTask(robot=ROBOT)
    task.reset(3)
    rng = np.random.default_rng(0)
    for _ in range(30):  # move every joint so the state is not symmetric by accident
        task.step(np.clip(task.command + rng.normal(0, 0.05, ROBOT.n_joints), ROBOT.lower,
                          ROBOT.upper))  # fmt: skip
    joints, poses = task.joint_positions(), task.object_poses()
    task.mirror()  # the simulator's own x → −x mirror of the physical state
    np.testing.assert_allclose(ROBOT.mirror_joints(joints), task.joint_positions(), atol=1e-9)
    np.testing.assert_allclose(mirror_poses(poses, "x"), task.object_poses(), atol=1e-12)
    task.close()


def _grip_poses_in_base_frames(fk: GripperKinematics, q: np.ndarray) -> np.ndarray:
    """Each gripper's pose (x, y, z, qw, qx, qy, qz) in its arm's base frame, by MuJoCo FK."""
    poses = fk.gripper_poses(q)
    out = []
    for arm in ROBOT.arms:
        (pos,), (rot,) = poses[arm.name]
        base = Rotation.from_quat(arm.base_orientation, scalar_first=True).as_matrix()
        out += [base.T @ (pos - np.asarray(arm.base_position)),
                Rotation.from_matrix(base.T @ rot).as_quat(scalar_first=True)]  # fmt: skip
    return np.concatenate(out)


def test_end_effector_mirror_agrees_with_the_joint_mirror_through_kinematics():
    """Mirroring the grippers' poses lands where the mirrored joints put the grippers."""
    fk = GripperKinematics(ROBOT)
    for arm in ROBOT.arms:  # the YAML's base frames are the simulated arms' own
        body = fk.model.body(ROBOT.sim["joint_prefix"][arm.name].rstrip("/"))
        np.testing.assert_allclose(fk.model.body_pos[body.id], arm.base_position, atol=1e-9)
        np.testing.assert_allclose(fk.model.body_quat[body.id], arm.base_orientation, atol=1e-9)
    assert mirror_partner_arms(ROBOT) == [1, 0]
    rng = np.random.default_rng(4)
    for _ in range(20):
        q = rng.uniform(ROBOT.lower, ROBOT.upper) * 0.6
        mirrored = mirror_ee_poses(_grip_poses_in_base_frames(fk, q), ROBOT)
        expected = _grip_poses_in_base_frames(fk, ROBOT.mirror_joints(q))
        for a in range(len(ROBOT.arms)):
            pose, want = mirrored[7 * a : 7 * a + 7], expected[7 * a : 7 * a + 7]
            np.testing.assert_allclose(pose[:3], want[:3], atol=1e-9)
            turn = Rotation.from_quat(pose[3:], scalar_first=True).inv() * Rotation.from_quat(
                want[3:], scalar_first=True
            )
            assert turn.magnitude() < 1e-9
    # the pose alone, without the gripper axis reflection, would be a different (wrong) grip
    wrong = dataclasses.replace(ROBOT, mirror_ee_axis="x")
    q = rng.uniform(ROBOT.lower, ROBOT.upper) * 0.6
    bad = mirror_ee_poses(_grip_poses_in_base_frames(fk, q), wrong)
    good = _grip_poses_in_base_frames(fk, ROBOT.mirror_joints(q))
    turn = Rotation.from_quat(bad[3:7], scalar_first=True).inv() * Rotation.from_quat(
        good[3:7], scalar_first=True
    )
    assert turn.magnitude() > 1.0


def test_end_effector_mirror_is_an_involution():
    rng = np.random.default_rng(5)
    poses = np.empty((50, 14))
    for a in range(2):
        poses[:, 7 * a : 7 * a + 3] = rng.normal(0, 0.3, (50, 3))
        quat = Rotation.random(50, random_state=6 + a).as_quat(scalar_first=True)
        poses[:, 7 * a + 3 : 7 * a + 7] = quat * np.where(quat[:, :1] < 0, -1.0, 1.0)
    once = mirror_ee_poses(poses, ROBOT)
    assert not np.allclose(once, poses)
    np.testing.assert_allclose(mirror_ee_poses(once, ROBOT), poses, atol=1e-12)
    np.testing.assert_allclose(mirror_ee_poses(poses[0], ROBOT), once[0], atol=1e-12)
    with pytest.raises(ValueError, match="end-effector poses"):
        mirror_ee_poses(poses[:, :7], ROBOT)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["arms"]["left"].update(base={"position": [0, 1]}), "position must be 3"),
        (lambda d: d["arms"]["left"].update(base={"orientation": [2, 0, 0, 0]}), "unit quaternion"),
        (lambda d: d["mirror"].update(ee_axis="w"), "ee_axis must be x, y or z"),
    ],
)
def test_bad_base_pose_or_mirror_axis_is_one_clear_error(edit, message):
    document = yaml.safe_load(default_robot_description_path().read_text())
    edit(document)
    with pytest.raises(RobotDescriptionError, match=message):
        parse_robot_description(document, "robot.yaml")


def test_sample_transform_is_an_involution_and_swaps_views_and_words():
    n, s = ROBOT.n_joints, ROBOT.n_joints + 14
    rng = np.random.default_rng(1)
    f32 = np.float32
    stats = NormStats(
        rng.normal(size=s).astype(f32),
        rng.uniform(0.5, 2, s).astype(f32),
        rng.normal(size=n).astype(f32),
        rng.uniform(0.5, 2, n).astype(f32),
    )
    cameras = ["head", "left_wrist", "right_wrist"]
    images = rng.integers(0, 255, (3, 3, 8, 8), dtype=np.uint8)
    sample = {"state": rng.normal(size=s).astype(np.float32),
              "actions": rng.normal(size=(5, n)).astype(np.float32),
              "images": images, "instruction": "Put the left peg in, turn clockwise"}  # fmt: skip
    mirror = mirror_transform(ROBOT, stats, cameras)
    once = mirror(sample)
    assert once["instruction"] == "Put the right peg in, turn counterclockwise"
    np.testing.assert_array_equal(once["images"][0], images[0][..., ::-1])  # head: flipped
    np.testing.assert_array_equal(once["images"][1], images[2][..., ::-1])  # wrists swapped
    np.testing.assert_array_equal(once["images"][2], images[1][..., ::-1])
    raw = sample["actions"] * stats.action_std + stats.action_mean
    np.testing.assert_allclose(once["actions"] * stats.action_std + stats.action_mean,
                               ROBOT.mirror_joints(raw), atol=1e-5)  # fmt: skip
    twice = mirror(once)
    for key in ("state", "actions"):
        np.testing.assert_allclose(twice[key], sample[key], atol=1e-5)
    np.testing.assert_array_equal(twice["images"], images)
    assert twice["instruction"] == sample["instruction"]


def test_instruction_words_swap_on_word_boundaries_only():
    pairs = ROBOT.instruction_word_pairs
    assert mirror_instruction("leftover wire on the left", pairs) == "leftover wire on the right"
    assert mirror_instruction("把左边的鞋带穿过右孔", pairs) == "把右边的鞋带穿过左孔"
    assert mirror_instruction("counterclockwise", pairs) == "clockwise"


def test_successful_demos_mirrored_replay_successfully_in_the_mirrored_scene():
    """Proof in physics: a demo's commands, mirrored, succeed open loop in the mirrored scene.

    Open-loop replay of a millimetre insertion is chaotic at contact, so it is scored over
    demos: every plain replay succeeds (the sim is deterministic), and mirrored replays succeed
    nearly as often (the transform is exact; contact dynamics are only nearly symmetric).
    """
    task = InsertionTask(robot=ROBOT)
    operator = ScriptedOperator(task, OperatorConfig.clean())

    def replay(seed: int, commands: list[np.ndarray], mirrored: bool) -> bool:
        task.reset(seed)
        if mirrored:
            task.mirror()  # the mirrored scene: objects and robot state x → −x
        for command in commands + [commands[-1]] * 100:  # then hold the last command
            result = task.step(ROBOT.mirror_joints(command) if mirrored else command)
            if result.done:
                return bool(result.success)
        return False

    plain, mirrored = [], []
    for seed in range(10):
        task.reset(seed)
        operator.reset(seed)
        commands = []
        while True:
            commands.append(operator.act().command.copy())
            result = task.step(commands[-1])
            if result.done:
                break
        assert result.success, f"clean demo {seed} failed"
        plain.append(replay(seed, commands, mirrored=False))
        mirrored.append(replay(seed, commands, mirrored=True))
    task.close()
    assert all(plain)
    assert sum(mirrored) >= 8, mirrored
