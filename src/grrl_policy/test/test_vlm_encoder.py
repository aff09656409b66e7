"""VLMEncoder: the Qwen2.5-VL prefix encoder on the tiny config (CPU, real transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLModel

from grrl_policy.encoders import ObservationBatch, apply_rope
from grrl_policy.vlm_encoder import (
    TINY_TOKEN_IDS,
    VLMEncoder,
    build_processor,
    build_tokenizer,
    qwen25_vl_3b_config,
    save_tiny_checkpoint,
)

STATE_DIM = 7
VIEWS = 3
SIZE = 56  # 4x4 patches -> 2x2 merged: 4 vision tokens and 2 mRoPE positions per view
VIEW_TOKENS = 1 + 4 + 1  # <|vision_start|> pads <|vision_end|>
VIEW_POSITIONS = 1 + 2 + 1


def _obs(
    instructions: list[str], seed: int = 0, images: bool = True, hw=(64, 48)
) -> ObservationBatch:
    gen = torch.Generator().manual_seed(seed)
    batch = len(instructions)
    state = torch.randn(batch, STATE_DIM, generator=gen)
    pixels = None
    if images:
        pixels = torch.randint(0, 256, (batch, VIEWS, 3, *hw), generator=gen, dtype=torch.uint8)
    return ObservationBatch(state, list(instructions), pixels)


@pytest.fixture(scope="module")
def encoder() -> VLMEncoder:
    torch.manual_seed(0)
    return VLMEncoder.tiny(STATE_DIM, num_views=VIEWS, image_size=SIZE).eval()


def test_tokenizer_is_bytes_plus_qwen_specials():
    tok = build_tokenizer()
    assert tok("hé", add_special_tokens=False)["input_ids"] == list("hé".encode())
    for token, index in TINY_TOKEN_IDS.items():
        assert tok.convert_tokens_to_ids(token) == index
    assert tok.pad_token_id == TINY_TOKEN_IDS["<|endoftext|>"]


def test_forward_shapes_mask_and_positions(encoder):
    instructions = ["pick up the red cube", "go"]
    obs = _obs(instructions)
    with torch.no_grad():
        out = encoder(obs)
    text = [len(s.encode()) for s in instructions]
    lengths = torch.tensor([VIEWS * VIEW_TOKENS + n + 1 for n in text])  # + the state token
    width = int(lengths.max())

    assert (encoder.num_layers, encoder.exposed_layers) == (4, 2)
    assert (encoder.kv_heads, encoder.head_dim, encoder.pooled_dim) == (2, 16, 64)
    assert encoder.rope_theta == 1e6
    assert len(out.keys) == len(out.values) == 2
    for k, v in zip(out.keys, out.values, strict=True):
        assert k.shape == v.shape == (2, 2, width, 16)
        assert torch.isfinite(k).all() and torch.isfinite(v).all()
    assert out.prefix_mask.dtype == torch.bool
    assert torch.equal(out.prefix_mask, torch.arange(width)[None] < lengths[:, None])
    assert out.pooled.shape == (2, 64) and torch.isfinite(out.pooled).all()
    # text (and the state token) continue one past the views' mRoPE span
    expected = torch.tensor([VIEWS * VIEW_POSITIONS + n + 1 for n in text])
    assert out.next_position.dtype == torch.long
    assert torch.equal(out.next_position, expected)
    # the exposed layers are distinct layers, not one repeated
    assert not torch.allclose(out.keys[0], out.keys[1])


def test_exposed_keys_carry_the_rope_the_expert_continues(encoder):
    """Cached keys = 1-D RoPE(k_proj) at text positions, the rotation apply_rope gives actions."""
    obs = _obs(["stack the cups"])
    captured = {}
    layer = encoder.vlm.language_model.layers[encoder.num_layers - encoder.exposed_layers]
    hook = layer.self_attn.k_proj.register_forward_hook(
        lambda _m, _i, output: captured.setdefault("k", output)
    )
    try:
        with torch.no_grad():
            out = encoder(obs)
    finally:
        hook.remove()
    raw = captured["k"].view(1, -1, encoder.kv_heads, encoder.head_dim).transpose(1, 2)
    state_index = int(out.prefix_mask.sum()) - 1
    last = raw[:, :, state_index : state_index + 1]
    position = (out.next_position - 1)[:, None]
    rotated = apply_rope(last, position, encoder.rope_theta)
    cached = out.keys[0][:, :, state_index : state_index + 1]
    torch.testing.assert_close(cached, rotated, atol=1e-5, rtol=1e-5)
    # and not merely unrotated keys
    assert not torch.allclose(cached, last, atol=1e-3)


def test_backward_reaches_vlm_vision_and_state_projection():
    torch.manual_seed(1)
    enc = VLMEncoder.tiny(STATE_DIM, num_views=VIEWS, image_size=SIZE).train()
    out = enc(_obs(["open the drawer", "push"]))
    (sum(k.sum() for k in out.keys) + out.pooled.sum()).backward()
    for name, param in [
        ("state_proj", enc.state_proj.weight),
        ("llm layer 0", enc.vlm.language_model.layers[0].self_attn.k_proj.weight),
        ("embeddings", enc.vlm.get_input_embeddings().weight),
        ("vision patch embed", enc.vlm.visual.patch_embed.proj.weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_freeze_vision_stops_vision_gradients_only():
    torch.manual_seed(1)
    enc = VLMEncoder.tiny(STATE_DIM, num_views=VIEWS, image_size=SIZE, freeze_vision=True)
    out = enc(_obs(["open the drawer"]))
    sum(k.sum() for k in out.keys).backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.vlm.visual.parameters())
    assert enc.state_proj.weight.grad.abs().sum() > 0
    assert enc.vlm.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_state_changes_only_through_the_state_token(encoder):
    obs = _obs(["wipe"])
    other = ObservationBatch(obs.state + 1.0, obs.instruction, obs.images)
    with torch.no_grad():
        a, b = encoder(obs), encoder(other)
    state_index = int(a.prefix_mask.sum()) - 1
    # causal: everything before the state token is state-independent, the state token is not
    torch.testing.assert_close(a.keys[1][..., :state_index, :], b.keys[1][..., :state_index, :])
    assert not torch.allclose(a.keys[1][..., state_index, :], b.keys[1][..., state_index, :])


def test_batch_padding_invariance(encoder):
    alone = _obs(["put the bowl down"], seed=3)
    other = _obs(["fold the towel neatly along its long edge, then stack it"], seed=4)
    batch = ObservationBatch(
        torch.cat([alone.state, other.state]),
        alone.instruction + other.instruction,
        torch.cat([alone.images, other.images]),
    )
    with torch.no_grad():
        single, batched = encoder(alone), encoder(batch)
    n = single.keys[0].shape[2]
    assert batched.keys[0].shape[2] > n  # the first sample really was padded
    assert torch.equal(batched.prefix_mask[0, :n], single.prefix_mask[0])
    assert not batched.prefix_mask[0, n:].any()
    for ks, kb, vs, vb in zip(
        single.keys, batched.keys, single.values, batched.values, strict=True
    ):
        torch.testing.assert_close(kb[:1, :, :n], ks, atol=1e-5, rtol=0)
        torch.testing.assert_close(vb[:1, :, :n], vs, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.pooled[:1], single.pooled, atol=1e-5, rtol=0)
    assert batched.next_position[0] == single.next_position[0]


def test_state_only_observations_skip_vision_tokens(encoder):
    obs = _obs(["lift", "lower it"], images=False)
    with torch.no_grad():
        out = encoder(obs)
    lengths = torch.tensor([len("lift") + 1, len("lower it") + 1])
    assert out.keys[0].shape == (2, 2, int(lengths.max()), 16)
    assert torch.equal(out.prefix_mask.sum(1), lengths)
    assert torch.equal(out.next_position, lengths)  # plain 1-D positions 0..n


def test_square_images_of_the_encoder_size_and_special_text(encoder):
    obs = _obs(["say <|image_pad|>"], hw=(SIZE, SIZE))
    with torch.no_grad():
        out = encoder(obs)
    # the literal special-token text is tokenized as bytes, not as an extra image slot
    assert int(out.prefix_mask.sum()) == VIEWS * VIEW_TOKENS + len("say <|image_pad|>") + 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: ObservationBatch(o.state, o.instruction, o.images[:, :2]), "expected 3 views"),
        (lambda o: ObservationBatch(o.state[:, :5], o.instruction, o.images), r"state must be"),
        (lambda o: ObservationBatch(o.state, o.instruction[:1], o.images), "instructions"),
        (lambda o: ObservationBatch(o.state, o.instruction, o.images.float()), "uint8"),
        (lambda o: ObservationBatch(o.state, o.instruction, o.images[:, :, :1]), r"\(B=2, V, 3"),
        (lambda o: ObservationBatch(o.state, o.instruction, o.images[0]), r"\(B=2, V, 3"),
    ],
)
def test_bad_inputs_raise_value_error(encoder, mutate, message):
    with pytest.raises(ValueError, match=message):
        encoder(mutate(_obs(["a", "b"])))


def test_image_size_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of 28"):
        VLMEncoder.tiny(STATE_DIM, image_size=50)


def _ref_encoder(model, state_proj: torch.nn.Module) -> VLMEncoder:
    ref = VLMEncoder(model, build_processor(), STATE_DIM, image_size=SIZE, num_views=VIEWS).eval()
    ref.state_proj.load_state_dict(state_proj.state_dict())
    return ref


def test_tiny_checkpoint_loads_through_auto_classes(tmp_path: Path):
    saved = save_tiny_checkpoint(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (tmp_path / name).is_file(), name
    loaded = VLMEncoder.from_pretrained(tmp_path, STATE_DIM, image_size=SIZE, num_views=VIEWS)
    loaded.eval()
    assert type(loaded.vlm) is Qwen2_5_VLModel  # AutoModel gave the base model, LM head dropped
    assert loaded.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == (
        loaded.vlm.config.image_token_id
    )
    ref = _ref_encoder(saved, loaded.state_proj)
    obs = _obs(["pick the cube", "go"], seed=5)
    with torch.no_grad():
        want, got = ref(obs), loaded(obs)
    for a, b in zip(want.keys + want.values, got.keys + got.values, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.pooled, want.pooled, atol=1e-6, rtol=0)
    assert torch.equal(got.next_position, want.next_position)
    # a different random model disagrees, so the equality above is the weights being loaded
    with torch.no_grad():
        fresh = _ref_encoder(save_tiny_checkpoint(tmp_path / "other", seed=1), loaded.state_proj)
        assert not torch.allclose(fresh(obs).keys[0], want.keys[0], atol=1e-3)


def test_hub_layout_checkpoint_loads(tmp_path: Path):
    """Qwen/Qwen2.5-VL-*-Instruct on the hub store `model.layers.*` / `visual.*` keys."""
    saved = save_tiny_checkpoint(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    renamed = {}
    for key, tensor in weights.items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        renamed[key] = tensor
    assert any(k.startswith("visual.") for k in renamed)
    assert any(k.startswith("model.layers.") for k in renamed)
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = VLMEncoder.from_pretrained(tmp_path, STATE_DIM, image_size=SIZE, num_views=VIEWS)
    got_state = loaded.vlm.state_dict()
    for key, tensor in saved.model.state_dict().items():
        torch.testing.assert_close(got_state[key], tensor, atol=0, rtol=0, msg=key)


def test_qwen25_vl_3b_shapes_on_meta():
    config = qwen25_vl_3b_config()
    text, vision = config.text_config, config.vision_config
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert sum(text.rope_parameters["mrope_section"]) * 2 == text.hidden_size // 16
    assert vision.fullatt_block_indexes == [7, 15, 23, 31]
    enc = VLMEncoder.from_config(config, STATE_DIM, image_size=224, device="meta")
    params = sum(p.numel() for p in enc.vlm.parameters())
    assert all(p.device.type == "meta" for p in enc.parameters())
    # Qwen2.5-VL-3B-Instruct: 3.75B with the LM head tied to the embeddings
    assert 3.70e9 < params < 3.80e9, params
    assert 0.66e9 < sum(p.numel() for p in enc.vlm.visual.parameters()) < 0.68e9
    assert (enc.num_layers, enc.exposed_layers, enc.kv_heads, enc.head_dim) == (36, 18, 2, 128)
    assert (enc.pooled_dim, enc.rope_theta, enc.tokens_per_view) == (2048, 1e6, 64)
