"""Offline ablation: the same noisy demos → BC on all / filtered / filtered + mirror; one JSON line.

    python bench/ablation_offline.py --episodes 200 --work runs/bench_filter --minutes 8

Uses ``bench/filter.py``'s work directory: the noisy demos and the distributional critic's keep
mask at its best δ (runs that benchmark first, distributional only, when they are missing).
Each BC policy trains under the same wall-time budget and is scored on ``--eval-episodes``
held-out seeds through the deployment smoother (``grrl eval``): success with its Wilson CI and
per-stage success, like the paper's figure. ``--drop-idle`` drops pause transitions in every
stage alike (``grrl train-bc --drop-idle``), so that the stages still differ only by the
progress filter and the mirror; its checkpoints are ``policy_<stage>_idle``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from steps import last_json_line, machine, run_step

from grrl_learner.cli import add_drop_idle

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--work", default="runs/bench_filter")
    parser.add_argument("--minutes", type=float, default=8.0, help="BC wall time per stage")
    parser.add_argument("--steps", type=int, default=6000, help="BC schedule length")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--critic-minutes", type=float, default=4.0)
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
    work = Path(args.work)
    data = work / f"noisy{args.episodes}"
    mask = work / "filter_distributional" / "keep_mask.json"
    if not mask.exists():
        run_step([sys.executable, str(HERE / "filter.py"), "--episodes", str(args.episodes),
                  "--work", str(work), "--kinds", "distributional",
                  "--minutes", str(args.critic_minutes)])  # fmt: skip
    stages = {"bc": [], "filtered": ["--keep-mask", str(mask)],
              "mirror": ["--keep-mask", str(mask), "--mirror"]}  # fmt: skip
    idle = [] if args.drop_idle is None else ["--drop-idle", str(args.drop_idle)]
    result: dict = {"bench": "ablation_offline", "demos": args.episodes,
                    "drop_idle": args.drop_idle}  # fmt: skip
    for name, extra in stages.items():
        ckpt = work / (f"policy_{name}" + ("_idle" if idle else ""))
        extra = [*extra, *idle]
        start = [] if args.resume else ["--restart"]
        run_step([grrl, "train-bc", "--data", str(data), "--out", str(ckpt), *start,
                  "--steps", str(args.steps), "--max-minutes", str(args.minutes), "--no-progress",
                  *extra])  # fmt: skip
        summary = last_json_line(
            run_step([grrl, "eval", "--policy", str(ckpt), "--episodes", str(args.eval_episodes)])
        )
        meta = json.loads((ckpt / "config.json").read_text())["meta"]
        result[name] = {"success": summary["success"], "ci": summary["ci"],
                        "stages": summary["stages"], "train_steps": meta["step"],
                        "transitions": meta["transitions"],
                        "idle_dropped": meta.get("idle_dropped", 0)}  # fmt: skip
    result.update(machine())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
