"""The ``grrl`` command line: one entry point, subcommands imported only when used."""

from __future__ import annotations

import argparse
import sys

from grrl_bringup.node_list import (
    NodeListError,
    load_node_list,
    resolve_plugin,
    runner_cli_args,
    select,
)
from grrl_common.errors import run_cli


def _up(args: argparse.Namespace) -> int:
    """Start node groups of the node list in this process (the composed runner)."""
    from grrl_common.runtime import run_nodes

    entries = select(load_node_list(), args.groups.split(","))
    if not entries:
        raise NodeListError(f"no nodes in group(s) {args.groups!r}")
    factories = [(resolve_plugin(e), runner_cli_args(e, args.namespace)) for e in entries]
    return run_nodes(factories, exit_when_done=args.exit_when_done, num_threads=args.threads)


def _collect(args: argparse.Namespace) -> int:
    """Record demonstrations: sim + scripted operator + teleop + recorder, in one process."""
    from grrl_common.runtime import run_nodes

    if not args.sim:
        raise NodeListError("collect needs --sim (a real robot records with robot.launch.py)")
    overrides = {
        "sim_node": {"pacing": "fast", "obs_mode": args.obs},
        "teleop_node": {"device": "scripted", "episodes": args.episodes, "seed": args.seed,
                        "operator": args.operator, "use_sim_time": True},
        "recorder_node": {"dataset_dir": str(args.out), "episodes": args.episodes,
                          "use_sim_time": True},
    }  # fmt: skip
    entries = select(load_node_list(), ["sim", "teleop", "record"])
    factories = []
    for entry in entries:
        cli_args = runner_cli_args(entry)
        for name, value in overrides.get(entry.name, {}).items():
            cli_args += [
                "-p",
                f"{name}:={str(value).lower() if isinstance(value, bool) else value}",
            ]
        factories.append((resolve_plugin(entry), cli_args))
    return run_nodes(factories, exit_when_done=True)


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

    up = sub.add_parser("up", help="run node groups of the graph in one process")
    up.add_argument("--groups", default="interface_check", help="comma-separated node groups")
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
    collect.set_defaults(func=_collect)

    from grrl_learner.cli import add_eval, add_train_bc

    add_train_bc(sub)
    add_eval(sub)

    nodes = sub.add_parser("nodes", help="print the node list")
    nodes.add_argument("--groups", default="", help="only these groups")
    nodes.set_defaults(func=_nodes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
