"""The composed runner starts the node list's nodes in one process and stops cleanly."""

from __future__ import annotations

import signal
import time

import pytest
from rclpy.node import Node

from grrl_bringup.interface_check import MESSAGE_TYPES, SERVICE_TYPES
from grrl_common.runtime import spin_until


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_runner_nodes_discover_each_other_and_stop_on_signal(
    signum, executor, ros_context, start_process, executable_path
):
    runner = start_process(
        executable_path("grrl_bringup", "grrl"), "up", "--groups", "interface_check"
    )

    # The nodes are visible to an outside participant...
    observer = Node("runner_observer", context=ros_context)
    executor.add_node(observer)
    names = lambda: {name for name, _ in observer.get_node_names_and_namespaces()}  # noqa: E731
    assert spin_until(
        executor, lambda: {"interface_prober", "interface_responder"} <= names(), timeout_sec=30
    ), runner.text()
    # ...and to each other: the prober's checks all crossed DDS to the responder and back.
    n = len(MESSAGE_TYPES) + len(SERVICE_TYPES)
    intact = f"{n}/{n} grrl_msgs interfaces crossed DDS intact"
    assert runner.wait_for(intact, timeout=60), runner.text()
    assert runner.process.poll() is None, "without --exit-when-done the runner keeps running"

    sent = time.monotonic()
    runner.process.send_signal(signum)
    rc = runner.process.wait(timeout=10)
    stopped_after = time.monotonic() - sent
    assert rc == 0, runner.text()
    assert stopped_after <= 2.0, f"runner took {stopped_after:.2f} s to stop"
    assert f"received {signal.Signals(signum).name}, shutting down" in runner.text()


def test_runner_exit_when_done_reports_check(start_process, executable_path):
    runner = start_process(
        executable_path("grrl_bringup", "grrl"),
        "up",
        "--groups",
        "interface_check",
        "--exit-when-done",
    )
    assert runner.process.wait(timeout=90) == 0, runner.text()
    output = runner.text()
    for kind in (
        "action_chunk",
        "episode_event",
        "progress",
        "policy_update",
        "start_episode",
        "end_episode",
        "reset_episode",
    ):
        assert any(line.startswith(kind) and " ok " in line for line in output.splitlines()), kind


def test_runner_rejects_unknown_group_with_one_line(start_process, executable_path):
    runner = start_process(
        executable_path("grrl_bringup", "grrl"), "up", "--groups", "no_such_group"
    )
    assert runner.process.wait(timeout=30) == 2
    output = runner.text().strip().splitlines()
    assert output == [output[0]] and "unknown group(s) no_such_group" in output[0]
