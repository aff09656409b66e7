"""Offline critic training: ``grrl train-critic --data DIR --out CKPT [--kind ...]``.

``distributional`` and ``scalar_td`` critics train with TD3+BC on chunk transitions
(:mod:`grrl_learner.transitions`): twin critics and their Polyak-averaged targets, a
deterministic chunk actor (MLP on the normalised state) whose target, with clipped Gaussian
smoothing noise, picks the bootstrap chunk a' at s_{t+j}; the target is the twin whose value
at (s', a') is lower (for the distributional kind: its whole distribution, C51-projected onto
the support); the actor is updated every ``policy_delay`` steps with
−λ·Q(s, π(s))/mean|Q| + ‖π(s) − a‖². ``regression`` fits the time progress instead.

The trunk is the critic's own (normalised state in) or, with ``policy``, shared with that
policy's frozen encoder (:class:`grrl_learner.critic.PolicyTrunk`: its pooled features beside
the state, computed once per step before training).

Each step supervises the whole-chunk output (j = k) and ``aux_positions`` random shorter chunk
prefixes per sample (Q-chunking; each bootstraps from its own s_{t+j}).

Deterministic: weights from ``seed``, the batch, prefixes and smoothing noise of step s from a
generator seeded by (seed, s). Checkpoints (``grrl_learner.critic``) are written every
``save_every`` steps, at the end, and when ``max_minutes`` runs out.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grrl_common.errors import GrrlError
from grrl_learner import CRITIC_KINDS
from grrl_learner.critic import (
    ChunkActor,
    ChunkCritic,
    CriticConfig,
    PolicyTrunk,
    project_categorical,
    save_critic,
)
from grrl_learner.episodes import Episode, read_dataset
from grrl_learner.transitions import TransitionSet
from grrl_policy.normalization import NormStats

TARGET_ACTIONS = ("policy", "data")


class CriticTrainError(GrrlError):
    """Critic training cannot start; one-line message."""


@dataclass
class CriticTrainConfig:
    data: str
    out: str
    kind: str = "distributional"
    steps: int = 20_000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    grad_clip: float = 1.0
    chunk: int = 20
    atoms: int = 101
    gamma: float = 0.995
    width: int = 256
    head_width: int = 128
    head_layers: int = 2
    hindsight: bool = True
    stride: int = 1  # transitions at every stride-th step
    aux_positions: int = 1  # random chunk prefixes j < k supervised per sample (Q-chunking)
    tau: float = 0.005  # Polyak rate of the targets
    policy_delay: int = 2
    policy_noise: float = 0.2  # target smoothing noise (normalised action units)
    noise_clip: float = 0.5
    bc_lambda: float = 2.5  # TD3+BC's α: weight of the Q term against behaviour cloning
    target_action: str = "policy"  # a' from the target actor, or "data": the recorded chunk
    seed: int = 0
    save_every: int = 1000
    max_minutes: float | None = None
    progress: bool = True
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    policy: str | None = None  # share this policy's frozen encoder as the trunk (None: own)

    def check(self) -> None:
        if self.kind not in CRITIC_KINDS:
            raise CriticTrainError(f"--kind must be one of {CRITIC_KINDS}, got {self.kind!r}")
        if self.target_action not in TARGET_ACTIONS:
            raise CriticTrainError(f"target_action must be one of {TARGET_ACTIONS}")
        for name in ("steps", "batch_size", "chunk", "stride", "policy_delay", "save_every"):
            if getattr(self, name) < 1:
                raise CriticTrainError(f"--{name.replace('_', '-')} must be >= 1")


def load_episodes(data: str) -> tuple[list[Episode], bool]:
    """Complete episodes of a dataset (failed ones too) without images, and whether the
    critic observes object poses (when every episode has them)."""
    episodes = read_dataset(data, load_images=False)
    if not episodes:
        raise CriticTrainError(f"{data}: no complete episodes to train on")
    return episodes, all(e.object_poses is not None for e in episodes)


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class CriticTrainer:
    """Data, critic (+ targets, actor) and optimisers of one run; ``run()`` trains."""

    def __init__(self, cfg: CriticTrainConfig, episodes: Sequence[Episode] | None = None):
        cfg.check()
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # small nets: extra threads mostly contend
        torch.manual_seed(cfg.seed)
        if episodes is None:
            episodes, self.object_poses = load_episodes(cfg.data)
        else:
            self.object_poses = all(e.object_poses is not None for e in episodes)
        self.episodes = list(episodes)
        self.norm = NormStats.from_arrays(
            [e.states(self.object_poses) for e in self.episodes],
            [e.commands for e in self.episodes],
        )
        self.trunk = PolicyTrunk(cfg.policy, cfg.device) if cfg.policy else None
        features = None
        if self.trunk is not None:  # frozen: each step's features are computed once
            features = self.trunk.dataset_features(cfg.data, self.episodes)
        self.data = TransitionSet(self.episodes, self.norm, cfg.chunk, cfg.gamma,
                                  self.object_poses, cfg.hindsight, cfg.stride,
                                  features)  # fmt: skip
        self.critic_cfg = CriticConfig(
            state_dim=self.data.state_dim, action_dim=self.data.action_dim, kind=cfg.kind,
            chunk=cfg.chunk, atoms=cfg.atoms, gamma=cfg.gamma, width=cfg.width,
            head_width=cfg.head_width, head_layers=cfg.head_layers,
        )  # fmt: skip
        device = cfg.device
        self.critic = ChunkCritic(self.critic_cfg).to(device)
        self.critic_opt = torch.optim.AdamW(
            self.critic.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.td = cfg.kind != "regression"
        if self.td:
            self.actor = ChunkActor(self.critic_cfg).to(device)
            self.actor_opt = torch.optim.AdamW(self.actor.parameters(), lr=cfg.lr)
            self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
            self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        segments = self.data.segments
        self.meta: dict[str, Any] = {
            "kind": cfg.kind,
            "data": str(Path(cfg.data).resolve()) if cfg.data else "",
            "episodes": len(self.episodes),
            "successful": sum(e.success is True for e in self.episodes),
            "hindsight_failures": sum(s.hindsight for s in segments),
            "transitions": len(self.data),
            "trunk": "own" if self.trunk is None else str(self.trunk.path),
            "instruction": self.episodes[0].instruction,
            "joint_names": list(self.episodes[0].joint_names),
            "train": asdict(cfg),
        }

    # --- one step -------------------------------------------------------------------------
    def _positions(self, g: torch.Generator, size: int) -> torch.Tensor:
        k = self.cfg.chunk
        if not self.td:
            return torch.arange(1, k + 1).expand(size, k)  # no bootstrapping: all are cheap
        full = torch.full((size, 1), k)
        if k == 1 or self.cfg.aux_positions < 1:
            return full
        aux = torch.randint(1, k, (size, self.cfg.aux_positions), generator=g)
        return torch.cat([full, aux], dim=1)

    def _td_target(self, batch: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
        """Bootstrapped targets per (sample, prefix): (B·P, atoms) probabilities or (B·P,)."""
        cfg, k = self.cfg, self.cfg.chunk
        dev = cfg.device
        next_state = batch["next_state"].reshape(-1, self.data.state_dim).to(dev)
        reward = batch["reward"].reshape(-1).to(dev)
        discount = batch["discount"].reshape(-1).to(dev)
        if cfg.target_action == "data":
            next_actions = self.data.chunk_at(batch["next_episode"].reshape(-1),
                                              batch["next_step"].reshape(-1)).to(dev)  # fmt: skip
        else:
            noise = torch.randn((next_state.shape[0], k, self.data.action_dim), generator=g)
            noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = self.actor_target(next_state) + noise.to(dev)
        raw = self.critic_target.last(next_state, next_actions)  # (C, B·P, out)
        values = self.critic_target.values(raw)  # (C, B·P)
        lower = values.argmin(0)  # TD3: the more pessimistic twin, per sample
        if self.critic_cfg.distributional:
            probs = raw.softmax(-1)[lower, torch.arange(raw.shape[1])]
            return project_categorical(probs, reward, discount, self.critic.atoms)
        return reward + discount * values[lower, torch.arange(raw.shape[1])]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        g = _generator(cfg.seed, step)
        index = torch.randint(len(self.data), (cfg.batch_size,), generator=g)
        positions = self._positions(g, cfg.batch_size)
        batch = self.data.batch(index, positions)
        state = batch["state"].to(cfg.device)
        actions = batch["actions"].to(cfg.device)
        chosen = self.critic(state, actions, positions).flatten(1, 2)  # (C, B·P, out)
        if not self.td:
            target = batch["regression_target"].reshape(-1).to(cfg.device)
            loss = F.mse_loss(chosen[..., 0], target.expand_as(chosen[..., 0]))
        else:
            with torch.no_grad():
                target = self._td_target(batch, g)
            if self.critic_cfg.distributional:
                loss = -(target * chosen.log_softmax(-1)).sum(-1).mean(-1).sum()
            else:
                loss = F.mse_loss(
                    chosen[..., 0], target.expand_as(chosen[..., 0]), reduction="none"
                )
                loss = loss.mean(-1).sum()
        for group in self.critic_opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        stats = {"loss": float(loss.detach())}
        if self.td and step % cfg.policy_delay == 0:
            stats["actor"] = self._actor_step(state, actions)
            self._polyak()
        return stats

    def _actor_step(self, state: torch.Tensor, actions: torch.Tensor) -> float:
        cfg, k = self.cfg, self.cfg.chunk
        chunk = self.actor(state)
        full = torch.full((state.shape[0], 1), k, device=state.device)
        q = self.critic.values(self.critic.nets[0](state, chunk, full)[:, 0])
        lam = cfg.bc_lambda / q.abs().mean().detach().clamp_min(1e-6)
        loss = -lam * q.mean() + F.mse_loss(chunk, actions)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()  # also reaches the critic's grads: cleared before its next step
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
        self.actor_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def _polyak(self) -> None:
        tau = self.cfg.tau
        for target, online in ((self.critic_target, self.critic), (self.actor_target, self.actor)):
            for t, p in zip(target.parameters(), online.parameters(), strict=True):
                t.lerp_(p, tau)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        out = Path(cfg.out)
        log_path = out.with_name(out.name + ".log.jsonl")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            print(
                f"train-critic: {len(self.episodes)} episodes ({self.meta['successful']} "
                f"successful), {self.meta['hindsight_failures']} hindsight failures, "
                f"{len(self.data)} transitions",
                file=sys.stderr,
            )
            bar = tqdm(total=cfg.steps, desc=f"train-critic ({cfg.kind})", unit="step",
                       dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        began = time.monotonic()
        self.critic.train()
        done = 0
        for step in range(cfg.steps):
            stats = self.train_step(step)
            done = step + 1
            if not math.isfinite(stats["loss"]):
                raise CriticTrainError(f"critic loss became {stats['loss']} at step {done}")
            if bar is not None:
                bar.update(1)
                if done % 20 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()})
            out_of_time = cfg.max_minutes is not None and (
                time.monotonic() - began > 60 * cfg.max_minutes
            )
            if done % cfg.save_every == 0 or done == cfg.steps or out_of_time:
                self.save(done)
                with open(log_path, "a") as handle:
                    handle.write(json.dumps({"step": done, **stats}) + "\n")
            if out_of_time:
                if bar is not None:
                    bar.write(f"time budget of {cfg.max_minutes} min reached at step {done}")
                break
        if bar is not None:
            bar.close()
        return out

    def save(self, step: int) -> Path:
        self.critic.eval()
        path = save_critic(self.cfg.out, self.critic, self.norm, self.object_poses,
                           {**self.meta, "step": step}, self.trunk)  # fmt: skip
        self.critic.train()
        return path


def train_critic(cfg: CriticTrainConfig, episodes: Sequence[Episode] | None = None) -> Path:
    """Train a critic on ``cfg.data`` (or the given episodes); return the checkpoint path."""
    return CriticTrainer(cfg, episodes).run()
