"""Behaviour cloning of the flow-matching policy on recorded episodes.

``grrl train-bc --data DIR --out CKPT [--keep-mask FILE] [--mirror]``; also runs under
``torchrun`` (DDP; gloo on CPU, NCCL on GPUs). Deterministic: the batch of step s is drawn
from a generator seeded by (seed, s) — indices, flow noise and flow times — so an interrupted
run resumed from its last save continues exactly as if never stopped, and a DDP run computes
the same gradient as one process on the whole batch (each rank takes a slice of the global
batch). Checkpoints are safetensors + JSON (``grrl_policy.checkpoint``); the training state
(raw weights, optimiser moments, step) lives in ``CKPT/train_state`` in the same formats.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model

from grrl_common.errors import GrrlError
from grrl_common.robot import RobotDescription, load_robot_description
from grrl_learner import VALIDATION_SEED
from grrl_learner.dataset import (
    ChunkDataset,
    NormStats,
    chunk_actions,
    collate,
    idle_transitions,
    load_keep_mask,
)
from grrl_learner.episodes import Episode, read_dataset
from grrl_learner.mirror import mirror_state_vector, mirror_transform
from grrl_policy.checkpoint import LoadedPolicy, save_policy
from grrl_policy.encoders import ObservationBatch
from grrl_policy.model import ExpertConfig, FlowMatchingPolicy, PolicyConfig, VLMConfig
from grrl_policy.small_encoder import SmallEncoderConfig

TRAIN_STATE = "train_state"


class TrainError(GrrlError):
    """Training cannot start or resume; one-line message."""


@dataclass
class TrainConfig:
    data: str
    out: str
    steps: int = 20_000
    batch_size: int = 128  # global batch (split across DDP ranks)
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup: int = 500
    grad_clip: float = 1.0
    ema: float = 0.999
    chunk: int = 20
    action_mode: str = "absolute"  # or "delta": relative to the joints at the chunk start
    flow_steps: int | None = None  # Euler steps the checkpoint samples with (None: the model's)
    seed: int = 0
    obs: str | None = None  # "state" | "pixels"; None: pixels if the data has images
    keep_mask: str | None = None
    # drop pause transitions (dataset.idle_transitions); tolerance as a fraction of each
    # joint's range, None: keep them
    idle_tolerance: float | None = None
    mirror: bool = False
    encoder: str = "small"
    vlm_checkpoint: str = "tiny"
    width: int = 128
    layers: int = 4
    save_every: int = 1000
    eval_every: int = 0  # 0: no periodic sim evaluation
    eval_episodes: int = 10
    max_minutes: float | None = None  # stop (and save) when this much wall time has passed
    restart: bool = False  # ignore an existing train_state instead of resuming
    progress: bool = True
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


LOG_EVERY = 100  # steps per loss record in <out>.log.jsonl


# --- distributed helpers --------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> None:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def finish_distributed() -> None:
    """Leave the process group together and destroy it while Python is fully alive.

    Gloo's worker threads drop their last finished work at their own pace; if the group
    outlives the interpreter's finalisation that drop needs the GIL and aborts the process
    ("terminate called without an active exception"). Callers first release every DDP
    wrapper, which holds the group too.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def global_batch(seed: int, step: int, size: int, dataset_len: int, chunk_shape: tuple[int, int]):
    """The global batch of a step: sample indices, flow noise and flow times (seeded)."""
    g = step_generator(seed, step)
    indices = torch.randint(dataset_len, (size,), generator=g)
    noise = torch.randn((size, *chunk_shape), generator=g)
    uniform = torch.rand(size, generator=g)
    return indices, noise, uniform


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of a global-batch tensor (contiguous, equal sizes)."""
    if x.shape[0] % world:
        raise TrainError(f"batch size {x.shape[0]} must be divisible by {world} ranks")
    per = x.shape[0] // world
    return x[rank * per : (rank + 1) * per]


def batch_to_model(batch: dict[str, Any], device: str) -> tuple[ObservationBatch, torch.Tensor,
                                                                  torch.Tensor]:  # fmt: skip
    images = batch.get("images")
    obs = ObservationBatch(
        batch["state"].to(device), list(batch["instruction"]),
        None if images is None else images.to(device),
    )  # fmt: skip
    return obs, batch["actions"].to(device), batch["action_pad"].to(device)


def loss_on_batch(
    model: torch.nn.Module,
    core: FlowMatchingPolicy,
    batch: dict[str, Any],
    noise: torch.Tensor,
    uniform: torch.Tensor,
    device: str,
) -> torch.Tensor:
    """Flow-matching loss of a (local) batch; ``model`` may be the DDP wrapper of ``core``."""
    obs, actions, pad = batch_to_model(batch, device)
    tau = core.tau_from_uniform(uniform.to(device))
    return model(obs, actions, pad, noise=noise.to(device), tau=tau)


# --- optimiser state in safetensors (no pickle) ---------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).clone().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- data -----------------------------------------------------------------------------------
def load_training_data(
    cfg: TrainConfig, robot: RobotDescription
) -> tuple[list[Episode], str, list[str], bool]:
    episodes = read_dataset(cfg.data)
    if not episodes:
        raise TrainError(f"{cfg.data}: no complete episodes to train on")
    has_images = any(e.images for e in episodes)
    obs = cfg.obs or ("pixels" if has_images else "state")
    if obs == "pixels" and not has_images:
        raise TrainError(f"{cfg.data}: --obs pixels but the episodes hold no camera images")
    cameras = sorted(episodes[0].images) if obs == "pixels" else []
    cameras = [c for c in robot.cameras if c in cameras]  # the robot description's order
    # state-mode policies observe the object poses; pixels-mode ones see the objects in images
    with_objects = obs == "state"
    if with_objects and any(e.object_poses is None for e in episodes):
        raise TrainError(f"{cfg.data}: state observations need /grrl/object_poses in every bag")
    return episodes, obs, cameras, with_objects


def build_model(cfg: TrainConfig, state_dim: int, action_dim: int, cameras: list[str]):
    # 4 heads whose size follows the width (the expert shares the encoder's head size)
    small = SmallEncoderConfig(width=cfg.width, layers=cfg.layers, head_dim=max(16, cfg.width // 4))
    policy_cfg = PolicyConfig(
        state_dim=state_dim,
        action_dim=action_dim,
        chunk=cfg.chunk,
        action_mode=cfg.action_mode,
        cameras=tuple(cameras),
        encoder=cfg.encoder,
        small=small,
        vlm=VLMConfig(checkpoint=cfg.vlm_checkpoint),
        expert=ExpertConfig(width=cfg.width),
    )
    if cfg.flow_steps is not None:
        if cfg.flow_steps < 1:
            raise TrainError(f"--flow-steps must be >= 1, got {cfg.flow_steps}")
        policy_cfg = replace(policy_cfg, flow_steps=cfg.flow_steps)
    return FlowMatchingPolicy(policy_cfg)


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def drop_idle(
    episodes: Sequence[Episode],
    keep: Mapping[str, np.ndarray] | None,
    chunk: int,
    fraction: float,
    robot: RobotDescription,
) -> tuple[dict[str, np.ndarray], int]:
    """``keep`` (None: keep all) with every episode's pause transitions dropped too, and how
    many kept transitions that dropped. ``fraction``: stillness tolerance per joint, as a
    fraction of its range in the robot description."""
    if not 0 < fraction < 1:
        raise TrainError(f"idle tolerance must be a fraction in (0, 1), got {fraction}")
    index = {name: i for i, name in enumerate(robot.joint_names)}
    out: dict[str, np.ndarray] = {}
    dropped = 0
    for episode in episodes:
        joints = [index[name] for name in episode.joint_names]
        tolerance = fraction * (robot.upper[joints] - robot.lower[joints])
        base = np.ones(len(episode), bool)
        if keep is not None:
            base = ChunkDataset.mask_for(episode, keep)
        idle = idle_transitions(episode, chunk, tolerance)
        dropped += int((base & idle).sum())
        out[episode.episode_id] = base & ~idle
    return out, dropped


# --- the loop -------------------------------------------------------------------------------
class BCTrainer:
    """Data, model, optimiser and EMA of one BC run; ``run()`` trains (or resumes)."""

    def __init__(self, cfg: TrainConfig) -> None:
        init_distributed(cfg.device)
        self.cfg = cfg
        self.rank, self.world = dist_info()
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.robot = load_robot_description()
        self.control_dt = 1.0 / self.robot.control_rate_hz
        episodes, self.obs_mode, cameras, with_objects = load_training_data(cfg, self.robot)
        keep = load_keep_mask(cfg.keep_mask) if cfg.keep_mask else None
        idle = 0
        if cfg.idle_tolerance is not None:
            keep, idle = drop_idle(episodes, keep, cfg.chunk, cfg.idle_tolerance, self.robot)
        augment = []
        states = [e.states(with_objects) for e in episodes]
        actions = [
            chunk_actions(e, cfg.chunk, cfg.action_mode).reshape(-1, e.action_dim) for e in episodes
        ]
        if cfg.mirror:
            # statistics over both halves, so a mirrored sample is normalised like its twin
            states += [mirror_state_vector(x, self.robot) for x in states]
            actions += [self.robot.mirror_joints(a) for a in actions]
        self.norm = NormStats.from_arrays(states, actions)
        if cfg.mirror:
            augment.append(mirror_transform(self.robot, self.norm, cameras))
        self.dataset = ChunkDataset(
            episodes, chunk=cfg.chunk, stats=self.norm, keep_mask=keep, augment=augment,
            cameras=cameras or None, object_poses=with_objects, action_mode=cfg.action_mode,
        )  # fmt: skip
        if len(self.dataset) == 0:
            raise TrainError(f"{cfg.data}: the keep mask leaves no transition to train on")
        self.model = build_model(
            cfg, episodes[0].state_dim(with_objects), episodes[0].action_dim, cameras
        )
        self.model.noise_predictor.requires_grad_(False)  # trained by online RL, not by BC
        self.model.to(cfg.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.wrapped: torch.nn.Module = self.model
        if self.world > 1:
            # the encoder's pooled head feeds only the noise predictor (online RL): its
            # parameters get no BC gradient, and DDP must not wait for them
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=True
            )
        self.joint_names = list(episodes[0].joint_names)
        self.meta = {
            "obs": self.obs_mode,
            "object_poses": with_objects,
            "instruction": episodes[0].instruction,
            "data": str(Path(cfg.data).resolve()),
            "episodes": len(episodes),
            "transitions": len(self.dataset),
            "keep_mask": cfg.keep_mask,
            "idle_dropped": idle,
            "mirror": cfg.mirror,
            "train": asdict(cfg),
        }

    def compute_gradients(self, step: int) -> torch.Tensor:
        """Loss and gradients of this rank's share of step ``step``'s global batch."""
        cfg = self.cfg
        indices, noise, uniform = global_batch(
            cfg.seed, step, cfg.batch_size, len(self.dataset), self.model.chunk_shape
        )
        local = shard(indices, self.rank, self.world)
        batch = collate([self.dataset[int(i)] for i in local])
        loss = loss_on_batch(
            self.wrapped, self.model, batch, shard(noise, self.rank, self.world),
            shard(uniform, self.rank, self.world), cfg.device,
        )  # fmt: skip
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def optimizer_step(self, step: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.cfg, step)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            decay = min(self.cfg.ema, (1 + step) / (10 + step))
            for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                e.lerp_(p, 1 - decay)

    def run(self) -> Path:
        cfg, out = self.cfg, self.out
        start = 0 if cfg.restart else _maybe_resume(cfg, out, self.model, self.ema, self.opt)
        log_path = out.with_name(out.name + ".log.jsonl")
        if start == 0 and self.rank == 0:
            log_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
        bar = None
        if self.rank == 0 and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train-bc", unit="step",
                       dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        began = time.monotonic()
        loss_sum, loss_count = 0.0, 0
        for step in range(start, cfg.steps):
            loss = self.compute_gradients(step)
            self.optimizer_step(step)
            done = step + 1
            loss_sum, loss_count = loss_sum + loss.detach(), loss_count + 1
            if done % LOG_EVERY == 0 and self.rank == 0:  # the mean since the last record
                _log(log_path, {"step": done, "loss": float(loss_sum) / loss_count,
                                "minutes": round((time.monotonic() - began) / 60, 3)})  # fmt: skip
                loss_sum, loss_count = 0.0, 0
            if bar is not None:
                bar.update(1)
                if done % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_at(cfg, step):.1e}")
            out_of_time = cfg.max_minutes is not None and (
                time.monotonic() - began > 60 * cfg.max_minutes
            )
            if done % cfg.save_every == 0 or done == cfg.steps or out_of_time:
                if self.rank == 0:
                    self.save(done)
            if cfg.eval_every and done % cfg.eval_every == 0 and self.rank == 0:
                summary = periodic_eval(
                    LoadedPolicy(self.ema, self.norm, self.joint_names, self.control_dt, self.meta),
                    cfg, self.robot,
                )  # fmt: skip
                _log(log_path, {"step": done, "eval": summary})
                if bar is not None:
                    bar.write(f"step {done}: sim success {summary['success']:.2f} "
                              f"(CI {summary['ci'][0]:.2f}–{summary['ci'][1]:.2f})")  # fmt: skip
            if out_of_time:
                if bar is not None:
                    bar.write(f"time budget of {cfg.max_minutes} min reached at step {done}")
                break
        if bar is not None:
            bar.close()
        return out

    def release_distributed(self) -> None:
        """Drop the DDP wrapper (and with it its reference to the process group)."""
        self.wrapped = self.model

    def save(self, step: int) -> None:
        save_policy(self.out, self.ema, self.norm, self.joint_names, self.control_dt,
                    {**self.meta, "step": step})  # fmt: skip
        state_dir = self.out / TRAIN_STATE
        tmp = self.out / f".{TRAIN_STATE}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(self.model, str(tmp / "model.safetensors"))
        tensors, opt_meta = optimizer_tensors(self.opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": opt_meta, "config": asdict(self.cfg)}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(state_dir, ignore_errors=True)
        os.replace(tmp, state_dir)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) and return the checkpoint directory."""
    trainer = BCTrainer(cfg)
    out = trainer.run()
    trainer.release_distributed()
    finish_distributed()  # not on error: a barrier would wait for the failed rank forever
    return out


def periodic_eval(policy: LoadedPolicy, cfg: TrainConfig, robot: RobotDescription) -> dict:
    from grrl_learner.evaluation import EvalConfig, evaluate

    config = EvalConfig(episodes=cfg.eval_episodes, seed=VALIDATION_SEED)
    return evaluate(policy, config, robot).summary()


def _log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


# settings that may differ between an interrupted run and its resumption (flow_steps: sampling)
_RESUMABLE_CHANGES = {"steps", "max_minutes", "restart", "progress", "eval_every", "save_every",
                      "eval_episodes", "out", "data", "flow_steps"}  # fmt: skip


def _maybe_resume(cfg, out: Path, model, ema, opt) -> int:
    state_file = out / TRAIN_STATE / "state.json"
    if not state_file.exists():
        return 0
    try:
        state = json.loads(state_file.read_text())
    except ValueError as exc:
        raise TrainError(f"{state_file}: unreadable ({exc}); use --restart") from None
    previous = state.get("config", {})
    changed = sorted(
        k for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES and previous.get(k) != v
    )
    if changed:
        raise TrainError(
            f"{out} holds a run with different settings ({', '.join(changed)}); "
            "use --restart or another --out"
        )
    load_model(model, str(out / TRAIN_STATE / "model.safetensors"))
    load_model(ema, str(out / "model.safetensors"))
    load_optimizer_tensors(
        opt, load_file(str(out / TRAIN_STATE / "optimizer.safetensors")), state["optimizer"]
    )
    rank, _ = dist_info()
    if rank == 0:
        print(f"train-bc: resuming {out} from step {state['step']}", file=sys.stderr)
    return int(state["step"])
