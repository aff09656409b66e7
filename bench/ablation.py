"""The full GR-RL ablation in one run: BC on all → filtered → + mirror → + online RL; one JSON line.

    python bench/ablation.py --episodes 200 --work runs/bench_ablation --minutes 6

The same noisy demos throughout. The offline stages are ``bench/ablation_offline.py`` (which
records the demos and trains the distributional critic through ``bench/filter.py`` when its
work directory lacks them); the last stage is ``bench/online_rl.py`` started from the filtered
+ mirrored policy. Every stage is scored on the same ``--eval-episodes`` held-out seeds through
the deployment smoother. Keys ``bc``, ``filtered``, ``mirror``, ``online_rl``: each
``{"success", "ci", "stages"}``, like the paper's per-stage figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steps import last_json_line, machine, run_step

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=200, help="noisy demos")
    parser.add_argument("--work", default="runs/bench_ablation")
    parser.add_argument("--minutes", type=float, default=8.0, help="BC wall time per stage")
    parser.add_argument("--steps", type=int, default=6000, help="BC schedule length")
    parser.add_argument("--critic-minutes", type=float, default=4.0)
    parser.add_argument("--online-episodes", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=100)
    args = parser.parse_args()
    work = Path(args.work)
    offline = last_json_line(run_step([
        sys.executable, str(HERE / "ablation_offline.py"), "--episodes", str(args.episodes),
        "--work", str(work), "--minutes", str(args.minutes), "--steps", str(args.steps),
        "--eval-episodes", str(args.eval_episodes), "--critic-minutes", str(args.critic_minutes),
    ]))  # fmt: skip
    online = last_json_line(run_step([
        sys.executable, str(HERE / "online_rl.py"), "--policy", str(work / "policy_mirror"),
        "--episodes", str(args.online_episodes), "--work", str(work / "online_rl"),
        "--eval-episodes", str(args.eval_episodes),
    ]))  # fmt: skip
    result: dict = {"bench": "ablation", "demos": args.episodes}
    for stage in ("bc", "filtered", "mirror"):
        result[stage] = {k: offline[stage][k] for k in ("success", "ci", "stages")}
    result["online_rl"] = {"success": online["final_success"], "ci": online["ci"],
                           "stages": online["stages"], "episodes": online["episodes"]}  # fmt: skip
    # the online stage re-scores its start policy (same seeds, same smoother): a consistency check
    result["online_rl"]["start_success"] = online["start_success"]
    result.update(machine())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
