"""sim_node over DDS: commands move the robot, bad commands are rejected, resets abort."""

from __future__ import annotations

import math

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.image_codec import image_to_numpy
from grrl_common.robot import load_robot_description
from grrl_common.runtime import spin_until
from grrl_msgs.msg import EpisodeEvent
from grrl_msgs.srv import ResetEpisode


def _record(node: Node, msg_type, topic: str, kind: QosKind) -> list:
    """Subscribe ``topic`` and return the list the messages are appended to."""
    received: list = []
    node.create_subscription(msg_type, topic, received.append, qos_profile(kind))
    return received


def _command(names, positions) -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(names))
    msg.points = [JointTrajectoryPoint(positions=[float(p) for p in positions])]
    return msg


def test_sim_node_obeys_commands_rejects_bad_ones_and_aborts_on_reset(
    executor, ros_context, start_process, executable_path
):
    robot = load_robot_description()
    sim = start_process(
        executable_path("grrl_sim", "sim_node"),
        "--ros-args", "-p", "obs_mode:=pixels", "-p", "camera_rate_hz:=10.0",
    )  # fmt: skip
    node = Node("sim_test_client", context=ros_context)
    executor.add_node(node)
    states = _record(node, JointState, contract.JOINT_STATES, QosKind.SENSOR)
    images = _record(node, Image, contract.camera_topic("head"), QosKind.SENSOR)
    events = _record(node, EpisodeEvent, contract.EPISODE_EVENT, QosKind.LATCHED)
    command_pub = node.create_publisher(
        JointTrajectory, contract.JOINT_COMMAND, qos_profile(QosKind.COMMAND)
    )
    assert spin_until(executor, lambda: len(states) > 5 and images, 60), sim.text()

    image = image_to_numpy(images[-1])
    assert image.shape == (128, 128, 3) and images[-1].encoding == "rgb8" and image.std() > 5
    assert list(states[-1].name) == robot.joint_names
    waist = robot.joint_names.index("left_waist")

    def waist_now() -> float:
        return states[-1].position[waist]

    start = waist_now()
    assert spin_until(executor, lambda: command_pub.get_subscription_count() > 0, 30)

    # a NaN command and one beyond the limits are rejected: the robot does not move
    bad = np.array(states[-1].position)
    bad[waist] = math.nan
    command_pub.publish(_command(robot.joint_names, bad))
    beyond = np.array(states[-1].position)
    beyond[waist] = robot.upper[waist] + 1.0
    command_pub.publish(_command(robot.joint_names, beyond))
    command_pub.publish(_command(["no_such_joint"], [0.0]))
    assert sim.wait_for("rejected /grrl/joint_command", timeout=10), sim.text()
    count = len(states)
    spin_until(executor, lambda: len(states) > count + 25, 10)  # half a second of motion time
    assert abs(waist_now() - start) < 1e-3

    # a valid (partial) command moves the joint towards the target
    command_pub.publish(_command(["left_waist"], [start + 0.3]))
    assert spin_until(executor, lambda: abs(waist_now() - (start + 0.3)) < 0.02, 10)

    # reset mid-episode: ABORT event, then the robot is back home with the new seed
    before_reset = states[-1].header.stamp  # nonzero: 0 would read as "unstamped"
    assert before_reset.sec or before_reset.nanosec
    client = node.create_client(ResetEpisode, contract.RESET_EPISODE_SERVICE)
    assert spin_until(executor, client.service_is_ready, 30)
    future = client.call_async(ResetEpisode.Request(seed=123))
    assert spin_until(executor, future.done, 10)
    assert future.result().ok and future.result().seed == 123
    assert spin_until(executor, lambda: any(e.type == EpisodeEvent.ABORT for e in events), 10)
    assert spin_until(executor, lambda: abs(waist_now() - robot.sim["home"][0]) < 0.05, 10)

    # a command stamped before the reset was meant for the old scene: dropped, the robot stays
    # home; one stamped now (sim time, like the joint states) is obeyed
    home = robot.sim["home"][0]
    stale = _command(["left_waist"], [home + 0.3])
    stale.header.stamp = before_reset
    command_pub.publish(stale)
    count = len(states)
    spin_until(executor, lambda: len(states) > count + 25, 10)
    assert abs(waist_now() - home) < 0.02
    fresh = _command(["left_waist"], [home + 0.3])
    fresh.header.stamp = states[-1].header.stamp
    command_pub.publish(fresh)
    assert spin_until(executor, lambda: abs(waist_now() - (home + 0.3)) < 0.02, 10)


def test_fast_pacing_steps_on_commands_publishes_clock_and_ends_episode(
    executor, ros_context, start_process, executable_path
):
    from rosgraph_msgs.msg import Clock

    robot = load_robot_description()
    sim = start_process(
        executable_path("grrl_sim", "sim_node"),
        "--ros-args", "-p", "obs_mode:=state", "-p", "pacing:=fast",
        "-p", "episode_limit_steps:=30", "-p", "fast_idle_s:=5.0",
    )  # fmt: skip
    node = Node("fast_sim_client", context=ros_context)
    executor.add_node(node)
    clocks = _record(node, Clock, contract.CLOCK, QosKind.SENSOR)
    events = _record(node, EpisodeEvent, contract.EPISODE_EVENT, QosKind.LATCHED)
    states = _record(node, JointState, contract.JOINT_STATES, QosKind.SENSOR)
    command_pub = node.create_publisher(
        JointTrajectory, contract.JOINT_COMMAND, qos_profile(QosKind.COMMAND)
    )
    assert spin_until(executor, lambda: command_pub.get_subscription_count() > 0, 30), sim.text()
    assert spin_until(executor, lambda: states, 30), sim.text()
    home = np.array(states[-1].position)

    # lockstep: each command advances the simulation by exactly one control period
    for _ in range(40):
        if any(e.type == EpisodeEvent.END for e in events):
            break
        before = len(states)
        command_pub.publish(_command(robot.joint_names, home))
        assert spin_until(executor, lambda before=before: len(states) > before, 10), sim.text()
    (end,) = [e for e in events if e.type == EpisodeEvent.END]
    assert end.success is False and end.note.startswith("timeout") and end.source == "sim"
    stamps = [s.header.stamp.sec + s.header.stamp.nanosec * 1e-9 for s in states]
    assert np.allclose(np.diff(stamps[-10:]), 1.0 / robot.control_rate_hz, atol=1e-6)
    assert abs(stamps[-1] - 30 / robot.control_rate_hz) < 1e-6  # 30 steps of sim time
    assert clocks and clocks[-1].clock.sec + clocks[-1].clock.nanosec * 1e-9 > 0.5
