"""The fast path of online RL: episodes in the sim core (no ROS), exactly as deployed.

Like :mod:`grrl_learner.evaluation`, several episodes run in lockstep (batched inference), each
through its own :class:`~grrl_policy.smoother.ChunkSmoother` — the smoother node's code — and
the sim steps on what the smoother commands. The policy is the newest published checkpoint,
loaded from disk and checked against its sha256 as the policy node would: version 0 (the
offline policy) samples ε ~ N(0, I) (the warm-up rollouts), later versions ε ~ N(π_θ'(o), I)
(their noise predictor shifts the Gaussian; the draws are the exploration). Per chunk the loop
records the state, the ε used and the executed chunk (the commands sent at the k steps from
the chunk's start, padded with the last one at the episode's end); each finished episode goes
to the :class:`~grrl_learner.online.OnlineLearner`, and a batch never spans an update: it holds
at most the episodes still needed before the next one, so every episode ran the newest version.

Resumable: ``--out`` keeps the learner's episodes and state; episode i always has seed
``seed + i`` and batch noise comes from a generator seeded by its first episode's number.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_common.errors import GrrlError
from grrl_common.robot import RobotDescription, load_robot_description
from grrl_learner import REPLAN_EVERY
from grrl_learner.evaluation import batch_inputs, reset_envs
from grrl_learner.online import (
    EpisodeRecord,
    OnlineConfig,
    OnlineLearner,
    plot_curve,
    read_curve,
)
from grrl_policy.checkpoint import LoadedPolicy, checkpoint_sha256, load_policy
from grrl_policy.deployed import deployed
from grrl_policy.smoother import JointLimits, SmootherConfig
from grrl_sim.task import InsertionTask, TaskConfig

# Online episodes' scenes: above the demos' small seeds, apart from validation (500 000) and
# held-out evaluation (1 000 000) scenes.
ONLINE_SEED = 2_000_000


class OnlineSimError(GrrlError):
    """The fast online loop cannot run as asked; one line."""


@dataclass
class OnlineSimConfig:
    episodes: int = 200  # in all, warm-up rollouts included
    seed: int = ONLINE_SEED
    max_steps: int | None = None  # None: the task's episode limit
    replan_every: int = REPLAN_EVERY  # control steps between policy calls (ensemble mode)
    smoother: SmootherConfig | None = None  # None: defaults at the task's control period
    batch_envs: int = 12  # episodes in lockstep (also capped by the update cadence)
    progress: bool = True


def rollout(
    policy: LoadedPolicy,
    version: int,
    tasks: list[InsertionTask],
    seeds: list[int],
    cfg: OnlineSimConfig,
    smoother_cfg: SmootherConfig,
    limits: JointLimits,
    generator: torch.Generator,
) -> list[EpisodeRecord]:
    """Run one lockstep batch of episodes (one per seed) and record them per chunk."""
    meta = policy.meta
    cameras = list(policy.config.cameras)
    with_objects = bool(meta.get("object_poses", not cameras))
    instruction = meta.get("instruction", "")
    dt = tasks[0].control_dt
    limit = cfg.max_steps or tasks[0].config.episode_limit_steps
    k, _ = policy.model.chunk_shape
    observations, smoothers = reset_envs(tasks, seeds, limits, smoother_cfg)
    sent: list[list[np.ndarray]] = [[] for _ in tasks]  # command positions, one per step
    chunks_of: list[list[tuple[int, np.ndarray, np.ndarray, Any]]] = [[] for _ in tasks]
    done: list[EpisodeRecord | None] = [None] * len(tasks)

    def record(i: int, length: int, success: bool) -> EpisodeRecord:
        commands = np.asarray(sent[i], np.float32)
        padded = np.concatenate([commands, np.repeat(commands[-1:], k, axis=0)])
        log = chunks_of[i]
        images = np.stack([c[3] for c in log]) if cameras else None
        return EpisodeRecord(
            steps=np.array([c[0] for c in log], np.int64),
            states=np.stack([c[1] for c in log]).astype(np.float32),
            noises=np.stack([c[2] for c in log]).astype(np.float32),
            executed=np.stack([padded[c[0] : c[0] + k] for c in log]),
            length=length, success=success, policy_version=version, images=images,
            instruction=instruction, episode_id=f"seed{seeds[i]}",
        )  # fmt: skip

    for step in range(limit):
        active = [i for i, d in enumerate(done) if d is None]
        if not active:
            break
        if smoother_cfg.mode == "receding":
            due = [i for i in active if smoothers[i].chunk_due]
        else:
            due = active if step % cfg.replan_every == 0 else []
        if due:
            states, images = batch_inputs(tasks, observations, due, with_objects, cameras)
            # N(0, I) draws: the noise itself (version 0) or the exploration around π_θ'(o)
            draws = torch.randn((len(due), *policy.model.chunk_shape), generator=generator)
            chunks, used = policy.act(states, [instruction] * len(due), images, noise=draws)
            for row, i in enumerate(due):
                smoothers[i].add_chunk(chunks[row], start_time=step * dt, dt=dt)
                chunks_of[i].append(
                    (step, states[row], used[row], None if images is None else images[row])
                )
        for i in active:
            command = smoothers[i].step()
            sent[i].append(command.position.astype(np.float32))
            outcome = tasks[i].step(command.position)
            observations[i] = outcome.observation
            if outcome.done or step + 1 >= limit:
                done[i] = record(i, step + 1, bool(outcome.success))
    return [d for d in done if d is not None]


def _load_verified(entry: dict[str, Any]) -> LoadedPolicy:
    """A published checkpoint as the policy node takes it: sha256 first, then the weights."""
    digest = checkpoint_sha256(entry["path"])
    if digest != entry["sha256"]:
        raise OnlineSimError(f"{entry['path']}: sha256 {digest[:12]}… does not match "
                             f"{entry['sha256'][:12]}…")  # fmt: skip
    return deployed(load_policy(entry["path"]))


def run_online_sim(
    policy_path: str | Path,
    out: str | Path,
    sim: OnlineSimConfig | None = None,
    learner_cfg: OnlineConfig | None = None,
    robot: RobotDescription | None = None,
    on_update: Callable[[OnlineLearner], None] | None = None,
) -> dict[str, Any]:
    """Online RL from ``policy_path`` for ``sim.episodes`` episodes in all (resuming what
    ``out`` holds); returns a summary (episodes, version, newest checkpoint and sha256)."""
    sim = sim or OnlineSimConfig()
    if sim.episodes < 1 or sim.replan_every < 1 or sim.batch_envs < 1:
        raise OnlineSimError("episodes, replan_every and batch_envs must be >= 1")
    robot = robot or load_robot_description()
    learner = OnlineLearner(policy_path, out, learner_cfg)
    resumed = learner.load_state()
    base = learner.policy
    if base.config.cameras:
        task_cfg = TaskConfig(obs_mode="pixels")
    else:
        task_cfg = TaskConfig(obs_mode="state")
    n_envs = max(1, min(sim.batch_envs, sim.episodes))
    tasks = [InsertionTask(task_cfg, robot) for _ in range(n_envs)]
    dt = tasks[0].control_dt
    smoother_cfg = sim.smoother or SmootherConfig(control_dt=dt)
    limits = JointLimits.from_robot(robot)
    current = learner.latest_checkpoint
    policy = _load_verified(current) if current else load_policy(policy_path)
    started = time.monotonic()
    if sim.progress and resumed:
        print(f"online-rl: resumed {out} at episode {learner.episodes_added}, "
              f"v{learner.version}", file=sys.stderr)  # fmt: skip
    try:
        while learner.episodes_added < sim.episodes:
            first = learner.episodes_added
            size = min(n_envs, sim.episodes - first, max(1, learner.episodes_until_update()))
            generator = torch.Generator().manual_seed(sim.seed * 1_000_003 + first)
            seeds = [sim.seed + first + i for i in range(size)]
            for record in rollout(policy, learner.version, tasks[:size], seeds, sim,
                                  smoother_cfg, limits, generator):  # fmt: skip
                learner.add_episode(record)
            path = learner.maybe_update()
            if path is not None:
                policy = _load_verified(learner.latest_checkpoint)
                if on_update is not None:
                    on_update(learner)
                if sim.progress:
                    recent = read_curve(learner.curve_path)[-24:]
                    rate = sum(r["success"] for r in recent) / max(1, len(recent))
                    stats = learner.last_stats
                    print(f"online-rl: v{learner.version} after {learner.episodes_added} "
                          f"episodes (success over the last {len(recent)}: {rate:.2f}; "
                          f"Q' {stats.q_noise:.3f}, critic loss {stats.critic_loss:.3f}; "
                          f"{time.monotonic() - started:.0f} s)", file=sys.stderr)  # fmt: skip
    finally:
        for task in tasks:
            task.close()
    learner.save_state()
    png = plot_curve(learner.curve_path, Path(out) / "curve.png")
    rows = read_curve(learner.curve_path)
    latest = learner.latest_checkpoint or {}
    return {
        "episodes": learner.episodes_added,
        "successes": sum(r["success"] for r in rows),
        "version": learner.version,
        "checkpoint": latest.get("path"),
        "sha256": latest.get("sha256"),
        "curve": str(learner.curve_path),
        "curve_png": str(png),
        "seconds": round(time.monotonic() - started, 1),
    }
