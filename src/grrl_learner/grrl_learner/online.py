"""Online RL in the flow policy's noise space (SPEC §4 "Online RL in noise space"), ROS-free.

The flow policy π_θ (encoder + action expert, frozen) integrates a chunk from an initial noise
ε; its noise-predictor head π_θ' picks ε, and only that head learns online. Three learners:

* **Q_φ(o, a)**: distributional (C51 on [0, 1], :class:`~grrl_learner.critic.ChunkCritic`) on
  the *executed* chunks — the smoother's commands over each chunk's span, what the robot got —
  with standard TD3: twin critics, Polyak targets, the pessimistic twin's distribution as the
  bootstrap, target smoothing (clipped Gaussian noise on the target policy's chunk
  a' = π_θ(o' | π_θ'_target(o'))), delayed actor updates;
* **Q_φ'(o, ε)**: a critic of the initial noise on the same support, distilled by
  cross-entropy to Q_φ(o, π_θ(o | ε)) with ε ~ N(0, I) w.p. ``gaussian_mix`` (0.5), else
  from the noise policy ε ~ N(π_θ'(o), I);
* **π_θ'**: loss E[−Q_φ'(o, ε) + c·max(½‖ε‖² − β, 0)], ε ~ N(π_θ'(o), I) (reparameterised:
  the head is the mean of the noise policy, see :mod:`grrl_policy.deployed`). β defaults to
  d/2 + 3·sqrt(d/2) (d = k·n): ½‖ε‖² of an N(0, I) draw has mean d/2 and std sqrt(d/2), so
  the noise the expert was trained on is unpenalised and only far-out ε pay.

Critics read the frozen encoder's pooled features next to the normalised state, and actions in
the model's normalised action space (relative to the chunk's start in ``delta`` mode), the
space π_θ(o | ε) lives in.

Data: per episode an :class:`EpisodeRecord` (per chunk: the state, ε, the executed chunk; the
episode's length and success). A chunk starting at t is one transition: it ends the episode
iff t + k >= T (reward γ^(T−t)·I(success), SPEC's sparse reward), else it bootstraps from the
first chunk observed at or after t + k with discount γ^(Δt). :class:`ReplayBuffers`: rollouts
of the offline policy (version 0) are the off-policy buffer; the on-policy buffer holds the two
latest policy versions, an older version moves to off-policy; a batch draws half from each.

:class:`OnlineLearner` is what a node or the fast sim loop drives: ``add_episode`` (persisted
at once: npz + json), ``maybe_update`` (warm-up: critic-only steps on the offline rollouts,
then every ``update_every`` new episodes ``steps_per_update`` steps → a policy checkpoint,
version + 1), ``save_state``/``load_state`` (weights and optimiser moments in safetensors).
Every batch is drawn from a generator seeded by (seed, optimisation step), so a resumed
learner makes exactly the update the uninterrupted one would.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from grrl_common.atomic import write_directory_atomically
from grrl_common.errors import GrrlError
from grrl_learner.critic import ChunkCritic, CriticConfig, project_categorical
from grrl_learner.train_bc import load_optimizer_tensors, optimizer_tensors
from grrl_policy.checkpoint import checkpoint_sha256, load_policy, save_policy
from grrl_policy.deployed import NOISE_META, uses_noise_predictor

FORMAT = "grrl-online-1"
LEARNER_DIR = "learner"
EPISODES_DIR = "episodes"
STATE_DIR = "state"
INDEX_NAME = "buffers.json"
CURVE_NAME = "curve.jsonl"
UPDATES_NAME = "updates.jsonl"
STATE_FILES = ("learner.json", "weights.safetensors", "optimizers.safetensors")
# settings a resumed learner may change (the rest must match the saved run)
RESUMABLE_CHANGES = ("device",)


class OnlineError(GrrlError):
    """Online RL cannot go on as asked (bad episode, incompatible state); one line."""


@dataclass
class OnlineConfig:
    batch_size: int = 64  # half from each buffer
    lr_critic: float = 3e-4
    lr_noise_critic: float = 3e-4
    lr_predictor: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    atoms: int = 101
    gamma: float = 0.995  # per control step
    critic_width: int = 256
    critic_head_width: int = 128
    critic_head_layers: int = 2
    tau: float = 0.005  # Polyak rate of the targets
    policy_delay: int = 2  # TD3: the predictor and the targets move every this many steps
    target_noise: float = 0.2  # TD3 target smoothing, normalised action units
    target_noise_clip: float = 0.5
    penalty_c: float = 1.0
    penalty_beta: float | None = None  # None: d/2 + 3·sqrt(d/2), d = k·n
    gaussian_mix: float = 0.5  # distillation: ε ~ N(0, I) with this probability, else π_θ'
    warmup_episodes: int = 24  # offline-policy rollouts before the first update
    warmup_steps: int = 500  # critic-only steps on them (the paper's warm start)
    update_every: int = 12  # new episodes per update
    steps_per_update: int = 50
    on_policy_versions: int = 2
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        for name in ("batch_size", "atoms", "policy_delay", "warmup_episodes", "update_every",
                     "steps_per_update", "on_policy_versions"):  # fmt: skip
            if getattr(self, name) < 1:
                raise OnlineError(f"online config: {name} must be >= 1")
        if self.warmup_steps < 0:
            raise OnlineError("online config: warmup_steps must be >= 0")
        if not 0.0 <= self.gaussian_mix <= 1.0:
            raise OnlineError("online config: gaussian_mix must be in [0, 1]")
        if self.penalty_c < 0:
            raise OnlineError("online config: penalty_c must be >= 0")


# --- losses -----------------------------------------------------------------------------------
def default_beta(noise_dim: int) -> float:
    """β = d/2 + 3·sqrt(d/2): three standard deviations above the mean of ½‖ε‖², ε ~ N(0, I_d)."""
    return noise_dim / 2 + 3.0 * math.sqrt(noise_dim / 2)


def noise_penalty(noise: torch.Tensor, beta: float) -> torch.Tensor:
    """max(½‖ε‖² − β, 0) per sample: (B, ...) → (B,); exactly zero inside the β ball."""
    return torch.relu(0.5 * noise.flatten(1).pow(2).sum(1) - beta)


def noise_predictor_loss(
    q_noise: torch.Tensor, noise: torch.Tensor, penalty_c: float, beta: float
) -> torch.Tensor:
    """E[−Q_φ'(o, ε) + c·max(½‖ε‖² − β, 0)] over the batch (``q_noise`` (B,): Q_φ' values)."""
    return (-q_noise + penalty_c * noise_penalty(noise, beta)).mean()


def mix_noise(
    predicted: torch.Tensor, gaussian_fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distillation noise: per sample N(0, I) w.p. ``gaussian_fraction``, else ``predicted``.

    → (ε (B, k, n), from_gaussian (B,) bool). Draws on the CPU generator, then moves.
    """
    b = predicted.shape[0]
    from_gaussian = torch.rand(b, generator=generator) < gaussian_fraction
    gaussian = torch.randn(tuple(predicted.shape), generator=generator)
    where = from_gaussian.to(predicted.device).view(-1, *([1] * (predicted.dim() - 1)))
    return torch.where(where, gaussian.to(predicted), predicted), from_gaussian


def categorical_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−Σ target·log softmax(logits) over the atoms: (…, A), (…, A) → (…)."""
    return -(target * logits.log_softmax(-1)).sum(-1)


def pessimistic_probs(critic: ChunkCritic, raw: torch.Tensor) -> torch.Tensor:
    """TD3's min over twins for a distribution: per sample, the probabilities of the twin
    whose mean is lower. ``raw`` (C, B, A) logits → (B, A)."""
    lower = critic.values(raw).argmin(0)
    return raw.softmax(-1)[lower, torch.arange(raw.shape[1], device=raw.device)]


# --- episodes ---------------------------------------------------------------------------------
@dataclass
class EpisodeRecord:
    """One episode as executed, per chunk (robot units).

    ``steps`` (C,): the control step whose observation each chunk was conditioned on (its start;
    strictly increasing, < ``length``); ``states`` (C, S): the policy state vectors there;
    ``noises`` (C, k, n): the initial flow noise each chunk was integrated from; ``executed``
    (C, k, n): the commands the smoother actually sent at steps t..t+k−1 after the chunk's start
    t, padded past the episode's end with the last command sent; ``images`` (C, V, H, W, 3)
    uint8 for pixel policies. ``length``: control steps T of the episode.
    """

    steps: np.ndarray
    states: np.ndarray
    noises: np.ndarray
    executed: np.ndarray
    length: int
    success: bool
    policy_version: int
    images: np.ndarray | None = None
    instruction: str = ""
    episode_id: str = ""

    ARRAYS = ("steps", "states", "noises", "executed", "images")

    def check(self, chunk_shape: tuple[int, int], state_dim: int) -> None:
        """Raise OnlineError (one line) if the arrays do not fit a policy of this shape."""
        c = len(self.steps)
        where = f"episode {self.episode_id or '?'}"
        if self.states.shape != (c, state_dim):
            raise OnlineError(f"{where}: states {self.states.shape}, expected {(c, state_dim)}")
        for name in ("noises", "executed"):
            shape = getattr(self, name).shape
            if shape != (c, *chunk_shape):
                raise OnlineError(f"{where}: {name} {shape}, expected {(c, *chunk_shape)}")
        if self.images is not None and len(self.images) != c:
            raise OnlineError(f"{where}: {len(self.images)} images for {c} chunks")
        steps = np.asarray(self.steps)
        if c and (np.any(np.diff(steps) <= 0) or steps[0] < 0 or steps[-1] >= self.length):
            raise OnlineError(f"{where}: chunk steps must increase within [0, {self.length})")
        for name in ("states", "noises", "executed"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise OnlineError(f"{where}: non-finite {name}")

    def save_npz(self, path: Path) -> None:
        """Arrays only (the scalars go to the json index), written atomically; no pickle."""
        arrays = {
            n: np.asarray(getattr(self, n)) for n in self.ARRAYS if getattr(self, n) is not None
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def meta(self) -> dict[str, Any]:
        return {"length": int(self.length), "success": bool(self.success),
                "policy_version": int(self.policy_version), "instruction": self.instruction,
                "episode_id": self.episode_id}  # fmt: skip

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> EpisodeRecord:
        with np.load(path, allow_pickle=False) as data:
            arrays = {n: data[n] for n in cls.ARRAYS if n in data.files}
        return cls(**arrays, **meta)


def chunk_transitions(
    steps: np.ndarray, length: int, success: bool, chunk: int, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per chunk: (next chunk index or −1 if terminal, reward, discount).

    The chunk at t ends the episode iff t + k >= T: terminal, reward γ^(T−t)·I(success). Else it
    bootstraps from the first chunk observed at t' >= t + k with discount γ^(t'−t) (t' = t + k
    when chunks start every r steps and r divides k); with none observed it counts as terminal.
    """
    steps = np.asarray(steps, np.int64)
    if steps.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    nxt = np.searchsorted(steps, steps + chunk, side="left")
    bootstrap = (steps + chunk < length) & (nxt < len(steps))
    next_index = np.where(bootstrap, nxt, -1)
    gap = np.where(bootstrap, steps[np.minimum(nxt, len(steps) - 1)] - steps, 0)
    discount = np.where(bootstrap, gamma ** gap.astype(np.float64), 0.0)
    reward = np.where(bootstrap, 0.0, gamma ** (length - steps).astype(np.float64) * bool(success))
    return next_index, reward.astype(np.float32), discount.astype(np.float32)


@dataclass
class StoredEpisode:
    """A buffered episode with its transition table (see :func:`chunk_transitions`)."""

    index: int  # arrival order (the learner's episode number)
    record: EpisodeRecord
    next_index: np.ndarray
    reward: np.ndarray
    discount: np.ndarray

    @property
    def version(self) -> int:
        return int(self.record.policy_version)

    def __len__(self) -> int:
        return len(self.record.steps)


class ReplayBuffers:
    """Off-policy and on-policy episode buffers; batches draw equally from both.

    Version 0 (the offline policy: the warm-up rollouts) always goes off-policy. On-policy
    holds the ``keep`` latest versions (of those published, see :meth:`advance`, or seen);
    when a newer one arrives the oldest version's episodes move to off-policy, in order.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.latest = 0
        self.on_policy: list[StoredEpisode] = []
        self.off_policy: list[StoredEpisode] = []
        self._rows: dict[str, np.ndarray] = {}

    def _on_policy_version(self, version: int) -> bool:
        return version >= 1 and version > self.latest - self.keep

    def advance(self, version: int) -> None:
        """A newer policy version exists: episodes of versions that fell out move off-policy."""
        if version <= self.latest:
            return
        self.latest = version
        stale = [e for e in self.on_policy if not self._on_policy_version(e.version)]
        if stale:
            self.on_policy = [e for e in self.on_policy if self._on_policy_version(e.version)]
            self.off_policy.extend(stale)
        self._rows.clear()

    def add(self, episode: StoredEpisode) -> str:
        """Buffer ``episode``; returns ``"on_policy"`` or ``"off_policy"``."""
        self.advance(episode.version)
        self._rows.clear()
        if self._on_policy_version(episode.version):
            self.on_policy.append(episode)
            return "on_policy"
        self.off_policy.append(episode)
        return "off_policy"

    def on_policy_versions(self) -> list[int]:
        return sorted({e.version for e in self.on_policy})

    def membership(self) -> dict[int, str]:
        """Episode index → the buffer holding it."""
        return {e.index: name for name in ("on_policy", "off_policy") for e in getattr(self, name)}

    def _cumulative(self, name: str) -> np.ndarray:
        if name not in self._rows:
            self._rows[name] = np.cumsum([len(e) for e in getattr(self, name)], dtype=np.int64)
        return self._rows[name]

    def transitions(self, name: str) -> int:
        rows = self._cumulative(name)
        return int(rows[-1]) if rows.size else 0

    def __len__(self) -> int:
        return self.transitions("on_policy") + self.transitions("off_policy")

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[list[tuple[StoredEpisode, int]], torch.Tensor]:
        """``batch_size`` transitions, half from each buffer (all from one when the other is
        empty), uniform within a buffer → ([(episode, chunk)], on_policy flags (B,) bool)."""
        on, off = self.transitions("on_policy"), self.transitions("off_policy")
        if on + off == 0:
            raise OnlineError("no transitions to sample: add episodes first")
        n_on = 0 if on == 0 else (batch_size if off == 0 else batch_size // 2)
        rows: list[tuple[StoredEpisode, int]] = []
        for name, count, total in (("on_policy", n_on, on), ("off_policy", batch_size - n_on, off)):
            if count == 0:
                continue
            picks = torch.randint(total, (count,), generator=generator).numpy()
            ends = self._cumulative(name)
            which = np.searchsorted(ends, picks, side="right")
            episodes = getattr(self, name)
            for e, pick in zip(which, picks, strict=True):
                start = ends[e] - len(episodes[e])
                rows.append((episodes[e], int(pick - start)))
        flags = torch.zeros(batch_size, dtype=torch.bool)
        flags[:n_on] = True
        return rows, flags


# --- the learner ------------------------------------------------------------------------------
@dataclass
class _Batch:
    obs: Any  # ObservationBatch at the chunks' starts
    next_obs: Any  # ObservationBatch at the bootstrap chunks (a placeholder where terminal)
    actions: torch.Tensor  # (B, k, n) executed chunks, normalised model space
    reward: torch.Tensor
    discount: torch.Tensor
    on_policy: torch.Tensor


@dataclass
class UpdateStats:
    critic_loss: float = 0.0
    distill_loss: float = 0.0
    predictor_loss: float = 0.0
    q_noise: float = 0.0  # Q_φ'(o, π_θ'(o)) of the last predictor step
    penalised: float = 0.0  # fraction of predicted ε outside the β ball
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _polyak(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, p in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(p, tau)


def _write_json(path: Path, document: Any) -> None:
    """Atomically and durably: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(document, indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class OnlineLearner:
    """Noise-space online RL on one base policy checkpoint; state lives under ``out_dir``.

    Layout: ``curve.jsonl`` (per episode: index, success, version), ``checkpoints/vNNNN``
    (published policies), ``learner/episodes/NNNNNN.npz`` + ``learner/buffers.json`` (every
    episode, written when added), ``learner/state`` (weights, optimiser moments, counters;
    written by :meth:`save_state`), ``learner/updates.jsonl`` (losses per update).
    """

    def __init__(
        self, base_checkpoint: str | Path, out_dir: str | Path, config: OnlineConfig | None = None
    ) -> None:
        cfg = config or OnlineConfig()
        cfg.check()
        self.cfg = cfg
        self.base_checkpoint = Path(base_checkpoint)
        self.base_sha256 = checkpoint_sha256(self.base_checkpoint)
        self.policy = load_policy(self.base_checkpoint, device=cfg.device)
        self.model = self.policy.model
        self.model.requires_grad_(False)  # the backbone (encoder, expert) stays frozen
        self.predictor = self.model.noise_predictor
        if not uses_noise_predictor(self.policy):
            # from an offline policy: a zero mean shift, so version 1 starts as the offline
            # policy (ε ~ N(0, I)) whatever the head held (BC does not train it)
            self.model.zero_noise_shift()
        self.predictor.requires_grad_(True)
        self.chunk_shape = self.model.chunk_shape
        k, n = self.chunk_shape
        self.beta = cfg.penalty_beta if cfg.penalty_beta is not None else default_beta(k * n)
        self.state_dim = self.policy.config.state_dim
        feature_dim = self.state_dim + self.model.encoder.pooled_dim
        self.critic_cfg = CriticConfig(
            state_dim=feature_dim, action_dim=n, chunk=k, atoms=cfg.atoms, gamma=cfg.gamma,
            width=cfg.critic_width, head_width=cfg.critic_head_width,
            head_layers=cfg.critic_head_layers, twin=True,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # the same seed builds the same critics
            torch.manual_seed(cfg.seed)
            self.critic = ChunkCritic(self.critic_cfg).to(cfg.device)
            self.noise_critic = ChunkCritic(replace(self.critic_cfg, twin=False)).to(cfg.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.predictor_target = copy.deepcopy(self.predictor).requires_grad_(False)
        self.optimizers = {
            "critic": torch.optim.AdamW(self.critic.parameters(), lr=cfg.lr_critic,
                                        weight_decay=cfg.weight_decay),
            "noise_critic": torch.optim.AdamW(self.noise_critic.parameters(),
                                              lr=cfg.lr_noise_critic,
                                              weight_decay=cfg.weight_decay),
            "predictor": torch.optim.AdamW(self.predictor.parameters(), lr=cfg.lr_predictor,
                                           weight_decay=cfg.weight_decay),
        }  # fmt: skip
        self.buffers = ReplayBuffers(cfg.on_policy_versions)
        self.version = 0
        self.optim_steps = 0
        self.episodes_added = 0
        self.episodes_at_update = 0
        self.warmed_up = False
        self.checkpoints: list[dict[str, Any]] = []  # {"version", "path", "sha256", "episodes"}
        self._index: list[dict[str, Any]] = []  # buffers.json entries, in arrival order
        self.last_stats: UpdateStats | None = None
        self.out = Path(out_dir)
        self.learner_dir = self.out / LEARNER_DIR
        (self.learner_dir / EPISODES_DIR).mkdir(parents=True, exist_ok=True)

    # --- episodes -------------------------------------------------------------------------
    @property
    def curve_path(self) -> Path:
        return self.out / CURVE_NAME

    @property
    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest published checkpoint ({"version", "path", "sha256", "episodes"})."""
        return self.checkpoints[-1] if self.checkpoints else None

    def _store(self, index: int, record: EpisodeRecord) -> StoredEpisode:
        nxt, reward, discount = chunk_transitions(
            record.steps, record.length, record.success, self.chunk_shape[0], self.cfg.gamma
        )
        return StoredEpisode(index, record, nxt, reward, discount)

    def add_episode(self, record: EpisodeRecord) -> str:
        """Buffer an episode and persist it before returning (npz, then the json index, then
        the curve line); returns the buffer it went to."""
        record.check(self.chunk_shape, self.state_dim)
        index = self.episodes_added
        record.save_npz(self.learner_dir / EPISODES_DIR / f"{index:06d}.npz")
        where = self.buffers.add(self._store(index, record))
        self.episodes_added += 1
        self._index.append({"index": index, **record.meta()})
        self._write_index()
        with open(self.curve_path, "a") as handle:
            handle.write(json.dumps(self._curve_row(self._index[-1])) + "\n")
        return where

    @staticmethod
    def _curve_row(entry: dict[str, Any]) -> dict[str, Any]:
        return {"episode": entry["index"], "success": entry["success"],
                "version": entry["policy_version"]}  # fmt: skip

    def _write_index(self) -> None:
        buffers = self.buffers.membership()
        entries = [{**e, "buffer": buffers[e["index"]]} for e in self._index]
        _write_json(self.learner_dir / INDEX_NAME,
                    {"format": FORMAT, "episodes_added": self.episodes_added,
                     "episodes": entries})  # fmt: skip

    # --- cadence --------------------------------------------------------------------------
    def episodes_until_update(self) -> int:
        """New episodes still needed before :meth:`maybe_update` trains (0: due now)."""
        if not self.warmed_up:
            return max(0, self.cfg.warmup_episodes - self.episodes_added)
        return max(0, self.cfg.update_every - (self.episodes_added - self.episodes_at_update))

    def maybe_update(self) -> Path | None:
        """When due, train (warm-up first, once) and publish the new noise predictor as a
        policy checkpoint (version + 1); returns its path, else None."""
        if self.episodes_until_update() > 0 or len(self.buffers) == 0:
            return None
        started = time.monotonic()
        warmup = UpdateStats()
        if not self.warmed_up:
            warmup = self._train(self.cfg.warmup_steps, predictor=False)
            self.warmed_up = True
        stats = self._train(self.cfg.steps_per_update, predictor=True)
        path = self._publish()
        self.save_state()
        with open(self.learner_dir / UPDATES_NAME, "a") as handle:
            handle.write(json.dumps({
                "version": self.version, "episodes": self.episodes_added,
                "optim_steps": self.optim_steps, "seconds": round(time.monotonic() - started, 3),
                "on_policy_transitions": self.buffers.transitions("on_policy"),
                "off_policy_transitions": self.buffers.transitions("off_policy"),
                "warmup_steps": warmup.steps, "warmup_critic_loss": warmup.critic_loss,
                **{k: v for k, v in asdict(stats).items() if k != "extra"},
            }) + "\n")  # fmt: skip
        self.last_stats = stats
        return path

    def _publish(self) -> Path:
        self.version += 1
        self.episodes_at_update = self.episodes_added
        path = self.out / "checkpoints" / f"v{self.version:04d}"
        meta = {
            **self.policy.meta,
            NOISE_META: "predictor",
            # no paths or times: a resumed learner publishes byte-identical checkpoints
            "online": {"version": self.version, "base_sha256": self.base_sha256,
                       "episodes": self.episodes_added, "optim_steps": self.optim_steps},
        }  # fmt: skip
        save_policy(path, self.model, self.policy.norm, self.policy.joint_names,
                    self.policy.control_dt, meta)  # fmt: skip
        self.checkpoints.append({"version": self.version, "path": str(path),
                                 "sha256": checkpoint_sha256(path),
                                 "episodes": self.episodes_added})  # fmt: skip
        self.buffers.advance(self.version)
        self._write_index()  # buffer membership changed
        return path

    # --- optimisation ---------------------------------------------------------------------
    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)

    def _gather(self, rows: Sequence[tuple[StoredEpisode, int]], on_policy: torch.Tensor) -> _Batch:
        """Model inputs of sampled transitions (normalised; executed chunks in model space)."""
        n = self.chunk_shape[1]
        recs = [(e.record, c, int(e.next_index[c])) for e, c in rows]
        states = np.stack([r.states[c] for r, c, _ in recs])
        next_states = np.stack([r.states[max(nc, c)] for r, c, nc in recs])  # terminal: itself
        images = next_images = None
        if recs[0][0].images is not None:
            images = np.stack([r.images[c] for r, c, _ in recs])
            next_images = np.stack([r.images[max(nc, c)] for r, c, nc in recs])
        executed = np.stack([r.executed[c] for r, c, _ in recs]).astype(np.float32)
        if self.policy.config.action_mode == "delta":  # the model's chunks are relative
            executed = executed - states[:, None, :n]
        actions = torch.from_numpy(self.policy.norm.normalize_action(executed).astype(np.float32))
        instructions = [
            r.instruction or self.policy.meta.get("instruction", "") for r, _, _ in recs
        ]
        dev = self.cfg.device
        return _Batch(
            obs=self.policy.observation(states, instructions, images),
            next_obs=self.policy.observation(next_states, instructions, next_images),
            actions=actions.to(dev),
            reward=torch.tensor(np.array([e.reward[c] for e, c in rows]), device=dev),
            discount=torch.tensor(np.array([e.discount[c] for e, c in rows]), device=dev),
            on_policy=on_policy,
        )

    def _features(self, obs: Any) -> tuple[Any, torch.Tensor]:
        """(encoder output, critic features = [normalised state, pooled features])."""
        ctx = self.model.encode(obs)
        return ctx, torch.cat([obs.state.float(), ctx.pooled.float()], dim=1)

    def _predict(self, head: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        """The head's mean ε, (B, k, n)."""
        return head(pooled).view(-1, *self.chunk_shape).float()

    def _sample(
        self, head: nn.Module, pooled: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """ε ~ N(head(o), I): the noise policy as deployed (grrl_policy.deployed)."""
        mean = self._predict(head, pooled)
        return mean + torch.randn(tuple(mean.shape), generator=generator).to(mean)

    def _policy_chunk(self, ctx: Any, noise: torch.Tensor) -> torch.Tensor:
        """π_θ(o | ε) in normalised model space (frozen expert)."""
        return self.model.integrate(ctx, noise.to(ctx.pooled.dtype)).float()

    def _step(self, opt_name: str, loss: torch.Tensor, module: nn.Module) -> None:
        opt = self.optimizers[opt_name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
        opt.step()

    def train_step(self, predictor: bool = True) -> dict[str, float]:
        """One optimisation step of Q_φ (TD3), Q_φ' (distillation) and, every ``policy_delay``
        steps when ``predictor``, π_θ' and the targets."""
        cfg, step = self.cfg, self.optim_steps
        g = self._generator(step)
        rows, on_policy = self.buffers.sample(cfg.batch_size, g)
        batch = self._gather(rows, on_policy)
        with torch.no_grad():
            ctx, feats = self._features(batch.obs)
            next_ctx, next_feats = self._features(batch.next_obs)
            # TD3 target: the target policy's chunk at o' with clipped smoothing noise
            next_chunk = self._policy_chunk(
                next_ctx, self._sample(self.predictor_target, next_ctx.pooled, g)
            )
            smoothing = torch.randn(tuple(next_chunk.shape), generator=g) * cfg.target_noise
            next_chunk = next_chunk + smoothing.clamp(
                -cfg.target_noise_clip, cfg.target_noise_clip
            ).to(next_chunk)
            next_probs = pessimistic_probs(
                self.critic_target, self.critic_target.last(next_feats, next_chunk)
            )
            target = project_categorical(next_probs, batch.reward, batch.discount,
                                         self.critic.atoms)  # fmt: skip
        logits = self.critic.last(feats, batch.actions)  # (2, B, A)
        critic_loss = categorical_cross_entropy(logits, target[None]).mean(-1).sum()
        self._step("critic", critic_loss, self.critic)

        with torch.no_grad():  # distillation target: Q_φ(o, π_θ(o | ε)), ε mixed 50/50
            eps, _ = mix_noise(self._sample(self.predictor, ctx.pooled, g), cfg.gaussian_mix, g)
            distill_target = pessimistic_probs(
                self.critic, self.critic.last(feats, self._policy_chunk(ctx, eps))
            )
        distill_logits = self.noise_critic.last(feats, eps)[0]
        distill_loss = categorical_cross_entropy(distill_logits, distill_target).mean()
        self._step("noise_critic", distill_loss, self.noise_critic)

        stats = {"critic_loss": float(critic_loss.detach()),
                 "distill_loss": float(distill_loss.detach()),
                 "on_policy_fraction": float(on_policy.float().mean())}  # fmt: skip
        if step % cfg.policy_delay == 0:
            if predictor:
                stats.update(self._predictor_step(ctx.pooled, feats, g))
                _polyak(self.predictor_target, self.predictor, cfg.tau)
            _polyak(self.critic_target, self.critic, cfg.tau)
        self.optim_steps += 1
        return stats

    def _predictor_step(
        self, pooled: torch.Tensor, feats: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, float]:
        eps = self._sample(self.predictor, pooled, generator)
        q = self.noise_critic.values(self.noise_critic.last(feats, eps))[0]
        loss = noise_predictor_loss(q, eps, self.cfg.penalty_c, self.beta)
        self._step("predictor", loss, self.predictor)
        # the backward also filled Q_φ''s grads; its own step clears them first
        outside = (noise_penalty(eps.detach(), self.beta) > 0).float().mean()
        return {"predictor_loss": float(loss.detach()), "q_noise": float(q.detach().mean()),
                "penalised": float(outside)}  # fmt: skip

    def _train(self, steps: int, predictor: bool) -> UpdateStats:
        out = UpdateStats(steps=steps)
        for _ in range(steps):
            stats = self.train_step(predictor)
            for name, value in stats.items():
                if not math.isfinite(value):
                    raise OnlineError(
                        f"online RL: {name} became {value} at step {self.optim_steps}"
                    )
                if hasattr(out, name):
                    setattr(out, name, value)
                else:
                    out.extra[name] = value
        return out

    # --- persistence ----------------------------------------------------------------------
    def _modules(self) -> dict[str, nn.Module]:
        return {"predictor": self.predictor, "predictor_target": self.predictor_target,
                "critic": self.critic, "critic_target": self.critic_target,
                "noise_critic": self.noise_critic}  # fmt: skip

    def save_state(self) -> Path:
        """Weights, optimiser moments (safetensors) and counters (json), atomically."""
        weights = {f"{name}.{key}": value.detach().cpu().contiguous()
                   for name, module in self._modules().items()
                   for key, value in module.state_dict().items()}  # fmt: skip
        optim_tensors: dict[str, torch.Tensor] = {}
        optim_meta: dict[str, Any] = {}
        for name, opt in self.optimizers.items():
            tensors, meta = optimizer_tensors(opt)
            optim_tensors.update({f"{name}.{k}": v.cpu() for k, v in tensors.items()})
            optim_meta[name] = meta
        document = {
            "format": FORMAT, "config": asdict(self.cfg),
            "base_checkpoint": str(self.base_checkpoint), "base_sha256": self.base_sha256,
            "version": self.version, "optim_steps": self.optim_steps,
            "episodes_at_update": self.episodes_at_update, "warmed_up": self.warmed_up,
            "checkpoints": self.checkpoints, "optimizers": optim_meta,
        }  # fmt: skip

        def write(tmp: Path) -> None:
            (tmp / STATE_FILES[0]).write_text(json.dumps(document, indent=1))
            save_file(weights, str(tmp / STATE_FILES[1]))
            save_file(optim_tensors, str(tmp / STATE_FILES[2]))

        return write_directory_atomically(self.learner_dir / STATE_DIR, write, STATE_FILES)

    def load_state(self) -> bool:
        """Resume from ``out_dir``: every persisted episode (in arrival order, so the buffers
        are rebuilt exactly) and, if saved, weights, optimiser moments and counters. Returns
        False when there is nothing to resume."""
        if self.episodes_added:
            raise OnlineError("load_state on a learner that already has episodes")
        index_path = self.learner_dir / INDEX_NAME
        state_dir = self.learner_dir / STATE_DIR
        if not index_path.is_file() and not state_dir.is_dir():
            return False
        document = (
            json.loads((state_dir / STATE_FILES[0]).read_text()) if state_dir.is_dir() else None
        )
        if document is not None:
            self._check_resumable(document, state_dir)
        entries = json.loads(index_path.read_text())["episodes"] if index_path.is_file() else []
        for entry in entries:
            meta = {k: entry[k] for k in ("length", "success", "policy_version", "instruction",
                                          "episode_id")}  # fmt: skip
            path = self.learner_dir / EPISODES_DIR / f"{entry['index']:06d}.npz"
            record = EpisodeRecord.load(path, meta)
            self.buffers.add(self._store(entry["index"], record))
            self._index.append({"index": entry["index"], **meta})
            self.episodes_added += 1
        if document is not None:
            self._load_weights(document, state_dir)
        self.buffers.advance(self.version)
        self._write_index()
        # the index is the truth: a crash between its write and the curve's loses no line
        self.curve_path.write_text("".join(json.dumps(self._curve_row(e)) + "\n"
                                           for e in self._index))  # fmt: skip
        return True

    def _check_resumable(self, document: dict[str, Any], state_dir: Path) -> None:
        if document.get("format") != FORMAT:
            raise OnlineError(
                f"{state_dir}: format {document.get('format')!r}, expected {FORMAT!r}"
            )
        if document["base_sha256"] != self.base_sha256:
            raise OnlineError(f"{state_dir}: learner state of another base policy "
                              f"({document['base_checkpoint']})")  # fmt: skip
        saved = document["config"]
        known = {f.name for f in fields(OnlineConfig)}
        changed = sorted(k for k in known - set(RESUMABLE_CHANGES)
                         if saved.get(k) != getattr(self.cfg, k))  # fmt: skip
        if changed:
            raise OnlineError(f"{state_dir}: saved with other settings ({', '.join(changed)}); "
                              "resume with the same ones or use a new --out")  # fmt: skip

    def _load_weights(self, document: dict[str, Any], state_dir: Path) -> None:
        weights = load_file(str(state_dir / STATE_FILES[1]), device=self.cfg.device)
        for name, module in self._modules().items():
            prefix = name + "."
            module.load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                                    if k.startswith(prefix)})  # fmt: skip
        optim = load_file(str(state_dir / STATE_FILES[2]), device=self.cfg.device)
        for name, opt in self.optimizers.items():
            prefix = name + "."
            tensors = {k[len(prefix) :]: v for k, v in optim.items() if k.startswith(prefix)}
            load_optimizer_tensors(opt, tensors, document["optimizers"][name])
        self.version = int(document["version"])
        self.optim_steps = int(document["optim_steps"])
        self.episodes_at_update = int(document["episodes_at_update"])
        self.warmed_up = bool(document["warmed_up"])
        self.checkpoints = list(document["checkpoints"])


# --- learning curve ---------------------------------------------------------------------------
def read_curve(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``curve.jsonl`` (episode, success, version)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def moving_average(values: Sequence[float], window: int = 24) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    x = np.asarray(values, np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - window)
    return (cumulative[i] - cumulative[lo]) / (i - lo)


def plot_curve(curve: str | Path, png: str | Path, window: int = 24) -> Path:
    """Moving-average success over ``window`` episodes, policy versions marked, to PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    rows = read_curve(curve)
    episodes = [r["episode"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(episodes, moving_average([float(r["success"]) for r in rows], window),
            label=f"success (moving average over {window})")  # fmt: skip
    for previous, row in zip(rows, rows[1:], strict=False):
        if row["version"] != previous["version"]:
            ax.axvline(row["episode"], color="grey", lw=0.5, ls=":")
    ax.set_xlabel("episode (dotted: a new policy version)")
    ax.set_ylabel("success")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# --- episodes from the live graph (learner_node) --------------------------------------------
@dataclass
class ExecutedChunk:
    """What an ActionChunk says about one chunk: when (its observation's stamp), the noise it
    was integrated from and the policy version."""

    stamp: float  # seconds
    noise: np.ndarray  # (k, n)
    policy_version: int


def record_from_episode(
    episode: Any, chunks: Sequence[ExecutedChunk], with_objects: bool, chunk: int
) -> EpisodeRecord | None:
    """An :class:`EpisodeRecord` from an episode the reader built from the live topics and the
    chunks the policy published during it: each chunk is placed at the step whose joint state
    it was conditioned on (its stamp), its state is that step's policy state, and ``executed``
    are the commands the smoother sent from there on (the episode's per-step commands, padded
    with the last). None when no chunk falls on a step of the episode."""
    times = np.asarray(episode.times, np.float64)
    if len(times) == 0:
        return None
    dt = float(np.median(np.diff(times))) if len(times) > 1 else 0.02
    steps, noises, versions = [], [], []
    for c in sorted(chunks, key=lambda c: c.stamp):
        step = int(np.searchsorted(times, c.stamp - dt / 2))
        if step >= len(times) or abs(times[step] - c.stamp) > dt / 2:
            continue  # conditioned on a state outside this episode
        if steps and step <= steps[-1]:
            continue  # two chunks from one observation: keep the first
        steps.append(step)
        noises.append(np.asarray(c.noise, np.float32))
        versions.append(int(c.policy_version))
    if not steps:
        return None
    commands = np.asarray(episode.commands, np.float32)
    padded = np.concatenate([commands, np.repeat(commands[-1:], chunk, axis=0)])
    executed = np.stack([padded[t : t + chunk] for t in steps])
    states = np.stack([episode.state_vector(t, with_objects) for t in steps]).astype(np.float32)
    return EpisodeRecord(
        steps=np.asarray(steps), states=states, noises=np.stack(noises), executed=executed,
        length=len(times), success=bool(episode.success), policy_version=max(versions),
        instruction=episode.instruction, episode_id=episode.episode_id,
    )  # fmt: skip
