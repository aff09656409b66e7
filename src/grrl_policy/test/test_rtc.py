"""Real-time chunking: guided inpainting of a chunk's prefix, the guide from the previous chunk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grrl_policy.checkpoint import LoadedPolicy
from grrl_policy.encoders import ObservationBatch
from grrl_policy.model import (
    ExpertConfig,
    FlowMatchingPolicy,
    PolicyConfig,
    PrefixGuide,
    guidance_weight,
)
from grrl_policy.normalization import NormStats
from grrl_policy.rtc import prefix_guide, switch_jump
from grrl_policy.small_encoder import SmallEncoderConfig

K, N, S = 4, 2, 3


def tiny_config(**overrides) -> PolicyConfig:
    small = SmallEncoderConfig(width=64, layers=2, heads=2, kv_heads=1, head_dim=32, state_tokens=2)
    expert = ExpertConfig(width=64, heads=2, time_dim=32)
    return PolicyConfig(state_dim=S, action_dim=N, chunk=K, small=small, expert=expert, **overrides)


def _model(seed: int = 0, **overrides) -> FlowMatchingPolicy:
    torch.manual_seed(seed)
    return FlowMatchingPolicy(tiny_config(**overrides)).eval()


def _obs(batch: int, generator: torch.Generator) -> ObservationBatch:
    return ObservationBatch(torch.randn(batch, S, generator=generator), ["x"] * batch)


def test_guidance_weight_schedule_is_clipped_and_finite_at_the_ends():
    assert guidance_weight(0.0, 5.0) == 5.0  # unbounded at τ = 0: the clip, no division
    assert guidance_weight(0.5, 5.0) == pytest.approx(2.0)  # (1−τ)/(τ r²) at τ = ½
    tau = 0.3
    r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
    assert guidance_weight(tau, 100.0) == pytest.approx((1 - tau) / (tau * r2))
    assert guidance_weight(tau, 1.0) == 1.0


def test_full_guide_pulls_the_chunk_to_its_target():
    g = torch.Generator().manual_seed(1)
    model = _model()
    obs = _obs(16, g)
    noise = torch.randn(16, K, N, generator=g)
    target = 1.5 * torch.randn(16, K, N, generator=g)
    free, used = model.sample(obs, noise=noise)
    guided, used_guided = model.sample(obs, noise=noise, guide=PrefixGuide(target, torch.ones(K)))
    assert torch.equal(used, noise) and torch.equal(used_guided, noise)
    free_error = (free - target).abs().mean().item()
    guided_error = (guided - target).abs().mean().item()
    assert free_error > 0.5
    assert guided_error < 0.05 * free_error, (free_error, guided_error)


def test_prefix_weights_pull_only_where_they_are_set():
    g = torch.Generator().manual_seed(2)
    model = _model()
    obs = _obs(8, g)
    noise = torch.randn(8, K, N, generator=g)
    target = 1.5 * torch.randn(8, K, N, generator=g)
    weights = torch.zeros(8, K)
    weights[:, :2] = 1.0  # (B, k) weights: the first two actions committed
    free, _ = model.sample(obs, noise=noise)
    guided, _ = model.sample(obs, noise=noise, guide=PrefixGuide(target, weights))
    free_error = (free[:, :2] - target[:, :2]).abs().mean().item()
    assert (guided[:, :2] - target[:, :2]).abs().mean().item() < 0.05 * free_error
    # the unguided tail is not dragged onto the target
    assert (guided[:, 2:] - target[:, 2:]).abs().mean().item() > 0.5


def test_zero_weights_give_the_unguided_chunk_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    model = _model()
    obs = _obs(4, g)
    noise = torch.randn(4, K, N, generator=g)
    free, _ = model.sample(obs, noise=noise)
    guide = PrefixGuide(torch.randn(4, K, N, generator=g), torch.zeros(4, K), max_guidance=50.0)
    guided, _ = model.sample(obs, noise=noise, guide=guide)
    assert torch.equal(free, guided)
    with pytest.raises(ValueError, match="guide target must have shape"):
        model.sample(obs, noise=noise, guide=PrefixGuide(torch.zeros(4, K + 1, N), torch.ones(K)))
    with pytest.raises(ValueError, match="guide weights must have shape"):
        model.sample(obs, noise=noise, guide=PrefixGuide(torch.zeros(4, K, N), torch.ones(K + 1)))


def test_guided_integration_stays_differentiable_under_grad():
    g = torch.Generator().manual_seed(4)
    model = _model()
    ctx = model.encode(_obs(2, g))
    guide = PrefixGuide(torch.zeros(2, K, N), torch.ones(K))
    chunk = model.integrate(ctx, torch.randn(2, K, N, generator=g), guide=guide)
    chunk.pow(2).sum().backward()
    assert model.expert.action_out.weight.grad.abs().sum() > 0


def test_prefix_guide_reindexes_the_previous_chunk_hand_computed():
    previous = np.arange(7, dtype=float)[:, None] * np.array([[1.0, -2.0]])  # row i = (i, −2i)
    target, weights = prefix_guide(previous, 0.0, 0.1, 0.3, latency_steps=2, k=5)
    # new step j is at 0.3 + 0.1 j = previous row 3 + j; previous rows end at 6
    np.testing.assert_allclose(target[:4], previous[3:7])
    np.testing.assert_allclose(target[4], previous[6])  # held beyond the end, weight 0
    m, d = 4, 2  # overlap, latency

    def soft(i: int) -> float:
        c = (m - i) / (m - d + 1)
        return c * (math.exp(c) - 1) / (math.e - 1)

    np.testing.assert_allclose(weights, [1.0, 1.0, soft(2), soft(3), 0.0])
    assert 1.0 > weights[2] > weights[3] > 0.0

    # a previous chunk of 5 ends right after the committed part: nothing left to decay over
    target, weights = prefix_guide(previous[:5], 0.0, 0.1, 0.3, latency_steps=2, k=5)
    np.testing.assert_allclose(target[:2], previous[3:5])
    np.testing.assert_allclose(weights, [1.0, 1.0, 0.0, 0.0, 0.0])

    _, linear = prefix_guide(previous, 0.0, 0.1, 0.3, latency_steps=2, k=5, decay="linear")
    np.testing.assert_allclose(linear, [1.0, 1.0, 2 / 3, 1 / 3, 0.0])
    _, hard = prefix_guide(previous, 0.0, 0.1, 0.3, latency_steps=2, k=5, decay="none")
    np.testing.assert_allclose(hard, [1.0, 1.0, 0.0, 0.0, 0.0])

    # half a step later: interpolated between the previous chunk's rows
    target, _ = prefix_guide(previous, 0.0, 0.1, 0.35, latency_steps=2, k=5)
    np.testing.assert_allclose(target[:3], 0.5 * (previous[3:6] + previous[4:7]))
    with pytest.raises(ValueError, match="decay"):
        prefix_guide(previous, 0.0, 0.1, 0.3, 2, 5, decay="cosine")


def test_switch_jump_compares_the_first_executed_action():
    previous = np.arange(8, dtype=float)[:, None] * np.array([[1.0, 0.5]])
    new = previous[3:8] + np.array([0.0, 0.25])  # continues the previous chunk, joint 1 off
    assert switch_jump(previous, 0.0, new, 0.3, 0.1, latency_steps=2) == pytest.approx(0.25)
    new[2, 0] += 1.0  # the first executed action (row 2) jumps on joint 0
    assert switch_jump(previous, 0.0, new, 0.3, 0.1, latency_steps=2) == pytest.approx(1.0)
    new[0] += 9.0  # late rows are never executed: they do not count
    assert switch_jump(previous, 0.0, new, 0.3, 0.1, latency_steps=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="latency_steps"):
        switch_jump(previous, 0.0, new, 0.3, 0.1, latency_steps=5)


@pytest.mark.parametrize("action_mode", ["absolute", "delta"])
def test_act_with_a_full_guide_returns_the_target_in_robot_units(action_mode: str):
    model = _model(action_mode=action_mode)
    action_mean, action_std = np.array([0.5, -1.0], np.float32), np.array([2.0, 0.5], np.float32)
    norm = NormStats(np.zeros(S, np.float32), np.ones(S, np.float32), action_mean, action_std)
    policy = LoadedPolicy(model, norm, ["j1", "j2"], 0.02)
    rng = np.random.default_rng(5)
    states = rng.normal(size=(3, S)).astype(np.float32) + 1.0  # joints far from 0: delta matters
    target = states[:, None, :N] + rng.normal(scale=0.3, size=(3, K, N)).astype(np.float32)
    noise = torch.randn(3, K, N, generator=torch.Generator().manual_seed(5))
    free, _ = policy.act(states, ["x"] * 3, noise=noise)
    guided, used = policy.act(
        states, ["x"] * 3, noise=noise, guide_target=target, guide_weights=np.ones((3, K))
    )
    np.testing.assert_array_equal(used, noise.numpy())
    assert np.abs(free - target).max() > 0.5
    np.testing.assert_allclose(guided, target, atol=0.05)
    zero, _ = policy.act(
        states, ["x"] * 3, noise=noise, guide_target=target, guide_weights=np.zeros((3, K))
    )
    np.testing.assert_array_equal(zero, free)
    with pytest.raises(ValueError, match="go together"):
        policy.act(states, ["x"] * 3, guide_target=target)
