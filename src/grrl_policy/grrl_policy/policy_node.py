"""policy_node: observations in, ``ActionChunk``s out (thin over the policy core).

Subscribes the policy's cameras, ``/joint_states``, ``/grrl/object_poses`` (state-mode
policies), ``/grrl/instruction``, ``/grrl/episode_event`` and ``/grrl/policy_update``. When a
chunk is due (every ``chunk_period_s``) the next joint state triggers it: the latest inputs (each
within ``max_age_s``) go to the inference worker (:class:`grrl_policy.inference.PolicyRunner`),
so the observation is fresh and no callback ever waits on the model. A missing or stale input
means no chunk: the smoother's watchdog then brings the robot smoothly to rest and holds, and
``/diagnostics`` says which input is missing. Publishes
``/grrl/action_chunk`` (stamp = observation time, noise, version, inference ms) and
``/grrl/markers`` (each gripper's predicted path and, with a critic, a progress bar), with
a critic, ``/grrl/progress`` (ρ of each chunk, its distribution, the suboptimal flag), and
``/grrl/policy_loaded`` (latched: each policy update it has verified and staged).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.diagnostics import DIAGNOSTICS_TOPIC, ERROR, OK, WARN, diagnostic_array
from grrl_common.image_codec import ImageCodecError, image_to_numpy
from grrl_common.parameters import Param, declare
from grrl_common.robot import load_robot_description
from grrl_common.runtime import node_main, shorten_gil_switch_interval
from grrl_common.stamps import stamp_seconds
from grrl_msgs.msg import ActionChunk, EpisodeEvent, PolicyUpdate, Progress
from grrl_policy.checkpoint import load_policy
from grrl_policy.inference import GeneratedChunk, PolicyRunner, UpdateOutcome
from grrl_policy.marker_msgs import to_marker_array
from grrl_policy.observation import ObservationAssembler
from grrl_policy.visualization import chunk_markers


class PolicyNode(Node):
    """The deployed policy: latest observation → chunk, off the executor thread."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("policy_node", **node_kwargs)
        p = declare(
            self,
            [
                Param("policy", "", "Policy checkpoint directory (config.json + safetensors).",
                      read_only=True),
                Param("robot_description", "", "Robot description YAML ('' = the sim robot).",
                      read_only=True),
                Param("device", "cpu", "Torch device for inference (cpu, cuda, cuda:1).",
                      read_only=True),
                Param("torch_threads", 0, "CPU inference threads (0 = torch's default).",
                      0, 256, read_only=True),
                Param("chunk_period_s", 0.02, "Seconds between chunk requests (a slower model "
                      "runs back to back).", 0.005, 10.0),
                Param("max_age_s", 0.5, "Inputs older than this are stale (no chunk).",
                      0.01, 60.0),
                Param("flow_steps", 0, "Euler steps per chunk (0 = the checkpoint's).", 0, 100,
                      read_only=True),
                Param("noise_scale", 1.0, "Initial flow noise ~ N(0, scale² I); online-RL "
                      "checkpoints: ~ N(π_θ'(o), scale² I).", 0.0, 10.0),
                Param("seed", 0, "Seed of the flow-noise generator.", 0, 2**31 - 1),
                Param("rtc", False, "Real-time chunking: hold the committed prefix fixed."),
                Param("swap", "chunk", "Apply PolicyUpdates between 'chunk's or 'episode's."),
                Param("episode_gating", False,
                      "Only act between an episode's START and its END/ABORT."),
                Param("instruction", "", "Instruction until /grrl/instruction says otherwise "
                      "('' = the one the policy was trained with)."),
                Param("markers", True, "Publish predicted gripper paths on /grrl/markers."),
                Param("critic", "", "Progress critic checkpoint ('' = none): /grrl/progress "
                      "and a progress bar per chunk.", read_only=True),
                Param("progress_delta", 0.05, "Progress drop that flags a chunk suboptimal.",
                      0.0, 1.0),
                Param("diagnostics_period_s", 1.0, "Seconds between /diagnostics reports.",
                      0.1, 60.0),
            ],
        )  # fmt: skip
        if not p["policy"]:
            raise ValueError("policy_node needs the 'policy' parameter (a checkpoint directory)")
        self.robot = load_robot_description(p["robot_description"] or None)
        if p["torch_threads"]:
            import torch

            torch.set_num_threads(p["torch_threads"])
        flow_steps = p["flow_steps"] or None  # None: each checkpoint's own, updates included
        policy = load_policy(p["policy"], device=p["device"], flow_steps=flow_steps)
        if policy.joint_names != self.robot.joint_names:
            raise ValueError(
                f"{p['policy']}: trained for joints {policy.joint_names[:3]}…, the robot "
                f"description has {self.robot.joint_names[:3]}…"
            )
        self._gating = p["episode_gating"]
        self._active = not self._gating
        self._lock = threading.Lock()
        self._problems: list[str] = []  # why the last request could not be served
        self._holding_since: float | None = None
        self._period = p["chunk_period_s"]
        self._last_request = -float("inf")
        self._request_lock = threading.Lock()
        shorten_gil_switch_interval()
        self._input_errors: dict[str, str] = {}  # topic → refusal since the last report
        self._last_refusal: dict[str, str] = {}  # topic → last refusal (log each new one)
        self.refused_inputs = 0
        self.refused_updates = 0
        self.last_update_message = ""
        cameras = list(policy.config.cameras)
        with_objects = bool(policy.meta.get("object_poses", not cameras))
        size = None
        if cameras:
            spec = self.robot.cameras[cameras[0]]
            size = (spec.height, spec.width)
        object_dim = policy.config.state_dim - self.robot.n_joints if with_objects else 0
        self.assembler = ObservationAssembler(
            policy.joint_names, cameras, size, object_dim, p["max_age_s"],
            p["instruction"] or policy.meta.get("instruction", ""),
        )  # fmt: skip
        self.runner = PolicyRunner(
            policy, self._publish_chunk, seed=p["seed"], noise_scale=p["noise_scale"],
            rtc=p["rtc"], swap=p["swap"], flow_steps=flow_steps, clock=self._now,
            on_error=self._on_inference_error,
            on_update=self._on_update_outcome,
        )  # fmt: skip
        self._progress = None
        if p["critic"]:  # optional: the critic lives in grrl_learner
            from grrl_learner.critic import load_critic
            from grrl_learner.progress_filter import ProgressTracker

            critic = load_critic(p["critic"], device=p["device"])
            if critic.trunk is not None:
                raise ValueError(
                    f"{p['critic']}: the live progress display takes a critic with its own "
                    f"trunk; this one shares policy {critic.trunk.path}'s encoder"
                )
            if critic.config.state_dim != policy.config.state_dim:
                raise ValueError(
                    f"{p['critic']}: the critic observes {critic.config.state_dim} state values, "
                    f"the policy {policy.config.state_dim}"
                )
            self._progress = ProgressTracker(
                critic, p["progress_delta"], 2 * policy.config.chunk * policy.control_dt
            )
        self._kinematics = None
        if p["markers"]:
            try:
                from grrl_sim.kinematics import GripperKinematics

                self._kinematics = GripperKinematics(self.robot)
            except (ImportError, RuntimeError) as exc:  # no kinematic model: no paths, still run
                self.get_logger().warning(f"no gripper paths on /grrl/markers: {exc}")

        inputs = ReentrantCallbackGroup()
        sensor = qos_profile(QosKind.SENSOR)
        latched = qos_profile(QosKind.LATCHED)
        self.create_subscription(
            JointState, contract.JOINT_STATES, self._on_joints, sensor, callback_group=inputs
        )
        if object_dim:
            self.create_subscription(
                PoseArray, contract.OBJECT_POSES, self._on_objects, sensor, callback_group=inputs
            )
        for camera in cameras:
            self.create_subscription(
                Image, self.robot.cameras[camera].topic,
                lambda msg, c=camera: self._on_image(c, msg), sensor, callback_group=inputs,
            )  # fmt: skip
        self.create_subscription(String, contract.INSTRUCTION, self._on_instruction, latched)
        self.create_subscription(EpisodeEvent, contract.EPISODE_EVENT, self._on_event, latched)
        self.create_subscription(PolicyUpdate, contract.POLICY_UPDATE, self._on_update, latched)
        self._chunk_pub = self.create_publisher(
            ActionChunk, contract.ACTION_CHUNK, qos_profile(QosKind.RELIABLE)
        )
        self._progress_pub = self.create_publisher(
            Progress, contract.PROGRESS, qos_profile(QosKind.RELIABLE)
        )
        self._marker_pub = self.create_publisher(
            MarkerArray, contract.MARKERS, qos_profile(QosKind.RELIABLE)
        )
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._loaded_pub = self.create_publisher(PolicyUpdate, contract.POLICY_LOADED, latched)
        self.create_timer(
            p["chunk_period_s"],
            self._request_chunk,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_timer(p["diagnostics_period_s"], self._report)
        self.get_logger().info(
            f"policy {p['policy']} ({policy.config.encoder} encoder, chunk {policy.config.chunk}, "
            f"{'pixels ' + ','.join(cameras) if cameras else 'state'}) on {p['device']}; "
            f"a chunk every {p['chunk_period_s']:.3f} s, rtc={'on' if p['rtc'] else 'off'}"
        )

    # -- inputs ---------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _refuse(self, topic: str, reason: str) -> None:
        with self._lock:
            self.refused_inputs += 1
            repeated = self._last_refusal.get(topic) == reason
            self._input_errors[topic] = self._last_refusal[topic] = reason
        if repeated:  # a stream of the same fault: once per 2 s
            self.get_logger().error(f"{topic}: {reason}", throttle_duration_sec=2.0)
        else:
            self.get_logger().error(f"{topic}: {reason}")

    def _on_joints(self, msg: JointState) -> None:
        reason = self.assembler.set_joints(
            list(msg.name), list(msg.position), stamp_seconds(msg.header.stamp)
        )
        if reason:
            self._refuse(contract.JOINT_STATES, reason)
        else:
            self._request_chunk(fresh_joints=True)

    def _on_objects(self, msg: PoseArray) -> None:
        rows = [
            (q.position.x, q.position.y, q.position.z,
             q.orientation.w, q.orientation.x, q.orientation.y, q.orientation.z)
            for q in msg.poses
        ]  # fmt: skip
        reason = self.assembler.set_object_poses(np.asarray(rows), stamp_seconds(msg.header.stamp))
        if reason:
            self._refuse(contract.OBJECT_POSES, reason)

    def _on_image(self, camera: str, msg: Image) -> None:
        topic = self.robot.cameras[camera].topic
        if msg.encoding not in ("rgb8", "bgr8"):
            return self._refuse(
                topic, f"encoding {msg.encoding!r}, the policy needs rgb8 (or bgr8)"
            )
        try:
            image = image_to_numpy(msg)
        except ImageCodecError as exc:
            return self._refuse(topic, str(exc))
        if msg.encoding == "bgr8":
            image = image[..., ::-1]
        reason = self.assembler.set_image(camera, image, stamp_seconds(msg.header.stamp))
        if reason:
            self._refuse(topic, reason)

    def _on_instruction(self, msg: String) -> None:
        self.assembler.set_instruction(msg.data)

    def _on_event(self, msg: EpisodeEvent) -> None:
        if msg.type == EpisodeEvent.START:
            # inputs from before the reset describe the previous scene; the event's own stamp
            # may come from another clock (a wall-clock runner vs sim time), so use ours
            self.assembler.clear(not_before=self._now())
            self.runner.new_episode()
            if self._progress is not None:
                self._progress.reset()
            self._active = True
        elif msg.type in (EpisodeEvent.END, EpisodeEvent.ABORT) and self._gating:
            self._active = False

    def _on_update(self, msg: PolicyUpdate) -> None:
        self.get_logger().info(f"policy update v{msg.version}: {msg.checkpoint_path}")
        self.runner.request_update(msg.checkpoint_path, msg.sha256, int(msg.version))

    def _on_update_outcome(self, outcome: UpdateOutcome) -> None:
        self.last_update_message = outcome.message
        if outcome.accepted:
            self.get_logger().info(f"policy update v{outcome.version}: {outcome.message}")
            loaded = PolicyUpdate(checkpoint_path=outcome.path, sha256=outcome.sha256,
                                  version=outcome.version)  # fmt: skip
            loaded.header.stamp = self.get_clock().now().to_msg()
            self._loaded_pub.publish(loaded)  # the learner's and runner's answer
        else:
            self.refused_updates += 1
            self.get_logger().error(
                f"policy update v{outcome.version} refused: {outcome.message}; "
                f"keeping v{self.runner.version}"
            )

    def _on_inference_error(self, message: str) -> None:
        with self._lock:
            self._problems = [message]
        self.get_logger().error(message, throttle_duration_sec=2.0)

    # -- chunks ---------------------------------------------------------------------------

    def _request_chunk(self, fresh_joints: bool = False) -> None:
        """Hand the latest observation to the worker when a chunk is due and none is in work.

        Called on every joint state (so the observation is as fresh as it gets) and by a timer
        (so missing joint states are noticed and reported)."""
        if not self._active or self.runner.busy:
            return
        if not self._request_lock.acquire(blocking=False):
            return  # another callback is requesting right now
        try:
            self._request_locked(fresh_joints)
        finally:
            self._request_lock.release()

    def _request_locked(self, fresh_joints: bool) -> None:
        now = self._now()
        since = now - self._last_request
        # joint states drive requests; the timer steps in only when they are missing
        if since < self._period - 1e-4 or (not fresh_joints and since < 1.5 * self._period):
            return
        inputs, problems = self.assembler.assemble(now)
        with self._lock:
            self._problems = problems
        if inputs is None:
            if self._holding_since is None:
                self._holding_since = now
            # the first messages after a start or reset take a moment: warn when it lasts
            if now - self._holding_since > self.assembler.max_age_s:
                self.get_logger().warning(
                    f"holding, no chunk: {'; '.join(problems)}", throttle_duration_sec=2.0
                )
            return
        self._holding_since = None
        if self.runner.submit(inputs):
            self._last_request = now

    def _publish_chunk(self, chunk: GeneratedChunk) -> None:
        """On the inference thread: the chunk as an ActionChunk, then its markers."""
        msg = ActionChunk(
            chunk_id=chunk.chunk_id,
            joint_names=self.robot.joint_names,
            dt=chunk.dt,
            horizon=chunk.actions.shape[0],
            actions=chunk.actions.astype(np.float32).ravel().tolist(),
            noise=chunk.noise.astype(np.float32).ravel().tolist(),
            policy_version=chunk.policy_version,
            inference_ms=float(chunk.inference_ms),
        )
        msg.header.stamp = Time(nanoseconds=round(chunk.stamp * 1e9)).to_msg()
        self._chunk_pub.publish(msg)
        progress = None
        if self._progress is not None and chunk.state is not None:
            estimate = self._progress.update(chunk.state, chunk.actions, chunk.stamp)
            progress = estimate.mean
            report = Progress(
                mean=estimate.mean, distribution=estimate.distribution.astype(float).tolist(),
                support_min=estimate.support[0], support_max=estimate.support[1],
                suboptimal=estimate.suboptimal, source="policy_node/critic",
            )  # fmt: skip
            report.header.stamp = msg.header.stamp
            self._progress_pub.publish(report)
        if self._kinematics is not None:
            paths = self._kinematics.gripper_positions(chunk.actions)
            self._marker_pub.publish(
                to_marker_array(chunk_markers(paths, progress, "world"), msg.header.stamp)
            )

    def _report(self) -> None:
        with self._lock:
            problems = list(self._problems)
            input_errors = dict(self._input_errors)
            self._input_errors.clear()
        ms = np.asarray(self.runner.inference_ms) if self.runner.inference_ms else np.zeros(1)
        if problems:
            level, message = ERROR, "holding: " + "; ".join(problems)
        elif input_errors:
            level, message = (
                WARN,
                "refused inputs: " + "; ".join(f"{t}: {r}" for t, r in input_errors.items()),
            )
        elif not self._active:
            level, message = OK, "idle (between episodes)"
        else:
            level, message = OK, "running"
        values = {
            "policy_version": self.runner.version,
            "chunks": self.runner.chunks,
            "inference_ms_p50": float(np.percentile(ms, 50)),
            "inference_ms_p99": float(np.percentile(ms, 99)),
            "latency_steps": self.runner.latency_steps,
            "refused_inputs": self.refused_inputs,
            "refused_updates": self.refused_updates,
            "last_update": self.last_update_message,
        }
        self._diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), "grrl: policy_node", self.robot.name, level,
            message, values,
        ))  # fmt: skip

    def destroy_node(self) -> None:
        self.runner.close()
        super().destroy_node()


main = node_main(PolicyNode)
