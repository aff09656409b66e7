"""``grrl demo``: the whole loop on the embedded sim, in a quick budget.

1. collect noisy demonstrations through the ROS graph (sim + scripted operator via teleop +
   recorder → rosbag2 MCAP episodes);
2. train the distributional progress critic and filter the demos by progress drops
   (``grrl train-critic``, ``grrl filter``: keep mask, per-episode plots, detection scored
   against the operator's injected mistakes);
3. train BC on the kept transitions, doubled by left/right mirroring (``grrl train-bc
   --keep-mask … --mirror``, wall-time budget);
4. score it in the sim core through the deployment smoother (``grrl eval``);
5. deploy it in the ROS graph with the sim (``grrl up --sim --policy … --episodes N``:
   policy_node → smoother_node → sim_node over DDS) and score those episodes;
6. a short online-RL phase in the noise space (``grrl online-rl --sim --fast``);
7. print a summary table and write ``report.md`` with PNG plots.

Each stage is the same command a user would type, run as a subprocess; finished stages are kept
(their outputs exist) unless ``--fresh``, so a second run only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from grrl_common.errors import GrrlError


class DemoError(GrrlError):
    """A demo stage failed; one line naming it."""


def _run(stage: str, argv: list[str], log: Path) -> str:
    """Run one stage, its stderr to the terminal (progress bars) and a log; return stdout."""
    print(f"\n== {stage}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    with open(log, "w") as handle:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        handle.write(result.stdout)
    if result.returncode != 0:
        tail = result.stdout.strip().splitlines()[-1:] or ["no output"]
        raise DemoError(f"{stage} failed (exit {result.returncode}): {tail[0]} (log: {log})")
    print(f"   {stage} done in {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)
    return result.stdout


def run_demo(args: argparse.Namespace) -> int:
    grrl = shutil.which("grrl") or sys.argv[0]
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    data, critic, filtered = out / "demos", out / "critic", out / "filter"
    policy, online = out / "policy_bc", out / "online"
    core_file, graph_file = out / "eval_core.json", out / "eval_graph.json"
    timings: dict[str, float] = {}

    def stage(name: str, title: str, argv: list[str], done: Path | None = None) -> None:
        """Run a stage unless ``done`` exists (its output from an earlier run)."""
        if done is not None and done.exists():
            return
        started = time.monotonic()
        _run(title, [grrl, *argv], logs / f"{name}.log")
        timings[name] = round((time.monotonic() - started) / 60, 2)

    # fmt: off
    stage("collect", "collect noisy demos through the ROS graph",
          ["collect", "--sim", "--episodes", str(args.episodes), "--obs", "state",
           "--operator", "noisy", "--seed", "0", "--out", str(data)], data / "index.json")
    stage("critic", "train the progress critic",
          ["train-critic", "--data", str(data), "--out", str(critic), "--max-minutes",
           str(args.critic_minutes), "--threads", "2", "--no-progress"],
          critic / "model.safetensors")
    stage("filter", "filter the demos by progress",
          ["filter", "--data", str(data), "--critic", str(critic), "--out", str(filtered),
           "--delta", str(args.delta)], filtered / "summary.json")
    stage("train", "train BC on the kept transitions and their mirror images",
          ["train-bc", "--data", str(data), "--out", str(policy), "--restart", "--keep-mask",
           str(filtered / "keep_mask.json"), "--mirror", "--steps", str(args.train_steps),
           "--max-minutes", str(args.train_minutes), "--no-progress"],
          policy / "model.safetensors")
    stage("eval_core", "evaluate in the sim core",
          ["eval", "--policy", str(policy), "--episodes", str(args.core_episodes),
           "--episodes-out", str(core_file)])
    stage("eval_graph", "deploy in the ROS graph and evaluate",
          ["up", "--sim", "--policy", str(policy), "--episodes", str(args.graph_episodes),
           "--results", str(graph_file)])
    if args.online_episodes:
        stage("online", "online RL in the noise space (sim core)",
              ["online-rl", "--sim", "--fast", "--policy", str(policy), "--out", str(online),
               "--episodes", str(args.online_episodes),
               "--warmup-episodes", str(args.online_episodes // 2),
               "--update-every", str(max(1, args.online_episodes // 4)),
               "--warmup-steps", "100", "--threads", "1", "--no-progress"],
              online / "curve.jsonl")
    # fmt: on

    from grrl_bringup.report import write_report

    rows = {
        "filtered + mirrored BC: sim core, through the smoother": json.loads(core_file.read_text())[
            "summary"
        ],
        "filtered + mirrored BC: ROS graph (policy_node → smoother_node → sim)": json.loads(
            graph_file.read_text()
        )["summary"],
    }
    table = write_report(out, rows, policy, data, timings, filtered, online)
    print("\n" + table)
    print(f"\nreport: {out / 'report.md'}")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="collect → train → deploy → evaluate on the sim, with a report")
    p.add_argument("--out", default="runs/demo", help="working directory (demos, policy, report)")
    p.add_argument("--episodes", type=int, default=60, help="noisy demonstrations to collect")
    p.add_argument("--train-minutes", type=float, default=6.0, help="BC wall-time budget")
    p.add_argument("--train-steps", type=int, default=6000, help="BC schedule length (steps)")
    p.add_argument("--core-episodes", type=int, default=50, help="sim-core evaluation episodes")
    p.add_argument("--graph-episodes", type=int, default=10, help="episodes through the graph")
    p.add_argument("--critic-minutes", type=float, default=1.5, help="critic wall-time budget")
    p.add_argument("--delta", type=float, default=0.08, help="progress-drop threshold δ")
    p.add_argument(
        "--online-episodes",
        type=int,
        default=16,
        help="online-RL episodes, half of them warm-up (0 = skip)",
    )
    p.add_argument("--fresh", action="store_true", help="redo every stage")
    p.set_defaults(func=run_demo)
