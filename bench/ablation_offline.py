"""Offline ablation: the same noisy demos → BC on all / filtered / filtered + mirror; one JSON line.

    python bench/ablation_offline.py --episodes 200 --work runs/bench_filter --minutes 8

Uses ``bench/filter.py``'s work directory: the noisy demos and the distributional critic's keep
mask at its best δ (runs that benchmark first, distributional only, when they are missing), or
the keep mask of another ``grrl filter`` report (``--filter DIR``); the JSON names the mask's δ,
horizon and dropped fraction.
Each BC policy trains under the same wall-time budget and is scored on ``--eval-episodes``
held-out seeds through the deployment smoother (``grrl eval``): success with its Wilson CI and
per-stage success, like the paper's figure. ``--drop-idle`` drops pause transitions in every
stage alike (``grrl train-bc --drop-idle``), so that the stages still differ only by the
progress filter and the mirror; its checkpoints are ``policy_<stage>_idle``.

``--stages`` picks the stages to run (default ``bc,filtered,mirror``). The extra stages
``oracle_mistakes`` and ``oracle`` train on the sim's ground truth instead of the critic: their
keep masks drop every injected mistake (from k − 1 steps before it starts, where the first chunk
reaching into it begins, to the operator's retry press), and ``oracle`` every operator pause as
well. They bound what filtering can buy on these demos: ``oracle_mistakes`` what a perfect
progress filter could (the rule cannot see pauses), ``oracle`` any filter.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from steps import last_json_line, machine, run_step

from grrl_common.errors import GrrlError
from grrl_learner.cli import add_drop_idle
from grrl_learner.dataset import save_keep_mask
from grrl_learner.episodes import Episode, read_dataset
from grrl_learner.progress_filter import truth_spans
from grrl_learner.train_bc import TrainConfig

HERE = Path(__file__).resolve().parent
STAGES = ("bc", "oracle_mistakes", "oracle", "filtered", "mirror")


def write_oracle_mask(
    episodes: list[Episode], path: Path, chunk: int, pauses: bool
) -> dict[str, float]:
    """Keep mask from the sim's ground truth: drop each mistake (from ``chunk`` − 1 steps
    before its start to the retry press), and each pause with ``pauses``; the dropped fraction."""
    masks, dropped, total = {}, 0, 0
    for episode in episodes:
        n = len(episode)
        try:
            mistakes, paused = truth_spans(episode, lead=chunk - 1)
        except GrrlError as exc:
            sys.exit(f"bench/ablation_offline.py: {exc}")
        keep = np.ones(n, dtype=bool)
        for first, last in [*mistakes, *(paused if pauses else [])]:
            keep[first : last + 1] = False
        masks[episode.episode_id] = keep
        dropped, total = dropped + int((~keep).sum()), total + n
    save_keep_mask(path, masks)
    return {"dropped_fraction": round(dropped / max(total, 1), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--work", default="runs/bench_filter")
    parser.add_argument("--minutes", type=float, default=8.0, help="BC wall time per stage")
    parser.add_argument("--steps", type=int, default=6000, help="BC schedule length")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--critic-minutes", type=float, default=4.0)
    parser.add_argument("--filter", default=None,
                        help="grrl filter report whose keep mask the filtered stages use "
                        "(default: --work/filter_distributional)")  # fmt: skip
    parser.add_argument("--stages", default="bc,filtered,mirror",
                        help=f"comma-separated stages to run, of {', '.join(STAGES)}")  # fmt: skip
    parser.add_argument("--horizon", type=int, default=None,
                        help="filter look-ahead when the filter bench runs first")  # fmt: skip
    add_drop_idle(parser, "every stage drops pause transitions, which the progress filter "
                  "cannot see")  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each stage's BC run from its last save in --work (to --steps, on a "
        "schedule of that length) instead of training from scratch",
    )
    args = parser.parse_args()
    grrl = shutil.which("grrl")
    if grrl is None:
        sys.exit("bench/ablation_offline.py: grrl is not on PATH (source env.sh)")
    wanted = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown or not wanted:
        sys.exit(f"bench/ablation_offline.py: --stages: unknown {unknown or 'none given'} "
                 f"(choose from {', '.join(STAGES)})")  # fmt: skip
    work = Path(args.work)
    data = work / f"noisy{args.episodes}"
    result: dict = {"bench": "ablation_offline", "demos": args.episodes,
                    "drop_idle": args.drop_idle}  # fmt: skip
    stages: dict[str, list[str]] = {}
    if {"filtered", "mirror"} & set(wanted):
        report = Path(args.filter) if args.filter else work / "filter_distributional"
        mask = report / "keep_mask.json"
        if not mask.exists():
            if args.filter:
                sys.exit(f"bench/ablation_offline.py: {mask} does not exist (run grrl filter)")
            horizon = [] if args.horizon is None else ["--horizon", str(args.horizon)]
            run_step([sys.executable, str(HERE / "filter.py"), "--episodes", str(args.episodes),
                      "--work", str(work), "--kinds", "distributional",
                      "--minutes", str(args.critic_minutes), *horizon])  # fmt: skip
        summary = json.loads((report / "summary.json").read_text())
        if args.horizon is not None and summary["horizon"] != args.horizon:
            sys.exit(
                f"bench/ablation_offline.py: {mask} was written with look-ahead "
                f"{summary['horizon']}, not {args.horizon} (remove it, or pass --filter)"
            )
        result["filter"] = {k: summary[k] for k in ("delta", "horizon", "dropped_fraction")}
        stages["filtered"] = ["--keep-mask", str(mask)]
        stages["mirror"] = ["--keep-mask", str(mask), "--mirror"]
    oracles = {"oracle_mistakes", "oracle"} & set(wanted)
    if oracles:
        try:  # read once for both masks
            episodes = read_dataset(data, load_images=False)
        except GrrlError as exc:
            sys.exit(f"bench/ablation_offline.py: {exc}")
    for name in sorted(oracles):
        oracle_mask = work / f"{name}_keep_mask.json"
        result[f"{name}_mask"] = write_oracle_mask(
            episodes, oracle_mask, TrainConfig.chunk, pauses=name == "oracle"
        )
        stages[name] = ["--keep-mask", str(oracle_mask)]
    stages["bc"] = []
    stages = {name: stages[name] for name in STAGES if name in wanted}
    idle = [] if args.drop_idle is None else ["--drop-idle", str(args.drop_idle)]
    for name, extra in stages.items():
        ckpt = work / (f"policy_{name}" + ("_idle" if idle else ""))
        extra = [*extra, *idle]
        start = [] if args.resume else ["--restart"]
        run_step([grrl, "train-bc", "--data", str(data), "--out", str(ckpt), *start,
                  "--steps", str(args.steps), "--max-minutes", str(args.minutes), "--no-progress",
                  *extra])  # fmt: skip
        evaluation = last_json_line(
            run_step([grrl, "eval", "--policy", str(ckpt), "--episodes", str(args.eval_episodes)])
        )
        meta = json.loads((ckpt / "config.json").read_text())["meta"]
        result[name] = {"success": evaluation["success"], "ci": evaluation["ci"],
                        "stages": evaluation["stages"], "train_steps": meta["step"],
                        "transitions": meta["transitions"],
                        "idle_dropped": meta.get("idle_dropped", 0)}  # fmt: skip
    result.update(machine())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
