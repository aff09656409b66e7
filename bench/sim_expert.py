"""Benchmark of the simulated task and its scripted operator; prints one JSON line.

    python bench/sim_expert.py --episodes 100

clean_success / noisy_success: success rate of the clean and the noisy operator (ground truth
from the task's depth check); mistakes_per_episode: injected mistakes per noisy episode;
state_episode_s: wall time of a 400-step state-mode episode (physics + operator IK);
render_ms_per_camera: one 128x128 camera frame through MuJoCo's EGL renderer.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from steps import machine

from grrl_sim.operator import OperatorConfig, ScriptedOperator
from grrl_sim.task import InsertionTask, TaskConfig


def run(task: InsertionTask, operator: ScriptedOperator, seed: int) -> tuple[bool, int]:
    task.reset(seed)
    operator.reset(seed)
    while True:
        result = task.step(operator.act().command)
        if result.done:
            return result.success, task.step_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10_000)
    args = parser.parse_args()

    task = InsertionTask(TaskConfig())
    clean = ScriptedOperator(task, OperatorConfig.clean())
    noisy = ScriptedOperator(task, OperatorConfig.noisy())
    seeds = range(args.seed, args.seed + args.episodes)
    clean_ok = [run(task, clean, s)[0] for s in seeds]
    noisy_ok, mistakes = [], []
    for s in seeds:
        noisy_ok.append(run(task, noisy, s)[0])
        mistakes.append(len(noisy.mistakes))

    # a 400-step state-mode episode: task physics + operator, timed end to end
    durations = []
    for s in list(seeds)[:10]:
        task.reset(s)
        clean.reset(s)
        start = time.perf_counter()
        for _ in range(400):
            task.step(clean.act().command)
        durations.append(time.perf_counter() - start)

    pixels = InsertionTask(TaskConfig(obs_mode="pixels"))
    pixels.reset(0)
    pixels.render("head")  # warm-up: context creation
    start = time.perf_counter()
    frames = 0
    for _ in range(10):
        for camera in pixels.robot.cameras:
            pixels.render(camera)
            frames += 1
    render_ms = (time.perf_counter() - start) / frames * 1e3
    pixels.close()

    print(json.dumps({
        "episodes": args.episodes,
        "clean_success": float(np.mean(clean_ok)),
        "noisy_success": float(np.mean(noisy_ok)),
        "mistakes_per_episode": float(np.mean(mistakes)),
        "state_episode_s": round(float(np.median(durations)), 3),
        "render_ms_per_camera": round(render_ms, 1),
        **machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
