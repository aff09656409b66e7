"""Policy evaluation in the sim core (no ROS, for speed), through the deployment smoother.

Several episodes run in lockstep so that policy inference is batched across them; each episode
has its own :class:`~grrl_policy.smoother.ChunkSmoother` — the same implementation the
smoother node runs on the robot — so what is scored is what would be executed. At each replan
the policy sees the observation of time t and its chunk starts at t (action 0 is the command
for t, as in the recorded data); the smoother emits the command for t and the sim steps.

Inference latency can be simulated: the chunk computed from the observation of t then reaches
the smoother at t + latency_steps·dt, its start still t, so its first latency_steps actions
are already late; an env waits for its chunk in flight before asking for the next one. With
``rtc``, each new chunk is sampled with its prefix guided toward the env's previous chunk
(real-time chunking, :mod:`grrl_policy.rtc`). Every chunk switch's discontinuity (max-abs
joint difference at the new chunk's first executed action) is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from grrl_common.errors import GrrlError
from grrl_common.robot import RobotDescription, load_robot_description
from grrl_common.stats import wilson_interval
from grrl_learner import HELD_OUT_SEED, REPLAN_EVERY
from grrl_policy import rtc as rtc_guide
from grrl_policy.checkpoint import LoadedPolicy
from grrl_policy.smoother import ChunkSmoother, JointLimits, SmootherConfig
from grrl_sim.task import STAGES, InsertionTask, Observation, TaskConfig


class EvalError(GrrlError):
    """An evaluation that cannot run as asked; one line."""


@dataclass
class EvalConfig:
    episodes: int = 100
    seed: int = HELD_OUT_SEED
    obs_mode: str | None = None  # checked against what the policy was trained on
    replan_every: int = REPLAN_EVERY  # control steps between policy calls (ensembling; receding: h)
    batch_envs: int = 50  # episodes run in lockstep (batched inference)
    max_steps: int | None = None  # None: the task's episode limit
    smoother: SmootherConfig | None = None  # None: defaults at the task's control period
    instruction: str | None = None  # None: the one the policy was trained with
    noise_scale: float = 1.0  # initial flow noise ~ N(0, scale² I); 0 = deterministic
    device: str = "cpu"
    # simulated inference latency: a chunk from the observation of t reaches the smoother at
    # t + latency_steps·dt, still starting at t (its first latency_steps actions are late)
    latency_steps: int = 0
    rtc: bool = False  # sample each chunk with the prefix guide from the env's previous chunk


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    stages: dict[str, bool]
    peg_side: str
    # per chunk switch: max-abs joint jump at the new chunk's first executed action (robot units)
    switch_jumps: list[float] = field(default_factory=list)
    # per chunk: the smoother's plan-QP solve time at its arrival (ms)
    qp_ms: list[float] = field(default_factory=list)


@dataclass
class EvalResult:
    episodes: list[EpisodeResult] = field(default_factory=list)
    control_dt: float = 0.02
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        n = len(self.episodes)
        wins = sum(e.success for e in self.episodes)
        lo, hi = wilson_interval(wins, n)
        steps = np.array([e.steps for e in self.episodes], float) if n else np.zeros(1)
        jumps = np.array([j for e in self.episodes for j in e.switch_jumps], float)
        qp = np.array([q for e in self.episodes for q in e.qp_ms], float)
        return {
            "episodes": n,
            "success": wins / n if n else 0.0,
            "ci": [round(lo, 4), round(hi, 4)],
            "stages": {s: sum(e.stages[s] for e in self.episodes) / max(n, 1) for s in STAGES},
            "mean_length_steps": float(steps.mean()),
            "mean_length_s": float(steps.mean() * self.control_dt),
            "eval_seconds": round(self.seconds, 2),
            "switch_jump_mean": float(jumps.mean()) if jumps.size else None,
            "switch_jump_p95": float(np.percentile(jumps, 95)) if jumps.size else None,
            "qp_ms_p50": float(np.percentile(qp, 50)) if qp.size else None,
            "qp_ms_p99": float(np.percentile(qp, 99)) if qp.size else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "episodes": [asdict(e) for e in self.episodes]}


def policy_state(task: InsertionTask, obs: Observation, with_objects: bool) -> np.ndarray:
    """The policy's state vector, in the dataset's layout: joints (+ object poses)."""
    if with_objects:  # what /grrl/object_poses carries (the sim's pose tracker)
        return np.concatenate([obs.joint_positions, task.object_poses()]).astype(np.float32)
    return obs.joint_positions.astype(np.float32)


def evaluate(
    policy: LoadedPolicy,
    config: EvalConfig | None = None,
    robot: RobotDescription | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> EvalResult:
    """Run ``config.episodes`` seeded episodes; deterministic for a given policy and seed."""
    cfg = config or EvalConfig()
    robot = robot or load_robot_description()
    meta = policy.meta
    cameras = list(policy.config.cameras)
    trained = "pixels" if cameras else "state"
    if cfg.obs_mode and cfg.obs_mode != trained:
        raise EvalError(f"the policy observes {trained}, not {cfg.obs_mode} (leave --obs out)")
    if not 0 <= cfg.latency_steps < policy.config.chunk:
        raise EvalError(
            f"latency_steps must be in [0, {policy.config.chunk}) for chunks of "
            f"{policy.config.chunk} actions, got {cfg.latency_steps}"
        )
    with_objects = bool(meta.get("object_poses", not cameras))
    instruction = cfg.instruction or meta.get("instruction", "")
    # pixels mode only adds images; object poses are read from the task when the policy uses them
    task_cfg = TaskConfig(obs_mode="pixels" if cameras else "state")
    limits = JointLimits.from_robot(robot)
    started = time.perf_counter()
    n_envs = max(1, min(cfg.batch_envs, cfg.episodes))
    tasks = [InsertionTask(task_cfg, robot) for _ in range(n_envs)]
    dt = tasks[0].control_dt
    smoother_cfg = cfg.smoother or SmootherConfig(control_dt=dt)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    result = EvalResult(control_dt=dt)
    try:
        for first in range(0, cfg.episodes, n_envs):
            seeds = [cfg.seed + i for i in range(first, min(first + n_envs, cfg.episodes))]
            for episode in _run_batch(
                policy, tasks[: len(seeds)], seeds, cfg, smoother_cfg, limits, instruction,
                with_objects, cameras, generator,
            ):  # fmt: skip
                result.episodes.append(episode)
                if on_episode is not None:
                    on_episode(episode)
    finally:
        for task in tasks:
            task.close()
    result.seconds = time.perf_counter() - started
    return result


def batch_inputs(
    tasks: list[InsertionTask],
    observations: list[Observation],
    envs: list[int],
    with_objects: bool,
    cameras: list[str],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The policy's batched states (B, S) and images (B, V, H, W, 3) of the envs ``envs``."""
    states = np.stack([policy_state(tasks[i], observations[i], with_objects) for i in envs])
    images = None
    if cameras:
        images = np.stack([np.stack([observations[i].images[c] for c in cameras]) for i in envs])
    return states, images


def reset_envs(
    tasks: list[InsertionTask], seeds: list[int], limits: JointLimits, cfg: SmootherConfig
) -> tuple[list[Observation], list[ChunkSmoother]]:
    """Reset each env with its seed; one smoother per env, at rest where its robot is."""
    observations = [task.reset(seed) for task, seed in zip(tasks, seeds, strict=True)]
    smoothers = []
    for obs in observations:
        smoother = ChunkSmoother(limits, cfg)
        smoother.reset(obs.joint_positions, time=-tasks[0].control_dt)  # last command: t = −dt
        smoothers.append(smoother)
    return observations, smoothers


def _run_batch(
    policy: LoadedPolicy,
    tasks: list[InsertionTask],
    seeds: list[int],
    cfg: EvalConfig,
    smoother_cfg: SmootherConfig,
    limits: JointLimits,
    instruction: str,
    with_objects: bool,
    cameras: list[str],
    generator: torch.Generator,
) -> list[EpisodeResult]:
    dt = tasks[0].control_dt
    limit = cfg.max_steps or tasks[0].config.episode_limit_steps
    observations, smoothers = reset_envs(tasks, seeds, limits, smoother_cfg)
    done: list[EpisodeResult | None] = [None] * len(tasks)
    k, n_actions = policy.model.chunk_shape
    # per env: the chunk it executes now (actions, start time), the one being computed
    # (arrival step, actions, start time), and the discontinuity of every chunk switch
    previous: list[tuple[np.ndarray, float] | None] = [None] * len(tasks)
    in_flight: dict[int, tuple[int, np.ndarray, float]] = {}
    jumps: list[list[float]] = [[] for _ in tasks]
    qp_ms: list[list[float]] = [[] for _ in tasks]

    def deliver(i: int, actions: np.ndarray, start: float) -> None:
        if previous[i] is not None:
            before, before_start = previous[i]
            jumps[i].append(
                rtc_guide.switch_jump(before, before_start, actions, start, dt, cfg.latency_steps)
            )
        smoothers[i].add_chunk(actions, start_time=start, dt=dt)
        qp_ms[i].append(smoothers[i].last_qp_ms)
        previous[i] = (actions, start)

    for step in range(limit):
        active = [i for i, d in enumerate(done) if d is None]
        if not active:
            break
        for i in active:  # chunks computed latency_steps ago reach the smoother now
            if i in in_flight and in_flight[i][0] == step:
                _, actions, start = in_flight.pop(i)
                deliver(i, actions, start)
        # one inference per env at a time: an env with a chunk in flight waits for it
        if smoother_cfg.mode == "receding":  # a new chunk once h actions have been executed
            due = [i for i in active if smoothers[i].chunk_due and i not in in_flight]
        else:
            due = [i for i in active if i not in in_flight] if step % cfg.replan_every == 0 else []
        if due:
            states, images = batch_inputs(tasks, observations, due, with_objects, cameras)
            noise = cfg.noise_scale * torch.randn(
                (len(due), *policy.model.chunk_shape), generator=generator, device=cfg.device
            )
            guide: dict[str, np.ndarray] = {}
            if cfg.rtc and any(previous[i] is not None for i in due):
                # envs without a previous chunk get zero weights: their sample is unguided
                target = np.repeat(states[:, None, :n_actions], k, axis=1)
                weights = np.zeros((len(due), k))
                for row, i in enumerate(due):
                    if previous[i] is not None:
                        target[row], weights[row] = rtc_guide.prefix_guide(
                            previous[i][0], previous[i][1], dt, step * dt, cfg.latency_steps, k
                        )
                guide = {"guide_target": target, "guide_weights": weights}
            chunks, _ = policy.act(states, [instruction] * len(due), images, noise=noise, **guide)
            for row, i in enumerate(due):
                if cfg.latency_steps == 0:
                    deliver(i, chunks[row], step * dt)
                else:
                    in_flight[i] = (step + cfg.latency_steps, chunks[row], step * dt)
        for i in active:
            command = smoothers[i].step()
            outcome = tasks[i].step(command.position)
            observations[i] = outcome.observation
            if outcome.done or step + 1 >= limit:
                reached = tasks[i].reached
                done[i] = EpisodeResult(
                    seed=seeds[i],
                    success=bool(outcome.success),
                    steps=step + 1,
                    stages={s: bool(getattr(reached, s)) for s in STAGES},
                    peg_side=tasks[i].peg_arm,
                    switch_jumps=jumps[i],
                    qp_ms=qp_ms[i],
                )
    return [d for d in done if d is not None]
