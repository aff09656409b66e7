"""Rosbag replay → learner_node: episodes from the live stream equal the direct file read."""

from __future__ import annotations

import time

import pytest
from rclpy.executors import MultiThreadedExecutor

from grrl_common.runtime import spin_until
from grrl_learner.learner_node import LearnerNode


@pytest.mark.parametrize("rate", [5.0])
def test_replayed_bags_give_the_episodes_a_direct_read_gives(
    ros_context, start_process, executable_path, noisy_dataset, noisy_episodes,
    assert_episodes_equal, rate,
):  # fmt: skip
    learner = LearnerNode(
        context=ros_context,
        cli_args=[
            "--ros-args",
            "-p",
            "replay:=true",
            "-p",
            f"episodes:={len(noisy_episodes)}",
        ],  # fmt: skip
    )
    executor = MultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(learner)
    duration = sum(len(e) for e in noisy_episodes) / 50.0  # recorded seconds at 50 Hz
    started = time.monotonic()
    player = start_process(
        executable_path("grrl_learner", "replay_node"), "--ros-args",
        "-p", f"data:={noisy_dataset}", "-p", f"rate:={rate}",
    )  # fmt: skip
    try:
        failed = lambda: player.process.poll() not in (None, 0)  # noqa: E731
        spin_until(executor, lambda: learner.done.is_set() or failed(), 60 + duration / rate)
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
    # the stream really ran faster than recorded: rate× the recorded pace, start-up aside
    assert replay_s < duration, (replay_s, duration)
