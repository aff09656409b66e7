"""The declarative node list (config/nodes.yaml) shared by robot.launch.py and ``grrl up``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grrl_common.errors import GrrlError
from grrl_common.runtime import ros_arguments

PACKAGE = "grrl_bringup"
_REQUIRED = ("name", "package", "executable", "plugin", "groups")


class NodeListError(GrrlError, ValueError):
    """The node list file is malformed; the message names the entry and the problem."""


@dataclass(frozen=True)
class NodeEntry:
    """One node of the graph, as both runners start it."""

    name: str
    package: str
    executable: str
    plugin: str  # "module:Class"
    parameters: tuple[str, ...]
    remappings: tuple[tuple[str, str], ...]
    groups: frozenset[str]

    def parameter_files(self, config: Path) -> list[str]:
        return [str(config / name) for name in self.parameters]


def share_dir() -> Path:
    """share/grrl_bringup of the installed package, else the source tree (uninstalled use)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, PackageNotFoundError, LookupError):
        return Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    return share_dir() / "config"


def load_node_list(path: Path | None = None) -> list[NodeEntry]:
    """Read and validate the node list; raises NodeListError with a readable message."""
    path = path or config_dir() / "nodes.yaml"
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())  # YAML errors span lines; keep one
        raise NodeListError(f"{path}: cannot read node list ({detail})") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
        raise NodeListError(f"{path}: expected a mapping with a 'nodes' list")
    entries, names = [], set()
    for index, raw in enumerate(document["nodes"]):
        where = f"{path}: nodes[{index}]"
        if not isinstance(raw, dict):
            raise NodeListError(f"{where}: expected a mapping")
        missing = [key for key in _REQUIRED if not raw.get(key)]
        if missing:
            raise NodeListError(f"{where}: missing {', '.join(missing)}")
        if raw["name"] in names:
            raise NodeListError(f"{where}: duplicate node name {raw['name']!r}")
        if ":" not in raw["plugin"]:
            raise NodeListError(f"{where}: plugin must be 'module:Class', got {raw['plugin']!r}")
        remappings = raw.get("remappings") or []
        if not all(isinstance(r, list) and len(r) == 2 for r in remappings):
            raise NodeListError(f"{where}: remappings must be [from, to] pairs")
        names.add(raw["name"])
        entries.append(
            NodeEntry(
                name=raw["name"],
                package=raw["package"],
                executable=raw["executable"],
                plugin=raw["plugin"],
                parameters=tuple(raw.get("parameters") or ()),
                remappings=tuple((str(a), str(b)) for a, b in remappings),
                groups=frozenset(raw["groups"]),
            )
        )
    return entries


def select(entries: Iterable[NodeEntry], groups: Iterable[str]) -> list[NodeEntry]:
    """Entries belonging to any of ``groups``, in file order; unknown groups are an error."""
    entries = list(entries)
    wanted = {g.strip() for g in groups if g.strip()}
    known = set().union(*(e.groups for e in entries)) if entries else set()
    unknown = wanted - known
    if unknown:
        raise NodeListError(
            f"unknown group(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    return [e for e in entries if e.groups & wanted]


def resolve_plugin(entry: NodeEntry) -> Callable[..., Any]:
    """Import the class behind ``entry.plugin``."""
    module_name, _, attr = entry.plugin.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise NodeListError(f"node {entry.name}: cannot import {entry.plugin} ({exc})") from None


def launch_node_kwargs(entry: NodeEntry, namespace: str = "", config: Path | None = None) -> dict:
    """Keyword arguments of ``launch_ros.actions.Node`` for an entry (robot.launch.py)."""
    config = config or config_dir()
    return {
        "package": entry.package,
        "executable": entry.executable,
        "name": entry.name,
        "namespace": namespace,
        "parameters": entry.parameter_files(config),
        "remappings": list(entry.remappings),
        "output": "screen",
        "emulate_tty": True,
    }


def runner_cli_args(entry: NodeEntry, namespace: str = "", config: Path | None = None) -> list[str]:
    """Node-scoped ``--ros-args`` the composed runner gives an entry: same as launch_ros's."""
    config = config or config_dir()
    return ros_arguments(
        name=entry.name,
        namespace=namespace or None,
        params_files=entry.parameter_files(config),
        remappings=entry.remappings,
    )


# --- deployment graph: what `robot.launch.py sim:= policy:=` and `grrl up --sim --policy` start --
@dataclass
class GraphPlan:
    """Node groups plus per-node parameter overrides (the same for launch and the runner)."""

    groups: list[str]
    overrides: dict[str, dict[str, Any]]


def policy_observes_pixels(policy: str | Path) -> bool:
    """Whether a checkpoint's policy reads cameras (read from its config.json, no torch)."""
    import json

    config = Path(policy) / "config.json"
    try:
        document = json.loads(config.read_text())
        return bool(document["policy"].get("cameras"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NodeListError(f"{policy}: not a policy checkpoint ({exc})") from None


def plan_graph(
    groups: Iterable[str] = (),
    *,
    sim: bool = False,
    policy: str = "",
    episodes: int = 0,
    seed: int | None = None,
    results_file: str = "",
    episode_limit_steps: int = 0,
) -> GraphPlan:
    """The deployment graph: ``sim`` adds the MuJoCo robot (everything on sim time), ``policy``
    adds policy_node + smoother_node with that checkpoint, ``episodes`` > 0 adds the episode
    runner that scores them (sim only)."""
    wanted = [g for g in groups if g]
    overrides: dict[str, dict[str, Any]] = {}
    if sim:
        wanted.append("sim")
        overrides["sim_node"] = {"pacing": "realtime"}
        if episode_limit_steps:
            overrides["sim_node"]["episode_limit_steps"] = episode_limit_steps
    if policy:
        policy = str(Path(policy).resolve())
        wanted.append("policy")
        overrides["policy_node"] = {"policy": policy}
        if sim:
            overrides["sim_node"]["obs_mode"] = (
                "pixels" if policy_observes_pixels(policy) else "state"
            )
    if episodes:
        if not sim:
            raise NodeListError("scoring episodes needs the sim (--sim / sim:=true)")
        wanted.append("runner")
        overrides["episode_runner"] = {"episodes": episodes, "results_file": results_file}
        if seed is not None:
            overrides["episode_runner"]["seed"] = seed
        overrides.setdefault("policy_node", {})["episode_gating"] = True
    if sim:  # the sim publishes /clock: every stamp in the graph is sim time
        for name in (
            "sim_node",
            "policy_node",
            "smoother_node",
            "teleop_node",
            "recorder_node",
            "learner_node",
            "episode_runner",
        ):
            overrides.setdefault(name, {})["use_sim_time"] = True
    if not wanted:
        raise NodeListError("nothing to start: name groups, --sim or --policy")
    return GraphPlan(list(dict.fromkeys(wanted)), overrides)


def parameter_args(overrides: dict[str, Any]) -> list[str]:
    """``-p name:=value`` arguments for the composed runner (``--ros-args`` already given)."""
    args: list[str] = []
    for name, value in overrides.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["-p", f"{name}:={text}"]
    return args
