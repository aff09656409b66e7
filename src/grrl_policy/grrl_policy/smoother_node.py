"""smoother_node: ``ActionChunk``s in, one smooth ``/grrl/joint_command`` per control period out.

Thin over :class:`grrl_policy.smoother.ChunkSmoother` — the same implementation ``grrl eval``
scores. A timer at the control rate steps the smoother and publishes a one-point
JointTrajectory (positions, velocities, accelerations). It holds the robot where it is until the
first chunk, and it is the watchdog: stale or missing chunks, a malformed or non-finite chunk, or
the end of an episode bring the robot smoothly to rest from the commanded state, never a jump.
``EpisodeEvent`` START re-anchors it at the measured joints (a reset moved the robot).
Between episodes — once the stop after END/ABORT is complete — it publishes nothing, so the
controller holds and a scene reset is not fought by a hold command at the old pose.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.diagnostics import DIAGNOSTICS_TOPIC, ERROR, OK, WARN, diagnostic_array
from grrl_common.parameters import Param, declare
from grrl_common.robot import load_robot_description
from grrl_common.runtime import node_main, shorten_gil_switch_interval
from grrl_common.stamps import stamp_seconds
from grrl_msgs.msg import ActionChunk, EpisodeEvent
from grrl_policy.smoother import ChunkSmoother, JointLimits, SmootherConfig, SmootherInputError


class SmootherNode(Node):
    """Chunks → continuous, jerk-limited joint commands at the control rate."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("smoother_node", **node_kwargs)
        defaults = SmootherConfig()
        p = declare(
            self,
            [
                Param("robot_description", "", "Robot description YAML ('' = the sim robot).",
                      read_only=True),
                Param("control_rate_hz", 0.0, "Command rate (0 = the robot description's).",
                      0.0, 2000.0, read_only=True),
                Param("mode", defaults.mode, "'ensemble' (ACT temporal ensembling) or "
                      "'receding' (the newest chunk's first actions).", read_only=True),
                Param("ensemble_m", defaults.ensemble_m, "ACT weight exp(-m i), i = 0 oldest.",
                      0.0, 10.0, read_only=True),
                Param("max_chunks", defaults.max_chunks,
                      "Ensemble mode: the newest chunks blended (older ones dropped).", 1, 1000,
                      read_only=True),
                Param("receding_steps", defaults.receding_steps,
                      "Receding mode: actions executed per chunk.", 1, 1000, read_only=True),
                Param("jerk_weight", defaults.jerk_weight, "QP jerk penalty (s^6).",
                      0.0, 1.0, read_only=True),
                Param("stale_after_s", defaults.stale_after_s,
                      "Watchdog: stop smoothly when no chunk came for this long.", 0.01, 60.0,
                      read_only=True),
                Param("stop_limit_scale", defaults.stop_limit_scale,
                      "Fraction of the acceleration/jerk limits a stop uses.", 0.05, 1.0,
                      read_only=True),
                Param("max_catch_up_steps", 5, "Steps taken at most per tick after a late tick.",
                      1, 100),
                Param("timing", "auto", "'thread': a dedicated thread with absolute deadlines "
                      "(low jitter); 'timer': a ROS timer (follows /clock under sim time); "
                      "'auto': thread on the system clock, timer on sim time.", read_only=True),
                Param("diagnostics_period_s", 1.0, "Seconds between /diagnostics reports.",
                      0.1, 60.0),
            ],
        )  # fmt: skip
        self.robot = load_robot_description(p["robot_description"] or None)
        rate = p["control_rate_hz"] or self.robot.control_rate_hz
        self.dt = 1.0 / rate
        config = SmootherConfig(
            control_dt=self.dt, mode=p["mode"], ensemble_m=p["ensemble_m"],
            max_chunks=p["max_chunks"], receding_steps=p["receding_steps"],
            jerk_weight=p["jerk_weight"],
            stale_after_s=p["stale_after_s"], stop_limit_scale=p["stop_limit_scale"],
        )  # fmt: skip
        self.smoother = ChunkSmoother(JointLimits.from_robot(self.robot), config)
        self._index = {name: i for i, name in enumerate(self.robot.joint_names)}
        self._max_catch_up = p["max_catch_up_steps"]
        self._measured: np.ndarray | None = None
        self._anchor_pending = True  # (re)start from the measured joints at the next state
        self._between_episodes = False  # END/ABORT came: silent once at rest, until START
        self.chunks_accepted = 0
        self.chunks_refused = 0
        self.commands_published = 0
        self.late_ticks = 0
        self._last_problem = ""
        self._last_refusal = ""
        self._last_stop_reason: str | None = None
        self._lock = threading.Lock()  # the smoother: tick thread vs subscription callbacks
        self._publish_times: deque[float] = deque(maxlen=2000)  # for the period jitter figure
        shorten_gil_switch_interval()

        # one (default, mutually exclusive) callback group: the smoother is single-threaded
        self.create_subscription(
            JointState, contract.JOINT_STATES, self._on_joints, qos_profile(QosKind.SENSOR)
        )
        self.create_subscription(
            ActionChunk, contract.ACTION_CHUNK, self._on_chunk, qos_profile(QosKind.RELIABLE)
        )
        self.create_subscription(
            EpisodeEvent, contract.EPISODE_EVENT, self._on_event, qos_profile(QosKind.LATCHED)
        )
        self._command_pub = self.create_publisher(
            JointTrajectory, contract.JOINT_COMMAND, qos_profile(QosKind.COMMAND)
        )
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_timer(p["diagnostics_period_s"], self._report)
        timing = p["timing"]
        if timing not in ("auto", "thread", "timer"):
            raise ValueError(f"timing must be 'auto', 'thread' or 'timer', got {timing!r}")
        if timing == "auto":
            sim_time = self.get_parameter("use_sim_time").value
            timing = "timer" if sim_time else "thread"
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if timing == "timer":
            self.create_timer(self.dt, self._tick)
        else:
            # an executor timer fires when the executor gets to it (ms of jitter under load);
            # a thread sleeping to absolute deadlines does not wait for other callbacks
            self._ticker = threading.Thread(target=self._tick_loop, name="smoother_tick",
                                            daemon=True)  # fmt: skip
            self._ticker.start()
        self.get_logger().info(
            f"{config.mode} smoother at {rate:.0f} Hz; watchdog {config.stale_after_s:.2f} s"
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- inputs ---------------------------------------------------------------------------

    def _on_joints_locked(self, msg: JointState) -> None:
        if len(msg.name) != len(msg.position):
            return
        q = np.full(self.robot.n_joints, np.nan)
        for name, value in zip(msg.name, msg.position, strict=True):
            i = self._index.get(name)
            if i is not None:
                q[i] = value
        if not np.all(np.isfinite(q)):
            return  # incomplete or non-finite state: not something to anchor on
        self._measured = q
        if self._anchor_pending:
            self.smoother.reset(q, time=self._now() - self.dt)
            self._anchor_pending = False
            self.get_logger().info("anchored at the measured joints; holding until a chunk")

    def _on_chunk_locked(self, msg: ActionChunk) -> None:
        if self.smoother.state == "idle":
            return self._refuse(msg.chunk_id, "no joint state received yet")
        n, k = len(msg.joint_names), int(msg.horizon)
        if n == 0 or k == 0 or len(msg.actions) != n * k:
            return self._refuse(msg.chunk_id, f"{len(msg.actions)} values for {k}x{n}")
        columns = [self._index.get(name) for name in msg.joint_names]
        if None in columns or sorted(columns) != list(range(self.robot.n_joints)):
            return self._refuse(msg.chunk_id, "joint names differ from the robot's")
        actions = np.empty((k, self.robot.n_joints))
        actions[:, columns] = np.asarray(msg.actions, dtype=np.float64).reshape(k, n)
        try:
            self.smoother.add_chunk(actions, start_time=stamp_seconds(msg.header.stamp), dt=msg.dt)
        except SmootherInputError as exc:
            return self._refuse(msg.chunk_id, str(exc))
        self.chunks_accepted += 1

    def _refuse(self, chunk_id: int, reason: str) -> None:
        self.chunks_refused += 1
        repeated = reason == self._last_refusal
        self._last_problem = self._last_refusal = reason
        text = f"refused chunk {chunk_id}: {reason}; the current plan continues"
        if repeated:  # a stream of the same fault: once per 2 s
            self.get_logger().error(text, throttle_duration_sec=2.0)
        else:
            self.get_logger().error(text)

    def _on_event_locked(self, msg: EpisodeEvent) -> None:
        if msg.type == EpisodeEvent.START:
            self._anchor_pending = True  # the scene was reset: start over from the robot
            self._between_episodes = False
        elif msg.type in (EpisodeEvent.END, EpisodeEvent.ABORT):
            self._between_episodes = True
            if self.smoother.state not in ("idle", "stopped"):
                self.smoother.stop("episode ended")

    # -- output ---------------------------------------------------------------------------

    def _tick_locked(self) -> None:
        if self.smoother.state == "idle" or self._anchor_pending:
            return
        if self._between_episodes and self.smoother.state == "stopped":
            return  # at rest after the episode: the controller holds; the reset may move it
        due = (self._now() - self.smoother.time) / self.dt
        steps = int(math.floor(due + 0.5))
        if steps <= 0:
            return  # early tick: this period's command is out already
        if steps > 1:
            self.late_ticks += 1
        for _ in range(min(steps, self._max_catch_up)):
            command = self.smoother.step()
        if self.smoother.stop_reason != self._last_stop_reason:
            self._last_stop_reason = self.smoother.stop_reason
            if self._last_stop_reason:
                self.get_logger().warning(f"smooth stop: {self._last_stop_reason}")
        point = JointTrajectoryPoint(
            positions=command.position.tolist(),
            velocities=command.velocity.tolist(),
            accelerations=command.acceleration.tolist(),
            time_from_start=Duration(nanosec=round(self.dt * 1e9)),
        )
        msg = JointTrajectory(joint_names=self.robot.joint_names, points=[point])
        msg.header.stamp = Time(nanoseconds=round(command.time * 1e9)).to_msg()
        self._command_pub.publish(msg)
        self.commands_published += 1
        self._publish_times.append(time.monotonic())

    def _period_jitter_p99_ms(self) -> float:
        """p99 of |command period − control period| over the last publishes (ms)."""
        if len(self._publish_times) < 3:
            return 0.0
        periods = np.diff(np.asarray(self._publish_times))
        return float(np.percentile(np.abs(periods - self.dt), 99) * 1e3)

    def _report_locked(self) -> None:
        s = self.smoother
        state = s.state
        if state == "idle":
            level, message = WARN, "waiting for /joint_states"
        elif self._last_problem:
            level, message = ERROR, f"refused {self._last_problem}"
        elif state in ("stopping", "stopped") and s.stop_reason:
            level, message = WARN, f"{state}: {s.stop_reason}"
        else:
            level, message = OK, state
        self._last_problem = ""
        values = {
            "state": state,
            "chunks_accepted": self.chunks_accepted,
            "chunks_refused": self.chunks_refused,
            "commands": self.commands_published,
            "late_ticks": self.late_ticks,
            "period_jitter_ms_p99": self._period_jitter_p99_ms(),
            "qp_ms_last": s.last_qp_ms,
            "guard_interventions": s.guard_interventions,
        }
        self._diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), "grrl: smoother_node", self.robot.name, level,
            message, values,
        ))  # fmt: skip

    # -- every entry point holds the lock: the tick may run on its own thread -----------

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._on_joints_locked(msg)

    def _on_chunk(self, msg: ActionChunk) -> None:
        with self._lock:
            self._on_chunk_locked(msg)

    def _on_event(self, msg: EpisodeEvent) -> None:
        with self._lock:
            self._on_event_locked(msg)

    def _tick(self) -> None:
        with self._lock:
            self._tick_locked()

    def _report(self) -> None:
        with self._lock:
            self._report_locked()

    def _tick_loop(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += self.dt
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -self.dt:
                deadline = time.monotonic()  # fell far behind: do not try to catch up here
            self._tick()

    def destroy_node(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1.0)
        super().destroy_node()


main = node_main(SmootherNode)
