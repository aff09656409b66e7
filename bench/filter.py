"""Progress-filter benchmark: noisy demos → ``grrl train-critic`` (each kind) → ``grrl filter``.

    python bench/filter.py --episodes 200 --work runs/bench_filter

Noisy demos (scripted operator with injected mistakes and their ground truth) are recorded
through the real ROS graph (``grrl collect --operator noisy``) into ``--work`` and reused when
already there. Each critic kind (distributional, regression, scalar_td: the paper's ablation)
trains under a wall-time budget, then filters the same demos; detection is scored against
the operator's ground truth for a sweep of δ, and the δ with the best span-level F1 is
reported per kind (precision/recall: span level — a mistake is detected if a dropped frame
overlaps it, a dropped span is right if it overlaps a mistake; frame-level figures too).
Spans are in transitions (``--truth-from chunk``, the filter's default): a mistake starts at the
first transition whose k-step action chunk carries its first wrong command.
``dropped_fraction`` is the distributional critic's at its best δ; its report directory
(``--work``/filter_distributional: keep mask, PNGs, index.md) is written with that δ.
``--horizon`` sets the rule's look-ahead (default: the critic's chunk k); a longer one drops
more of each slow mistake (see docs/BENCHMARKS.md). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from steps import machine, run_step

from grrl_learner import CRITIC_KINDS as KINDS

DELTAS = "0.01,0.02,0.03,0.05,0.06,0.07,0.08,0.09,0.1,0.12,0.15,0.2,0.3"


def best_row(sweep: list[dict]) -> dict:
    """The sweep row with the best span F1 (then frame F1; then the larger δ)."""

    def key(row: dict) -> tuple[float, float, float]:
        return (row["span_f1"] or 0.0, row["frame_f1"] or 0.0, row["delta"])

    return max(sweep, key=key)


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--work", default="runs/bench_filter", help="demos, critics, reports")
    parser.add_argument("--steps", type=int, default=20_000, help="critic steps (at most)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time per critic")
    parser.add_argument("--kinds", default=",".join(KINDS), help="critic kinds to compare")
    parser.add_argument("--deltas", default=DELTAS, help="δ values swept (comma-separated)")
    parser.add_argument("--train-args", default="", help="extra train-critic arguments")
    parser.add_argument("--truth-from", choices=("chunk", "step"), default="chunk",
                        help="mistake spans in transitions (chunk) or command steps")  # fmt: skip
    parser.add_argument("--horizon", type=int, default=None,
                        help="filter look-ahead in steps (default: the chunk k)")  # fmt: skip
    args = parser.parse_args()

    grrl = shutil.which("grrl")
    if grrl is None:
        sys.exit("bench/filter.py: grrl is not on PATH (source env.sh)")
    work = Path(args.work)
    data = work / f"noisy{args.episodes}"
    collect_minutes = 0.0
    if not (data / "index.json").exists():
        started = time.monotonic()
        run_step([grrl, "collect", "--sim", "--episodes", str(args.episodes), "--obs", "state",
                  "--operator", "noisy", "--seed", "0", "--out", str(data)])  # fmt: skip
        collect_minutes = (time.monotonic() - started) / 60
    result: dict = {"bench": "filter", "demos": args.episodes, "truth_from": args.truth_from}
    horizon = [] if args.horizon is None else ["--horizon", str(args.horizon)]
    timing: dict[str, float] = {}
    steps: dict[str, int] = {}
    dropped = None
    for kind in [k for k in args.kinds.split(",") if k]:
        ckpt = work / f"critic_{kind}_{args.episodes}"
        started = time.monotonic()
        run_step([grrl, "train-critic", "--data", str(data), "--out", str(ckpt), "--kind", kind,
                  "--steps", str(args.steps), "--max-minutes", str(args.minutes),
                  *args.train_args.split()])  # fmt: skip
        timing[kind] = round((time.monotonic() - started) / 60, 2)
        steps[kind] = json.loads((ckpt / "config.json").read_text())["meta"]["step"]
        report = work / f"filter_{kind}"
        run_step([grrl, "filter", "--data", str(data), "--critic", str(ckpt), "--out", str(report),
                  "--sweep", args.deltas, "--truth-from", args.truth_from, *horizon,
                  "--no-plots"])  # fmt: skip
        summary = json.loads((report / "summary.json").read_text())
        best = best_row(summary["sweep"])
        result[kind] = {
            "precision": r3(best["span_precision"]),
            "recall": r3(best["span_recall"]),
            "delta": best["delta"],
            "f1": r3(best["span_f1"]),
            "frame_precision": r3(best["frame_precision"]),
            "frame_recall": r3(best["frame_recall"]),
            "dropped_fraction": r3(best["dropped_fraction"]),
            "pause_recall": r3(best.get("pause_recall")),  # of the operator's pauses
        }
        if kind == "distributional":
            dropped = r3(best["dropped_fraction"])
            # the report BC would use: keep mask and plots at the chosen δ
            run_step([grrl, "filter", "--data", str(data), "--critic", str(ckpt),
                      "--out", str(report), "--delta", str(best["delta"]),
                      "--sweep", args.deltas, "--truth-from", args.truth_from,
                      *horizon])  # fmt: skip
    result.update({
        "dropped_fraction": dropped,
        "horizon": summary["horizon"],
        "mistakes": summary["mistakes"],
        "train_minutes": timing,
        "train_steps": steps,
        "collect_minutes": round(collect_minutes, 2),
        **machine(),
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
