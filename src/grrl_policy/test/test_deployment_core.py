"""The policy node's ROS-free core: observation assembly and off-thread inference with swaps."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from grrl_common.robot import load_robot_description
from grrl_policy.checkpoint import checkpoint_sha256, load_policy
from grrl_policy.inference import GeneratedChunk, PolicyRunner, UpdateOutcome
from grrl_policy.observation import ObservationAssembler, PolicyInputs

ROBOT = load_robot_description()
NAMES = ROBOT.joint_names
HOME = np.array(ROBOT.sim["home"] * 2)


def test_assembler_names_missing_and_stale_inputs_and_orders_the_state():
    a = ObservationAssembler(NAMES, ["head"], (4, 6), object_pose_dim=14, max_age_s=0.5)
    inputs, problems = a.assemble(now=1.0)
    assert inputs is None and problems == [
        "joint_states: none received", "object_poses: none received", "camera head: none received",
    ]  # fmt: skip
    # joints arrive in another order: the state follows the policy's order
    assert a.set_joints(NAMES[::-1], HOME[::-1], stamp=1.0) == ""
    assert a.set_object_poses(np.arange(14.0).reshape(2, 7), stamp=1.0) == ""
    assert a.set_image("head", np.zeros((4, 6, 3), np.uint8), stamp=0.2) == ""
    inputs, problems = a.assemble(now=1.1)
    assert inputs is None and problems == ["camera head: stale (0.90 s old)"]
    a.set_image("head", np.full((4, 6, 3), 7, np.uint8), stamp=1.05)
    inputs, problems = a.assemble(now=1.1)
    assert problems == [] and isinstance(inputs, PolicyInputs)
    assert np.allclose(inputs.state, np.concatenate([HOME, np.arange(14.0)]))
    assert inputs.stamp == 1.0 and inputs.images.shape == (1, 4, 6, 3) and inputs.images.max() == 7


def test_assembler_refuses_bad_inputs_and_keeps_the_last_good_one():
    a = ObservationAssembler(NAMES, ["head"], (4, 6), max_age_s=1.0)
    assert a.set_joints(NAMES, HOME, stamp=1.0) == ""
    bad = HOME.copy()
    bad[3] = np.nan
    assert "non-finite joint position for left_forearm_roll" in a.set_joints(NAMES, bad, 1.5)
    assert "lacks" in a.set_joints(NAMES[:-1], HOME[:-1], 1.5)
    assert "2 names but 3 positions" in a.set_joints(NAMES[:2], HOME[:3], 1.5)
    assert a.set_image("head", np.zeros((8, 8, 3), np.uint8), 1.0) == (
        "camera head: image is 8x8, the policy expects 6x4"
    )
    assert "uint8 (rgb8)" in a.set_image("head", np.zeros((4, 6), np.uint8), 1.0)
    assert a.set_image("left_wrist", np.zeros((1, 1), np.uint8), 1.0) == ""  # not used: ignored
    a.set_image("head", np.zeros((4, 6, 3), np.uint8), 1.0)
    inputs, _ = a.assemble(now=1.2)
    assert inputs.stamp == 1.0 and np.allclose(inputs.joint_positions, HOME)
    # an episode reset forgets everything received before it
    a.clear(not_before=1.1)
    assert a.assemble(now=1.2)[1][0] == "joint_states: none received"


class Collector:
    def __init__(self) -> None:
        self.chunks: list[GeneratedChunk] = []
        self.updates: list[UpdateOutcome] = []
        self.changed = threading.Condition()

    def chunk(self, c: GeneratedChunk) -> None:
        with self.changed:
            self.chunks.append(c)
            self.changed.notify_all()

    def update(self, u: UpdateOutcome) -> None:
        with self.changed:
            self.updates.append(u)
            self.changed.notify_all()

    def wait(self, predicate, timeout: float = 20.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


def _inputs(stamp: float) -> PolicyInputs:
    return PolicyInputs(stamp, HOME.astype(np.float32), HOME, "insert", None)


def _run_one(runner: PolicyRunner, got: Collector, stamp: float) -> GeneratedChunk:
    count = len(got.chunks)
    assert got.wait(lambda: not runner.busy)
    assert runner.submit(_inputs(stamp))
    assert got.wait(lambda: len(got.chunks) > count)
    return got.chunks[-1]


@pytest.mark.parametrize("swap", ["chunk", "episode"])
def test_runner_generates_off_thread_and_swaps_verified_weights_only_at_the_swap_point(
    tiny_policy, swap
):
    first, second = tiny_policy("v0", seed=0), tiny_policy("v1", seed=1)
    got = Collector()
    runner = PolicyRunner(load_policy(first), got.chunk, swap=swap, on_update=got.update,
                          clock=lambda: 0.0)  # fmt: skip
    try:
        chunk = _run_one(runner, got, stamp=0.0)
        assert chunk.actions.shape == (8, 14) and chunk.noise.shape == (8, 14)
        assert chunk.policy_version == 0 and chunk.stamp == 0.0 and chunk.inference_ms > 0
        # one observation at a time: a second submit while generating is refused, not queued
        # (queued or in work: a chunk takes milliseconds, the second call microseconds later)
        assert runner.submit(_inputs(0.1)) and not runner.submit(_inputs(0.2))
        assert got.wait(lambda: len(got.chunks) == 2)

        # a wrong digest is refused and v0 keeps running
        runner.request_update(str(second), "0" * 64, version=1)
        assert got.wait(lambda: len(got.updates) == 1)
        assert not got.updates[0].accepted and "does not match" in got.updates[0].message
        assert _run_one(runner, got, 0.3).policy_version == 0

        runner.request_update(str(second), checkpoint_sha256(second), version=1)
        assert got.wait(lambda: len(got.updates) == 2) and got.updates[1].accepted
        nxt = _run_one(runner, got, 0.4)
        if swap == "chunk":
            assert nxt.policy_version == 1
        else:  # only at the next episode
            assert nxt.policy_version == 0
            runner.new_episode()
            assert _run_one(runner, got, 0.5).policy_version == 1
        # the same version again is not newer
        runner.request_update(str(second), checkpoint_sha256(second), version=1)
        assert got.wait(lambda: len(got.updates) == 3) and not got.updates[2].accepted
    finally:
        runner.close()


def test_runner_refuses_an_incompatible_update_and_reports_inference_errors(tiny_policy):
    base, other = tiny_policy("base"), tiny_policy("other", chunk=4)
    got = Collector()
    errors: list[str] = []
    runner = PolicyRunner(load_policy(base), got.chunk, on_update=got.update,
                          on_error=errors.append)  # fmt: skip
    try:
        runner.request_update(str(other), checkpoint_sha256(other), version=1)
        assert got.wait(lambda: got.updates)
        assert "chunk shape differs" in got.updates[0].message and runner.version == 0
        bad = PolicyInputs(0.0, np.zeros(3, np.float32), HOME, "insert", None)
        assert runner.submit(bad)
        assert got.wait(lambda: not runner.busy) and errors and "inference failed" in errors[0]
        assert _run_one(runner, got, 1.0).policy_version == 0  # still serving
    finally:
        runner.close()
