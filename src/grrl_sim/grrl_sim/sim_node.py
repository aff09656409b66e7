"""sim_node: the MuJoCo robot behind the real robot's topics (thin wrapper over the task core).

Publishes ``/joint_states`` and the cameras (sensor-data QoS), ``/clock`` (sim time), and an
``EpisodeEvent`` END (with success) when an episode completes or times out; obeys
``/grrl/joint_command`` (one-point JointTrajectory, positions required) and the
``ResetEpisode`` service. Invalid commands are rejected with a rate-limited error and the robot
holds its last valid target; commands stamped before the last reset were meant for the previous
scene and are dropped (a reset puts the robot at home and holds it there). Pacing: ``realtime``
steps on the wall clock; ``fast`` steps as soon as a command for the step arrives (or after
``fast_idle_s`` without one), as fast as the graph can go, with every node on ``use_sim_time``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from grrl_common import contract
from grrl_common.commands import validate_joint_command
from grrl_common.contract import QosKind, qos_profile
from grrl_common.image_codec import numpy_to_image
from grrl_common.parameters import Param, declare
from grrl_common.robot import load_robot_description
from grrl_common.runtime import node_main
from grrl_common.stamps import sec_nanosec, stamp_seconds
from grrl_msgs.msg import EpisodeEvent, SimState
from grrl_msgs.srv import ResetEpisode
from grrl_sim.async_render import AsyncRenderer
from grrl_sim.task import STAGES, InsertionTask, TaskConfig


def _pose(row: np.ndarray) -> Pose:
    """(x, y, z, qw, qx, qy, qz) → geometry_msgs/Pose."""
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in row[:3])
    o = pose.orientation
    o.w, o.x, o.y, o.z = (float(v) for v in row[3:7])
    return pose


def _stamp(seconds: float) -> Time:
    sec, nanosec = sec_nanosec(seconds)
    return Time(sec=sec, nanosec=nanosec)


class SimNode(Node):
    """The simulated robot: steps physics, publishes sensors, obeys commands."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("sim_node", **node_kwargs)
        # our callbacks take their own locks; one reentrant group lets a busy callback (IK,
        # a bag flush) not stall the executor, which would otherwise spin on it
        self._callbacks = ReentrantCallbackGroup()
        p = declare(
            self,
            [
                Param("robot_description", "", "Robot description YAML ('' = the sim robot)."),
                Param("seed", 0, "Seed of the first episode (reset at start-up).", 0, 2**31 - 1),
                Param("obs_mode", "pixels", "'pixels' renders cameras; 'state' only joints."),
                Param("pacing", "realtime", "'realtime' or 'fast' (as fast as the graph goes)."),
                Param("episode_limit_steps", 1000, "Control steps before timeout.", 1, 10**6),
                Param("camera_rate_hz", 10.0, "Camera frame rate (pixels mode).", 0.1, 120.0),
                Param("image_width", 0, "Image width (0 = robot description).", 0, 4096),
                Param("image_height", 0, "Image height (0 = robot description).", 0, 4096),
                Param(
                    "fast_idle_s",
                    0.05,
                    "Fast pacing: step anyway after this long idle.",
                    0.001,
                    10.0,
                ),
                Param("publish_clock", True, "Publish /clock with the simulation time."),
            ],
        )
        if p["obs_mode"] not in ("pixels", "state"):
            raise ValueError(f"obs_mode must be 'pixels' or 'state', got {p['obs_mode']!r}")
        if p["pacing"] not in ("realtime", "fast"):
            raise ValueError(f"pacing must be 'realtime' or 'fast', got {p['pacing']!r}")
        self.robot = load_robot_description(p["robot_description"] or None)
        camera = next(iter(self.robot.cameras.values()), None)
        self._task_config = TaskConfig(
            control_rate_hz=self.robot.control_rate_hz,
            episode_limit_steps=p["episode_limit_steps"],
            obs_mode="state",  # cameras are rendered off the stepping thread (AsyncRenderer)
            camera_rate_hz=p["camera_rate_hz"],
            image_width=p["image_width"] or (camera.width if camera else 128),
            image_height=p["image_height"] or (camera.height if camera else 128),
        )
        self._pacing = p["pacing"]
        self._render_images = p["obs_mode"] == "pixels"
        self._renderer: AsyncRenderer | None = None
        self._fast_idle_s = p["fast_idle_s"]
        self._publish_clock = p["publish_clock"]
        self._lock = threading.Lock()
        self._command_event = threading.Event()
        self._stop = threading.Event()
        self._rng = np.random.default_rng(p["seed"])
        self._clock_offset = 0.0  # sim time keeps running across episodes
        self._episode_counter = 0
        self._episode_id = ""
        self._episode_active = False
        self._last_frame_time = None
        self._reset_time = 0.0  # sim time of the last reset: older commands are stale
        self.rejected_commands = 0
        self.stale_commands = 0
        self._startup_error: Exception | None = None

        sensor = qos_profile(QosKind.SENSOR)
        self._joint_pub = self.create_publisher(JointState, contract.JOINT_STATES, sensor)
        self._image_pubs = {
            name: self.create_publisher(Image, cam.topic, sensor)
            for name, cam in self.robot.cameras.items()
        }
        self._clock_pub = self.create_publisher(Clock, contract.CLOCK, qos_profile(QosKind.SENSOR))
        # Sim-only ground truth (qpos of robot and objects): what the scripted operator "sees".
        self._state_pub = self.create_publisher(
            SimState, contract.SIM_STATE, qos_profile(QosKind.SENSOR)
        )
        self._poses_pub = self.create_publisher(PoseArray, contract.OBJECT_POSES, sensor)
        self._event_pub = self.create_publisher(
            EpisodeEvent, contract.EPISODE_EVENT, qos_profile(QosKind.LATCHED)
        )
        self.create_subscription(
            JointTrajectory,
            contract.JOINT_COMMAND,
            self._on_command,
            qos_profile(QosKind.COMMAND),
            callback_group=self._callbacks,
        )
        self.create_subscription(
            EpisodeEvent,
            contract.EPISODE_EVENT,
            self._on_event,
            qos_profile(QosKind.LATCHED),
            callback_group=self._callbacks,
        )
        self.create_service(
            ResetEpisode, contract.RESET_EPISODE_SERVICE, self._on_reset,
            callback_group=self._callbacks,
        )  # fmt: skip

        # The task lives on the stepping thread: MuJoCo's EGL rendering context is bound to
        # the thread that created it. Resets requested by the service are handed over to it.
        self._target = np.zeros(self.robot.n_joints)
        self._reset_requests: list[tuple[int, threading.Event]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(p["seed"],), name="sim_step", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=60.0) or self._startup_error is not None:
            raise RuntimeError(f"simulation did not start: {self._startup_error}")
        self.get_logger().info(
            f"{self.robot.name}: {p['obs_mode']} mode, {self._pacing} pacing, "
            f"{self.robot.control_rate_hz:.0f} Hz control, seed {p['seed']}"
        )

    # --- commands, events, reset -----------------------------------------------------------
    def _on_command(self, msg: JointTrajectory) -> None:
        if len(msg.points) != 1:
            return self._reject(f"expected one trajectory point, got {len(msg.points)}")
        point = msg.points[0]
        stamp = stamp_seconds(msg.header.stamp)
        with self._lock:
            if 0.0 < stamp < self._reset_time - 1e-6:  # unstamped commands are not judged
                self.stale_commands += 1
                self.get_logger().debug(f"dropped a command from before the reset ({stamp:.3f} s)")
                return
            target, error = validate_joint_command(
                self.robot, list(msg.joint_names), list(point.positions), self._target
            )
            if target is None:
                return self._reject(error)
            self._target = target
        self._command_event.set()

    def _reject(self, reason: str) -> None:
        self.rejected_commands += 1
        self.get_logger().error(
            f"rejected /grrl/joint_command ({reason}); holding the last valid target",
            throttle_duration_sec=1.0,
        )

    def _on_event(self, msg: EpisodeEvent) -> None:
        if msg.type == EpisodeEvent.START and msg.source != "sim" and msg.episode_id:
            with self._lock:
                self._episode_id = msg.episode_id  # adopt the operator's episode id

    def _on_reset(self, request: ResetEpisode.Request, response: ResetEpisode.Response):
        seed = int(request.seed) if request.seed >= 0 else int(self._rng.integers(0, 2**31 - 1))
        done = threading.Event()
        with self._lock:
            self._reset_requests.append((seed, done))
        self._command_event.set()
        if not done.wait(timeout=10.0):
            response.ok, response.message = False, "simulation did not reset within 10 s"
            return response
        response.ok, response.seed = True, seed
        response.message = f"reset with seed {seed}, peg on the {self.task.peg_arm} side"
        return response

    def _reset(self, seed: int) -> None:
        """On the stepping thread, with the lock held."""
        if self._episode_active and self.task.step_count > 0:
            self._publish_event(EpisodeEvent.ABORT, note="reset during the episode")
        # a reset takes one control period of sim time: everything of the new scene is stamped
        # strictly after the old episode's END (the stamp-ordered episode readers rely on it)
        passed = 1.0 / self.robot.control_rate_hz if self._episode_counter else 0.0
        self._clock_offset += self.task.data.time + passed
        self.task.reset(seed)
        self._target = self.task.home.copy()
        self._reset_time = self.sim_time()
        self._episode_counter += 1
        self._episode_id = f"sim-{self._episode_counter:04d}-seed{seed}"
        self._episode_active = True
        self._last_frame_time = None

    # --- stepping --------------------------------------------------------------------------
    def sim_time(self) -> float:
        return self._clock_offset + self.task.data.time

    def _loop(self, seed: int) -> None:
        try:
            self.task = InsertionTask(self._task_config, self.robot)
            if self._render_images:
                self._renderer = AsyncRenderer(
                    self.task.model,
                    {name: cam.sim_camera or name for name, cam in self.robot.cameras.items()},
                    self._task_config.image_width,
                    self._task_config.image_height,
                    self._publish_frames,
                )
            with self._lock:
                self._reset(seed)
        except Exception as exc:  # surfaced by __init__
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        period = 1.0 / self.robot.control_rate_hz
        next_tick = time.monotonic()
        self._publish_sensors()
        while not self._stop.is_set():
            with self._lock:
                requests, self._reset_requests = self._reset_requests, []
                for requested_seed, done in requests:
                    self._reset(requested_seed)
                    done.set()
            if requests:
                self._publish_sensors()
            if self._pacing == "realtime":
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_tick = time.monotonic()  # fell behind: do not try to catch up
            else:
                self._command_event.wait(self._fast_idle_s)
                self._command_event.clear()
                if not self._episode_active:
                    continue  # nothing to simulate until the next reset
            if self._stop.is_set():
                break
            self._step_once()
        if self._renderer is not None:
            self._renderer.close()

    def _step_once(self) -> None:
        with self._lock:
            result = self.task.step(self._target)
            if self._episode_active and result.done:
                self._episode_active = False
                reached = [name for name in STAGES if getattr(self.task.reached, name)]
                self._publish_event(
                    EpisodeEvent.END,
                    success=result.success,
                    # the stages reached, for per-stage scoring through the graph
                    note=f"{'success' if result.success else 'timeout'}; reached: "
                    + (" ".join(reached) or "none"),
                )
        self._publish_sensors()

    def _publish_sensors(self) -> None:
        with self._lock:
            now = self.sim_time()
            positions = self.task.joint_positions()
            velocities = self.task.joint_velocities()
            frame_due = self._renderer is not None and (
                self._last_frame_time is None
                or now - self._last_frame_time >= 1.0 / self.task.config.camera_rate_hz - 1e-9
            )
            if frame_due:  # hand a copy of this state to the render thread
                self._last_frame_time = now
                if self._pacing == "fast":
                    self._renderer.wait_idle()  # recording: no frame may be dropped
                self._renderer.submit(self.task.data, now)
            qpos = self.task.data.qpos.tolist()
            object_poses = self.task.object_poses().reshape(-1, 7)
        stamp = _stamp(now)
        if self._publish_clock:
            self._clock_pub.publish(Clock(clock=stamp))
        joint_state = JointState(
            name=self.robot.joint_names, position=positions.tolist(), velocity=velocities.tolist()
        )
        joint_state.header.stamp = stamp
        poses = PoseArray(poses=[_pose(row) for row in object_poses])
        poses.header.stamp = stamp
        poses.header.frame_id = "world"
        state = SimState(qpos=qpos)
        state.header.stamp = stamp
        self._state_pub.publish(state)
        self._poses_pub.publish(poses)
        self._joint_pub.publish(joint_state)

    def _publish_frames(self, stamp_s: float, frames: dict[str, np.ndarray]) -> None:
        """On the render thread: publish one frame of every camera with the state's stamp."""
        stamp = _stamp(stamp_s)
        for name, image in frames.items():
            self._image_pubs[name].publish(numpy_to_image(image, "rgb8", stamp, name))

    def _publish_event(self, kind: int, success: bool = False, note: str = "") -> None:
        event = EpisodeEvent(
            type=kind, episode_id=self._episode_id, success=success, source="sim", note=note
        )
        event.header.stamp = _stamp(self.sim_time())
        self._event_pub.publish(event)
        self.get_logger().info(
            f"episode {self._episode_id}: {('START', 'RETRY', 'END', 'ABORT')[kind]} {note}"
        )

    def destroy_node(self) -> None:
        self._stop.set()
        self._command_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        super().destroy_node()


main = node_main(SimNode)
