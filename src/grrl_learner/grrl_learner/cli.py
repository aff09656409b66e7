"""``grrl train-bc``, ``grrl eval``, ``grrl train-critic``, ``grrl filter`` and ``grrl online-rl``:
argument parsing and the one-line error contract.

``grrl`` (grrl_bringup) registers these subcommands; ``python -m grrl_learner.cli train-bc``
is the same command for ``torchrun`` (``torchrun --nproc_per_node 2 -m grrl_learner.cli
train-bc ...``).
"""

from __future__ import annotations

import argparse
import json
import sys

from grrl_common.errors import run_cli
from grrl_learner import (
    CRITIC_KINDS,
    DEFAULT_DELTA,
    DEFAULT_IDLE_TOLERANCE,
    HELD_OUT_SEED,
    REPLAN_EVERY,
)


def add_drop_idle(parser: argparse.ArgumentParser, what: str) -> None:
    """``--drop-idle [FRACTION]``: train-bc's pause filter (grrl_learner.dataset)."""
    parser.add_argument(
        "--drop-idle",
        type=float,
        nargs="?",
        const=DEFAULT_IDLE_TOLERANCE,
        default=None,
        metavar="FRACTION",
        help=f"{what}: transitions whose chunk holds every joint within FRACTION of its range "
        f"(default {DEFAULT_IDLE_TOLERANCE}); the final hold stays",
    )


def add_train_bc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-bc", help="behaviour cloning of the flow-matching policy")
    p.add_argument("--data", required=True, help="dataset directory (index.json + bags)")
    p.add_argument("--out", required=True, help="checkpoint directory to write (and resume)")
    p.add_argument("--keep-mask", default=None, help="per-transition keep mask (grrl filter)")
    add_drop_idle(p, "drop pause transitions")
    p.add_argument("--mirror", action="store_true", help="add left/right mirrored samples")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--chunk", type=int, default=20, help="actions per chunk (k)")
    p.add_argument(
        "--action-mode",
        choices=["absolute", "delta"],
        default="absolute",
        help="absolute joint targets, or relative to the joints at the chunk start (delta)",
    )
    p.add_argument(
        "--flow-steps", type=int, default=None, help="Euler steps the checkpoint samples with (5)"
    )
    p.add_argument("--width", type=int, default=128, help="small encoder / expert width")
    p.add_argument("--layers", type=int, default=4, help="small encoder layers (expert: half)")
    p.add_argument(
        "--obs",
        choices=["state", "pixels"],
        default=None,
        help="observation (default: pixels if the bags hold images)",
    )
    p.add_argument("--encoder", choices=["small", "vlm"], default="small")
    p.add_argument(
        "--vlm-checkpoint",
        default="tiny",
        help="local transformers checkpoint directory for --encoder vlm, or 'tiny'",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=0, help="sim evaluation period (0 = off)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--restart", action="store_true", help="ignore a resumable run in --out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train_bc)  # fmt: skip


def run_train_bc(args: argparse.Namespace) -> int:
    from grrl_learner.train_bc import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, keep_mask=args.keep_mask, mirror=args.mirror,
        idle_tolerance=args.drop_idle,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, chunk=args.chunk,
        action_mode=args.action_mode, flow_steps=args.flow_steps,
        width=args.width, layers=args.layers, obs=args.obs, encoder=args.encoder,
        vlm_checkpoint=args.vlm_checkpoint, seed=args.seed, save_every=args.save_every,
        eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        max_minutes=args.max_minutes, restart=args.restart, device=args.device,
        progress=not args.no_progress,
    )  # fmt: skip
    out = train(cfg)
    print(f"train-bc: checkpoint in {out}", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_max_chunks(p: argparse.ArgumentParser) -> None:
    from grrl_policy.smoother import SmootherConfig  # numpy only: cheap at start-up

    p.add_argument(
        "--max-chunks",
        type=_positive_int,
        default=SmootherConfig.max_chunks,
        help="ensemble mode: the newest chunks blended (default %(default)s)",
    )


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a policy in the sim core through the smoother")
    p.add_argument("--policy", required=True, help="policy checkpoint directory")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="seed of the first episode")
    p.add_argument(
        "--obs",
        choices=["state", "pixels"],
        default=None,
        help="default: what the policy was trained on",
    )
    p.add_argument(
        "--replan-every",
        type=_positive_int,
        default=REPLAN_EVERY,
        help="control steps per policy call (receding mode: h)",
    )
    p.add_argument("--smoother", choices=["ensemble", "receding"], default="ensemble")
    _add_max_chunks(p)
    p.add_argument(
        "--flow-steps", type=int, default=None, help="Euler steps per chunk (default: the policy's)"
    )
    p.add_argument("--batch-envs", type=int, default=50, help="episodes run in lockstep")
    p.add_argument("--max-steps", type=int, default=None, help="cap episode length (steps)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--latency-steps",
        type=int,
        default=0,
        help="simulated inference latency in control steps (a chunk's first actions are late)",
    )
    p.add_argument(
        "--rtc",
        action="store_true",
        help="real-time chunking: inpaint each chunk's prefix from the previous chunk",
    )
    p.add_argument("--episodes-out", default=None, help="also write per-episode JSON here")
    p.set_defaults(func=run_eval)  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from grrl_learner.evaluation import EvalConfig, evaluate
    from grrl_policy.checkpoint import load_policy
    from grrl_policy.deployed import deployed
    from grrl_policy.smoother import SmootherConfig

    torch.set_grad_enabled(False)
    # online-RL checkpoints sample their noise from π_θ'
    policy = deployed(load_policy(args.policy, device=args.device, flow_steps=args.flow_steps))
    cfg = EvalConfig(
        episodes=args.episodes, seed=args.seed, obs_mode=args.obs,
        replan_every=args.replan_every, batch_envs=args.batch_envs, device=args.device,
        max_steps=args.max_steps, latency_steps=args.latency_steps, rtc=args.rtc,
        smoother=SmootherConfig(control_dt=policy.control_dt, mode=args.smoother,
                                receding_steps=args.replan_every, max_chunks=args.max_chunks),
    )  # fmt: skip
    result = evaluate(policy, cfg)
    steps = policy.model.cfg.flow_steps
    summary = {"policy": args.policy, "seed": args.seed, "flow_steps": steps, **result.summary()}
    if args.episodes_out:
        with open(args.episodes_out, "w") as handle:
            json.dump(result.to_dict(), handle, indent=1)
    print(json.dumps(summary))
    return 0


def add_train_critic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-critic", help="offline progress critic (TD3+BC on chunk transitions)")
    p.add_argument("--data", required=True, help="dataset directory (index.json + bags)")
    p.add_argument("--out", required=True, help="critic checkpoint directory to write")
    p.add_argument(
        "--kind",
        choices=CRITIC_KINDS,
        default="distributional",
        help="distributional (C51), regression (fit t/T) or scalar_td",
    )
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--chunk", type=int, default=20, help="actions per chunk (k)")
    p.add_argument("--atoms", type=int, default=101, help="categorical support size on [0, 1]")
    p.add_argument("--gamma", type=float, default=0.995, help="discount per control step")
    p.add_argument("--width", type=int, default=256, help="trunk width")
    p.add_argument("--head-width", type=int, default=128)
    p.add_argument(
        "--no-hindsight", action="store_true", help="no hindsight failures from retry keyframes"
    )
    p.add_argument("--stride", type=int, default=1, help="a transition every stride steps")
    p.add_argument("--bc-lambda", type=float, default=2.5, help="TD3+BC weight of the Q term")
    p.add_argument(
        "--target-action",
        choices=["policy", "data"],
        default="policy",
        help="bootstrap chunk: the target actor's (TD3) or the recorded one",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--policy",
        default=None,
        help="share this policy checkpoint's frozen encoder as the trunk (default: own trunk)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train_critic)  # fmt: skip


def run_train_critic(args: argparse.Namespace) -> int:
    from grrl_learner.train_critic import CriticTrainConfig, train_critic

    cfg = CriticTrainConfig(
        data=args.data, out=args.out, kind=args.kind, steps=args.steps,
        max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr, chunk=args.chunk,
        atoms=args.atoms, gamma=args.gamma, width=args.width, head_width=args.head_width,
        hindsight=not args.no_hindsight, stride=args.stride, bc_lambda=args.bc_lambda,
        target_action=args.target_action, seed=args.seed, save_every=args.save_every,
        threads=args.threads, device=args.device, progress=not args.no_progress,
        policy=args.policy,
    )  # fmt: skip
    out = train_critic(cfg)
    print(f"train-critic: checkpoint in {out}", file=sys.stderr)
    return 0


def _deltas(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"not a comma-separated list of numbers: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="progress filter: a keep mask for train-bc and a report")
    p.add_argument("--data", required=True, help="dataset directory (index.json + bags)")
    p.add_argument("--critic", required=True, help="critic checkpoint (grrl train-critic)")
    p.add_argument("--out", required=True, help="report directory (keep mask, PNGs, index.md)")
    p.add_argument(
        "--delta",
        type=float,
        default=DEFAULT_DELTA,
        help="drop t if progress falls by more than this within the horizon",
    )
    p.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="look-ahead in steps (default: the critic's chunk k)",
    )
    p.add_argument(
        "--sweep",
        type=_deltas,
        default=[],
        help="also score these δ values (comma-separated) in the summary",
    )
    p.add_argument(
        "--drop-failed", action="store_true", help="also drop every transition of failed episodes"
    )
    p.add_argument(
        "--truth-until",
        choices=["end", "retry"],
        default="end",
        help="a true mistake span ends at the recovery's end or at the retry press",
    )
    p.add_argument(
        "--truth-from",
        choices=["chunk", "step"],
        default="chunk",
        help="a true mistake span starts at the first transition whose k-step chunk carries "
        "the mistake (chunk) or at the mistake's own first step (step)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--policy",
        default=None,
        help="a shared-trunk critic's policy checkpoint, if it moved since training",
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_filter_cli)  # fmt: skip


def run_filter_cli(args: argparse.Namespace) -> int:
    from grrl_learner.progress_filter import FilterConfig, run_filter, summary_line

    cfg = FilterConfig(
        data=args.data, critic=args.critic, out=args.out, delta=args.delta,
        horizon=args.horizon, sweep=args.sweep, drop_failed=args.drop_failed,
        truth_until=args.truth_until, truth_from=args.truth_from, plots=not args.no_plots,
        device=args.device, policy=args.policy,
    )  # fmt: skip
    summary = run_filter(cfg)
    print(f"filter: {summary_line(summary)}")
    print(f"filter: report {args.out}/index.md")
    print(f"filter: keep mask {summary['keep_mask']}")
    return 0


def add_online_rl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("online-rl", help="online RL in the flow policy's noise space")
    p.add_argument("--sim", action="store_true", help="on the embedded MuJoCo robot")
    p.add_argument("--policy", required=True, help="base policy checkpoint (offline BC)")
    p.add_argument("--episodes", type=int, default=200, help="episodes in all, warm-up included")
    p.add_argument("--out", required=True, help="run directory (resumed when it holds one)")
    p.add_argument("--fast", action="store_true", help="the sim core without ROS (benchmarks)")
    p.add_argument(
        "--async-updates",
        action="store_true",
        help="through the graph: start each episode without waiting for the learner (updates "
        "land when ready, as on a robot; the curve then depends on the machine's speed)",
    )
    p.add_argument("--warmup-episodes", type=int, default=24, help="offline-policy rollouts")
    p.add_argument("--warmup-steps", type=int, default=500, help="critic steps on them")
    p.add_argument("--update-every", type=int, default=12, help="new episodes per update")
    p.add_argument("--steps-per-update", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--critic-width", type=int, default=256)
    p.add_argument("--penalty-c", type=float, default=1.0, help="weight of the ε-norm penalty")
    p.add_argument(
        "--penalty-beta",
        type=float,
        default=None,
        help="free ½‖ε‖² (default d/2 + 3·sqrt(d/2), d = k·n)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="cap episode length (steps)")
    p.add_argument(
        "--replan-every",
        type=_positive_int,
        default=REPLAN_EVERY,
        help="control steps per policy call",
    )
    p.add_argument("--smoother", choices=["ensemble", "receding"], default="ensemble")
    _add_max_chunks(p)
    p.add_argument("--seed", type=int, default=None, help="first episode's seed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_online_rl)  # fmt: skip


def run_online_rl(args: argparse.Namespace) -> int:
    from grrl_common.errors import GrrlError

    if not args.sim:
        raise GrrlError("online-rl needs --sim (on a robot the learner node runs in the graph)")
    if not args.fast:  # the graph path lives in the grrl CLI (grrl_bringup), which has the graph
        raise GrrlError("online-rl through the ROS graph runs from `grrl online-rl --sim`")
    import torch

    from grrl_learner.online import OnlineConfig
    from grrl_learner.online_sim import ONLINE_SEED, OnlineSimConfig, run_online_sim
    from grrl_policy.checkpoint import read_config
    from grrl_policy.smoother import SmootherConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    control_dt = float(read_config(args.policy)["control_dt"])  # one-line error if not a policy
    learner = OnlineConfig(
        warmup_episodes=args.warmup_episodes, warmup_steps=args.warmup_steps,
        update_every=args.update_every, steps_per_update=args.steps_per_update,
        batch_size=args.batch_size, critic_width=args.critic_width, penalty_c=args.penalty_c,
        penalty_beta=args.penalty_beta, device=args.device,
    )  # fmt: skip
    sim = OnlineSimConfig(
        episodes=args.episodes, seed=ONLINE_SEED if args.seed is None else args.seed,
        max_steps=args.max_steps, replan_every=args.replan_every,
        smoother=SmootherConfig(control_dt=control_dt, mode=args.smoother,
                                receding_steps=args.replan_every, max_chunks=args.max_chunks),
        batch_envs=args.update_every,
        progress=not args.no_progress,
    )  # fmt: skip
    summary = run_online_sim(args.policy, args.out, sim, learner)
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grrl-learner")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_bc(sub)
    add_eval(sub)
    add_train_critic(sub)
    add_filter(sub)
    add_online_rl(sub)
    args = parser.parse_args(argv)
    return run_cli(args.func, args, prog="grrl")


if __name__ == "__main__":
    sys.exit(main())
