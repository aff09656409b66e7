"""Deployment benchmark: inference, smoother QP, command jitter, DDS overhead, RTC; one JSON line.

    python bench/deploy.py --policy runs/demo/policy_bc [--seconds 20]

- ``policy_ms_p50/p99``: bare ``LoadedPolicy.act`` latency, one observation, one thread (as
  ``policy_node`` runs it by default), in this process.
- ``qp_ms_p50/p99``: the smoother's plan-QP solve per arriving chunk, in sim-core episodes of the
  policy (``grrl_learner.evaluation``: the deployment smoother, ensembling, a chunk per step).
- ``jitter_ms_p99``: |command period − 10 ms| at 100 Hz, p99, of ``smoother_node``'s publishes
  (own process, ``control_rate_hz:=100``; from its /diagnostics) while ``policy_node`` (own
  process) generates a chunk every ``--chunk-period-s`` (default 20 ms, as
  ``config/policy.yaml``) from the joint states and object poses this process
  publishes at 100 Hz: inference loads the CPU meanwhile. ``jitter_received_ms_p99``: the same
  as received here over DDS (this Python subscriber's scheduling included).
- ``dds_overhead_ratio``: observation→chunk latency through the graph (the chunk's stamp is
  the joint state's, compared with when the chunk arrives here) over the node's own inference
  time for that chunk (medians).
- ``switch_jump_no_rtc`` / ``switch_jump_rtc``: mean max-abs joint jump (rad) between a new
  chunk's first executed action and the previous chunk at that time, in sim-core episodes
  with a simulated inference latency of ``--latency-steps`` control steps (receding horizon),
  without and with real-time chunking.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from steps import machine


def bare_inference(policy_dir: str, runs: int) -> dict[str, float]:
    import torch

    from grrl_policy.checkpoint import load_policy

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # as policy_node runs it (config/policy.yaml torch_threads)
    policy = load_policy(policy_dir)
    state = np.zeros((1, policy.config.state_dim), np.float32)
    state[0] = policy.norm.state_mean
    times = []
    for i in range(runs + 10):
        started = time.perf_counter()
        policy.act(state, ["insert the peg into the socket"])
        if i >= 10:
            times.append((time.perf_counter() - started) * 1e3)
    return {"policy_ms_p50": float(np.percentile(times, 50)),
            "policy_ms_p99": float(np.percentile(times, 99))}  # fmt: skip


def sim_core(policy_dir: str, episodes: int, latency: int) -> dict[str, float | None]:
    import torch

    from grrl_learner.evaluation import EvalConfig, evaluate
    from grrl_policy.checkpoint import load_policy
    from grrl_policy.smoother import SmootherConfig

    torch.set_grad_enabled(False)
    policy = load_policy(policy_dir)
    figures: dict[str, float | None] = {}
    base = evaluate(policy, EvalConfig(episodes=episodes, max_steps=400)).summary()
    figures["qp_ms_p50"], figures["qp_ms_p99"] = base["qp_ms_p50"], base["qp_ms_p99"]
    for rtc in (False, True):
        cfg = EvalConfig(
            episodes=episodes, max_steps=400, latency_steps=latency, rtc=rtc,
            smoother=SmootherConfig(control_dt=policy.control_dt, mode="receding",
                                    receding_steps=latency + 2),
        )  # fmt: skip
        summary = evaluate(policy, cfg).summary()
        figures["switch_jump_rtc" if rtc else "switch_jump_no_rtc"] = summary["switch_jump_mean"]
    return figures


def graph(policy_dir: str, seconds: float, chunk_period_s: float) -> dict[str, float]:
    """policy_node + smoother_node as their own processes; this process is the robot."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import Pose, PoseArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from grrl_common import contract
    from grrl_common.contract import qos_profile
    from grrl_common.robot import load_robot_description
    from grrl_common.runtime import ensure_local_dds, spin_until
    from grrl_common.stamps import stamp_seconds
    from grrl_msgs.msg import ActionChunk

    ensure_local_dds()
    root = Path(__file__).resolve().parents[1]
    lib = root / "install" / "grrl_policy" / "lib" / "grrl_policy"
    procs = [
        subprocess.Popen([str(lib / "policy_node"), "--ros-args", "-p", f"policy:={policy_dir}",
                          "-p", f"chunk_period_s:={chunk_period_s}", "-p", "markers:=false",
                          "-p", "torch_threads:=1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(lib / "smoother_node"), "--ros-args", "-p", "control_rate_hz:=100.0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    robot = load_robot_description()
    home = np.array(robot.sim["home"] * 2, float)
    context = Context()
    rclpy.init(context=context)
    node = Node("deploy_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    commands: list[float] = []
    chunks: list[tuple[float, float]] = []  # (observation → arrival seconds, inference ms)
    recording = {"on": False}

    def on_command(msg: JointTrajectory) -> None:
        if recording["on"]:
            commands.append(time.monotonic())

    def on_chunk(msg: ActionChunk) -> None:
        if recording["on"]:
            chunks.append((time.time() - stamp_seconds(msg.header.stamp), msg.inference_ms))

    node.create_subscription(JointTrajectory, contract.JOINT_COMMAND, on_command,
                             qos_profile("command"))  # fmt: skip
    node.create_subscription(ActionChunk, contract.ACTION_CHUNK, on_chunk, qos_profile("reliable"))
    smoother_jitter: list[float] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "grrl: smoother_node" and recording["on"]:
                values = {kv.key: kv.value for kv in status.values}
                if "period_jitter_ms_p99" in values:
                    smoother_jitter.append(float(values["period_jitter_ms_p99"]))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    joints = node.create_publisher(JointState, contract.JOINT_STATES, qos_profile("sensor"))
    poses = node.create_publisher(PoseArray, contract.OBJECT_POSES, qos_profile("sensor"))
    pose_msg = PoseArray(poses=[Pose(), Pose()])
    pose_msg.header.frame_id = "world"

    def publish() -> None:
        stamp = node.get_clock().now().to_msg()  # wall clock: the nodes run on it too
        state = JointState(name=robot.joint_names, position=home.tolist())
        state.header.stamp = pose_msg.header.stamp = stamp
        poses.publish(pose_msg)
        joints.publish(state)

    node.create_timer(0.01, publish)
    try:
        recording["on"] = True
        if not spin_until(executor, lambda: len(chunks) > 0, 60):
            sys.exit("bench/deploy.py: policy_node produced no chunk within 60 s")
        spin_until(executor, lambda: False, 3.0)  # warm up past the first chunks
        commands.clear()
        chunks.clear()
        spin_until(executor, lambda: False, seconds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    if len(commands) < 10 or not chunks:
        sys.exit("bench/deploy.py: the graph produced no commands or chunks")
    periods = np.diff(commands) * 1e3
    latency_ms = np.array([c[0] for c in chunks]) * 1e3
    inference_ms = np.array([c[1] for c in chunks])
    return {
        # at the smoother (its own publish times: what the robot's driver is sent) and as
        # received here over DDS (adds this Python subscriber's own scheduling)
        "jitter_ms_p99": smoother_jitter[-1] if smoother_jitter else None,
        "jitter_received_ms_p99": float(np.percentile(np.abs(periods - 10.0), 99)),
        "command_period_ms_mean": float(periods.mean()),
        "obs_to_chunk_ms_p50": float(np.median(latency_ms)),
        "graph_inference_ms_p50": float(np.median(inference_ms)),
        "dds_overhead_ratio": float(np.median(latency_ms) / np.median(inference_ms)),
        "chunks_per_s": len(chunks) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", required=True, help="policy checkpoint (state observations)")
    parser.add_argument("--seconds", type=float, default=20.0, help="graph measurement time")
    parser.add_argument("--runs", type=int, default=300, help="bare inference calls")
    parser.add_argument("--episodes", type=int, default=10, help="sim-core episodes per setting")
    parser.add_argument("--latency-steps", type=int, default=3)
    parser.add_argument("--chunk-period-s", type=float, default=0.02, help="policy_node's period")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", "151")
    figures = {"bench": "deploy", "policy": args.policy}
    figures.update(bare_inference(args.policy, args.runs))
    figures.update(sim_core(args.policy, args.episodes, args.latency_steps))
    figures.update(graph(args.policy, args.seconds, args.chunk_period_s))
    figures.update(machine())
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
