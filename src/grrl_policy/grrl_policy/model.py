"""The flow-matching VLA: observation encoder + action expert (DiT) + noise predictor.

GR-3 style mixture-of-transformers. The action expert has half the encoder's layers; its layer i
attends to the keys/values of encoder layer L/2 + i (the prefix) and, causally, to the earlier
action tokens of the chunk. Flow time enters by AdaLN (scale, shift and gate per block from the
time embedding); RMSNorm normalises attention and FFN inputs.

Flow matching (SPEC §4): x_τ = (1−τ)·x0 + τ·x1, x0 ~ N(0, I) or the noise predictor's ε,
target velocity x1 − x0; sampling integrates Euler steps from an *explicit* initial noise,
which online RL supplies, and returns that noise with the chunk.

Real-time chunking (Black et al. 2025): an optional :class:`PrefixGuide` inpaints the actions
already committed from the previous chunk by ΠGDM guidance of each Euler step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grrl_policy.encoders import EncoderOutput, ObservationBatch, ObservationEncoder
from grrl_policy.layers import Attention, RMSNorm, SwiGLU
from grrl_policy.small_encoder import SmallEncoder, SmallEncoderConfig


@dataclass(frozen=True)
class ExpertConfig:
    width: int = 128
    heads: int = 4  # query heads; key/value heads and head size follow the encoder's
    ffn_mult: float = 2.0
    time_dim: int = 128


@dataclass(frozen=True)
class VLMConfig:
    checkpoint: str = "tiny"  # a local transformers checkpoint directory, or "tiny" (from config)
    image_size: int = 224
    dtype: str = "float32"
    freeze_vision: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to rebuild the model; stored as JSON next to the safetensors."""

    state_dim: int
    action_dim: int
    chunk: int = 20
    cameras: tuple[str, ...] = ()
    encoder: str = "small"  # "small" | "vlm"
    small: SmallEncoderConfig = field(default_factory=SmallEncoderConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    # "absolute": joint-position targets; "delta": targets minus the joint positions at the
    # chunk's start (the first action_dim entries of the state), added back at inference
    action_mode: str = "absolute"
    flow_steps: int = 5  # Euler steps at inference (GR-3 uses 5)
    tau_sampling: str = "beta"  # "uniform" | "beta" (π0: emphasise the noisy end)
    noise_hidden: int = 256

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown policy config keys: {sorted(unknown)}")
        d = dict(d)
        d["cameras"] = tuple(d.get("cameras", ()))
        for key, sub in (("small", SmallEncoderConfig), ("vlm", VLMConfig),
                         ("expert", ExpertConfig)):  # fmt: skip
            if isinstance(d.get(key), dict):
                d[key] = sub(**d[key])
        return cls(**d)


@dataclass
class PrefixGuide:
    """Guided inpainting of a chunk's prefix (real-time chunking, Black et al. 2025).

    ``target`` (B, k, A) in the model's normalised action space; ``weights`` (B, k) or (k,)
    in [0, 1]: how strongly each action is pulled to its target (1: committed, 0: free).
    ``max_guidance`` is the paper's β, the clip of the guidance weight g(τ).
    """

    target: torch.Tensor
    weights: torch.Tensor
    max_guidance: float = 5.0


def guidance_weight(tau: float, max_guidance: float) -> float:
    """ΠGDM guidance weight g(τ) = min(β, (1−τ) / (τ·r²)), r² = (1−τ)² / (τ² + (1−τ)²).

    Simplified, (1−τ)/(τ·r²) = (τ² + (1−τ)²) / (τ·(1−τ)), which is unbounded at both ends of
    the flow: there the clip β applies (no division by zero at τ = 0).
    """
    if tau <= 0.0 or tau >= 1.0:
        return max_guidance
    return min(max_guidance, (tau * tau + (1.0 - tau) ** 2) / (tau * (1.0 - tau)))


def timestep_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time τ ∈ [0, 1] (scaled so τ resolves finely)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=tau.device) / half)
    angles = 1000.0 * tau.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _ExpertBlock(nn.Module):
    def __init__(self, cfg: ExpertConfig, kv_heads: int, head_dim: int, theta: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.width, affine=False)
        self.attn = Attention(cfg.width, cfg.heads, kv_heads, head_dim, theta)
        self.norm2 = RMSNorm(cfg.width, affine=False)
        self.ffn = SwiGLU(cfg.width, int(cfg.width * cfg.ffn_mult))
        # adaLN-Zero: the block starts as the identity, so depth does not hurt early training
        self.ada = nn.Linear(cfg.time_dim, 6 * cfg.width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, cond, positions, mask, prefix_kv):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None].chunk(6, dim=-1)
        h, _, _ = self.attn(self.norm1(x) * (1 + scale1) + shift1, positions, mask, prefix_kv)
        x = x + gate1 * h
        return x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)


class ActionExpert(nn.Module):
    """The DiT that predicts the flow velocity of an action chunk."""

    def __init__(self, cfg: ExpertConfig, encoder: ObservationEncoder, action_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_in = nn.Linear(action_dim, cfg.width)
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(), nn.Linear(cfg.time_dim, cfg.time_dim)
        )
        self.blocks = nn.ModuleList(
            _ExpertBlock(cfg, encoder.kv_heads, encoder.head_dim, encoder.rope_theta)
            for _ in range(encoder.exposed_layers)
        )
        self.final_norm = RMSNorm(cfg.width, affine=False)
        self.final_ada = nn.Linear(cfg.time_dim, 2 * cfg.width)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)
        self.action_out = nn.Linear(cfg.width, action_dim)

    def forward(self, x_tau: torch.Tensor, tau: torch.Tensor, ctx: EncoderOutput) -> torch.Tensor:
        b, k, _ = x_tau.shape
        x = self.action_in(x_tau)
        embedding = timestep_embedding(tau, self.cfg.time_dim).to(x.dtype)
        cond = F.silu(self.time_mlp(embedding))
        steps = torch.arange(k, device=x.device)
        positions = ctx.next_position[:, None] + steps[None]
        causal = steps[None, :] <= steps[:, None]  # (k, k): action i sees actions ≤ i
        mask = torch.cat(
            [ctx.prefix_mask[:, None, :].expand(-1, k, -1), causal[None].expand(b, -1, -1)], dim=2
        )
        for block, key, value in zip(self.blocks, ctx.keys, ctx.values, strict=True):
            x = block(x, cond, positions, mask, (key, value))
        shift, scale = self.final_ada(cond)[:, None].chunk(2, dim=-1)
        return self.action_out(self.final_norm(x) * (1 + scale) + shift)


def build_encoder(cfg: PolicyConfig) -> ObservationEncoder:
    if cfg.encoder == "small":
        return SmallEncoder(cfg.small, cfg.state_dim, len(cfg.cameras))
    if cfg.encoder == "vlm":
        from grrl_policy.vlm_encoder import VLMEncoder  # transformers only when asked for

        if cfg.vlm.checkpoint == "tiny":
            return VLMEncoder.tiny(cfg.state_dim, num_views=len(cfg.cameras))
        return VLMEncoder.from_pretrained(
            cfg.vlm.checkpoint,
            cfg.state_dim,
            image_size=cfg.vlm.image_size,
            num_views=len(cfg.cameras),
            dtype=getattr(torch, cfg.vlm.dtype),
        )
    raise ValueError(f"encoder must be 'small' or 'vlm', got {cfg.encoder!r}")


class FlowMatchingPolicy(nn.Module):
    """Encoder + action expert + noise predictor; inputs and outputs are normalised."""

    def __init__(self, cfg: PolicyConfig, encoder: ObservationEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder if encoder is not None else build_encoder(cfg)
        self.expert = ActionExpert(cfg.expert, self.encoder, cfg.action_dim)
        flat = cfg.chunk * cfg.action_dim
        # online RL's actor in noise space (SPEC §4): pooled features → the mean of the initial
        # noise, ε ~ N(π_θ'(o), I) (grrl_policy.deployed); zero at first, so online RL starts
        # from exactly the offline policy
        self.noise_predictor = nn.Sequential(
            nn.Linear(self.encoder.pooled_dim, cfg.noise_hidden), nn.SiLU(),
            nn.Linear(cfg.noise_hidden, cfg.noise_hidden), nn.SiLU(),
            nn.Linear(cfg.noise_hidden, flat),
        )  # fmt: skip
        self.zero_noise_shift()

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return self.cfg.chunk, self.cfg.action_dim

    def encode(self, obs: ObservationBatch) -> EncoderOutput:
        return self.encoder(obs)

    def tau_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """Flow times from uniform draws (the trainer seeds the draws itself)."""
        if self.cfg.tau_sampling == "uniform":
            return u
        # Beta(1.5, 1) on the noisy end (π0), via its inverse CDF
        return 1.0 - u.pow(1.0 / 1.5)

    def sample_tau(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.tau_from_uniform(torch.rand(batch, generator=generator, device=device))

    def loss(
        self,
        obs: ObservationBatch,
        actions: torch.Tensor,
        action_pad: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        tau: torch.Tensor | None = None,
        ctx: EncoderOutput | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss ‖v_θ(τ, x_τ | obs) − (x1 − x0)‖², mean over real actions."""
        x1 = actions
        x0 = torch.randn_like(x1) if noise is None else noise
        if tau is None:
            tau = self.sample_tau(x1.shape[0])
        t = tau[:, None, None].to(x1.dtype)
        x_tau = (1 - t) * x0 + t * x1
        ctx = self.encode(obs) if ctx is None else ctx
        error = (self.expert(x_tau, tau, ctx) - (x1 - x0)).pow(2).mean(-1)  # (B, k)
        if action_pad is None:
            return error.mean()
        # per-sample mean over its real actions, then the batch mean: equal shards of a batch
        # then average to the whole batch's loss (DDP), whatever padding each shard holds
        real = (~action_pad).to(error.dtype)
        return ((error * real).sum(1) / real.sum(1).clamp(min=1.0)).mean()

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The training loss (DDP hooks gradient sync on ``forward``), see :meth:`loss`."""
        return self.loss(*args, **kwargs)

    @torch.no_grad()
    def sample(
        self,
        obs: ObservationBatch,
        noise: torch.Tensor | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        ctx: EncoderOutput | None = None,
        guide: PrefixGuide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrate the flow from ``noise`` (default N(0, I)) → (chunk, the noise used).

        With ``guide``, the chunk's prefix is inpainted toward ``guide.target`` (see
        :meth:`integrate`); gradients for the guidance are enabled locally.
        """
        ctx = self.encode(obs) if ctx is None else ctx
        b = ctx.pooled.shape[0]
        if noise is None:
            noise = torch.randn(
                (b, *self.chunk_shape), generator=generator, device=ctx.pooled.device
            )
        return self.integrate(ctx, noise, steps, guide), noise

    def integrate(
        self,
        ctx: EncoderOutput,
        noise: torch.Tensor,
        steps: int | None = None,
        guide: PrefixGuide | None = None,
    ) -> torch.Tensor:
        """Euler integration of the velocity field from ``noise`` (differentiable under grad).

        With ``guide``, each step's velocity v at state x and time τ gets the ΠGDM correction
        ``g(τ) · (∂x̂1/∂x)ᵀ e`` with x̂1 = x + (1−τ)·v the predicted clean chunk and
        e = weights · (target − x̂1). The correction is a constant to any outer backward pass
        (no second-order terms); the unguided velocity stays differentiable.
        """
        b = ctx.pooled.shape[0]
        if noise.shape != (b, *self.chunk_shape):
            raise ValueError(
                f"noise must have shape {(b, *self.chunk_shape)}, got {tuple(noise.shape)}"
            )
        steps = steps or self.cfg.flow_steps
        x = noise.to(ctx.pooled.dtype)
        target, weights = self._guide_tensors(guide, x) if guide is not None else (None, None)
        for i in range(steps):
            tau = torch.full((b,), i / steps, device=x.device)
            if guide is None:
                x = x + self.expert(x, tau, ctx) / steps
            else:
                velocity = self._guided_velocity(
                    x, tau, i / steps, ctx, target, weights, guide.max_guidance
                )
                x = x + velocity / steps
        return x

    def _guide_tensors(
        self, guide: PrefixGuide, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's target (B, k, A) and weights (B, k, 1), checked and on x's device."""
        target = guide.target.to(device=x.device, dtype=x.dtype)
        if target.shape != x.shape:
            raise ValueError(
                f"guide target must have shape {tuple(x.shape)}, got {tuple(target.shape)}"
            )
        weights = guide.weights.to(device=x.device, dtype=x.dtype)
        if weights.shape not in ((x.shape[1],), tuple(x.shape[:2])):
            raise ValueError(
                f"guide weights must have shape {tuple(x.shape[:2])} or ({x.shape[1]},), "
                f"got {tuple(weights.shape)}"
            )
        return target, weights.expand(x.shape[:2])[..., None]

    def _guided_velocity(
        self,
        x: torch.Tensor,
        tau: torch.Tensor,
        tau_value: float,
        ctx: EncoderOutput,
        target: torch.Tensor,
        weights: torch.Tensor,
        max_guidance: float,
    ) -> torch.Tensor:
        """v + g(τ)·VJP(∂x̂1/∂x, e): the velocity pulled toward the guide's target."""
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():  # sample() runs under no_grad; the VJP needs a graph
            # an x that is already part of an outer graph is kept, so v stays differentiable
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            velocity = self.expert(x_in, tau, ctx)
            x1_hat = x_in + (1.0 - tau_value) * velocity
            error = weights * (target - x1_hat.detach())
            (correction,) = torch.autograd.grad(
                x1_hat, x_in, grad_outputs=error, retain_graph=outer_grad
            )
        if not outer_grad:
            velocity = velocity.detach()  # free the graph built only for the VJP
        return velocity + guidance_weight(tau_value, max_guidance) * correction

    def zero_noise_shift(self) -> None:
        """Make the noise predictor output 0: ε ~ N(0, I), exactly the offline policy."""
        nn.init.zeros_(self.noise_predictor[-1].weight)
        nn.init.zeros_(self.noise_predictor[-1].bias)

    def predict_noise(self, ctx: EncoderOutput) -> torch.Tensor:
        """The noise predictor's mean ε for these observations, shaped like a chunk."""
        return self.noise_predictor(ctx.pooled).view(-1, *self.chunk_shape)
