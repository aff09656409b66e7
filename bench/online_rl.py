"""Online-RL benchmark: a policy before and after noise-space online RL in the sim core.

    python bench/online_rl.py --policy runs/demo/policy_bc --episodes 300 --work runs/bench_online

1. ``start_success``: the base checkpoint (state observations) evaluated with
   ``grrl_learner.evaluation.evaluate`` on held-out seeds, initial noise ε ~ N(0, I);
2. ``grrl online-rl --sim --fast``: at most ``--episodes`` online episodes (warm-up rollouts
   included) through the deployment smoother, resumed if ``--work`` already holds the run;
3. ``final_success``: the newest published checkpoint on the same held-out seeds, ε from its
   noise predictor (no exploration), ``ci`` its 95 % Wilson interval.

Prints one JSON line; the learning curve (moving average over 24 episodes) is ``curve_png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from steps import last_json_line, machine, run_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="base policy checkpoint (state obs)")
    parser.add_argument("--episodes", type=int, default=300, help="online episodes in all")
    parser.add_argument("--work", default="runs/bench_online_rl", help="online-RL run directory")
    parser.add_argument("--eval-episodes", type=int, default=100, help="held-out episodes")
    parser.add_argument("--max-steps", type=int, default=None, help="cap episode length")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--online-args",
        default="",
        help="extra grrl online-rl arguments, e.g. '--warmup-episodes 48 --update-every 12'",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from grrl_learner.evaluation import EvalConfig, evaluate
    from grrl_policy.checkpoint import checkpoint_sha256, load_policy
    from grrl_policy.deployed import NoisePredictorPolicy

    grrl = shutil.which("grrl")
    if grrl is None:
        sys.exit("bench/online_rl.py: grrl is not on PATH (source env.sh)")
    base = load_policy(args.policy)
    if base.config.cameras:
        sys.exit("bench/online_rl.py: the benchmark takes a state-observation policy")
    eval_cfg = EvalConfig(episodes=args.eval_episodes, max_steps=args.max_steps)  # held-out seeds
    started = time.monotonic()
    start = evaluate(base, eval_cfg).summary()
    eval_seconds = time.monotonic() - started

    started = time.monotonic()
    argv = [grrl, "online-rl", "--sim", "--fast", "--policy", args.policy, "--out", args.work,
            "--episodes", str(args.episodes), "--threads", str(args.threads),
            *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
            *args.online_args.split()]  # fmt: skip
    online = last_json_line(run_step(argv, echo=False))  # progress: its stderr
    online_seconds = time.monotonic() - started

    if online["checkpoint"]:
        if checkpoint_sha256(online["checkpoint"]) != online["sha256"]:
            sys.exit(f"bench/online_rl.py: {online['checkpoint']} does not match its sha256")
        final_policy = NoisePredictorPolicy.wrap(load_policy(online["checkpoint"]))
    else:  # too few episodes for an update: the base policy is still the newest
        final_policy = base
    final = evaluate(final_policy, eval_cfg).summary()
    print(json.dumps({
        "bench": "online_rl",
        "start_success": start["success"],
        "start_ci": start["ci"],
        "start_stages": start["stages"],
        "final_success": final["success"],
        "ci": final["ci"],
        "stages": final["stages"],
        "episodes": online["episodes"],
        "online_successes": online["successes"],
        "version": online["version"],
        "eval_episodes": args.eval_episodes,
        "curve_png": online["curve_png"],
        "online_minutes": round(online_seconds / 60, 2),
        "eval_minutes_each": round(eval_seconds / 60, 2),
        **machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
