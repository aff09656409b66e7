"""The node list that robot.launch.py and ``grrl up`` share is consistent with what is installed."""

from __future__ import annotations

import ast
import importlib
import os
from importlib.metadata import distribution
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_prefix
from rclpy.node import Node

from grrl_bringup.node_list import (
    NodeListError,
    config_dir,
    launch_node_kwargs,
    load_node_list,
    resolve_plugin,
    runner_cli_args,
    select,
    share_dir,
)


def _console_scripts(package: str) -> dict[str, str]:
    dist = distribution(package.replace("_", "-"))
    return {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}


def test_every_entry_resolves_to_an_installed_executable_and_a_node_class():
    entries = load_node_list()
    assert entries, "node list is empty"
    for entry in entries:
        scripts = _console_scripts(entry.package)
        assert entry.executable in scripts, f"{entry.name}: no console script {entry.executable}"
        module_name, _, function = scripts[entry.executable].partition(":")
        main = getattr(importlib.import_module(module_name), function)
        assert callable(main)
        plugin = resolve_plugin(entry)
        assert isinstance(plugin, type) and issubclass(plugin, Node), entry.plugin
        # The executable and the plugin are the same node: the console script lives beside it.
        assert module_name == entry.plugin.partition(":")[0], entry.name
        prefix = Path(get_package_prefix(entry.package))
        installed = prefix / "lib" / entry.package / entry.executable
        assert installed.is_file() and os.access(installed, os.X_OK), installed
        for path in entry.parameter_files(config_dir()):
            assert Path(path).is_file(), f"{entry.name}: missing parameter file {path}"


def test_launch_and_runner_pass_the_same_name_parameters_and_remappings():
    for entry in load_node_list():
        kwargs = launch_node_kwargs(entry, namespace="robot1")
        args = runner_cli_args(entry, namespace="robot1")
        assert kwargs["name"] == entry.name and f"__node:={entry.name}" in args
        assert "__ns:=/robot1" in args and kwargs["namespace"] == "robot1"
        files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
        assert files == kwargs["parameters"]
        remaps = [args[i + 1] for i, a in enumerate(args) if a == "-r"][2:]
        assert remaps == [f"{a}:={b}" for a, b in kwargs["remappings"]]


def test_launch_file_builds_its_nodes_from_the_node_list():
    launch_file = share_dir() / "launch" / "robot.launch.py"
    tree = ast.parse(launch_file.read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "grrl_bringup.node_list"
        for alias in node.names
    }
    assert {"load_node_list", "launch_node_kwargs", "select"} <= imported
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_select_groups():
    entries = load_node_list()
    assert [e.name for e in select(entries, ["sim"])] == ["sim_node"]
    assert [e.name for e in select(entries, ["interface_check"])] == [
        "interface_responder",
        "interface_prober",
    ]
    with pytest.raises(NodeListError, match="unknown group"):
        select(entries, ["interface_check", "nope"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("nodes: {}", "'nodes' list"),
        ("nodes:\n  - {name: a, package: p, executable: e, groups: [g]}", "missing plugin"),
        (
            "nodes:\n  - {name: a, package: p, executable: e, plugin: nocolon, groups: [g]}",
            "module:Class",
        ),
        ("nodes: [", "cannot read node list"),
    ],
)
def test_malformed_node_list_gives_one_readable_error(tmp_path, text, message):
    path = tmp_path / "nodes.yaml"
    path.write_text(text)
    with pytest.raises(NodeListError, match=message) as info:
        load_node_list(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).strip()
