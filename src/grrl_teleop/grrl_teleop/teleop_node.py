"""teleop_node: relays an operator's commands to ``/grrl/joint_command`` and labels episodes.

Input devices (parameter ``device``): ``scripted`` — the sim's scripted noisy operator, which
reads the sim's ground-truth state (``/grrl/sim/state``) like a person looks at the scene and
runs whole episodes by itself (``episodes``), stamping each command with the state it answers;
``leader``, ``gamepad``, ``keyboard`` — a person.
Operator actions (start, retry keyframe, end with success/failure, abort) come from the device
or from the ``StartEpisode``/``EndEpisode`` services and are published as ``EpisodeEvent``s.
Every command passes the :class:`CommandGate` (joint names, finite values, limits, speed);
rejected ones never reach the topic and the robot holds.
"""

from __future__ import annotations

import json
import os
import select
import threading
from typing import Any

import mujoco
import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.time import Time
from rclpy.utilities import ok as rclpy_ok
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from grrl_common import contract
from grrl_common.commands import CommandGate
from grrl_common.contract import QosKind, qos_profile
from grrl_common.parameters import Param, declare
from grrl_common.robot import load_robot_description
from grrl_common.runtime import node_main
from grrl_common.stamps import stamp_ns
from grrl_msgs.msg import EpisodeEvent, SimState
from grrl_msgs.srv import EndEpisode, ResetEpisode, StartEpisode
from grrl_teleop.session import Session, SessionError


class TeleopNode(Node):
    """Operator → gate → ``/grrl/joint_command``; operator actions → ``EpisodeEvent``."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("teleop_node", **node_kwargs)
        # our callbacks take their own locks; one reentrant group lets a busy callback (IK,
        # a bag flush) not stall the executor, which would otherwise spin on it
        self._callbacks = ReentrantCallbackGroup()
        p = declare(
            self,
            [
                Param("device", "scripted", "scripted | leader | gamepad | keyboard."),
                Param("robot_description", "", "Robot description YAML ('' = the sim robot)."),
                Param("instruction", "insert the peg into the socket", "Task instruction."),
                Param("episodes", 0, "Scripted device: episodes to run, then finish (0 = none).",
                      0, 10**6),
                Param("seed", 0, "Scripted device: seed of the first episode.", 0, 2**31 - 1),
                Param("operator", "noisy", "Scripted device: 'noisy' or 'clean' operator."),
                Param("operator_overrides", "", "Scripted device: fields of the operator's "
                      "config to change, 'name=value,...' (e.g. 'jitter_m=0')."),
                Param("speed_margin", 1.5, "Reject commands faster than this × velocity limit.",
                      1.0, 10.0),
                Param("device_map", "", "Device map YAML ('' = the package's default)."),
                Param("leader_topic", "/leader/joint_states", "Leader arms' JointState topic."),
                Param("joy_topic", "/joy", "Gamepad's sensor_msgs/Joy topic."),
            ],
        )  # fmt: skip
        self.robot = load_robot_description(p["robot_description"] or None)
        self._instruction = p["instruction"]
        self._gate = CommandGate(self.robot, 1.0 / self.robot.control_rate_hz, p["speed_margin"])
        self._session = Session()
        self._lock = threading.Lock()
        self._after_end_ns = 0  # stamps of a new episode's messages start after the last END
        self.rejected_commands = 0
        self.done = threading.Event()
        self.exit_code = 0

        self._command_pub = self.create_publisher(
            JointTrajectory, contract.JOINT_COMMAND, qos_profile(QosKind.COMMAND)
        )
        latched = qos_profile(QosKind.LATCHED)
        self._event_pub = self.create_publisher(EpisodeEvent, contract.EPISODE_EVENT, latched)
        self._instruction_pub = self.create_publisher(String, contract.INSTRUCTION, latched)
        self._truth_pub = self.create_publisher(String, contract.SIM_GROUND_TRUTH, latched)
        group = self._callbacks
        self.create_subscription(
            JointState,
            contract.JOINT_STATES,
            self._on_joint_state,
            qos_profile(QosKind.SENSOR),
            callback_group=group,
        )
        self.create_subscription(
            EpisodeEvent, contract.EPISODE_EVENT, self._on_event, latched, callback_group=group
        )
        self.create_service(
            StartEpisode, contract.START_EPISODE_SERVICE, self._on_start, callback_group=group
        )
        self.create_service(EndEpisode, contract.END_EPISODE_SERVICE, self._on_end,
                            callback_group=group)  # fmt: skip
        self._instruction_pub.publish(String(data=self._instruction))

        self._device = p["device"]
        self._keyboard_thread: threading.Thread | None = None
        if self._device == "scripted":
            self._setup_scripted(p)
        elif self._device in ("leader", "gamepad", "keyboard"):
            self._setup_human_device(p)
        else:
            raise ValueError(f"unknown device {self._device!r}")
        self.get_logger().info(f"teleop with the {self._device} device")

    # --- a person's input device -----------------------------------------------------------
    def _setup_human_device(self, p: dict[str, Any]) -> None:
        from grrl_teleop import devices

        path = p["device_map"] or str(devices.default_map_path(self._device))
        mapping = devices.load_device_map(path)
        group = self._callbacks
        if self._device == "leader":
            self._human = devices.LeaderArmsDevice(self.robot, mapping)
            self.create_subscription(JointState, p["leader_topic"], self._on_leader,
                                     qos_profile(QosKind.SENSOR), callback_group=group)  # fmt: skip
        elif self._device == "gamepad":
            self._human = devices.GamepadDevice(self.robot, mapping)
            self.create_subscription(Joy, p["joy_topic"], self._on_joy,
                                     qos_profile(QosKind.SENSOR), callback_group=group)  # fmt: skip
        else:
            self._human = devices.KeyboardDevice(self.robot, mapping)
            self._keys: list[str] = []
            self._keyboard_thread = threading.Thread(target=self._read_terminal, daemon=True)
            self._keyboard_thread.start()
            self.create_timer(1.0 / self.robot.control_rate_hz, self._on_keys, group)
            self.get_logger().info(self._human.describe())

    def _current(self) -> np.ndarray | None:
        return None if self._gate.last is None else self._gate.last.copy()

    def _on_leader(self, msg: JointState) -> None:
        self._apply_device(lambda current: self._human.update(
            list(msg.name), list(msg.position), current))  # fmt: skip

    def _on_joy(self, msg: Joy) -> None:
        now = self.get_clock().now().nanoseconds / 1e9
        self._apply_device(lambda current: self._human.update(
            list(msg.axes), list(msg.buttons), now, current))  # fmt: skip

    def _on_keys(self) -> None:
        with self._lock:
            keys, self._keys = "".join(self._keys), []
        if keys:
            self._apply_device(lambda current: self._human.update(keys, current))

    def _read_terminal(self) -> None:
        """Raw key presses from the controlling terminal (the keyboard device)."""
        import sys
        import termios
        import tty

        if not sys.stdin.isatty():
            self.get_logger().error("keyboard device: stdin is not a terminal, no keys to read")
            return
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while rclpy_ok(context=self.context):
                if select.select([fd], [], [], 0.1)[0]:  # wake up to notice shutdown
                    char = os.read(fd, 8).decode(errors="ignore")
                    with self._lock:
                        self._keys.append(char)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def _apply_device(self, update: Any) -> None:
        from grrl_teleop.devices import DeviceError, OperatorAction

        with self._lock:
            current = self._current()
            if current is None:
                return  # no joint state yet: nothing to be relative to
            try:
                output = update(current)
            except DeviceError as exc:
                self.get_logger().error(f"{self._device}: {exc}", throttle_duration_sec=1.0)
                return
            if output.target is not None:
                self._send(self.robot.joint_names, output.target)
            for action in output.actions:
                try:
                    if action is OperatorAction.START:
                        self._start_episode("")
                    elif action is OperatorAction.RETRY:
                        stamp = self._stamp()
                        self._session.retry(stamp_ns(stamp) / 1e9)  # raises with no episode
                        self._publish_event(EpisodeEvent.RETRY_KEYFRAME, at=stamp)
                    elif action in (OperatorAction.END_SUCCESS, OperatorAction.END_FAILURE):
                        success = action is OperatorAction.END_SUCCESS
                        self._publish_event(EpisodeEvent.END, success, "operator")
                        self._session.finish()
                    elif action is OperatorAction.ABORT:
                        self._publish_event(EpisodeEvent.ABORT, note="operator")
                        self._session.finish()
                except SessionError as exc:
                    self.get_logger().warning(f"{action.value}: {exc}")

    # --- the scripted operator (sim) -------------------------------------------------------
    def _setup_scripted(self, p: dict[str, Any]) -> None:
        from grrl_sim.operator import OperatorConfig, ScriptedOperator
        from grrl_sim.task import InsertionTask, TaskConfig

        # A shadow of the simulated scene, synchronised from the sim's state every step: the
        # operator looks at it (objects, grippers) to decide its next command.
        self._shadow = InsertionTask(TaskConfig(), self.robot)
        config = OperatorConfig.noisy() if p["operator"] == "noisy" else OperatorConfig.clean()
        config = config.with_overrides(p["operator_overrides"])
        self._operator = ScriptedOperator(self._shadow, config)
        self._episodes_wanted = p["episodes"]
        self._next_seed = p["seed"]
        self._episodes_done = 0
        self._sim_qpos: np.ndarray | None = None
        self._sim_stamp: Any = None  # the stamp of the state in _sim_qpos
        self._operator_running = False
        self._reset_client = self.create_client(
            ResetEpisode, contract.RESET_EPISODE_SERVICE, callback_group=self._callbacks
        )
        self.create_subscription(
            SimState, contract.SIM_STATE, self._on_sim_state, qos_profile(QosKind.SENSOR),
            callback_group=self._callbacks,
        )  # fmt: skip
        self._reset_pending = False
        if self._episodes_wanted:
            # wall clock: sim time stands still between episodes in fast pacing
            self.create_timer(0.1, self._maybe_start_scripted_episode, self._callbacks,
                              clock=Clock(clock_type=ClockType.STEADY_TIME))  # fmt: skip

    def _on_sim_state(self, msg: SimState) -> None:
        """Lockstep with the sim: one operator command per simulation state."""
        with self._lock:
            self._sim_qpos = np.asarray(msg.qpos)
            self._sim_stamp = msg.header.stamp
            self._scripted_step()

    def _maybe_start_scripted_episode(self) -> None:
        with self._lock:
            busy = self._session.active or self._reset_pending
        if busy or self.done.is_set() or not self._reset_client.service_is_ready():
            return
        if self._episodes_done >= self._episodes_wanted:
            self.done.set()
            return
        with self._lock:
            self._reset_pending = True
        seed = self._next_seed
        future = self._reset_client.call_async(ResetEpisode.Request(seed=seed))
        future.add_done_callback(lambda f, seed=seed: self._on_reset_done(seed, f))

    def _on_reset_done(self, seed: int, future: Any) -> None:
        response = future.result()
        if response is None or not response.ok:
            self.get_logger().error(f"sim reset failed: {getattr(response, 'message', '?')}")
            with self._lock:
                self._reset_pending = False
            return
        with self._lock:
            self._shadow.reset(seed)
            self._operator.reset(seed)
            self._gate.reset(self._shadow.home)
            self._next_seed += 1
            self._start_episode("")
            self._truth_sent = None  # the first step publishes (an empty list of mistakes)
            self._operator_running = True
            self._reset_pending = False

    def _scripted_step(self) -> None:
        """The operator looks at the scene as the sim last published it and acts once."""
        if not self._operator_running or self._sim_qpos is None:
            return
        shadow = self._shadow
        if self._sim_qpos.shape == shadow.data.qpos.shape:
            shadow.data.qpos[:] = self._sim_qpos
            mujoco.mj_kinematics(shadow.model, shadow.data)
        output = self._operator.act()
        # Stamped with the state it answers, not with the node clock: /clock and the state
        # arrive on different subscriptions, and under load the clock's callback can run a step
        # late, which would stamp this answer onto the previous step.
        self._send(self.robot.joint_names, output.command, self._sim_stamp)
        if output.retry:
            stamp = self._stamp(self._sim_stamp)
            self._publish_event(EpisodeEvent.RETRY_KEYFRAME, at=stamp)
            self._session.retry(stamp_ns(stamp) / 1e9)
        # Ground truth goes out as it changes, so the recorder has it before the episode ends.
        signature = [
            (m.kind, m.start_step, m.retry_step, m.end_step) for m in self._operator.mistakes
        ] + [(h.arm, h.start_step) for h in self._operator.hesitations]  # ends go out at END
        if signature != self._truth_sent:
            self._truth_sent = signature
            self._publish_truth(success=None)

    # --- commands and events ---------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        with self._lock:
            if self._gate.last is None and len(msg.position) == self.robot.n_joints:
                self._gate.reset(np.asarray(msg.position))
                self.get_logger().info("robot state received: operator commands enabled")

    def _send(self, names: list[str], positions: np.ndarray, at: Any = None) -> bool:
        target, reason = self._gate.check(names, positions)
        if target is None:
            self.rejected_commands += 1
            self.get_logger().error(
                f"operator command rejected ({reason}); robot holds", throttle_duration_sec=1.0
            )
            return False
        msg = JointTrajectory(joint_names=self.robot.joint_names)
        msg.header.stamp = self._stamp(at)
        msg.points = [JointTrajectoryPoint(positions=target.tolist())]
        self._command_pub.publish(msg)
        return True

    def _stamp(self, at: Any = None) -> Any:
        """``at`` (a stamp), else now on the node clock, but never at or before the last
        episode's END: sim time does not always reach this node before the first command after a
        reset does, and a command stamped with the old episode's END time would sort into that
        episode."""
        ns = self.get_clock().now().nanoseconds if at is None else stamp_ns(at)
        return Time(nanoseconds=max(ns, self._after_end_ns)).to_msg()

    def _note_episode_end(self, stamp: Any) -> None:
        self._after_end_ns = max(self._after_end_ns, stamp_ns(stamp) + 1)

    def _publish_event(
        self, kind: int, success: bool = False, note: str = "", at: Any = None
    ) -> None:
        event = EpisodeEvent(type=kind, episode_id=self._session.episode_id, success=success,
                             source="teleop", note=note)  # fmt: skip
        event.header.stamp = self._stamp(at)
        if kind in (EpisodeEvent.END, EpisodeEvent.ABORT):
            self._note_episode_end(event.header.stamp)
        self._event_pub.publish(event)

    def _start_episode(self, episode_id: str) -> str:
        episode_id = self._session.start(episode_id)
        self._instruction_pub.publish(String(data=self._instruction))
        self._publish_event(EpisodeEvent.START)
        return episode_id

    def _on_event(self, event: EpisodeEvent) -> None:
        """The sim (or a success detector) ended the episode: close the session."""
        if event.type in (EpisodeEvent.END, EpisodeEvent.ABORT):
            with self._lock:
                self._note_episode_end(event.header.stamp)
        if event.source == "teleop" or event.type not in (EpisodeEvent.END, EpisodeEvent.ABORT):
            return
        with self._lock:
            if not self._session.active:
                return
            self._finish_scripted(event.success)
            if event.episode_id != self._session.episode_id:
                # re-publish under our id so that one id carries the whole episode
                self._publish_event(event.type, event.success, f"{event.source}: {event.note}")
            self._session.finish()

    def _finish_scripted(self, success: bool) -> None:
        if self._device != "scripted" or not self._operator_running:
            return
        self._operator_running = False
        self._episodes_done += 1
        self._publish_truth(success)

    def _publish_truth(self, success: bool | None) -> None:
        truth = {
            "episode_id": self._session.episode_id,
            "seed": self._shadow.seed,
            "success": success,
            "control_dt": self._shadow.control_dt,
            "mistakes": [m.__dict__ for m in self._operator.mistakes],
            "hesitations": [h.__dict__ for h in self._operator.hesitations],
        }
        self._truth_pub.publish(String(data=json.dumps(truth)))

    def _on_start(self, request: StartEpisode.Request, response: StartEpisode.Response):
        with self._lock:
            try:
                if request.instruction:
                    self._instruction = request.instruction
                response.episode_id = self._start_episode(request.episode_id)
                response.ok, response.message = True, "started"
            except SessionError as exc:
                response.ok, response.message = False, str(exc)
        return response

    def _on_end(self, request: EndEpisode.Request, response: EndEpisode.Response):
        with self._lock:
            if not self._session.active:
                response.ok, response.message = False, "no episode running"
                return response
            self._finish_scripted(request.success)
            self._publish_event(EpisodeEvent.END, request.success, request.note)
            response.episode_id = self._session.finish()
            response.ok, response.message = True, "ended"
        return response


main = node_main(TeleopNode)
