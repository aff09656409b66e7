"""recorder_node over DDS: episodes from events, keyframes at the pressed stamps, kill -9 safety;
and ``grrl collect`` end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess

from rclpy.node import Node
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import JointState

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.runtime import spin_until
from grrl_msgs.msg import EpisodeEvent
from grrl_teleop.recording import make_typestore


def _event(node: Node, kind: int, episode_id: str, sec: int, success: bool = False):
    event = EpisodeEvent(type=kind, episode_id=episode_id, success=success, source="test")
    event.header.stamp.sec = sec
    return event


def _client(executor, ros_context, name: str, topic: str, msg_type: type):
    """A test node with the latched episode-event publisher and a SENSOR publisher on
    ``topic``, once the recorder subscribes to both."""
    node = Node(name, context=ros_context)
    executor.add_node(node)
    events = node.create_publisher(EpisodeEvent, contract.EPISODE_EVENT,
                                   qos_profile(QosKind.LATCHED))  # fmt: skip
    publisher = node.create_publisher(msg_type, topic, qos_profile(QosKind.SENSOR))
    assert spin_until(executor, lambda: publisher.get_subscription_count() > 0, 30)
    assert spin_until(executor, lambda: events.get_subscription_count() > 0, 30)
    return node, events, publisher


def _index(path) -> dict:
    return {e["episode_id"]: e for e in json.loads((path / "index.json").read_text())["episodes"]}


def test_recorder_keeps_finished_episodes_and_flushed_tail_after_kill_9(
    tmp_path, executor, ros_context, start_process, executable_path
):
    recorder = start_process(
        executable_path("grrl_teleop", "recorder_node"),
        "--ros-args", "-p", f"dataset_dir:={tmp_path}", "-p", "segment_s:=0.2",
        "-p", "status_period_s:=0.0",
    )  # fmt: skip
    assert recorder.wait_for("recording", timeout=30), recorder.text()
    node, events, states = _client(
        executor, ros_context, "recorder_test_client", contract.JOINT_STATES, JointState
    )

    # episode 1: start, two retry presses, a few joint states, end with success
    events.publish(_event(node, EpisodeEvent.START, "ep1", 100))
    assert recorder.wait_for("episode ep1: recording", timeout=10), recorder.text()
    for i in range(20):
        states.publish(JointState(name=["j"], position=[float(i)]))
        executor.spin_once(timeout_sec=0.01)
    events.publish(_event(node, EpisodeEvent.RETRY_KEYFRAME, "ep1", 101))
    events.publish(_event(node, EpisodeEvent.RETRY_KEYFRAME, "ep1", 102))
    events.publish(_event(node, EpisodeEvent.END, "ep1", 103, success=True))
    assert recorder.wait_for("episode ep1: success", timeout=10), recorder.text()

    # episode 2: killed (-9) while recording, after a few segments were flushed
    events.publish(_event(node, EpisodeEvent.START, "ep2", 200))
    assert recorder.wait_for("episode ep2: recording", timeout=10), recorder.text()
    published = 0

    def flushed() -> bool:
        return any((tmp_path / "ep2").glob("ep2_1.mcap"))

    while not flushed() and published < 2000:
        states.publish(JointState(name=["j"], position=[float(published)]))
        published += 1
        executor.spin_once(timeout_sec=0.005)
    assert flushed(), "the recorder flushed no segment"
    recorder.process.send_signal(signal.SIGKILL)
    recorder.process.wait(timeout=10)

    index = _index(tmp_path)
    assert index["ep1"]["complete"] and index["ep1"]["success"] is True
    assert index["ep1"]["retry_keyframes_ns"] == [101 * 10**9, 102 * 10**9]
    assert index["ep2"]["complete"] is False  # cut short: marked incomplete

    store = make_typestore()
    with Reader(tmp_path / "ep1") as reader:
        kinds = [store.deserialize_cdr(raw, c.msgtype).type for c, _, raw in reader.messages()
                 if c.topic == contract.EPISODE_EVENT]  # fmt: skip
        assert kinds == [EpisodeEvent.START, 1, 1, EpisodeEvent.END]
        assert sum(1 for c, _, _ in reader.messages() if c.topic == contract.JOINT_STATES) > 0
    with Reader(tmp_path / "ep2") as reader:  # readable up to its last flushed segment
        positions = [
            store.deserialize_cdr(raw, c.msgtype).position[0]
            for c, _, raw in reader.messages()
            if c.topic == contract.JOINT_STATES
        ]
    assert 0 < len(positions) <= published
    assert positions == sorted(positions)  # an unbroken prefix of what was published


def test_status_line_counts_drops_only_for_cameras_that_publish(tmp_path, executor, ros_context):
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from grrl_teleop.recorder_node import RecorderNode

    recorder = RecorderNode(
        context=ros_context,
        parameter_overrides=[Parameter("dataset_dir", value=str(tmp_path)),
                             Parameter("status_period_s", value=0.0)],
    )  # fmt: skip
    executor.add_node(recorder)
    head = next(iter(recorder.robot.cameras.values()))  # the others never publish here
    assert len(recorder.robot.cameras) > 1
    node, events, frames = _client(
        executor, ros_context, "recorder_status_client", head.topic, Image
    )
    events.publish(_event(node, EpisodeEvent.START, "cam", 1))
    assert spin_until(executor, lambda: recorder._bag is not None, 10)
    for _ in range(2):
        frames.publish(Image(height=1, width=1, encoding="rgb8", step=3, data=[0, 0, 0]))

    def frames_recorded() -> int:
        counts = recorder._bag.counts if recorder._bag else {}
        return counts[head.topic].messages if head.topic in counts else 0

    assert spin_until(executor, lambda: frames_recorded() == 2, 10)
    pattern = r"cam\s+([\d.]+)s .* dropped~(\d+)"
    # the head camera then falls silent: its missing frames count, the silent cameras' do not
    assert spin_until(executor, lambda: int(re.search(pattern, recorder.status_line())[2]) >= 5, 10)
    elapsed, dropped = re.search(pattern, recorder.status_line()).groups()
    assert 5 <= int(dropped) <= (float(elapsed) + 0.05) * head.rate_hz - 2


def test_grrl_collect_records_sim_episodes(tmp_path, start_process, executable_path):
    out = tmp_path / "demos"
    collect = start_process(
        executable_path("grrl_bringup", "grrl"),
        "collect", "--sim", "--episodes", "3", "--out", str(out), "--obs", "state", "--seed", "1",
    )  # fmt: skip
    assert collect.process.wait(timeout=300) == 0, collect.text()
    index = _index(out)
    assert len(index) == 3 and all(e["complete"] for e in index.values())
    store = make_typestore()
    for record in index.values():
        assert record["success"] in (True, False)
        with Reader(out / record["bag"]) as reader:
            topics = {c.topic for c in reader.connections}
            assert {contract.JOINT_STATES, contract.JOINT_COMMAND, contract.EPISODE_EVENT,
                    "/grrl/sim/ground_truth"} <= topics  # fmt: skip
            retries = [
                event.header.stamp.sec * 10**9 + event.header.stamp.nanosec
                for c, _, raw in reader.messages()
                if c.topic == contract.EPISODE_EVENT
                for event in [store.deserialize_cdr(raw, c.msgtype)]
                if event.type == EpisodeEvent.RETRY_KEYFRAME
            ]
            assert retries == record["retry_keyframes_ns"]
            truths = [
                json.loads(store.deserialize_cdr(raw, c.msgtype).data)
                for c, _, raw in reader.messages()
                if c.topic == "/grrl/sim/ground_truth"
            ]
            assert len([m for m in truths[-1]["mistakes"] if m["retry_step"] >= 0]) == len(retries)
            for pause in truths[-1]["hesitations"]:  # the operator's pauses, per arm
                assert pause["arm"] in ("left", "right")
                assert 0 <= pause["start_step"] <= pause["end_step"]
    assert sum(e["success"] for e in index.values()) >= 2
    # state observations publish no camera frames, so none count as dropped
    statuses = re.findall(r"\[rec\] episode_\d+ .* dropped~(\d+)", collect.text())
    assert statuses and set(statuses) == {"0"}, collect.text()
    # a mistyped operator override fails in one line, before any node starts
    bad = subprocess.run(
        [executable_path("grrl_bringup", "grrl"), "collect", "--sim", "--out", str(tmp_path / "x"),
         "--operator-set", "jiter_m=0"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "jitter_m" in bad.stderr and not (tmp_path / "x").exists()


def test_gamepad_teleop_moves_the_sim_and_labels_the_episode(
    executor, ros_context, start_process, executable_path
):
    from sensor_msgs.msg import Joy
    from trajectory_msgs.msg import JointTrajectory

    sim = start_process(executable_path("grrl_sim", "sim_node"),
                        "--ros-args", "-p", "obs_mode:=state")  # fmt: skip
    teleop = start_process(executable_path("grrl_teleop", "teleop_node"),
                           "--ros-args", "-p", "device:=gamepad")  # fmt: skip
    assert teleop.wait_for("teleop with the gamepad device", timeout=30), teleop.text()
    node = Node("gamepad_test", context=ros_context)
    executor.add_node(node)
    joy = node.create_publisher(Joy, "/joy", qos_profile(QosKind.SENSOR))
    commands: list[JointTrajectory] = []
    events: list[EpisodeEvent] = []
    node.create_subscription(JointTrajectory, contract.JOINT_COMMAND, commands.append,
                             qos_profile(QosKind.COMMAND))  # fmt: skip
    node.create_subscription(EpisodeEvent, contract.EPISODE_EVENT, events.append,
                             qos_profile(QosKind.LATCHED))  # fmt: skip
    assert spin_until(executor, lambda: joy.get_subscription_count() > 0, 30)
    assert teleop.wait_for("operator commands enabled", timeout=30), teleop.text()

    def press(axes=(0.0,) * 8, buttons=(0,) * 11, steps=5):
        for _ in range(steps):
            joy.publish(Joy(axes=list(axes), buttons=list(buttons)))
            executor.spin_once(timeout_sec=0.02)

    start = [0] * 11
    start[7] = 1

    def pressed_start() -> bool:
        # Joy is best effort, and the teleop's reader may match our writer a moment after our
        # side saw it: early messages can be lost, so press again, as a person would.
        press()  # released first: the first message only sets the button state
        press(buttons=start)
        press()
        return any(e.type == EpisodeEvent.START for e in events)

    assert spin_until(executor, pressed_start, 10), teleop.text()
    stick = [0.0] * 8
    stick[0] = 1.0  # left stick held: the waist of the active (left) arm turns at 0.8 rad/s

    def held_until_turned() -> bool:
        joy.publish(Joy(axes=stick, buttons=[0] * 11))
        return len(commands) > 1 and (
            commands[-1].points[0].positions[waist] > commands[0].points[0].positions[waist] + 0.1
        )

    waist = 0  # left_waist: first in the robot description's order
    assert spin_until(executor, held_until_turned, 10, step_sec=0.02), teleop.text()
    assert commands[0].joint_names[waist] == "left_waist"
    press()  # stick released: an idle pad sends no targets
    spin_until(executor, lambda: False, 0.3)  # let commands already in flight arrive
    sent = len(commands)
    press(axes=[float("nan")] * 8, steps=5)  # malformed input: nothing reaches the robot
    spin_until(executor, lambda: False, 0.3)  # absence of messages needs a time window
    assert len(commands) == sent, teleop.text()
    assert "gamepad:" in teleop.text()  # the rejection was reported
    end = [0] * 11
    end[0] = 1  # A: end with success
    press(buttons=end)
    assert spin_until(executor, lambda: any(e.type == EpisodeEvent.END and e.success
                                            for e in events), 10)  # fmt: skip
    assert sim.process.poll() is None
