"""Frames rendered off the physics thread show the submitted state, stamped with its time."""

from __future__ import annotations

import threading

import numpy as np

from grrl_sim.async_render import AsyncRenderer
from grrl_sim.task import InsertionTask, TaskConfig


def test_frames_follow_the_submitted_states():
    task = InsertionTask(TaskConfig())
    received: list[tuple[float, dict]] = []
    arrived = threading.Condition()

    def on_frames(stamp, frames):
        with arrived:
            received.append((stamp, frames))
            arrived.notify_all()

    renderer = AsyncRenderer(task.model, {"head": "top", "left_wrist": "left_wrist"}, 64, 48,
                             on_frames)  # fmt: skip
    try:
        task.reset(2)
        renderer.submit(task.data, 1.0)
        with arrived:
            assert arrived.wait_for(lambda: len(received) >= 1, timeout=30), renderer.error
        command = task.home.copy()
        command[0] += 0.8  # swing the left arm: the head camera sees it
        for _ in range(50):
            task.step(command)
        renderer.submit(task.data, 2.0)
        with arrived:
            assert arrived.wait_for(lambda: received[-1][0] == 2.0, timeout=30), renderer.error
    finally:
        renderer.close()
    (stamp0, first), (stamp1, second) = received[0], received[-1]
    assert (stamp0, stamp1) == (1.0, 2.0)
    assert set(first) == {"head", "left_wrist"} and first["head"].shape == (48, 64, 3)
    assert np.abs(first["head"].astype(int) - second["head"]).mean() > 1.0
    assert renderer.frames_rendered == len(received)
