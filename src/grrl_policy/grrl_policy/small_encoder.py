"""The ``small`` observation encoder: trained from scratch on CPU (sim, tests).

Tokens: a few state tokens (MLP of the normalised proprio/object state), one token per hashed
instruction word, and per camera a grid of patch tokens from a shared strided conv stack (plus a
learned camera embedding). A bidirectional transformer with RoPE reads them; the KV of its
latter half of layers is what the action expert attends to, exactly as with the VLM encoder.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from grrl_policy.encoders import EncoderOutput, ObservationBatch, ObservationEncoder
from grrl_policy.layers import Attention, RMSNorm, SwiGLU


@dataclass(frozen=True)
class SmallEncoderConfig:
    width: int = 128  # the CPU-trained default (bench/bc.py); a GPU affords more
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    ffn_mult: float = 2.0
    state_tokens: int = 4
    vocab_buckets: int = 1024  # instruction words are hashed into this many embeddings
    max_words: int = 16
    image_size: int = 96  # images are resized to this square before the conv stack
    conv_channels: int = 64
    rope_theta: float = 10000.0


def instruction_word_ids(text: str, buckets: int, max_words: int) -> list[int]:
    """Stable word hashes (crc32, not Python's salted hash) in [1, buckets); 0 is padding."""
    words = re.findall(r"\w+", text.lower())[:max_words]
    return [1 + zlib.crc32(w.encode()) % (buckets - 1) for w in words]


class _Block(nn.Module):
    def __init__(self, cfg: SmallEncoderConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.width)
        self.attn = Attention(cfg.width, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.rope_theta)
        self.norm2 = RMSNorm(cfg.width)
        self.ffn = SwiGLU(cfg.width, int(cfg.width * cfg.ffn_mult))

    def forward(self, x, positions, mask):
        h, k, v = self.attn(self.norm1(x), positions, mask)
        x = x + h
        return x + self.ffn(self.norm2(x)), k, v


class SmallEncoder(ObservationEncoder):
    def __init__(self, cfg: SmallEncoderConfig, state_dim: int, num_views: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_layers, self.kv_heads, self.head_dim = cfg.layers, cfg.kv_heads, cfg.head_dim
        self.pooled_dim, self.rope_theta = cfg.width, cfg.rope_theta
        self.num_views = num_views
        w = cfg.width
        self.state_mlp = nn.Sequential(
            nn.Linear(state_dim, w), nn.SiLU(), nn.Linear(w, w * cfg.state_tokens)
        )
        self.words = nn.Embedding(cfg.vocab_buckets, w, padding_idx=0)
        if num_views:
            c = cfg.conv_channels
            # 96 px → 6×6 patch tokens per view: cheap enough for CPU training on pixels
            self.conv = nn.Sequential(
                nn.Conv2d(3, c // 2, 5, stride=2, padding=2), nn.GELU(),
                nn.Conv2d(c // 2, c, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(c, w, 3, stride=2, padding=1),
            )  # fmt: skip
            self.view_embed = nn.Parameter(torch.zeros(num_views, w))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.final_norm = RMSNorm(w)

    def _tokens(self, obs: ObservationBatch) -> tuple[torch.Tensor, torch.Tensor]:
        b, w = obs.batch_size, self.cfg.width
        device = obs.state.device
        parts = [self.state_mlp(obs.state).view(b, self.cfg.state_tokens, w)]
        valid = [torch.ones(b, self.cfg.state_tokens, dtype=torch.bool, device=device)]
        if self.num_views:
            if obs.images is None or obs.images.shape[1] != self.num_views:
                got = None if obs.images is None else obs.images.shape[1]
                raise ValueError(f"small encoder expects {self.num_views} views, got {got}")
            v = self.num_views
            images = obs.images.flatten(0, 1).float() / 255.0
            size = self.cfg.image_size
            if images.shape[-1] != size or images.shape[-2] != size:
                images = nn.functional.interpolate(
                    images, size=(size, size), mode="bilinear", antialias=True
                )
            # resized in float32 (antialiased resize has no bf16 kernel on CPU)
            feats = self.conv((images * 2.0 - 1.0).to(self.view_embed.dtype))  # (B·V, w, h, w')
            feats = feats.flatten(2).transpose(1, 2).view(b, v, -1, w)
            feats = feats + self.view_embed[None, :, None]
            parts.append(feats.flatten(1, 2))
            valid.append(torch.ones(b, feats.shape[1] * feats.shape[2], dtype=torch.bool,
                                    device=device))  # fmt: skip
        ids = [instruction_word_ids(s, self.cfg.vocab_buckets, self.cfg.max_words)
               for s in obs.instruction]  # fmt: skip
        width = max(1, max(len(i) for i in ids))
        word_ids = torch.zeros(b, width, dtype=torch.long, device=device)
        for row, i in enumerate(ids):
            word_ids[row, : len(i)] = torch.tensor(i, dtype=torch.long)
        parts.append(self.words(word_ids))
        valid.append(word_ids > 0)
        return torch.cat(parts, dim=1), torch.cat(valid, dim=1)

    def forward(self, obs: ObservationBatch) -> EncoderOutput:
        x, valid = self._tokens(obs)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        mask = valid[:, None, :].expand(-1, x.shape[1], -1)
        keys, values = [], []
        for index, block in enumerate(self.blocks):
            x, k, v = block(x, positions, mask)
            if index >= self.num_layers - self.exposed_layers:
                keys.append(k)
                values.append(v)
        x = self.final_norm(x)
        weights = valid.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return EncoderOutput(keys, values, valid, pooled, valid.sum(dim=1))
