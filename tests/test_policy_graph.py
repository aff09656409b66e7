"""Deployment over DDS: policy_node's inputs and hot-swaps, smoother_node's watchdog, and the
whole graph (sim → policy → smoother → sim) closing the loop under ``grrl up``."""

from __future__ import annotations

import json
import math
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.image_codec import numpy_to_image
from grrl_common.robot import load_robot_description
from grrl_common.runtime import spin_until
from grrl_msgs.msg import ActionChunk, EpisodeEvent, PolicyUpdate
from grrl_policy.checkpoint import checkpoint_sha256
from grrl_policy.smoother import JointLimits

ROBOT = load_robot_description()
HOME = np.array(ROBOT.sim["home"] * 2)


def _record(node: Node, msg_type, topic: str, qos) -> list:
    received: list = []
    node.create_subscription(msg_type, topic, received.append, qos)
    return received


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _statuses(diagnostics: list, name: str) -> list:
    return [s for array in diagnostics for s in array.status if s.name == name]


def _joint_state(node: Node, positions, stamp=None) -> JointState:
    msg = JointState(name=ROBOT.joint_names, position=[float(p) for p in positions])
    msg.header.stamp = stamp or node.get_clock().now().to_msg()
    return msg


def test_policy_node_holds_on_bad_inputs_and_swaps_only_verified_weights(
    executor, ros_context, start_process, executable_path, tiny_policy
):
    first = tiny_policy("v0", cameras=("head",))
    second = tiny_policy("v1", cameras=("head",), seed=1)
    policy = start_process(
        executable_path("grrl_policy", "policy_node"), "--ros-args",
        "-p", f"policy:={first}", "-p", "chunk_period_s:=0.05", "-p", "max_age_s:=0.5",
        "-p", "diagnostics_period_s:=0.2",
    )  # fmt: skip
    node = Node("policy_node_test", context=ros_context)
    executor.add_node(node)
    chunks = _record(node, ActionChunk, contract.ACTION_CHUNK, qos_profile(QosKind.RELIABLE))
    diagnostics = _record(node, DiagnosticArray, "/diagnostics", 10)
    joints_pub = node.create_publisher(JointState, contract.JOINT_STATES, qos_profile("sensor"))
    head_pub = node.create_publisher(Image, "/camera/head/image_raw", qos_profile("sensor"))
    update_pub = node.create_publisher(PolicyUpdate, contract.POLICY_UPDATE, qos_profile("latched"))
    status = lambda: _statuses(diagnostics, "grrl: policy_node")  # noqa: E731

    def feed(image=None, joints=HOME, encoding="rgb8", seconds=0.6, until=None):
        """Publish joint states (and frames) at ~20 Hz for ``seconds`` (or until ``until()``
        holds, within 30 s), spinning meanwhile."""
        end = time.monotonic() + (30.0 if until else seconds)
        while time.monotonic() < end and not (until and until()):
            stamp = node.get_clock().now().to_msg()
            joints_pub.publish(_joint_state(node, joints, stamp))
            if image is not None:
                head_pub.publish(numpy_to_image(image, encoding, stamp, "head"))
            executor.spin_once(timeout_sec=0.05)

    assert spin_until(executor, lambda: joints_pub.get_subscription_count() > 0, 30), policy.text()
    assert spin_until(executor, lambda: status(), 30), policy.text()

    # the camera is missing: no chunk, an error naming it
    feed(seconds=1.0)
    assert not chunks
    assert any(s.level == b"\x02" and "camera head: none received" in s.message for s in status())

    # wrong encoding, wrong size: refused with a clear reason; still no chunk
    feed(np.zeros((128, 128), np.uint8), encoding="mono8")
    feed(np.zeros((64, 64, 3), np.uint8))
    assert not chunks
    text = policy.text() if policy.process.poll() is not None else "\n".join(policy.lines)
    assert "encoding 'mono8', the policy needs rgb8" in text
    assert "image is 64x64, the policy expects 128x128" in text

    # good inputs: chunks conditioned on the observation, with the noise they came from
    frame = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    feed(frame, until=lambda: len(chunks) > 2)
    assert chunks, "\n".join(policy.lines)
    chunk = chunks[-1]
    assert list(chunk.joint_names) == ROBOT.joint_names and chunk.horizon == 8
    assert len(chunk.actions) == len(chunk.noise) == 8 * ROBOT.n_joints
    assert chunk.policy_version == 0 and chunk.inference_ms > 0

    # NaN joint states are ignored: no chunk is conditioned on them; once the last valid state
    # is older than max_age_s the node holds (no chunks) and says why
    last_valid = node.get_clock().now().nanoseconds * 1e-9
    before = len(chunks)
    nan_joints = HOME.copy()
    nan_joints[0] = math.nan
    feed(frame, joints=nan_joints, seconds=1.2)
    assert "non-finite joint position for left_waist" in "\n".join(policy.lines)
    stamps = [c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 for c in chunks[before:]]
    assert all(stamp <= last_valid for stamp in stamps)
    assert any("joint_states: stale" in s.message for s in status())

    # a wrong sha256 is refused; v0 keeps running
    bad = PolicyUpdate(checkpoint_path=str(second), sha256="0" * 64, version=1)
    update_pub.publish(bad)
    feed(frame, seconds=1.0)
    assert "policy update v1 refused" in "\n".join(policy.lines)
    assert chunks[-1].policy_version == 0
    good = PolicyUpdate(checkpoint_path=str(second), sha256=checkpoint_sha256(second), version=1)
    update_pub.publish(good)
    feed(frame, until=lambda: chunks[-1].policy_version == 1)  # loaded off-thread meanwhile
    assert chunks[-1].policy_version == 1, "\n".join(policy.lines)
    versions = [c.policy_version for c in chunks]
    assert versions == sorted(versions)  # swapped once, between chunks


def test_smoother_node_tracks_chunks_then_stops_smoothly_when_they_stop(
    executor, ros_context, start_process, executable_path
):
    smoother = start_process(
        executable_path("grrl_policy", "smoother_node"), "--ros-args",
        "-p", "stale_after_s:=0.3",
    )  # fmt: skip
    node = Node("smoother_node_test", context=ros_context)
    executor.add_node(node)
    commands = _record(node, JointTrajectory, contract.JOINT_COMMAND, qos_profile("command"))
    joints_pub = node.create_publisher(JointState, contract.JOINT_STATES, qos_profile("sensor"))
    chunk_pub = node.create_publisher(ActionChunk, contract.ACTION_CHUNK, qos_profile("reliable"))
    event_pub = node.create_publisher(EpisodeEvent, contract.EPISODE_EVENT, qos_profile("latched"))
    assert spin_until(executor, lambda: joints_pub.get_subscription_count() > 0, 30)
    assert spin_until(executor, lambda: chunk_pub.get_subscription_count() > 0, 30)

    # anchored at the measured joints, it holds them
    def commands_after_state() -> bool:  # best-effort states: send until one got through
        joints_pub.publish(_joint_state(node, HOME))
        return len(commands) > 5

    assert spin_until(executor, commands_after_state, 10, step_sec=0.05), smoother.text()
    assert np.allclose(commands[-1].points[0].positions, HOME)

    waist = ROBOT.joint_names.index("left_waist")
    k, dt = 20, 0.02

    def chunk_from_now(chunk_id: int, offset: float) -> ActionChunk:
        actions = np.tile(HOME, (k, 1))
        actions[:, waist] = offset + 0.5 * dt * np.arange(k)  # a 0.5 rad/s sweep
        msg = ActionChunk(chunk_id=chunk_id, joint_names=ROBOT.joint_names, dt=dt, horizon=k,
                          actions=actions.ravel().tolist())  # fmt: skip
        msg.header.stamp = node.get_clock().now().to_msg()
        return msg

    offset = 0.0
    for i in range(15):  # 1.5 s of chunks at 10 Hz
        chunk_pub.publish(chunk_from_now(i, offset))
        offset += 0.05
        spin_until(executor, lambda: False, 0.1)
    # malformed chunks are refused, the plan continues
    nan_chunk = chunk_from_now(99, offset)
    nan_chunk.actions[0] = math.nan
    chunk_pub.publish(nan_chunk)
    chunk_pub.publish(ActionChunk(chunk_id=100, joint_names=["x"], dt=dt, horizon=1, actions=[0.0]))
    assert smoother.wait_for("refused chunk 100", timeout=10), smoother.text()
    assert smoother.wait_for("refused chunk 99", timeout=10), smoother.text()
    # no more chunks: the watchdog stops the motion smoothly and then holds
    assert smoother.wait_for("smooth stop: stale", timeout=10), smoother.text()
    spin_until(executor, lambda: False, 1.5)
    event_pub.publish(EpisodeEvent(type=EpisodeEvent.END, episode_id="e", source="test"))

    positions = np.array([c.points[0].positions for c in commands])
    velocities = np.array([c.points[0].velocities for c in commands])
    accelerations = np.array([c.points[0].accelerations for c in commands])
    times = np.array([c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 for c in commands])
    steps = np.round(np.diff(times) / dt)
    assert np.all(steps >= 1)  # one command per control period (catch-up steps skip stamps)
    limits = JointLimits.from_robot(ROBOT)
    tol = 1e-6
    assert np.all(np.abs(velocities) <= limits.velocity + tol)
    assert np.all(np.abs(accelerations) <= limits.acceleration + tol)
    single = steps == 1
    jerk = np.diff(accelerations, axis=0)[single] / dt
    assert np.all(np.abs(jerk) <= limits.jerk + 1e-3)
    # the waist moved with the chunks, then came to rest without a jump
    assert positions[:, waist].max() > 0.3
    assert np.max(np.abs(np.diff(positions[:, waist]))) <= limits.velocity[waist] * dt * 5 + tol
    assert np.allclose(velocities[-1], 0) and np.allclose(accelerations[-1], 0)
    assert np.allclose(positions[-1], positions[-2])  # holding


def test_grrl_up_closes_the_loop_with_the_sim_and_scores_episodes(
    executor, ros_context, start_process, executable_path, tiny_policy, tmp_path
):
    policy = tiny_policy("state", object_pose_dim=14, action_std=0.2)
    results = tmp_path / "results.json"
    node = Node("graph_observer", context=ros_context)
    executor.add_node(node)
    states = _record(node, JointState, contract.JOINT_STATES, qos_profile("sensor"))
    chunks = _record(node, ActionChunk, contract.ACTION_CHUNK, qos_profile("reliable"))
    commands = _record(node, JointTrajectory, contract.JOINT_COMMAND, qos_profile("command"))
    events = _record(node, EpisodeEvent, contract.EPISODE_EVENT, qos_profile("latched"))
    graph = start_process(
        executable_path("grrl_bringup", "grrl"), "up", "--sim", "--policy", str(policy),
        "--episodes", "3", "--episode-steps", "100", "--results", str(results),
    )  # fmt: skip
    assert spin_until(executor, lambda: graph.process.poll() is not None, 150), graph.text()
    assert graph.process.returncode == 0, graph.text()
    document = json.loads(results.read_text())
    assert document["summary"]["episodes"] == 3
    assert [e["seed"] for e in document["episodes"]] == [1_000_000, 1_000_001, 1_000_002]
    assert all(e["note"].startswith("timeout") for e in document["episodes"])  # untrained
    # the loop closed: chunks → smoother commands → the sim's joints moved away from home
    assert chunks and commands, graph.text()
    moved = np.array([s.position for s in states]) - HOME
    assert np.abs(moved).max() > 0.05, graph.text()
    # an episode left the robot away from home; the reset put it back, and nothing (a hold
    # command at the old pose from the smoother, say) pulled it away again as the next episode
    # began (the last reset: discovery may make this observer miss the first episode)
    stamps = np.array([_seconds(s.header.stamp) for s in states])
    last_end = [e for e in events if e.type == EpisodeEvent.END][-2]
    before = np.searchsorted(stamps, _seconds(last_end.header.stamp))
    assert 0 < before < len(stamps) and np.abs(moved[before]).max() > 0.05
    deviation = np.abs(moved[before:]).max(axis=1)
    reset = int(np.argmax(deviation < 0.005))  # the first state at home
    assert deviation[reset] < 0.005 and reset + 3 < len(deviation)
    assert deviation[reset : reset + 3].max() < 0.02, deviation[reset : reset + 8]
    assert "Traceback" not in graph.text()


def test_policy_node_publishes_progress_and_markers_with_a_critic(
    executor, ros_context, start_process, executable_path, tiny_policy, tmp_path
):
    from geometry_msgs.msg import Pose, PoseArray
    from visualization_msgs.msg import MarkerArray

    from grrl_learner.critic import ChunkCritic, CriticConfig, save_critic
    from grrl_msgs.msg import Progress
    from grrl_policy.normalization import NormStats

    policy = tiny_policy("state", object_pose_dim=14)
    n, s = ROBOT.n_joints, ROBOT.n_joints + 14
    critic_cfg = CriticConfig(state_dim=s, action_dim=n, chunk=8, width=32, head_width=16)
    norm = NormStats(np.zeros(s, np.float32), np.ones(s, np.float32),
                     np.zeros(n, np.float32), np.ones(n, np.float32))  # fmt: skip
    critic = save_critic(tmp_path / "critic", ChunkCritic(critic_cfg), norm, object_poses=True)
    node_proc = start_process(
        executable_path("grrl_policy", "policy_node"), "--ros-args",
        "-p", f"policy:={policy}", "-p", f"critic:={critic}", "-p", "chunk_period_s:=0.05",
    )  # fmt: skip
    node = Node("progress_test", context=ros_context)
    executor.add_node(node)
    progress = _record(node, Progress, contract.PROGRESS, qos_profile("reliable"))
    markers = _record(node, MarkerArray, contract.MARKERS, qos_profile("reliable"))
    joints_pub = node.create_publisher(JointState, contract.JOINT_STATES, qos_profile("sensor"))
    poses_pub = node.create_publisher(PoseArray, contract.OBJECT_POSES, qos_profile("sensor"))

    def publish() -> bool:
        stamp = node.get_clock().now().to_msg()
        poses = PoseArray(poses=[Pose(), Pose()])
        poses.header.stamp = stamp
        poses_pub.publish(poses)
        joints_pub.publish(_joint_state(node, HOME, stamp))
        return len(progress) > 3 and len(markers) > 3

    assert spin_until(executor, publish, 60, step_sec=0.02), node_proc.text()
    p = progress[-1]
    assert len(p.distribution) == 101 and abs(sum(p.distribution) - 1) < 1e-4
    assert 0.0 <= p.mean <= 1.0 and p.source == "policy_node/critic"
    namespaces = {m.ns for m in markers[-1].markers}
    assert {"chunk_path/left", "chunk_path/right"} <= namespaces
    assert any(ns.startswith("progress") for ns in namespaces)
