"""Rosbag replay → learner_node: episodes from the live stream equal the direct file read, and
each one is filtered by a critic into the keep mask that train-bc reads."""

from __future__ import annotations

import time

from rclpy.executors import MultiThreadedExecutor

from grrl_common.runtime import spin_until
from grrl_learner.dataset import load_keep_mask
from grrl_learner.learner_node import LearnerNode
from grrl_learner.train_critic import CriticTrainConfig, train_critic

RATE = 5.0  # the issue asks for at least 5× the recorded pace


def test_replayed_bags_give_the_episodes_a_direct_read_gives_and_get_filtered(
    ros_context, start_process, executable_path, noisy_dataset, noisy_episodes,
    assert_episodes_equal, tmp_path,
):  # fmt: skip
    # a briefly trained critic: the plumbing is tested here; filtering quality is
    # test_critic's and bench/filter.py's
    critic = train_critic(CriticTrainConfig(
        data=str(noisy_dataset), out=str(tmp_path / "critic"), steps=30, batch_size=64,
        width=64, head_width=32, progress=False,
    ))  # fmt: skip
    learner = LearnerNode(
        context=ros_context,
        cli_args=["--ros-args", "-p", "replay:=true",
                  "-p", f"episodes:={len(noisy_episodes)}",
                  "-p", f"critic:={critic}", "-p", f"out_dir:={tmp_path / 'filter'}"],
    )  # fmt: skip
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(learner)
    duration = sum(len(e) for e in noisy_episodes) / 50.0  # recorded seconds at 50 Hz
    started = time.monotonic()
    player = start_process(
        executable_path("grrl_learner", "replay_node"), "--ros-args",
        "-p", f"data:={noisy_dataset}", "-p", f"rate:={RATE}",
    )  # fmt: skip
    try:
        failed = lambda: player.process.poll() not in (None, 0)  # noqa: E731
        spin_until(executor, lambda: learner.done.is_set() or failed(), 60 + duration / RATE)
        assert learner.done.is_set(), player.text()
    finally:
        executor.remove_node(learner)
        learner.destroy_node()
        executor.shutdown(timeout_sec=1.0)
    replay_s = time.monotonic() - started
    assert player.process.wait(timeout=30) == 0, player.text()
    assert len(learner.episodes) == len(noisy_episodes)
    for live, direct in zip(learner.episodes, noisy_episodes, strict=True):
        assert_episodes_equal(live, direct)
    # the stream really ran faster than recorded (start-up included)
    assert replay_s < duration, (replay_s, duration)
    # each complete episode was scored and filtered; the mask is what train-bc reads
    masks = load_keep_mask(tmp_path / "filter" / "keep_mask.json")
    assert set(masks) == {e.episode_id for e in noisy_episodes}
    assert all(len(masks[e.episode_id]) == len(e) for e in noisy_episodes)
