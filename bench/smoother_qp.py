"""Chunk smoother benchmark: the plan QP's solve time per re-plan, on one CPU core.

    python bench/smoother_qp.py [--replans 2000] [--seed 0]

The simulated robot's 14 joints are fed realistic chunk streams (k = 20 actions, dt = 0.02 s):
a smooth underlying motion within the joint limits, per-chunk disagreement (policy variance),
per-action noise and 0-40 ms observation latency. Half of the re-plans come from ACT-style
ensembling (a chunk every chunk step), half from receding-horizon execution (a chunk every
h = 10 steps, where the switch to a new chunk is what the QP smooths). Every QP solve counts:
those at chunk arrival and those the smoother triggers itself (guard correction, half-used
plan). Runs at control_dt 0.02 s (horizon 20) and 0.01 s (horizon 40).

Prints one JSON line; the headline keys are the 0.02 s figures, ``*_dt001`` the 0.01 s ones.
The process pins itself and BLAS to one core so the numbers mean "one core".
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
from steps import machine  # noqa: E402

from grrl_common.robot import load_robot_description  # noqa: E402
from grrl_policy.smoother import ChunkSmoother, JointLimits, SmootherConfig  # noqa: E402

CHUNK_K = 20
CHUNK_DT = 0.02


class Motion:
    """A smooth random joint trajectory inside the limits, at most ~60 % of the velocity limit."""

    def __init__(self, limits: JointLimits, start: np.ndarray, rng: np.random.Generator) -> None:
        n = limits.n_joints
        self.start = start
        self.omega = 2 * np.pi * rng.uniform(0.1, 0.8, (2, n))
        room = np.minimum(limits.upper - start, start - limits.lower)
        amp = rng.uniform(0.2, 0.45, (2, n)) * room  # |offset| <= 2 * sum(amp) < room
        self.amp = np.minimum(amp, 0.3 * limits.velocity / self.omega)
        self.sign = rng.choice([-1.0, 1.0], (2, n))

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t)[:, None, None]
        wave = self.sign * self.amp * (1 - np.cos(self.omega * t))  # starts at rest
        return self.start + wave.sum(axis=1)


def run(
    limits: JointLimits, home: np.ndarray, mode: str, control_dt: float, replans: int, seed: int
) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    span = limits.upper - limits.lower
    config = SmootherConfig(control_dt=control_dt, mode=mode, receding_steps=10)
    smoother = ChunkSmoother(limits, config)
    smoother.reset(home)
    motion = Motion(limits, home, rng)
    out: dict[str, list[float]] = {"qp_ms": [], "iterations": [], "replan_ms": []}
    warmup = 50  # first solves build the cached matrices
    solves = 0

    def record() -> None:
        nonlocal solves
        if smoother.qp_solves > solves:
            solves = smoother.qp_solves
            if solves > warmup:
                out["qp_ms"].append(smoother.last_qp_ms)
                out["iterations"].append(smoother.last_qp_iterations)
                out["replan_ms"].append(smoother.last_replan_ms)

    while len(out["qp_ms"]) < replans:
        if smoother.chunk_due:
            obs_time = smoother.time - rng.uniform(0.0, 0.04)
            times = obs_time + CHUNK_DT * np.arange(CHUNK_K)
            chunk = motion(times) + rng.normal(0, 0.004, limits.n_joints) * span
            chunk += rng.normal(0, 0.001, chunk.shape) * span
            smoother.add_chunk(chunk, obs_time, CHUNK_DT)
            record()
        smoother.step()
        record()
        if smoother.state != "tracking":
            raise SystemExit(f"smoother left tracking: {smoother.stop_reason}")
    out["guard_interventions"] = [smoother.guard_interventions]
    out["steps"] = [round((smoother.time) / control_dt)]
    return out


def summary(results: list[dict[str, list[float]]]) -> dict[str, float]:
    qp = np.concatenate([r["qp_ms"] for r in results])
    iterations = np.concatenate([r["iterations"] for r in results])
    replan = np.concatenate([r["replan_ms"] for r in results])
    return {
        "qp_ms_p50": round(float(np.percentile(qp, 50)), 4),
        "qp_ms_p99": round(float(np.percentile(qp, 99)), 4),
        "qp_ms_max": round(float(qp.max()), 4),
        "iterations_mean": round(float(iterations.mean()), 2),
        "admm_fraction": round(float(np.mean(iterations > 0)), 3),
        "replan_ms_p99": round(float(np.percentile(replan, 99)), 4),
        "replans": int(qp.size),
        "guard_interventions": int(sum(r["guard_interventions"][0] for r in results)),
        "control_steps": int(sum(r["steps"][0] for r in results)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replans", type=int, default=2000, help="per control rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    robot = load_robot_description()
    limits = JointLimits.from_robot(robot)
    home = np.array(robot.sim["home"] * 2, dtype=float)
    report: dict[str, object] = {}
    for control_dt, suffix in ((0.02, ""), (0.01, "_dt001")):
        results = [
            run(limits, home, mode, control_dt, args.replans // 2, args.seed + i)
            for i, mode in enumerate(("ensemble", "receding"))
        ]
        stats = summary(results)
        stats["horizon"] = round(CHUNK_K * CHUNK_DT / control_dt)
        report.update({key + suffix: value for key, value in stats.items()})
        if not suffix:
            report["n"] = limits.n_joints
            report["control_dt"] = control_dt
    report.update(machine())
    report["cores_used"] = 1
    order = ["qp_ms_p50", "qp_ms_p99", "n", "horizon", "iterations_mean"]
    print(json.dumps({**{k: report[k] for k in order}, **report}))


if __name__ == "__main__":
    main()
