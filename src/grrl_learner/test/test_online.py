"""Online noise-space RL: losses, noise mixing, buffers, learner restart, the fast sim path."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from grrl_common.robot import load_robot_description
from grrl_learner import online
from grrl_learner.online import (
    EpisodeRecord,
    OnlineConfig,
    OnlineError,
    OnlineLearner,
    ReplayBuffers,
    StoredEpisode,
    chunk_transitions,
    default_beta,
    mix_noise,
    noise_penalty,
    noise_predictor_loss,
)
from grrl_policy.checkpoint import checkpoint_sha256, load_policy
from grrl_policy.deployed import NoisePredictorPolicy
from grrl_policy.smoother import ChunkSmoother, JointLimits, SmootherConfig

torch.set_num_threads(1)

K, N, S = 8, 14, 28  # the tiny state-mode policy: chunk, joints, joints + object poses
TINY = dict(batch_size=16, critic_width=32, critic_head_width=32, critic_head_layers=1, atoms=21,
            warmup_episodes=3, warmup_steps=3, update_every=2, steps_per_update=4)  # fmt: skip


@pytest.fixture
def state_policy(tiny_policy) -> Path:
    return tiny_policy("base", object_pose_dim=14, action_std=0.2)


def synthetic_record(version: int, seed: int, length: int = 40, success: bool = False):
    """An episode shaped like the fast path's: a chunk every 5 steps of a tiny state policy."""
    rng = np.random.default_rng(seed)
    steps = np.arange(0, length, 5)
    c = len(steps)
    return EpisodeRecord(
        steps=steps, states=rng.normal(0, 0.1, (c, S)).astype(np.float32),
        noises=rng.normal(size=(c, K, N)).astype(np.float32),
        executed=rng.normal(0, 0.1, (c, K, N)).astype(np.float32),
        length=length, success=success, policy_version=version, episode_id=f"e{seed}",
    )  # fmt: skip


def stored(index: int, version: int, chunks: int = 4) -> StoredEpisode:
    record = synthetic_record(version, index, length=5 * chunks)
    return StoredEpisode(index, record, *chunk_transitions(record.steps, record.length,
                                                           False, K, 0.99))  # fmt: skip


class ToyNoiseCritic(nn.Module):
    """Q'(ε) on the [0, 1] support that rises along the direction ``u`` (ChunkCritic's API)."""

    def __init__(self, u: torch.Tensor, atoms: int = 21) -> None:
        super().__init__()
        self.u = u
        self.register_buffer("atoms", torch.linspace(0, 1, atoms))

    def last(self, features: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        tilt = (noise * self.u).flatten(1).sum(1)  # (B,)
        return (tilt[:, None] * 4.0 * (self.atoms - 0.5))[None]  # (1, B, atoms) logits

    def values(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.softmax(-1) @ self.atoms


def test_predictor_loss_gradient_moves_noise_toward_higher_q(state_policy: Path, tmp_path: Path):
    torch.manual_seed(0)
    u = torch.randn(1, K, N)
    u /= u.norm()
    toy = ToyNoiseCritic(u)
    beta = default_beta(K * N)
    # the loss itself: descending it raises Q' (the sign of the Q term)
    eps = (0.5 * torch.randn(32, K, N)).requires_grad_(True)
    q0 = toy.values(toy.last(None, eps))[0].detach()
    for _ in range(20):
        loss = noise_predictor_loss(toy.values(toy.last(None, eps))[0], eps, 1.0, beta)
        (grad,) = torch.autograd.grad(loss, eps)
        # the loss is a batch mean: a step of 0.5 per sample
        eps = (eps - 0.5 * len(eps) * grad).detach().requires_grad_(True)
    assert bool((toy.values(toy.last(None, eps))[0] > q0 + 0.05).all())

    # the learner's predictor step: the head's ε moves along u, nothing else changes
    cfg = OnlineConfig(**{**TINY, "lr_predictor": 1e-3})
    learner = OnlineLearner(state_policy, tmp_path / "run", cfg)
    learner.noise_critic = toy
    states = np.random.default_rng(0).normal(0, 0.1, (32, S)).astype(np.float32)
    obs = learner.policy.observation(states, [""] * 32)
    with torch.no_grad():
        ctx, feats = learner._features(obs)
    frozen = {k: v.clone() for k, v in learner.model.state_dict().items()
              if not k.startswith("noise_predictor")}  # fmt: skip
    critic = {k: v.clone() for k, v in learner.critic.state_dict().items()}

    def along_u() -> float:
        with torch.no_grad():
            return float(
                (learner._predict(learner.predictor, ctx.pooled) * u).flatten(1).sum(1).mean()
            )

    before = along_u()
    for _ in range(30):
        learner._predictor_step(ctx.pooled, feats)
    assert along_u() > before + 0.5
    for key, value in learner.model.state_dict().items():
        if key in frozen:
            torch.testing.assert_close(value, frozen[key], rtol=0, atol=0, msg=key)
    for key, value in learner.critic.state_dict().items():
        torch.testing.assert_close(value, critic[key], rtol=0, atol=0, msg=key)


def test_penalty_is_zero_inside_the_beta_ball_and_linear_outside():
    d = K * N
    beta = default_beta(d)
    direction = torch.randn(3, K, N)
    direction /= direction.flatten(1).norm(dim=1)[:, None, None]
    inside = (direction * (2 * (beta - 1e-3)) ** 0.5).requires_grad_(True)
    penalty = noise_penalty(inside, beta)
    assert penalty.tolist() == [0.0, 0.0, 0.0]
    (grad,) = torch.autograd.grad(penalty.sum(), inside)
    assert bool((grad == 0).all())
    outside = direction * (2 * (beta + 2.0)) ** 0.5
    torch.testing.assert_close(noise_penalty(outside, beta), torch.full((3,), 2.0), atol=1e-3,
                               rtol=0)  # fmt: skip
    q = torch.tensor([0.2, 0.4, 0.6])
    torch.testing.assert_close(noise_predictor_loss(q, outside, 3.0, beta),
                               (-q + 6.0).mean(), atol=1e-2, rtol=0)  # fmt: skip
    # typical N(0, I) draws (what the expert was trained on) are not penalised
    draws = torch.randn(4000, K, N, generator=torch.Generator().manual_seed(0))
    assert float((noise_penalty(draws, beta) > 0).float().mean()) < 0.01


def test_distillation_mixes_gaussian_and_predicted_noise_half_and_half(
    state_policy: Path, tmp_path: Path, monkeypatch
):
    predicted = torch.full((4000, K, N), 7.0)
    eps, from_gaussian = mix_noise(predicted, 0.5, torch.Generator().manual_seed(1))
    assert 0.47 < float(from_gaussian.float().mean()) < 0.53
    assert bool((eps[~from_gaussian] == 7.0).all())
    assert float(eps[from_gaussian].std()) == pytest.approx(1.0, abs=0.05)
    assert not bool(mix_noise(predicted, 0.0)[1].any())
    assert bool(mix_noise(predicted, 1.0)[1].all())

    # the learner's distillation step draws that mixture over its batch
    counts: list[tuple[int, int]] = []
    real_mix = online.mix_noise

    def counting(predicted, fraction, generator=None):
        eps, flags = real_mix(predicted, fraction, generator)
        counts.append((int(flags.sum()), len(flags)))
        return eps, flags

    monkeypatch.setattr(online, "mix_noise", counting)
    cfg = OnlineConfig(**{**TINY, "batch_size": 512})
    learner = OnlineLearner(state_policy, tmp_path / "run", cfg)
    for i in range(2):
        learner.add_episode(synthetic_record(0, i))
    learner.train_step()
    ((gaussian, batch),) = counts
    assert batch == 512 and 0.44 < gaussian / batch < 0.56


def test_on_policy_buffer_keeps_the_two_latest_versions():
    buffers = ReplayBuffers(keep=2)
    assert [buffers.add(stored(i, 0)) for i in range(2)] == ["off_policy"] * 2  # warm-up
    assert [buffers.add(stored(i, 1)) for i in range(2, 4)] == ["on_policy"] * 2
    assert buffers.add(stored(4, 2)) == "on_policy"
    assert buffers.on_policy_versions() == [1, 2]
    assert buffers.add(stored(5, 3)) == "on_policy"  # a third version: v1 moves off-policy
    assert buffers.on_policy_versions() == [2, 3]
    assert [e.index for e in buffers.on_policy] == [4, 5]
    assert [e.index for e in buffers.off_policy] == [0, 1, 2, 3]
    assert buffers.add(stored(6, 1)) == "off_policy"  # a late episode of a stale version
    buffers.advance(4)  # published before any of its episodes arrived
    assert buffers.on_policy_versions() == [3]
    assert [e.index for e in buffers.off_policy] == [0, 1, 2, 3, 6, 4]


def test_batches_draw_equally_from_both_buffers():
    buffers = ReplayBuffers(keep=2)
    for i in range(10):
        buffers.add(stored(i, 0, chunks=50))  # 500 off-policy transitions
    g = torch.Generator().manual_seed(0)
    rows, flags = buffers.sample(64, g)
    assert not bool(flags.any()) and len(rows) == 64  # on-policy empty: all off-policy
    buffers.add(stored(10, 1, chunks=5))  # 5 on-policy transitions
    hits = set()
    for _ in range(20):
        rows, flags = buffers.sample(64, g)
        versions = np.array([e.version for e, _ in rows])
        assert int(flags.sum()) == 32 and int((versions == 1).sum()) == 32
        assert bool((versions[flags.numpy()] == 1).all())
        hits |= {c for e, c in rows if e.version == 1}
    assert hits == set(range(5))  # uniform within the small buffer: every chunk drawn


def test_chunk_transitions_bootstrap_from_the_chunk_k_steps_later():
    steps = np.array([0, 5, 10, 15, 20])
    nxt, reward, discount = chunk_transitions(steps, 24, True, 10, 0.9)
    assert nxt.tolist() == [2, 3, 4, -1, -1]  # 15 + 10 >= 24: ends the episode
    np.testing.assert_allclose(discount, [0.9**10] * 3 + [0, 0], rtol=1e-6)
    np.testing.assert_allclose(reward, [0, 0, 0, 0.9**9, 0.9**4], rtol=1e-6)
    assert chunk_transitions(steps, 24, False, 10, 0.9)[1].tolist() == [0.0] * 5


def test_learner_restart_resumes_buffers_and_optimiser_state(state_policy: Path, tmp_path: Path):
    cfg = OnlineConfig(**TINY)
    a = OnlineLearner(state_policy, tmp_path / "a", cfg)
    assert a.load_state() is False
    for i in range(3):
        a.add_episode(synthetic_record(0, i, success=i == 1))
    first = a.maybe_update()
    assert first is not None and a.version == 1 and a.maybe_update() is None
    for i in range(3, 5):
        a.add_episode(synthetic_record(1, i, success=True))
    a.save_state()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = OnlineLearner(state_policy, tmp_path / "b", cfg)
    assert b.load_state() is True
    assert b.buffers.membership() == a.buffers.membership()
    assert (b.version, b.optim_steps, b.episodes_added) == (a.version, a.optim_steps, 5)
    assert b.optimizers["predictor"].state_dict()["state"]  # moments came back
    path_a, path_b = a.maybe_update(), b.maybe_update()
    assert path_a is not None and path_b is not None
    assert checkpoint_sha256(path_a) == checkpoint_sha256(path_b)  # the identical update
    for module in ("critic", "critic_target", "noise_critic", "predictor_target"):
        for (key, x), y in zip(getattr(a, module).state_dict().items(),
                               getattr(b, module).state_dict().values(), strict=True):  # fmt: skip
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=f"{module}.{key}")

    # an episode added after the last save_state is not lost by a crash
    a.add_episode(synthetic_record(2, 9))
    c = OnlineLearner(state_policy, tmp_path / "a", cfg)
    c.load_state()
    assert c.episodes_added == 6 and c.buffers.membership() == a.buffers.membership()
    assert len((tmp_path / "a" / "curve.jsonl").read_text().splitlines()) == 6
    with pytest.raises(OnlineError, match="other settings"):
        OnlineLearner(
            state_policy, tmp_path / "a", OnlineConfig(**{**TINY, "seed": 1})
        ).load_state()


def test_fast_path_runs_episodes_and_publishes_a_verified_checkpoint(
    state_policy: Path, tmp_path: Path
):
    from grrl_bringup.cli import main

    out = tmp_path / "run"
    base = ["online-rl", "--policy", str(state_policy), "--out", str(out)]
    assert main([*base, "--fast"]) == 2  # no --sim: one-line error, nothing run
    grrl = shutil.which("grrl")
    assert grrl, "grrl is not on PATH (source env.sh)"
    result = subprocess.run(
        [grrl, *base, "--sim", "--fast", "--episodes", "3", "--max-steps", "60",
         "--warmup-episodes", "2", "--warmup-steps", "5", "--update-every", "1",
         "--steps-per-update", "4", "--batch-size", "16", "--critic-width", "32",
         "--threads", "1", "--no-progress", "--replan-every", "5"],  # chunks overlap the end
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 3 and summary["version"] == 2
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [(r["episode"], r["version"]) for r in curve] == [(0, 0), (1, 0), (2, 1)]
    assert Path(summary["curve_png"]).stat().st_size > 1000
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint_sha256(checkpoint) == summary["sha256"]
    policy = load_policy(checkpoint)
    assert policy.meta["noise"] == "predictor" and policy.meta["online"]["version"] == 2
    # only the noise predictor head was trained: the backbone is the base policy's
    new, old = (
        load_file(str(checkpoint / "model.safetensors")),
        load_file(str(state_policy / "model.safetensors")),
    )
    assert new.keys() == old.keys()
    for key in new:
        same = torch.equal(new[key], old[key])
        assert same != key.startswith("noise_predictor."), key
    # executed chunks are the commands the smoother sent: replaying the recorded noises through
    # the policy and a fresh smoother reproduces them; past the episode's end the last one holds
    with np.load(out / "learner" / "episodes" / "000002.npz") as episode:
        steps, states = episode["steps"], episode["states"]
        executed, noises = episode["executed"], episode["noises"]
    assert steps.tolist() == list(range(0, 60, 5)) and noises.shape == (12, K, N)
    v1 = load_policy(out / "checkpoints" / "v0001")
    chunks, _ = v1.act(
        states, [v1.meta["instruction"]] * len(states), noise=torch.from_numpy(noises)
    )
    dt = v1.control_dt
    smoother = ChunkSmoother(JointLimits.from_robot(load_robot_description()),
                             SmootherConfig(control_dt=dt))  # fmt: skip
    smoother.reset(states[0, :N], time=-dt)
    commands = []
    for step in range(60):
        if step in steps:
            smoother.add_chunk(chunks[list(steps).index(step)], start_time=step * dt, dt=dt)
        commands.append(smoother.step().position)
    commands = np.array(commands + [commands[-1]] * K, np.float32)
    replayed = np.stack([commands[t : t + K] for t in steps])
    # batch sizes differ from the rollout: float32 rounding, amplified a little by the QP
    np.testing.assert_allclose(executed, replayed, atol=5e-5, rtol=0)
    np.testing.assert_array_equal(executed[-1, 5:], np.repeat(executed[-1, 4:5], K - 5, 0))
    # episode 2 ran v1: its ε ~ N(v1's predictor output, I)
    predicted = NoisePredictorPolicy.wrap(v1).predicted_noise(states, [""] * len(states)).numpy()
    assert np.abs(predicted).max() > 0  # the update moved the mean away from the offline N(0, I)
    assert float((noises - predicted).std()) == pytest.approx(1.0, abs=0.15)
