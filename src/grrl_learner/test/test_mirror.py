"""Mirror augmentation: agrees with the simulator's physical mirror, is an involution."""

from __future__ import annotations

import numpy as np

from grrl_common.robot import load_robot_description
from grrl_learner.mirror import mirror_instruction, mirror_poses, mirror_transform
from grrl_policy.normalization import NormStats
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
