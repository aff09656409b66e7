"""Offline critic: C51 projection, hindsight failures, the filter rule, training, CLI end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from grrl_learner.critic import (
    ChunkCritic,
    CriticConfig,
    CriticError,
    load_critic,
    project_categorical,
)
from grrl_learner.dataset import chunk_actions, load_keep_mask
from grrl_learner.episodes import Episode, read_dataset
from grrl_learner.progress_filter import (
    FilterError,
    Scores,
    episode_progress,
    mistake_spans,
    pause_spans,
    spans,
    suboptimal,
    truth_spans,
)
from grrl_learner.train_critic import CriticTrainConfig, CriticTrainer
from grrl_learner.transitions import TransitionSet, make_segments
from grrl_policy.normalization import NormStats

TINY = dict(width=32, head_width=32, head_layers=1, batch_size=64, threads=1, progress=False)


def grrl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("grrl")
    assert exe, "grrl is not on PATH (source env.sh)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def synthetic_episode(
    name: str, length: int, success: bool = True, retry_steps: list[int] | None = None, rng=None
) -> Episode:
    """A 2-joint 'robot' whose first joint moves 0 → 1 over the episode (plus a little noise)."""
    rng = rng or np.random.default_rng(0)
    x = np.linspace(0.0, 1.0, length) + rng.normal(0, 0.01, length)
    positions = np.stack([x, np.zeros(length)], axis=1).astype(np.float32)
    commands = np.concatenate([positions[1:], positions[-1:]]).astype(np.float32)
    return Episode(
        episode_id=name, instruction="move", joint_names=["a", "b"],
        times=np.arange(length) * 0.02, joint_positions=positions,
        joint_velocities=np.zeros_like(positions), commands=commands, success=success,
        complete=True, retry_steps=list(retry_steps or []),
    )  # fmt: skip


def test_c51_projection_matches_hand_computed_case():
    atoms = torch.tensor([0.0, 0.5, 1.0])
    probs = torch.tensor([[0.2, 0.5, 0.3]] * 4)
    rewards = torch.tensor([0.1, 0.7, 0.9, 0.5])
    discounts = torch.tensor([0.5, 0.0, 1.0, 0.0])
    out = project_categorical(probs, rewards, discounts, atoms)
    expected = torch.tensor([
        # Tz = 0.1 + 0.5·z = [0.1, 0.35, 0.6] → index [0.2, 0.7, 1.2]:
        # atom 0 gets 0.8·0.2 + 0.3·0.5, atom 1 0.2·0.2 + 0.7·0.5 + 0.8·0.3, atom 2 0.2·0.3
        [0.31, 0.63, 0.06],
        [0.0, 0.6, 0.4],  # terminal: all mass at 0.7 = 0.6·0.5 + 0.4·1.0
        [0.0, 0.04, 0.96],  # 0.9 + z clipped to 1: only atom 0's 0.9 splits (1.8)
        [0.0, 1.0, 0.0],  # exactly on an atom: no split
    ])  # fmt: skip
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(4))


def test_hindsight_failures_are_cut_exactly_at_the_keyframes():
    episodes = [
        synthetic_episode("ok", 40, True, [10, 25, 25]),  # a repeated keyframe counts once
        synthetic_episode("failed", 30, False, [5]),  # failed: no hindsight prefix
        synthetic_episode("edge", 20, True, [0, 19]),  # step 0 is no prefix; 19 is the last
    ]
    segments = make_segments(episodes)
    extra = [(s.source, s.length, s.success) for s in segments if s.hindsight]
    assert extra == [(0, 11, False), (0, 26, False), (2, 20, False)]
    assert [s.success for s in segments if not s.hindsight] == [True, False, True]
    assert [s for s in make_segments(episodes, hindsight=False) if s.hindsight] == []

    gamma, k = 0.9, 4
    norm = NormStats.from_arrays([e.states() for e in episodes], [e.commands for e in episodes])
    data = TransitionSet(episodes, norm, chunk=k, gamma=gamma)
    assert len(data) == 40 + 30 + 20 + 11 + 26 + 20
    # the prefix ending at keyframe 10: its last step 10 is terminal after one action, reward 0
    prefix = torch.nonzero(data.hindsight & (data.length == 11)).flatten()
    assert data.step[prefix].tolist() == list(range(11))
    last = prefix[data.step[prefix] == 10]
    b = data.batch(last, torch.tensor([[1, k]]))
    assert b["terminal"].all() and (b["reward"] == 0).all() and (b["discount"] == 0).all()
    # the same step of the successful episode bootstraps from s_{t+j}
    full = torch.nonzero((data.episode == 0) & ~data.hindsight & (data.step == 10)).flatten()
    b = data.batch(full, torch.tensor([[1, k]]))
    assert not b["terminal"].any() and (b["reward"] == 0).all()
    torch.testing.assert_close(b["discount"], torch.tensor([[gamma, gamma**k]]))
    torch.testing.assert_close(b["next_state"][0], data.states[[11, 14]])
    torch.testing.assert_close(b["actions"], b["state"].new_tensor(
        norm.normalize_action(episodes[0].commands[10:14]))[None])  # fmt: skip
    # the sparse reward γ^{T−t} when the chunk reaches the end of a successful episode
    end = torch.nonzero((data.episode == 0) & ~data.hindsight & (data.step == 38)).flatten()
    b = data.batch(end, torch.tensor([[1, 2, k]]))
    assert b["terminal"].tolist() == [[False, True, True]]
    torch.testing.assert_close(b["reward"], torch.tensor([[0.0, gamma**2, gamma**2]]))


def test_filter_rule_spans_and_scores_on_a_synthetic_progress():
    rho = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.5, 0.6, 0.52, 0.7])
    drop = suboptimal(rho, horizon=2, delta=0.05)
    assert np.flatnonzero(drop).tolist() == [2, 3, 6]
    assert spans(drop) == [(2, 3), (6, 6)]
    assert not suboptimal(rho, horizon=0, delta=0.0).any()  # j = t only: never a drop
    assert np.flatnonzero(suboptimal(rho, horizon=8, delta=0.25)).tolist() == [3]

    truth = mistake_spans(
        {"mistakes": [{"start_step": 1, "retry_step": 3, "end_step": 4},
                      {"start_step": 8, "retry_step": -1, "end_step": -1}]}, len(rho),
    )  # fmt: skip
    assert truth == [(1, 4), (8, 8)]
    assert mistake_spans(None, 9) is None
    assert mistake_spans({"mistakes": [{"start_step": 1, "retry_step": 3, "end_step": 4}]}, 9,
                         until="retry") == [(1, 3)]  # fmt: skip
    # in transitions of k = 3: the chunks starting at 1 − 2 (clipped to 0) and at 6 reach them
    assert mistake_spans(
        {"mistakes": [{"start_step": 1, "retry_step": 3, "end_step": 4},
                      {"start_step": 8, "retry_step": -1, "end_step": -1}]}, len(rho), lead=2,
    ) == [(0, 4), (6, 8)]  # fmt: skip
    with pytest.raises(ValueError):
        mistake_spans({"mistakes": []}, 9, lead=-1)
    scores = Scores()
    scores.add(drop, truth)
    scores.add(np.array([True, False]), None)  # no ground truth: counts for the drop fraction
    m = scores.metrics()
    assert m["span_precision"] == 0.5 and m["span_recall"] == 0.5  # (2,3) hits, (6,6) misses
    assert m["frame_precision"] == pytest.approx(2 / 3) and m["frame_recall"] == pytest.approx(0.4)
    assert m["dropped_fraction"] == pytest.approx(4 / 11)
    assert m["pauses"] == 0 and m["pause_recall"] is None  # no pauses listed: not scored
    # the operator's pauses: one overlapped by the drop at (2, 3), one not
    pauses = pause_spans({"hesitations": [{"arm": "left", "start_step": 3, "end_step": 5},
                                          {"arm": "right", "start_step": 7, "end_step": 8},
                                          {"arm": "right", "start_step": 12, "end_step": 14}]},
                         len(rho))  # fmt: skip
    assert pauses == [(3, 5), (7, 8)]  # clipped: the third starts after the episode
    assert pause_spans({"mistakes": []}, 9) is None
    scores.add(drop, truth, pauses)
    assert scores.metrics()["pauses"] == 2 and scores.metrics()["pause_recall"] == 0.5

    # both kinds from an episode's ground truth (the oracle masks' and pause bench's source)
    episode = synthetic_episode("e", 9)
    episode.ground_truth = {
        "mistakes": [{"start_step": 4, "retry_step": 6, "end_step": 7}],
        "hesitations": [{"arm": "left", "start_step": 1, "end_step": 2}],
    }
    assert truth_spans(episode, lead=2) == ([(2, 6)], [(1, 2)])
    episode.ground_truth = None  # a real robot's bag
    with pytest.raises(FilterError, match="e has no ground truth of mistakes and pauses"):
        truth_spans(episode)


def test_checkpoint_round_trip_and_deterministic_training(tmp_path: Path):
    episodes = [synthetic_episode(f"e{i}", 20, rng=np.random.default_rng(i)) for i in range(3)]
    cfgs = [CriticTrainConfig(data="", out=str(tmp_path / f"c{i}"), steps=3, chunk=3, **TINY)
            for i in range(2)]  # fmt: skip
    trainers = [CriticTrainer(cfg, episodes) for cfg in cfgs]
    for trainer in trainers:
        for step in range(3):
            trainer.train_step(step)
    for a, b in zip(trainers[0].critic.parameters(), trainers[1].critic.parameters(), strict=True):
        assert torch.equal(a, b)
    path = trainers[0].save(3)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(path / "model.safetensors"), "pt") as handle:  # safetensors, no pickle
        assert len(list(handle.keys())) > 5
    loaded = load_critic(path)
    assert loaded.meta["step"] == 3 and loaded.config.chunk == 3
    rho = episode_progress(loaded, episodes[0])
    data = trainers[0].data
    with torch.no_grad():
        direct = trainers[0].critic.eval().progress(data.states[:20], data.chunk_at(
            torch.zeros(20, dtype=torch.long), torch.arange(20)))  # fmt: skip
    np.testing.assert_allclose(rho, direct.numpy(), rtol=1e-5, atol=1e-6)
    # the causal head: changing the last action leaves every shorter prefix's Q unchanged
    model = ChunkCritic(CriticConfig(state_dim=2, action_dim=2, chunk=3, width=8, head_width=8))
    s, a = torch.randn(4, 2), torch.randn(4, 3, 2)
    b = a.clone()
    b[:, 2] += 1.0
    with torch.no_grad():
        qa, qb = model(s, a), model(s, b)
    torch.testing.assert_close(qa[:, :, :2], qb[:, :, :2])
    assert not torch.allclose(qa[:, :, 2], qb[:, :, 2])


def test_distributional_progress_rises_along_successful_episodes(tmp_path: Path):
    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(f"e{i}", int(rng.integers(28, 36)), rng=rng) for i in range(8)]
    cfg = CriticTrainConfig(data="", out=str(tmp_path / "critic"), steps=400, chunk=4,
                            gamma=0.95, lr=1e-3, tau=0.02, **TINY)  # fmt: skip
    trainer = CriticTrainer(cfg, episodes)
    for step in range(cfg.steps):
        trainer.train_step(step)
    critic = load_critic(trainer.save(cfg.steps))
    for episode in episodes[:3]:
        rho = episode_progress(critic, episode)
        assert ((rho >= 0) & (rho <= 1)).all()  # bounded by the support
        t = np.arange(rho.size)
        assert np.corrcoef(t, rho)[0, 1] > 0.9, rho.round(2)
        assert rho[-4:].mean() - rho[:4].mean() > 0.3, rho.round(2)
        # ≈ γ^{T−t} near the end, where the sparse reward is observed directly
        assert abs(rho[-1] - cfg.gamma) < 0.1, rho.round(2)


def detour_episode(name: str, rng: np.random.Generator, at: int, steps: int = 10) -> Episode:
    """A successful episode with a mistake: at step ``at`` the second joint makes a detour
    (out and back over ``steps`` steps) while progress pauses; retry pressed mid-detour."""
    e = synthetic_episode(name, 40, rng=rng)
    detour = np.zeros((steps, 2), np.float32)
    detour[:, 0] = e.joint_positions[at, 0]
    detour[:, 1] = np.sin(np.linspace(0, np.pi, steps))
    pos = np.concatenate([e.joint_positions[:at], detour, e.joint_positions[at:]])
    retry = at + steps // 2
    truth = {"mistakes": [{"start_step": at, "retry_step": retry, "end_step": at + steps}]}
    return Episode(
        episode_id=name, instruction="move", joint_names=["a", "b"],
        times=np.arange(len(pos)) * 0.02, joint_positions=pos,
        joint_velocities=np.zeros_like(pos), commands=np.concatenate([pos[1:], pos[-1:]]),
        success=True, complete=True, retry_steps=[retry], ground_truth=truth,
    )  # fmt: skip


def test_hindsight_failures_make_progress_dip_in_mistakes(tmp_path: Path):
    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(f"c{i}", int(rng.integers(36, 44)), rng=rng) for i in range(6)]
    episodes += [detour_episode(f"m{i}", rng, at=int(rng.integers(10, 20))) for i in range(4)]
    k, dips = 4, {}
    for hindsight in (True, False):
        out = str(tmp_path / f"h{hindsight}")
        cfg = CriticTrainConfig(data="", out=out, steps=400, chunk=k, gamma=0.97, lr=1e-3,
                                tau=0.02, hindsight=hindsight, **TINY)  # fmt: skip
        trainer = CriticTrainer(cfg, episodes)
        for step in range(cfg.steps):
            trainer.train_step(step)
        critic = load_critic(trainer.save(cfg.steps))
        dips[hindsight] = []
        for episode in episodes[6:]:
            rho = episode_progress(critic, episode)
            (start, end) = mistake_spans(episode.ground_truth, len(episode))[0]
            # ρ reads the recorded chunk: it falls as soon as the chunk enters the detour
            dips[hindsight].append(rho[start - k] - rho[start - k : end + 1].min())
            if hindsight:  # and the rule drops the k steps before the fall
                dropped = spans(suboptimal(rho, k, 0.1))
                assert dropped and all(start - 2 * k <= a <= end for a, _ in dropped), dropped
    assert min(dips[True]) > 0.15, dips
    assert min(dips[True]) > max(dips[False]) + 0.1, dips


def test_train_critic_filter_and_train_bc_end_to_end(noisy_dataset: Path, tmp_path: Path):
    critic, report, policy = tmp_path / "critic", tmp_path / "report", tmp_path / "policy"
    r = grrl("train-critic", "--data", str(noisy_dataset), "--out", str(critic),
             "--steps", "40", "--chunk", "5", "--width", "32", "--head-width", "32",
             "--batch-size", "64", "--threads", "1", "--save-every", "20")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "hindsight failures" in r.stderr  # progress output
    loaded = load_critic(critic)
    assert loaded.meta["step"] == 40 and loaded.meta["episodes"] == 2

    r = grrl("filter", "--data", str(noisy_dataset), "--critic", str(critic), "--out",
             str(report), "--delta", "0.0", "--sweep", "0.0,0.5")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    mask_path = report / "keep_mask.json"
    assert f"keep mask {mask_path}" in r.stdout
    episodes = read_dataset(noisy_dataset, load_images=False)
    masks = load_keep_mask(mask_path)
    assert {e.episode_id: len(e) for e in episodes} == {k: len(v) for k, v in masks.items()}
    pngs = sorted(p.name for p in (report / "episodes").glob("*.png"))
    assert pngs == sorted(f"{e.episode_id}.png" for e in episodes)
    index = (report / "index.md").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["scored_episodes"] == len(episodes)  # the sim's ground truth is there
    assert summary["truth_from"] == "chunk" and summary["truth_lead"] == 4  # k = 5
    assert "## Detection against ground truth" in index and "δ sweep" in index
    assert [row["delta"] for row in summary["sweep"]] == [0.0, 0.5]
    kept = sum(int(m.sum()) for m in masks.values())
    assert 0 < kept < sum(len(e) for e in episodes)  # δ = 0 drops every decrease of ρ

    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(policy), "--steps", "20",
             "--keep-mask", str(mask_path), "--width", "32", "--layers", "1", "--chunk", "5",
             "--batch-size", "8", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((policy / "config.json").read_text())["meta"]
    assert meta["transitions"] == kept and meta["step"] == 20

    r = grrl("filter", "--data", str(noisy_dataset), "--critic", str(policy), "--out",
             str(tmp_path / "bad"))  # fmt: skip
    assert r.returncode == 2 and "not a critic checkpoint" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "grrl-critic-1" in r.stderr


# --- the shared trunk: a policy's frozen encoder features beside the state -----------------
def _pooled(policy_dir: Path, episode: Episode, steps: list[int], object_poses: bool) -> np.ndarray:
    """The policy's pooled encoder features at ``steps``, one step at a time (no batching)."""
    from grrl_policy.checkpoint import load_policy

    policy = load_policy(policy_dir)
    cameras = list(policy.config.cameras)
    rows = []
    with torch.no_grad():
        for t in steps:
            images = None
            if cameras:
                images = np.stack([episode.frame(c, t) for c in cameras])[None]
            obs = policy.observation(episode.states(object_poses)[t : t + 1],
                                     [episode.instruction], images)  # fmt: skip
            rows.append(policy.model.encode(obs).pooled[0].numpy())
    return np.stack(rows)


def test_shared_trunk_critic_reads_the_policys_encoder_and_checks_it(
    noisy_dataset: Path, robot, tiny_policy, tmp_path: Path
):
    episodes = read_dataset(noisy_dataset, load_images=False)
    pose_dim = episodes[0].state_dim(True) - robot.n_joints
    policy = tiny_policy("trunk", object_pose_dim=pose_dim)
    cfg = CriticTrainConfig(data=str(noisy_dataset), out=str(tmp_path / "critic"), steps=30,
                            chunk=5, policy=str(policy), **TINY)  # fmt: skip
    trainer = CriticTrainer(cfg)
    own = episodes[0].state_dim(True)
    assert trainer.data.state_dim == own + 32  # the tiny encoder's pooled width
    # the precomputed features are the encoder's, step for step (batched vs one at a time)
    e = trainer.episodes[1]
    rows = trainer.data.state_offset[1] + torch.tensor([0, 7, len(e) - 1])
    expected = _pooled(policy, e, [0, 7, len(e) - 1], object_poses=True)
    np.testing.assert_allclose(trainer.data.states[rows, own:].numpy(), expected, atol=1e-5)
    for step in range(cfg.steps):
        trainer.train_step(step)
    path = trainer.save(cfg.steps)

    critic = load_critic(path)
    assert critic.trunk is not None and critic.trunk.path == policy.resolve()
    rho = episode_progress(critic, e)
    inputs = torch.cat([
        torch.from_numpy(critic.norm.normalize_state(e.states(True)).astype(np.float32)),
        torch.from_numpy(_pooled(policy, e, list(range(len(e))), object_poses=True)),
    ], dim=1)  # fmt: skip
    actions = torch.from_numpy(critic.norm.normalize_action(chunk_actions(e, 5)).astype(np.float32))
    with torch.no_grad():
        direct = critic.model.progress(inputs, actions).numpy()
    np.testing.assert_allclose(rho, direct, rtol=1e-4, atol=1e-5)

    # a moved policy is found with --policy; another policy under the same path is refused
    moved = tmp_path / "moved"
    shutil.copytree(policy, moved)
    assert load_critic(path, policy=moved).trunk.path == moved.resolve()
    shutil.rmtree(policy)
    tiny_policy("trunk", object_pose_dim=pose_dim, seed=1)
    with pytest.raises(CriticError, match="not the one the critic was trained on"):
        load_critic(path)
    r = grrl("filter", "--data", str(noisy_dataset), "--critic", str(path), "--out",
             str(tmp_path / "report"), "--no-plots")  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = grrl("filter", "--data", str(noisy_dataset), "--critic", str(path), "--out",
             str(tmp_path / "report"), "--no-plots", "--policy", str(moved))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["episodes"] == len(episodes)


def test_shared_trunk_of_a_pixels_policy_reads_the_frames(
    pixels_dataset: Path, pixels_episode: Episode, tiny_policy, tmp_path: Path
):
    cameras = tuple(sorted(pixels_episode.images))
    policy = tiny_policy("pixels", cameras=cameras)
    cfg = CriticTrainConfig(data=str(pixels_dataset), out=str(tmp_path / "critic"), steps=2,
                            chunk=5, policy=str(policy), **TINY)  # fmt: skip
    trainer = CriticTrainer(cfg)  # reads the bags without frames, then each episode's frames
    e = trainer.episodes[0]
    assert not e.images  # the transitions' read kept no frames
    own = e.state_dim(trainer.object_poses)
    steps = [0, len(e) // 2, len(e) - 1]
    expected = _pooled(policy, pixels_episode, steps, object_poses=False)
    got = trainer.data.states[torch.tensor(steps), own:].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(expected[0] - expected[-1]).max() > 1e-4  # the frames do change the features
    critic = load_critic(trainer.save(cfg.steps))
    with pytest.raises(CriticError, match="needs frames of camera"):
        episode_progress(critic, e)  # without frames: one clear error, not a shape mismatch
    assert episode_progress(critic, pixels_episode).shape == (len(pixels_episode),)
