"""Observation encoders: the interface the action expert attends to.

An encoder reads multi-view images, the instruction and the proprio/object state and exposes,
per layer of the *latter half* of its transformer, the keys and values of its prefix tokens
(GR-3's mixture-of-transformers: the action expert has half the encoder's layer count and its
layer i attends to the KV of encoder layer L/2 + i). Two implementations share this interface:

* ``small`` (:mod:`grrl_policy.small_encoder`): light per-camera conv + state MLP + hashed
  instruction words, a few transformer layers; trained from scratch on CPU (sim, tests).
* ``vlm`` (:mod:`grrl_policy.vlm_encoder`): any Qwen2.5-VL-style checkpoint loaded from a local
  directory with ``transformers`` (GPU deployment), or the ``tiny`` configuration built from
  config for CPU tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ObservationBatch:
    """A batch of observations as model inputs (already normalised)."""

    state: torch.Tensor  # (B, S) float32, normalised proprio (+ object) state
    instruction: list[str]  # B instructions
    images: torch.Tensor | None = None  # (B, V, 3, H, W) uint8, views in the encoder's order

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def to(self, device: torch.device | str) -> ObservationBatch:
        images = None if self.images is None else self.images.to(device)
        return ObservationBatch(self.state.to(device), self.instruction, images)


@dataclass
class EncoderOutput:
    """What the action expert needs from the encoder."""

    keys: list[torch.Tensor]  # per exposed layer: (B, kv_heads, P, head_dim), RoPE applied
    values: list[torch.Tensor]  # per exposed layer: (B, kv_heads, P, head_dim)
    prefix_mask: torch.Tensor  # (B, P) bool, True where the prefix token is real (not padding)
    pooled: torch.Tensor  # (B, pooled_dim) summary features (noise predictor, critics)
    next_position: torch.Tensor  # (B,) long: RoPE position of the first action token


class ObservationEncoder(nn.Module):
    """Base class: subclasses set the geometry attributes and implement ``forward``."""

    num_layers: int  # transformer layers of the encoder (the expert gets num_layers // 2)
    kv_heads: int  # key/value heads of the exposed KV
    head_dim: int
    pooled_dim: int
    rope_theta: float = 10000.0  # RoPE base the action expert uses for its own tokens

    @property
    def exposed_layers(self) -> int:
        """How many layers' KV the encoder exposes (its latter half)."""
        return self.num_layers // 2

    def forward(self, obs: ObservationBatch) -> EncoderOutput:  # pragma: no cover - interface
        raise NotImplementedError


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half convention) of x: (B, H, T, D) at positions (B, T)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    )
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, D/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)[:, None].to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)[:, None].to(x.dtype)
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
