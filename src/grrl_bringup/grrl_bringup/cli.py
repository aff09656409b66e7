"""The ``grrl`` command line: one entry point, subcommands imported only when used."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grrl_bringup.node_list import (
    NodeListError,
    load_node_list,
    parameter_args,
    plan_graph,
    resolve_plugin,
    runner_cli_args,
    select,
)
from grrl_common.errors import run_cli


def _factories(entries: list, overrides: dict[str, dict], namespace: str = "") -> list:
    """(node class, --ros-args) per entry: the list's parameter files, then the overrides."""
    return [
        (resolve_plugin(e),
         runner_cli_args(e, namespace) + parameter_args(overrides.get(e.name, {})))
        for e in entries
    ]  # fmt: skip


def _up(args: argparse.Namespace) -> int:
    """Start the graph in this process (the composed runner): the same nodes, parameter files
    and overrides as ``robot.launch.py`` with the same arguments."""
    from grrl_common.runtime import run_nodes

    plan = plan_graph(
        args.groups.split(",") if args.groups else [], sim=args.sim, policy=args.policy or "",
        episodes=args.episodes, seed=args.seed, results_file=args.results or "",
        episode_limit_steps=args.episode_steps,
    )  # fmt: skip
    for item in args.set:
        node, dot, rest = item.partition(".")
        name, eq, value = rest.partition("=")
        if not (dot and eq and node and name):
            raise NodeListError(f"--set expects NODE.PARAM=VALUE, got {item!r}")
        plan.overrides.setdefault(node, {})[name] = value
    entries = select(load_node_list(), plan.groups)
    if args.rviz:
        print("grrl up: rviz2 is not installed here; on a ROS 2 install run "
              "`rviz2 -d $(ros2 pkg prefix grrl_bringup)/share/grrl_bringup/rviz/grrl.rviz`",
              file=sys.stderr)  # fmt: skip
    factories = _factories(entries, plan.overrides, args.namespace)
    exit_when_done = args.exit_when_done or bool(args.episodes)
    return run_nodes(factories, exit_when_done=exit_when_done, num_threads=args.threads)


def _collect(args: argparse.Namespace) -> int:
    """Record demonstrations: sim + scripted operator + teleop + recorder, in one process."""
    from grrl_common.errors import GrrlError
    from grrl_common.runtime import run_nodes
    from grrl_sim.operator import OperatorConfig

    if not args.sim:
        raise NodeListError("collect needs --sim (a real robot records with robot.launch.py)")
    operator_overrides = ",".join(args.operator_set)
    try:  # checked here, so that a typo fails in one line before any node starts
        OperatorConfig().with_overrides(operator_overrides)
    except ValueError as exc:
        raise GrrlError(str(exc)) from None
    plan = plan_graph(["teleop", "record"], sim=True)
    overrides = plan.overrides
    overrides["sim_node"].update(pacing="fast", obs_mode=args.obs)
    overrides["teleop_node"].update(device="scripted", episodes=args.episodes, seed=args.seed,
                                    operator=args.operator)  # fmt: skip
    if operator_overrides:  # an empty string is not a valid ROS parameter override
        overrides["teleop_node"]["operator_overrides"] = operator_overrides
    overrides["recorder_node"].update(dataset_dir=str(args.out), episodes=args.episodes)
    entries = select(load_node_list(), plan.groups)
    return run_nodes(_factories(entries, overrides), exit_when_done=True)


def _online_rl(args: argparse.Namespace) -> int:
    """Online RL: ``--fast`` in the sim core; otherwise through the ROS graph — sim, policy_node
    (its noise predictor, exploration, weights swapped between episodes), smoother_node, the
    episode runner and learner_node in online mode, in one process."""
    from grrl_common.runtime import run_nodes
    from grrl_learner.cli import run_online_rl

    if args.fast or not args.sim:
        return run_online_rl(args)
    plan = plan_graph(["learner"], sim=True, policy=args.policy, episodes=args.episodes,
                      seed=args.seed if args.seed is not None else 2_000_000,
                      results_file=str(Path(args.out) / "runner.json"),
                      episode_limit_steps=args.max_steps or 0)  # fmt: skip
    plan.overrides["policy_node"].update(swap="episode")
    # each update is used from the episode after the one that completed it, on any machine
    plan.overrides["episode_runner"].update(wait_for_learner=not args.async_updates)
    plan.overrides.setdefault("learner_node", {}).update(
        mode="online", policy=str(Path(args.policy).resolve()), out_dir=str(Path(args.out)),
        episodes=args.episodes,
        update_every=args.update_every, steps_per_update=args.steps_per_update,
        warmup_episodes=args.warmup_episodes, warmup_steps=args.warmup_steps,
    )  # fmt: skip
    entries = select(load_node_list(), plan.groups)
    return run_nodes(_factories(entries, plan.overrides), exit_when_done=True)


def _nodes(args: argparse.Namespace) -> int:
    """Print the node list."""
    for entry in load_node_list():
        if args.groups and not entry.groups & set(args.groups.split(",")):
            continue
        print(
            f"{entry.name:24s} {entry.package}/{entry.executable:24s} "
            f"groups={','.join(sorted(entry.groups))} params={','.join(entry.parameters) or '-'}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the graph (or node groups of it) in one process")
    up.add_argument("--groups", default="", help="comma-separated node groups")
    up.add_argument("--sim", action="store_true", help="the embedded MuJoCo robot")
    up.add_argument("--policy", default=None, help="deploy this checkpoint (policy + smoother)")
    up.add_argument(
        "--episodes",
        type=int,
        default=0,
        help="with --sim: run and score this many episodes, then exit",
    )
    up.add_argument("--seed", type=int, default=None, help="first episode's seed (held-out)")
    up.add_argument("--results", default=None, help="write the episodes' JSON summary here")
    up.add_argument(
        "--episode-steps",
        type=int,
        default=0,
        help="with --sim: control steps before an episode times out (0 = sim.yaml)",
    )
    up.add_argument("--rviz", action="store_true", help="also start RViz (ROS 2 installs)")
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter (repeatable)",
    )
    up.add_argument("--namespace", default="", help="namespace for every node")
    up.add_argument("--threads", type=int, default=None, help="executor threads (default: cpus)")
    up.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit when every node that finishes (e.g. a prober, a recorder) is done",
    )
    up.set_defaults(func=_up)

    collect = sub.add_parser("collect", help="record demonstrations (sim + scripted operator)")
    collect.add_argument("--sim", action="store_true", help="on the embedded MuJoCo robot")
    collect.add_argument("--episodes", type=int, default=20)
    collect.add_argument("--out", default="demos", help="dataset directory")
    collect.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    collect.add_argument("--obs", choices=["pixels", "state"], default="pixels")
    collect.add_argument("--operator", choices=["noisy", "clean"], default="noisy")
    collect.add_argument(
        "--operator-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one field of the operator's config, e.g. jitter_m=0 (repeatable; a range "
        "as low:high)",
    )
    collect.set_defaults(func=_collect)

    from grrl_learner.cli import (
        add_eval,
        add_filter,
        add_online_rl,
        add_train_bc,
        add_train_critic,
    )

    add_train_bc(sub)
    add_eval(sub)
    add_train_critic(sub)
    add_filter(sub)
    add_online_rl(sub)
    sub.choices["online-rl"].set_defaults(func=_online_rl)

    from grrl_bringup.demo import add_demo

    add_demo(sub)

    nodes = sub.add_parser("nodes", help="print the node list")
    nodes.add_argument("--groups", default="", help="only these groups")
    nodes.set_defaults(func=_nodes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
