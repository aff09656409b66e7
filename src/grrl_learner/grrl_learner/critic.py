"""Offline progress critics: a chunked Q over observation features (ROS-free).

Three kinds behind one interface (:class:`ChunkCritic`), for the paper's ablation:

* ``distributional``: a categorical distribution over ``atoms`` values on [v_min, v_max] =
  [0, 1], trained with cross-entropy to the C51-projected Bellman target;
* ``scalar_td``: the same network with one scalar output, trained by TD with a squared error
  (unbounded: it may over-estimate);
* ``regression``: the same network with one scalar output, fit to the time-based progress
  t/T of successful episodes (0 for failed ones); no bootstrapping.

Network: an MLP trunk on the critic's input gives a feature; a causal head reads it with the
chunk's actions and outputs Q(s_t, a_{t:t+j}) for every prefix j = 1..k — Q-chunking: one Q
per prefix of the action chunk, and a prefix never sees later actions.

Trunk, by config: the critic's *own* (its input is the normalised state alone) or *shared*
with a policy (:class:`PolicyTrunk`, ``grrl train-critic --policy CKPT``): the input is then
the normalised state next to the pooled features of that policy's frozen encoder — what the
online critics read (:mod:`grrl_learner.online`), so the critic sees what the policy sees,
images and instruction included for a pixels policy.

Checkpoints: a directory with ``config.json`` (format ``grrl-critic-1``: critic config,
normalisation statistics, the trunk — ``{"kind": "own"}`` or ``{"kind": "policy", "path",
"sha256"}`` —, metadata) and ``model.safetensors`` (never pickle), written atomically like
policy checkpoints. A shared-trunk critic is scored with the very encoder it was trained on:
loading checks the policy checkpoint's sha256.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from grrl_common.errors import GrrlError
from grrl_learner import CRITIC_KINDS
from grrl_policy.checkpoint import (
    CONFIG_NAME,
    CheckpointError,
    checkpoint_sha256,
    load_checkpoint_weights,
    load_policy,
    read_checkpoint_json,
    save_checkpoint_dir,
)
from grrl_policy.normalization import NormStats

if TYPE_CHECKING:
    from grrl_learner.episodes import Episode

FORMAT = "grrl-critic-1"
OWN_TRUNK = {"kind": "own"}


class CriticError(GrrlError):
    """A critic checkpoint or configuration that cannot be used; one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class CriticConfig:
    state_dim: int
    action_dim: int
    kind: str = "distributional"
    chunk: int = 20  # k: actions per chunk, one Q per prefix
    atoms: int = 101
    v_min: float = 0.0
    v_max: float = 1.0
    gamma: float = 0.995  # per control step; a chunk transition discounts by gamma**k
    width: int = 256  # trunk width
    trunk_layers: int = 2
    head_width: int = 128
    head_layers: int = 2
    twin: bool = True  # TD3's two critics (regression uses one)

    def __post_init__(self) -> None:
        if self.kind not in CRITIC_KINDS:
            raise CriticError(f"critic kind must be one of {CRITIC_KINDS}, got {self.kind!r}")
        if self.chunk < 1:
            raise CriticError(f"critic chunk must be >= 1, got {self.chunk}")
        if self.kind == "distributional" and self.atoms < 2:
            raise CriticError(f"a distributional critic needs >= 2 atoms, got {self.atoms}")
        if not self.v_max > self.v_min:
            raise CriticError(f"v_max ({self.v_max}) must exceed v_min ({self.v_min})")
        if not 0.0 < self.gamma <= 1.0:
            raise CriticError(f"gamma must be in (0, 1], got {self.gamma}")

    @property
    def distributional(self) -> bool:
        return self.kind == "distributional"

    @property
    def outputs(self) -> int:
        return self.atoms if self.distributional else 1

    @property
    def critics(self) -> int:
        return 2 if self.twin and self.kind != "regression" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CriticConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def support(cfg: CriticConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The categorical support: ``atoms`` evenly spaced values on [v_min, v_max]."""
    return torch.linspace(cfg.v_min, cfg.v_max, cfg.atoms, device=device)


def project_categorical(
    next_probs: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    atoms: torch.Tensor,
) -> torch.Tensor:
    """C51 projection of the distribution of r + discount·Z onto the fixed support ``atoms``.

    ``next_probs`` (B, A) are Z's probabilities on ``atoms`` (A,); ``rewards`` and
    ``discounts`` (B,) (discount 0 for a terminal transition). Each shifted atom is clipped to
    the support and its mass split between its two neighbouring atoms in proportion to
    closeness. Returns (B, A) probabilities.
    """
    v_min, v_max = float(atoms[0]), float(atoms[-1])
    n = atoms.shape[0]
    delta = (v_max - v_min) / (n - 1)
    tz = rewards[:, None] + discounts[:, None] * atoms[None, :]
    b = (tz.clamp(v_min, v_max) - v_min) / delta  # fractional atom index in [0, n-1]
    lower = b.floor().long().clamp(0, n - 1)
    upper = b.ceil().long().clamp(0, n - 1)
    # an atom landing exactly on the grid (lower == upper) keeps all its mass there
    w_upper = b - lower.to(b.dtype)
    w_lower = 1.0 - w_upper
    out = torch.zeros_like(next_probs)
    out.scatter_add_(1, lower, next_probs * w_lower)
    out.scatter_add_(1, upper, next_probs * w_upper)
    return out


class _CriticNet(nn.Module):
    """One critic: trunk (state → feature) + causal head over the chunk's actions.

    The head embeds each action with its position, pools the embeddings of the first j
    actions (a running mean: causal, prefix j never sees later actions) and reads Q of the
    prefix from [feature, pooled prefix] with an MLP shared by all positions. It is cheap
    enough for CPU training, where a causal transformer over k tokens costs ~10x more.
    """

    def __init__(self, cfg: CriticConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = cfg.state_dim
        for _ in range(cfg.trunk_layers):
            layers += [nn.Linear(dim, cfg.width), nn.LayerNorm(cfg.width), nn.GELU()]
            dim = cfg.width
        self.trunk = nn.Sequential(*layers)
        w = cfg.head_width
        self.feature = nn.Linear(dim, w)
        self.action_in = nn.Sequential(nn.Linear(cfg.action_dim, w), nn.GELU(), nn.Linear(w, w))
        self.position = nn.Parameter(torch.zeros(cfg.chunk, w))
        nn.init.normal_(self.position, std=0.02)
        head: list[nn.Module] = [nn.LayerNorm(2 * w), nn.Linear(2 * w, w), nn.GELU()]
        for _ in range(cfg.head_layers - 1):
            head += [nn.Linear(w, w), nn.GELU()]
        self.head = nn.Sequential(*head, nn.Linear(w, cfg.outputs))
        self.register_buffer(
            "count", torch.arange(1, cfg.chunk + 1, dtype=torch.float32)[:, None], persistent=False
        )

    def forward(
        self, state: torch.Tensor, actions: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, S), (B, k, n) → (B, k, outputs): output j-1 is Q of the first j actions; with
        ``positions`` (B, P) in 1..k only those prefixes: (B, P, outputs)."""
        feature = self.feature(self.trunk(state))  # (B, w)
        embedded = self.action_in(actions) + self.position  # (B, k, w)
        prefix = embedded.cumsum(1) / self.count  # mean of the first j embeddings
        if positions is not None:  # the head (the costly part) only where it is read
            index = (positions.to(prefix.device) - 1)[..., None].expand(-1, -1, prefix.shape[-1])
            prefix = prefix.gather(1, index)
        x = torch.cat([feature[:, None, :].expand_as(prefix), prefix], dim=-1)
        return self.head(x)


class ChunkCritic(nn.Module):
    """One or two (TD3's twin) critics of the same kind; inputs are normalised."""

    def __init__(self, cfg: CriticConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.nets = nn.ModuleList(_CriticNet(cfg) for _ in range(cfg.critics))
        self.register_buffer("atoms", support(cfg), persistent=False)

    def forward(
        self, state: torch.Tensor, actions: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw outputs of every critic: (C, B, k, outputs) — logits or scalars; with
        ``positions`` (B, P) in 1..k only those chunk prefixes: (C, B, P, outputs)."""
        return torch.stack([net(state, actions, positions) for net in self.nets])

    def last(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Raw outputs for the whole chunk only: (C, B, outputs)."""
        full = torch.full((state.shape[0], 1), self.cfg.chunk, device=state.device)
        return self(state, actions, full)[:, :, 0]

    def values(self, raw: torch.Tensor) -> torch.Tensor:
        """Expected values of raw outputs (…, outputs) → (…): the mean of the categorical
        distribution (distributional) or the scalar itself."""
        if self.cfg.distributional:
            return raw.softmax(-1) @ self.atoms
        return raw[..., 0]

    @torch.no_grad()
    def progress(
        self, state: torch.Tensor, actions: torch.Tensor, position: int | None = None
    ) -> torch.Tensor:
        """ρ: the value of the chunk prefix of ``position`` actions (default the whole
        chunk), averaged over the twin critics; (B,)."""
        j = self.cfg.chunk if position is None else int(position)
        if not 1 <= j <= self.cfg.chunk:
            raise ValueError(f"position must be in [1, {self.cfg.chunk}], got {j}")
        where = torch.full((state.shape[0], 1), j, device=state.device)
        return self.values(self(state, actions, where)[:, :, 0]).mean(0)


class ChunkActor(nn.Module):
    """TD3+BC's deterministic actor: an MLP from the normalised state to a normalised chunk."""

    def __init__(self, cfg: CriticConfig, width: int = 256) -> None:
        super().__init__()
        self.chunk, self.action_dim = cfg.chunk, cfg.action_dim
        self.net = nn.Sequential(
            nn.Linear(cfg.state_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, cfg.chunk * cfg.action_dim),
        )  # fmt: skip

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state).view(-1, self.chunk, self.action_dim)


# --- the shared trunk -----------------------------------------------------------------------
class PolicyTrunk:
    """A policy checkpoint's frozen encoder as the critic's shared trunk: per episode step,
    the encoder's pooled features of the observation the policy would see there."""

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", sha256: str | None = None
    ) -> None:
        path = Path(path)
        try:
            digest = checkpoint_sha256(path)
            self.policy = load_policy(path, device=device)
        except (OSError, CheckpointError) as exc:
            raise CriticError(f"critic trunk: cannot load policy {path} ({exc})") from None
        if sha256 is not None and digest != sha256:
            raise CriticError(
                f"critic trunk: policy {path} is not the one the critic was trained on "
                f"(sha256 {digest[:12]}…, expected {sha256[:12]}…)"
            )
        self.path, self.sha256 = path.resolve(), digest
        self.policy.model.requires_grad_(False)
        self.cameras = list(self.policy.config.cameras)
        self.object_poses = bool(self.policy.meta.get("object_poses", not self.cameras))

    @property
    def dim(self) -> int:
        return int(self.policy.model.encoder.pooled_dim)

    def describe(self) -> dict[str, Any]:
        return {"kind": "policy", "path": str(self.path), "sha256": self.sha256}

    @torch.no_grad()
    def episode_features(self, episode: Episode, batch_size: int = 256) -> np.ndarray:
        """(T, dim) float32: the pooled features at every step of ``episode``."""
        for camera in self.cameras:
            if len(episode.images.get(camera, ())) == 0:
                raise CriticError(
                    f"episode {episode.episode_id}: the critic's trunk (policy {self.path}) "
                    f"needs frames of camera {camera!r}; read the episode with its images"
                )
        states = episode.states(self.object_poses)
        out = []
        for i in range(0, len(episode), batch_size):
            steps = range(i, min(i + batch_size, len(episode)))
            images = None
            if self.cameras:
                images = np.stack([np.stack([episode.frame(c, t) for c in self.cameras])
                                   for t in steps])  # fmt: skip
            obs = self.policy.observation(states[i : steps.stop], [episode.instruction] *
                                          len(steps), images)  # fmt: skip
            out.append(self.policy.model.encode(obs).pooled.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def dataset_features(self, data: str | Path, episodes: Sequence[Episode]) -> list[np.ndarray]:
        """Features of ``episodes`` (read from ``data``). A pixels policy's frames are read
        again one episode at a time, so a dataset's frames never sit in memory at once."""
        if not self.cameras:
            return [self.episode_features(e) for e in episodes]
        from grrl_learner.episodes import read_dataset

        out = []
        for episode in episodes:
            if all(len(episode.images.get(c, ())) for c in self.cameras):
                out.append(self.episode_features(episode))
                continue
            found = read_dataset(data, include_incomplete=True, load_images=True,
                                 episode_ids=[episode.episode_id])  # fmt: skip
            if len(found) != 1:
                raise CriticError(f"{data}: cannot read episode {episode.episode_id} again")
            out.append(self.episode_features(found[0]))
        return out


# --- checkpoints ----------------------------------------------------------------------------
@dataclass
class LoadedCritic:
    """A critic ready for scoring episodes: model, normalisation, what it observes."""

    model: ChunkCritic
    norm: NormStats
    object_poses: bool
    meta: dict[str, Any]
    trunk: PolicyTrunk | None = None  # None: the critic's own trunk (state only)

    @property
    def config(self) -> CriticConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, episode: Episode, features: np.ndarray | None = None) -> np.ndarray:
        """The critic's input at every step of ``episode``, (T, state_dim): the normalised
        state, then (shared trunk) the policy features — ``features`` if already computed."""
        states = self.norm.normalize_state(episode.states(self.object_poses)).astype(np.float32)
        if self.trunk is None:
            return states
        if features is None:
            features = self.trunk.episode_features(episode)
        return np.concatenate([states, np.asarray(features, np.float32)], axis=1)


def save_critic(
    path: str | Path,
    model: ChunkCritic,
    norm: NormStats,
    object_poses: bool,
    meta: dict[str, Any] | None = None,
    trunk: PolicyTrunk | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``path`` atomically."""
    document = {
        "format": FORMAT,
        "critic": model.cfg.to_dict(),
        "normalization": norm.to_dict(),
        "object_poses": bool(object_poses),
        "trunk": OWN_TRUNK if trunk is None else trunk.describe(),
        "meta": meta or {},
    }
    return save_checkpoint_dir(path, document, model)


def load_critic(
    path: str | Path, device: str | torch.device = "cpu", policy: str | Path | None = None
) -> LoadedCritic:
    """Read a critic checkpoint; CriticError (one line naming the path) if it cannot. A
    shared-trunk critic also loads its policy: from ``policy`` if given (a moved checkpoint),
    else from the recorded path; either way it must be the same checkpoint (sha256)."""
    document = read_checkpoint_json(path, FORMAT, "critic", CriticError)
    try:
        cfg = CriticConfig.from_dict(document["critic"])
        norm = NormStats.from_dict(document["normalization"])
        object_poses = bool(document["object_poses"])
        trunk_doc = dict(document.get("trunk", OWN_TRUNK))  # older checkpoints: own trunk
        if trunk_doc["kind"] not in ("own", "policy"):
            raise ValueError(f"unknown trunk kind {trunk_doc['kind']!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CriticError(f"{Path(path) / CONFIG_NAME}: bad config ({exc})") from None
    model = ChunkCritic(cfg)
    load_checkpoint_weights(model, path, device, CriticError)
    trunk = None
    if trunk_doc["kind"] == "policy":
        trunk = PolicyTrunk(policy or trunk_doc["path"], device, sha256=trunk_doc["sha256"])
    return LoadedCritic(model, norm, object_poses, document.get("meta", {}), trunk)
