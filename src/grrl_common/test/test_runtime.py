"""Node runtime: ros-args, DDS confinement, and run_nodes' completion and shutdown."""

from __future__ import annotations

import threading

import rclpy
from rclpy.node import Node

from grrl_common.runtime import ensure_local_dds, ros_arguments, run_nodes


def test_ros_arguments_match_launch_ros():
    args = ros_arguments(
        "cam", "robot", ["/a.yaml", "/b.yaml"], [("image", "/camera/head/image_raw")]
    )
    assert args == [
        "--ros-args",
        "-r", "__node:=cam",
        "-r", "__ns:=/robot",
        "--params-file", "/a.yaml",
        "--params-file", "/b.yaml",
        "-r", "image:=/camera/head/image_raw",
    ]  # fmt: skip
    assert ros_arguments() == ["--ros-args"]


def test_dds_confined_to_localhost_unless_opted_out():
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    ensure_local_dds(env)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"  # a stray setting is not an opt-out
    assert env["ROS_DOMAIN_ID"]
    env = {"GRRL_DISCOVERY_RANGE": "SUBNET", "ROS_DOMAIN_ID": "7"}
    ensure_local_dds(env)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET" and env["ROS_DOMAIN_ID"] == "7"


class _Finisher(Node):
    """Finishes after a few timer ticks with a chosen exit code."""

    def __init__(self, exit_code: int = 0, ticks: int = 3, **kwargs):
        super().__init__("finisher", **kwargs)
        self.done = threading.Event()
        self.exit_code = exit_code
        self.ticks = 0
        self.destroyed = False
        self.started_as = self.get_fully_qualified_name()
        self._target = ticks
        self.create_timer(0.01, self._tick)

    def _tick(self):
        self.ticks += 1
        if self.ticks >= self._target:
            self.done.set()

    def destroy_node(self):
        self.destroyed = True
        return super().destroy_node()


def test_run_nodes_exits_when_done_with_node_exit_code_and_destroys_nodes():
    created = []

    def factory(**kwargs):
        node = _Finisher(exit_code=3, **kwargs)
        created.append(node)
        return node

    assert run_nodes([(factory, ["--ros-args", "-r", "__node:=renamed"])], exit_when_done=True) == 3
    (node,) = created
    assert node.ticks >= 3 and node.destroyed
    assert node.started_as == "/renamed"
    assert not rclpy.ok()  # the runner's own context is shut down, the default one untouched


def test_run_nodes_stops_on_event_from_another_thread():
    stop = threading.Event()
    started = threading.Event()
    result = {}

    def run():
        result["rc"] = run_nodes(
            [(lambda **kw: _Finisher(ticks=10**9, **kw), [])],
            stop_event=stop,
            on_started=lambda nodes: started.set(),
        )

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(timeout=30)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and result["rc"] == 0
