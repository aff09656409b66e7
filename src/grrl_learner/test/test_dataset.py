"""ChunkDataset on real bags: chunks are the recorded commands, keep masks, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grrl_learner.dataset import (
    KEEP_MASK_FORMAT,
    ChunkDataset,
    KeepMaskError,
    NormStats,
    collate,
    idle_transitions,
    load_keep_mask,
    save_keep_mask,
)
from grrl_learner.episodes import Episode
from grrl_policy.normalization import NormStats as PolicyNormStats

CHUNK = 10


@pytest.fixture(scope="module")
def stats(noisy_episodes) -> NormStats:
    return NormStats.from_episodes(noisy_episodes)


def test_chunks_line_up_with_recorded_commands(noisy_dataset, noisy_episodes, stats, bag_messages,
                                               stamped, robot):  # fmt: skip
    """Read the bags independently: actions are the commands stamped t..t+k-1, states the
    joint state and object poses stamped t."""
    dataset = ChunkDataset(noisy_episodes, CHUNK, stats)
    assert len(dataset) == sum(len(e) for e in noisy_episodes)
    offset = 0
    for e, episode in enumerate(noisy_episodes):
        messages = bag_messages(noisy_dataset / episode.source.rsplit("/", 1)[-1])
        joints = stamped(messages, "/joint_states", robot)
        poses = stamped(messages, "/grrl/object_poses", robot)
        commands = stamped(messages, "/grrl/joint_command", robot)
        stamps = np.round(episode.times * 1e9).astype(np.int64)
        T = len(episode)
        # steps with exactly one command and one state at their stamp (the operator's clock can
        # lag sim time for a step at a start, and its answer to the last state may miss the bag)
        unique = [len(commands.get(s, ())) == 1 and len(joints[s]) == 1 for s in stamps]
        ok = [t for t in range(T) if all(unique[t : t + CHUNK])]
        assert len(ok) > T // 2, len(ok)
        candidates = sorted({ok[0], ok[1], ok[len(ok) // 3], ok[len(ok) // 2], ok[-CHUNK],
                             ok[-4], ok[-1]})  # fmt: skip
        for t in candidates:
            sample = dataset[offset + t]
            assert sample["episode"] == e and sample["step"] == t
            expected_state = np.concatenate([joints[stamps[t]][0], poses[stamps[t]][0]])
            np.testing.assert_allclose(
                sample["state"].numpy(), stats.normalize_state(expected_state), atol=1e-4
            )
            steps = np.minimum(np.arange(t, t + CHUNK), T - 1)  # past the end: the last one
            expected = np.stack([commands[stamps[i]][0] for i in steps])
            actions = stats.denormalize_action(sample["actions"]).numpy()
            np.testing.assert_allclose(actions, expected, atol=1e-5)
            assert sample["action_pad"].tolist() == (np.arange(t, t + CHUNK) >= T).tolist()
        offset += T


def test_sample_layout_and_collate(noisy_episodes, stats):
    dataset = ChunkDataset(noisy_episodes, CHUNK, stats)
    last = dataset[len(noisy_episodes[0]) - 1]
    assert last["action_pad"].sum() == CHUNK - 1
    assert torch.equal(last["actions"][1:], last["actions"][:1].expand(CHUNK - 1, -1))
    batch = collate([dataset[i] for i in (0, 5, len(dataset) - 1)])
    assert batch["state"].shape == (3, 28) and batch["state"].dtype == torch.float32
    assert batch["actions"].shape == (3, CHUNK, 14) and batch["actions"].dtype == torch.float32
    assert batch["action_pad"].dtype == torch.bool and batch["action_pad"].shape == (3, CHUNK)
    assert batch["episode"].tolist() == [0, 0, 1] and batch["episode"].dtype == torch.int64
    assert batch["instruction"] == [noisy_episodes[0].instruction] * 3
    assert "images" not in batch
    # pixels policies leave the object poses out of the state
    joints_only = NormStats.from_episodes(noisy_episodes, object_poses=False)
    sample = ChunkDataset(noisy_episodes, CHUNK, joints_only, object_poses=False)[0]
    assert sample["state"].shape == (14,)
    with pytest.raises(ValueError, match="28 dims, normalisation statistics 14"):
        ChunkDataset(noisy_episodes, CHUNK, joints_only)


def test_norm_stats(noisy_episodes, stats):
    states = np.concatenate([e.states() for e in noisy_episodes])
    np.testing.assert_allclose(stats.state_mean, states.mean(0), atol=1e-5)
    assert np.all(stats.state_std >= 1e-3) and np.all(stats.action_std >= 1e-3)
    # JSON-safe and the policy's own class reads it
    text = json.dumps(stats.to_dict())
    again = NormStats.from_dict(json.loads(text))
    policy = PolicyNormStats.from_dict(json.loads(text))
    np.testing.assert_array_equal(again.action_std, policy.action_std)
    x = noisy_episodes[0].commands[:5]
    np.testing.assert_allclose(stats.denormalize_action(stats.normalize_action(x)), x, atol=1e-5)
    t = torch.from_numpy(x)
    back = stats.denormalize_action(stats.normalize_action(t))
    assert isinstance(back, torch.Tensor)
    torch.testing.assert_close(back, t, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        stats.normalize_state(torch.from_numpy(states[:3])),
        torch.from_numpy(stats.normalize_state(states[:3])),
    )


def test_keep_mask_removes_transitions(noisy_episodes, stats, tmp_path):
    a, b = noisy_episodes
    masks = {
        a.episode_id: np.arange(len(a)) % 3 != 0,
        b.episode_id: np.arange(len(b)) < len(b) // 2,
        "not_loaded": np.ones(4, dtype=bool),  # entries for other episodes are ignored
    }
    path = tmp_path / "keep.json"
    save_keep_mask(path, masks)
    document = json.loads(path.read_text())
    assert document["format"] == KEEP_MASK_FORMAT
    assert set(document["episodes"][a.episode_id]) == {0, 1}
    loaded = load_keep_mask(path)
    for key, mask in masks.items():
        np.testing.assert_array_equal(loaded[key], mask)
    dataset = ChunkDataset(noisy_episodes, CHUNK, stats, keep_mask=loaded)
    assert len(dataset) == masks[a.episode_id].sum() + masks[b.episode_id].sum()
    seen = {(s["episode"], s["step"]) for s in (dataset[i] for i in range(len(dataset)))}
    expected = {(e, int(t)) for e, ep in enumerate(noisy_episodes)
                for t in np.flatnonzero(masks[ep.episode_id])}  # fmt: skip
    assert seen == expected


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, message


def test_keep_mask_errors(noisy_episodes, stats, tmp_path):
    a, b = noisy_episodes
    short = {a.episode_id: np.ones(len(a) - 1, bool), b.episode_id: np.ones(len(b), bool)}
    with pytest.raises(KeepMaskError) as error:
        ChunkDataset(noisy_episodes, CHUNK, stats, keep_mask=short)
    _one_line(error, a.episode_id, f"{len(a) - 1} entries", f"{len(a)} steps")
    with pytest.raises(KeepMaskError) as error:
        ChunkDataset(noisy_episodes, CHUNK, stats, keep_mask={a.episode_id: np.ones(len(a))})
    _one_line(error, "no entry", b.episode_id)

    path = tmp_path / "mask.json"
    cases = {
        "{": "not JSON",
        json.dumps({"format": "other", "episodes": {}}): "not a keep mask",
        json.dumps([1, 2]): "not a keep mask",
        json.dumps({"format": KEEP_MASK_FORMAT, "episodes": []}): "'episodes' must map",
        json.dumps({"format": KEEP_MASK_FORMAT, "episodes": {"e": [0, 2]}}): "list of 0/1",
    }
    for text, reason in cases.items():
        path.write_text(text)
        with pytest.raises(KeepMaskError) as error:
            load_keep_mask(path)
        _one_line(error, path, reason)
    with pytest.raises(KeepMaskError) as error:
        load_keep_mask(tmp_path / "missing.json")
    _one_line(error, tmp_path / "missing.json")


def test_augment_hooks_add_one_sample_per_transition(noisy_episodes, stats):
    calls = []

    def flip(sample: dict) -> dict:
        calls.append(sample["step"])
        return {**sample, "state": -sample["state"], "augmented": True}

    plain = ChunkDataset(noisy_episodes, CHUNK, stats)
    dataset = ChunkDataset(noisy_episodes, CHUNK, stats, augment=[flip])
    n = len(plain)
    assert len(dataset) == 2 * n
    for i in (0, 17, n - 1):
        original, extra = dataset[i], dataset[n + i]
        assert "augmented" not in original and extra["augmented"]
        assert torch.equal(extra["state"], -original["state"])
        assert torch.equal(extra["actions"], original["actions"])
        assert extra["step"] == original["step"] == plain[i]["step"]
    assert calls == [dataset[i]["step"] for i in (0, 17, n - 1)]
    assert torch.equal(dataset[-1]["state"], dataset[2 * n - 1]["state"])
    with pytest.raises(IndexError):
        dataset[2 * n]


def test_pixels_samples(pixels_episode):
    stats = NormStats.from_episodes([pixels_episode], object_poses=False)
    cameras = ["head", "left_wrist", "right_wrist"]
    dataset = ChunkDataset([pixels_episode], CHUNK, stats, cameras=cameras, object_poses=False)
    for t in (0, 1, 40, len(pixels_episode) - 1):
        images = dataset[t]["images"]
        assert images.shape == (3, 3, 128, 128) and images.dtype == torch.uint8
        for v, camera in enumerate(cameras):
            f = max(int(pixels_episode.frame_index[camera][t]), 0)  # none yet: the first frame
            expected = torch.from_numpy(pixels_episode.images[camera][f]).permute(2, 0, 1)
            assert torch.equal(images[v], expected)
    batch = collate([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 3, 3, 128, 128)
    with pytest.raises(ValueError, match="no frames of camera 'top'"):
        ChunkDataset([pixels_episode], CHUNK, stats, cameras=["top"], object_poses=False)


def _commands_episode(commands: np.ndarray) -> Episode:
    T, n = commands.shape
    return Episode(
        episode_id="synthetic", instruction="", joint_names=[f"j{i}" for i in range(n)],
        times=np.arange(T) * 0.02, joint_positions=commands.astype(np.float32),
        joint_velocities=np.zeros((T, n), np.float32), commands=commands.astype(np.float32),
    )  # fmt: skip


def test_idle_transitions_are_the_pause_not_the_final_hold():
    """Move, pause 30 steps (with a tremor inside the tolerance), move, hold to the end: the
    idle transitions are exactly those whose whole chunk lies in the pause."""
    ramp = np.linspace(0, 1, 40)[:, None]
    pause = np.full((30, 1), 1.0) + 0.004 * np.sin(np.arange(30))[:, None]
    commands = np.concatenate([ramp, pause, 1 + ramp, np.full((50, 1), 2.0)])
    commands = np.concatenate([commands, -commands], axis=1)
    idle = idle_transitions(_commands_episode(commands), CHUNK, tolerance=0.01)
    # the first ramp ends (t = 39) and the second starts (t = 70) at 1.0 too: still 39..70
    assert np.flatnonzero(idle).tolist() == list(range(39, 70 - CHUNK + 2))
    # a tremor above the tolerance is motion
    assert not idle_transitions(_commands_episode(commands), CHUNK, tolerance=0.005)[45:55].any()
    # a robot that never moves has no pause to drop
    assert not idle_transitions(_commands_episode(np.zeros((30, 2))), CHUNK, 0.01).any()
