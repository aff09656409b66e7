"""The flow-matching policy: learning a toy distribution, determinism, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grrl_policy.checkpoint import CheckpointError, checkpoint_sha256, load_policy, save_policy
from grrl_policy.encoders import ObservationBatch
from grrl_policy.model import ExpertConfig, FlowMatchingPolicy, PolicyConfig
from grrl_policy.normalization import NormStats
from grrl_policy.small_encoder import SmallEncoderConfig

K, N, S = 4, 2, 3


def tiny_config(**overrides) -> PolicyConfig:
    small = SmallEncoderConfig(width=64, layers=2, heads=2, kv_heads=1, head_dim=32, state_tokens=2)
    expert = ExpertConfig(width=64, heads=2, time_dim=32)
    return PolicyConfig(state_dim=S, action_dim=N, chunk=K, small=small, expert=expert, **overrides)


STD = torch.tensor([0.1, 0.3])  # per action dimension: the samples must keep both spreads


def toy_batch(batch: int, generator: torch.Generator):
    """State-conditioned Gaussian chunks: x = 0.5·s₀ + ramp + STD·noise."""
    state = torch.randn(batch, S, generator=generator)
    actions = state[:, :1, None] * 0.5 + RAMP + STD * torch.randn(batch, K, N, generator=generator)
    return ObservationBatch(state, ["reach the goal"] * batch), actions


RAMP = torch.linspace(0.5, 1.5, K)[:, None].expand(K, N)


def test_flow_matching_loss_falls_and_samples_match_the_toy_distribution():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = FlowMatchingPolicy(tiny_config(tau_sampling="uniform", flow_steps=10))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(400):
        obs, actions = toy_batch(128, g)
        loss = model.loss(obs, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-50:]) < 0.2 * np.mean(losses[:10])

    # first and second moments at two fixed states
    for s0 in (0.8, -1.2):
        state = torch.tensor([[s0, -0.3, 0.2]]).expand(2000, S)
        obs = ObservationBatch(state, ["reach the goal"] * 2000)
        samples, _ = model.sample(obs, generator=torch.Generator().manual_seed(1))
        mean, std = samples.mean(0), samples.std(0)
        assert torch.allclose(mean, 0.5 * s0 + RAMP, atol=0.12), mean
        assert torch.allclose(std, STD.expand(K, N), rtol=0.35), std


def test_fixed_noise_gives_identical_chunks_and_returns_it():
    model = FlowMatchingPolicy(tiny_config()).eval()
    obs = ObservationBatch(torch.randn(3, S), ["a", "b", "c"])
    noise = torch.randn(3, K, N)
    a1, n1 = model.sample(obs, noise=noise)
    a2, n2 = model.sample(obs, noise=noise.clone())
    assert torch.equal(a1, a2)
    assert torch.equal(n1, noise)
    a3, _ = model.sample(obs, noise=torch.randn(3, K, N))
    assert not torch.allclose(a1, a3)
    with pytest.raises(ValueError, match="noise must have shape"):
        model.sample(obs, noise=torch.randn(3, K + 1, N))


def test_causal_chunk_earlier_actions_ignore_later_ones():
    model = FlowMatchingPolicy(tiny_config()).eval()
    obs = ObservationBatch(torch.randn(1, S), ["x"])
    ctx = model.encode(obs)
    x = torch.randn(1, K, N)
    tau = torch.tensor([0.3])
    v1 = model.expert(x, tau, ctx)
    x2 = x.clone()
    x2[:, -1] += 5.0  # change only the last action
    v2 = model.expert(x2, tau, ctx)
    assert torch.allclose(v1[:, :-1], v2[:, :-1], atol=1e-6)
    assert not torch.allclose(v1[:, -1], v2[:, -1])


def test_noise_predictor_shape_and_pixels_encoder():
    cfg = tiny_config(cameras=("head", "left_wrist"))
    model = FlowMatchingPolicy(cfg)
    images = torch.randint(0, 255, (2, 2, 3, 64, 64), dtype=torch.uint8)
    obs = ObservationBatch(torch.randn(2, S), ["x", "y"], images)
    ctx = model.encode(obs)
    assert model.predict_noise(ctx).shape == (2, K, N)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # adaLN-zero: the expert ignores its context until its gates open
        opt.zero_grad()
        model.loss(obs, torch.randn(2, K, N)).backward()
        opt.step()
    assert model.encoder.conv[0].weight.grad.abs().sum() > 0  # pixels reach the loss
    with pytest.raises(ValueError, match="expects 2 views"):
        model.encode(ObservationBatch(torch.randn(2, S), ["x", "y"], images[:, :1]))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = FlowMatchingPolicy(tiny_config()).eval()
    norm = NormStats(np.zeros(S, np.float32), np.ones(S, np.float32),
                     np.full(N, 0.5, np.float32), np.full(N, 2.0, np.float32))  # fmt: skip
    path = save_policy(tmp_path / "ckpt", model, norm, ["j1", "j2"], 0.02, {"step": 7})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_policy(path)
    assert loaded.meta["step"] == 7 and loaded.joint_names == ["j1", "j2"]
    states = np.random.default_rng(0).normal(size=(2, S)).astype(np.float32)
    noise = torch.randn(2, K, N)
    before = norm.denormalize_action(model.sample(loaded.observation(states, ["a", "b"]),
                                                  noise=noise)[0].numpy())  # fmt: skip
    after, used = loaded.act(states, ["a", "b"], noise=noise)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(used, noise.numpy())
    digest = checkpoint_sha256(path)
    assert len(digest) == 64 and digest == checkpoint_sha256(path)


def test_flow_steps_override_changes_sampling_only(tmp_path):
    model = FlowMatchingPolicy(tiny_config()).eval()
    norm = NormStats(np.zeros(S), np.ones(S), np.zeros(N), np.ones(N))
    path = save_policy(tmp_path / "ckpt", model, norm, ["j1", "j2"], 0.02)
    states = np.random.default_rng(1).normal(size=(2, S)).astype(np.float32)
    noise = torch.randn(2, K, N)
    five, _ = load_policy(path).act(states, ["a", "b"], noise=noise)
    ten = load_policy(path, flow_steps=10)
    assert ten.model.cfg.flow_steps == 10
    expected = model.sample(ten.observation(states, ["a", "b"]), noise=noise, steps=10)[0]
    chunk, _ = ten.act(states, ["a", "b"], noise=noise)
    np.testing.assert_allclose(chunk, expected.numpy(), atol=1e-6)
    assert np.abs(chunk - five).max() > 1e-4  # a different integration, same weights
    with pytest.raises(CheckpointError, match="flow_steps must be >= 1"):
        load_policy(path, flow_steps=0)


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a policy checkpoint"):
        load_policy(tmp_path)
    model = FlowMatchingPolicy(tiny_config())
    norm = NormStats(np.zeros(S), np.ones(S), np.zeros(N), np.ones(N))
    path = save_policy(tmp_path / "ckpt", model, norm, ["j1", "j2"], 0.02)
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot load weights") as info:
        load_policy(path)
    assert "\n" not in str(info.value)
    (path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_policy(path)


def test_tiny_vlm_policy_forward_loss_sample_and_checkpoint(tmp_path):
    """The VLM path end to end on CPU: a tiny Qwen2.5-VL from config + the action expert."""
    expert = ExpertConfig(width=64, heads=4, time_dim=32)
    cfg = PolicyConfig(
        state_dim=S, action_dim=N, chunk=K, cameras=("head", "left_wrist"), encoder="vlm",
        expert=expert,
    )  # fmt: skip
    torch.manual_seed(0)
    model = FlowMatchingPolicy(cfg)
    assert len(model.expert.blocks) == model.encoder.num_layers // 2 == 2
    images = torch.randint(0, 255, (2, 2, 3, 64, 64), dtype=torch.uint8)
    obs = ObservationBatch(torch.randn(2, S), ["insert the peg", "pick it up"], images)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    actions = torch.randn(2, K, N)
    losses = []
    for _ in range(8):
        loss = model.loss(obs, actions, noise=torch.zeros(2, K, N), tau=torch.full((2,), 0.5))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    noise = torch.randn(2, K, N)
    chunk, used = model.sample(obs, noise=noise)
    assert chunk.shape == (2, K, N) and torch.isfinite(chunk).all() and torch.equal(used, noise)

    norm = NormStats(np.zeros(S), np.ones(S), np.zeros(N), np.ones(N))
    path = save_policy(tmp_path / "vlm", model, norm, ["j1", "j2"], 0.02)
    loaded = load_policy(path)
    states = obs.state.numpy()
    hwc = images.permute(0, 1, 3, 4, 2).numpy()
    after, _ = loaded.act(states, obs.instruction, hwc, noise=noise)
    np.testing.assert_allclose(after, chunk.numpy(), atol=1e-5)
