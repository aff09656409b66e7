"""episode_runner: runs seeded sim episodes through the live graph and scores them.

For each of ``episodes`` seeds it calls the sim's ``ResetEpisode`` service, publishes an
``EpisodeEvent`` START (so the policy and smoother start over from the reset scene) and waits for
the sim's END (success, stages reached) or a wall-clock timeout (then ABORT). Before the next
reset it waits until ``/grrl/joint_command`` has been quiet for ``settle_quiet_s`` (the smoother
finished its stop; a reset during it would be undone by the stop's commands), at most
``settle_timeout_s``. With ``wait_for_learner`` (online RL) it also waits until the learner
has taken in the episode that ended (``/grrl/learner/status``) and the policy node has staged
the newest policy the learner published (``/grrl/policy_loaded``), at most ``learner_timeout_s``:
an update then lands at the same episode however fast the machine is. When all are done
it logs and writes a JSON summary — success, Wilson 95 % CI, per-stage success — and sets
``done``, so ``grrl up --exit-when-done`` returns. What is scored is what the deployed graph did:
policy_node → smoother_node → sim, over DDS.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.parameters import Param, declare
from grrl_common.runtime import node_main
from grrl_common.stats import success_summary
from grrl_msgs.msg import EpisodeEvent, LearnerStatus, PolicyUpdate
from grrl_msgs.srv import ResetEpisode
from grrl_sim.task import STAGES


def parse_reached(note: str) -> dict[str, bool]:
    """The stages named in the sim's END note (``"timeout; reached: peg_grasped …"``)."""
    _, _, tail = note.partition("reached:")
    named = set(tail.split())
    return {stage: stage in named for stage in STAGES}


class EpisodeRunner(Node):
    """Reset → START → wait for END, ``episodes`` times; then a summary."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("episode_runner", **node_kwargs)
        p = declare(
            self,
            [
                Param("episodes", 10, "Episodes to run.", 1, 10**6),
                Param("seed", 1_000_000, "Seed of the first episode (held-out seeds).",
                      0, 2**31 - 1),
                Param("instruction", "", "Instruction to publish ('' = leave it to the policy)."),
                Param("timeout_s", 60.0, "Wall seconds before an episode is aborted.",
                      1.0, 3600.0),
                Param("results_file", "", "Write the JSON summary and episodes here."),
                Param("service_timeout_s", 30.0, "Wait this long for the sim's reset service.",
                      1.0, 600.0),
                Param("settle_quiet_s", 0.1, "Before a reset: joint commands quiet this long "
                      "(the robot came to rest).", 0.0, 10.0),
                Param("settle_timeout_s", 5.0, "Reset anyway after waiting this long for "
                      "quiet.", 0.0, 600.0),
                Param("wait_for_learner", False, "Before a reset: wait for the online learner to "
                      "take in the last episode and the policy to stage its newest update."),
                Param("learner_timeout_s", 300.0, "Reset anyway after waiting this long for the "
                      "learner and the policy.", 0.0, 3600.0),
            ],
        )  # fmt: skip
        self._p = p
        self.done = threading.Event()
        self.exit_code = 0
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._current: dict[str, Any] | None = None
        self._waiting_reset = False
        self._created = time.monotonic()
        self._last_command: float | None = None  # steady time of the last joint command
        self._ended_at: float | None = None  # steady time the last episode finished
        self._last_episode_id: str | None = None  # of the last episode finished
        self._learner: LearnerStatus | None = None
        self._loaded_version = 0  # of the newest policy update the policy node staged
        latched = qos_profile(QosKind.LATCHED)
        self._event_pub = self.create_publisher(EpisodeEvent, contract.EPISODE_EVENT, latched)
        self._instruction_pub = self.create_publisher(String, contract.INSTRUCTION, latched)
        self.create_subscription(EpisodeEvent, contract.EPISODE_EVENT, self._on_event, latched)
        self._reset = self.create_client(ResetEpisode, contract.RESET_EPISODE_SERVICE)
        self.create_subscription(
            JointTrajectory, contract.JOINT_COMMAND, self._on_command, qos_profile(QosKind.COMMAND)
        )
        if p["wait_for_learner"]:
            self.create_subscription(
                LearnerStatus, contract.LEARNER_STATUS, self._on_learner_status, latched
            )
            self.create_subscription(
                PolicyUpdate, contract.POLICY_LOADED, self._on_policy_loaded, latched
            )
        if p["instruction"]:
            self._instruction_pub.publish(String(data=p["instruction"]))
        # a wall-clock tick (steady), so a missing sim (no /clock) is still noticed; events are
        # stamped with the node's clock: sim time under use_sim_time, like every other stamp
        self.create_timer(0.05, self._tick, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _publish(self, kind: int, episode_id: str, note: str = "") -> None:
        event = EpisodeEvent(type=kind, episode_id=episode_id, source="runner", note=note)
        event.header.stamp = self.get_clock().now().to_msg()
        self._event_pub.publish(event)

    def _on_command(self, _msg: JointTrajectory) -> None:
        with self._lock:
            self._last_command = time.monotonic()

    def _settling(self) -> bool:
        """True while the robot may still be moving after the last episode."""
        with self._lock:
            last, ended = self._last_command, self._ended_at
        if ended is None or last is None:
            return False
        now = time.monotonic()
        if now - last >= self._p["settle_quiet_s"]:
            return False
        if now - ended < self._p["settle_timeout_s"]:
            return True
        self.get_logger().warning(
            f"joint commands still coming {self._p['settle_timeout_s']:.1f} s after the episode "
            "ended; resetting anyway", throttle_duration_sec=10.0,
        )  # fmt: skip
        return False

    def _on_learner_status(self, msg: LearnerStatus) -> None:
        with self._lock:
            self._learner = msg

    def _on_policy_loaded(self, msg: PolicyUpdate) -> None:
        with self._lock:
            self._loaded_version = max(self._loaded_version, int(msg.version))

    def _waiting_for_learner(self) -> bool:
        """With ``wait_for_learner``: True until the learner took in the last episode and the
        policy node staged the newest policy the learner published."""
        if not self._p["wait_for_learner"]:
            return False
        with self._lock:
            last, status, loaded = self._last_episode_id, self._learner, self._loaded_version
            ended = self._ended_at
        if last is None or ended is None:
            return False
        if status is not None and status.episode_id == last and loaded >= status.policy_version:
            return False
        if time.monotonic() - ended < self._p["learner_timeout_s"]:
            return True
        if status is None or status.episode_id != last:
            what = f"the learner has not taken in {last}"
        else:
            what = f"the policy has not staged v{status.policy_version} (has v{loaded})"
        self.get_logger().warning(
            f"{what} {self._p['learner_timeout_s']:.0f} s after it ended; resetting anyway",
            throttle_duration_sec=10.0,
        )
        return False

    def _tick(self) -> None:
        if self.done.is_set():
            return
        with self._lock:
            current, waiting = self._current, self._waiting_reset
        if waiting:
            return
        if current is not None:
            if time.monotonic() - current["wall_start"] > self._p["timeout_s"]:
                self._publish(EpisodeEvent.ABORT, current["episode_id"], "runner timeout")
                self._finish(success=False, reached={s: False for s in STAGES}, note="timeout")
            return
        index = len(self.results)
        if index >= self._p["episodes"]:
            return self._complete()
        if self._settling() or self._waiting_for_learner():
            return
        if not self._reset.service_is_ready():
            if time.monotonic() - self._created > self._p["service_timeout_s"]:
                self.get_logger().error("no ResetEpisode service (is the sim running?)")
                self.exit_code = 1
                self.done.set()
            return
        seed = self._p["seed"] + index
        with self._lock:
            self._waiting_reset = True
        future = self._reset.call_async(ResetEpisode.Request(seed=seed))
        future.add_done_callback(lambda f, s=seed: self._on_reset(f, s))

    def _on_reset(self, future: Any, seed: int) -> None:
        response = future.result()
        if response is None or not response.ok:
            self.get_logger().error(
                f"reset with seed {seed} failed: {getattr(response, 'message', 'no response')}"
            )
            self.exit_code = 1
            self.done.set()
            return
        episode_id = f"eval-{seed}"
        with self._lock:
            self._current = {"episode_id": episode_id, "seed": seed, "wall_start": time.monotonic()}
            self._waiting_reset = False
        self._publish(EpisodeEvent.START, episode_id)

    def _on_event(self, msg: EpisodeEvent) -> None:
        with self._lock:
            current = self._current
        if (
            current is None
            or msg.type != EpisodeEvent.END
            or msg.episode_id != current["episode_id"]
        ):
            return
        self._finish(success=bool(msg.success), reached=parse_reached(msg.note), note=msg.note)

    def _finish(self, success: bool, reached: dict[str, bool], note: str) -> None:
        with self._lock:
            current, self._current = self._current, None
            self._ended_at = time.monotonic()
            if current is not None:
                self._last_episode_id = current["episode_id"]
        if current is None:
            return
        seconds = time.monotonic() - current["wall_start"]
        self.results.append({"seed": current["seed"], "success": success, "stages": reached,
                             "wall_s": round(seconds, 2), "note": note})  # fmt: skip
        n = len(self.results)
        wins = sum(r["success"] for r in self.results)
        self.get_logger().info(
            f"episode {n}/{self._p['episodes']} (seed {current['seed']}): "
            f"{'success' if success else 'failure'} in {seconds:.1f} s — {wins}/{n} so far"
        )

    def summary(self) -> dict[str, Any]:
        return success_summary(
            [r["success"] for r in self.results], [r["stages"] for r in self.results], STAGES
        )

    def _complete(self) -> None:
        summary = self.summary()
        self.get_logger().info(f"done: {json.dumps(summary)}")
        if self._p["results_file"]:
            path = Path(self._p["results_file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"summary": summary, "episodes": self.results}, indent=1))
        self.done.set()


main = node_main(EpisodeRunner)
