"""learner_node: episodes from the live graph, built exactly as the file reader builds them.

Subscribes the contract topics the episode reader uses (joint states, commands, object poses,
events, instruction, the sim's ground truth; cameras with ``load_images``) and feeds them through
a :class:`~grrl_learner.episodes.StampOrderedFeed` into the one
:class:`~grrl_learner.episodes.EpisodeAssembler` — the same core :func:`read_episode` runs over
a bag — so a replayed bag gives the episodes a direct read gives. ``replay: true`` subscribes
reliably with a deep queue (what a fast ``ros2 bag play`` / ``grrl replay`` needs); otherwise
the contract QoS (live robot). With ``critic`` set, each finished episode is scored and filtered
by progress (:mod:`grrl_learner.progress_filter`) and the keep mask is written to ``out_dir``.
``mode: online`` runs noise-space RL (:mod:`grrl_learner.online`) on the executed episodes —
ActionChunks (with their noise), the smoother's commands, END with success — publishes each
new noise predictor as a PolicyUpdate and, after each episode it took in, a LearnerStatus (what
a runner that waits for the learner between episodes waits on).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node

from grrl_common import contract
from grrl_common.contract import CONTRACT_TOPICS, QosKind, import_interface, qos_profile
from grrl_common.parameters import Param, declare
from grrl_common.robot import load_robot_description
from grrl_common.runtime import node_main
from grrl_common.stamps import stamp_seconds
from grrl_learner.episodes import Episode, EpisodeAssembler, StampOrderedFeed
from grrl_learner.replay import REPLAY_QOS

_TYPES = {spec.name: (spec.type_name, spec.qos) for spec in CONTRACT_TOPICS}
_TYPES[contract.SIM_GROUND_TRUTH] = ("std_msgs/msg/String", QosKind.LATCHED)


class LearnerNode(Node):
    """Builds episodes from the stream; hands each finished one to the configured sink."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("learner_node", **node_kwargs)
        p = declare(
            self,
            [
                Param("robot_description", "", "Robot description YAML ('' = the sim robot).",
                      read_only=True),
                Param("replay", False, "Lossless subscriptions for a bag replay (reliable, "
                      "deep queue) instead of the contract QoS.", read_only=True),
                Param("load_images", False, "Also assemble camera frames.", read_only=True),
                Param("reorder_window_s", 0.3, "Hold messages this long to order them by stamp.",
                      0.0, 10.0, read_only=True),
                Param("episodes", 0, "Finish after this many episodes (0 = run on).", 0, 10**7),
                Param("mode", "offline", "'offline': build (and filter) episodes; 'online': "
                      "noise-space RL on the executed episodes (needs 'policy').",
                      read_only=True),
                Param("policy", "", "Online: the offline policy checkpoint to improve.",
                      read_only=True),
                Param("update_every", 12, "Online: new episodes per update.", 1, 10**6,
                      read_only=True),
                Param("steps_per_update", 50, "Online: optimisation steps per update.", 1, 10**6,
                      read_only=True),
                Param("warmup_episodes", 24, "Online: offline-policy rollouts before the first "
                      "update.", 1, 10**6, read_only=True),
                Param("warmup_steps", 500, "Online: critic-only steps on the warm-up rollouts.",
                      0, 10**7, read_only=True),
                Param("critic", "", "Critic checkpoint: filter each episode by progress."),
                Param("delta", 0.05, "Progress-drop threshold of the filter.", 0.0, 1.0),
                Param("out_dir", "", "Where the keep mask and the filter report go."),
            ],
        )  # fmt: skip
        self._p = p
        self.robot = load_robot_description(p["robot_description"] or None)
        self.done = threading.Event()
        self.exit_code = 0
        self.episodes: list[Episode] = []
        self._lock = threading.Lock()
        assembler = EpisodeAssembler(self.robot, load_images=p["load_images"])
        self.feed = StampOrderedFeed(assembler, self._on_episode, p["reorder_window_s"])
        self._filter = self._make_filter(p) if p["critic"] else None
        self._online = None
        if p["mode"] not in ("offline", "online"):
            raise ValueError(f"mode must be 'offline' or 'online', got {p['mode']!r}")
        if p["mode"] == "online":
            self._setup_online(p)
        for topic in assembler.topics():
            type_name, kind = _TYPES.get(topic, ("sensor_msgs/msg/Image", QosKind.SENSOR))
            # replay: reliable and volatile, which matches any reliable publisher (a latched
            # one too); a player publishes the recorded messages, there is no history to get
            qos = REPLAY_QOS if p["replay"] else qos_profile(kind)
            self.create_subscription(
                import_interface(type_name), topic,
                lambda msg, t=topic: self._on_message(t, msg), qos,
            )  # fmt: skip
        self.create_timer(0.05, self._flush)
        self.get_logger().info(
            f"building episodes from {len(assembler.topics())} topics"
            f"{' (replay QoS)' if p['replay'] else ''}"
            f"{'; filtering with ' + p['critic'] if p['critic'] else ''}"
        )

    def _on_message(self, topic: str, msg: Any) -> None:
        self.feed.push(topic, msg, time.monotonic())

    def _flush(self) -> None:
        self.feed.flush(time.monotonic())

    def _on_episode(self, episode: Episode) -> None:
        with self._lock:
            self.episodes.append(episode)
            # what `episodes` counts: episodes that ran to their end (not the aborted start-up one)
            count = sum(e.complete and not e.aborted for e in self.episodes)
        status = "success" if episode.success else ("aborted" if episode.aborted else "failure")
        self.get_logger().info(
            f"episode {episode.episode_id}: {len(episode)} steps, {status}, "
            f"{len(episode.retry_steps)} retry keyframe(s), {episode.dropped} dropped message(s)"
        )
        if self._filter is not None and episode.complete and not episode.aborted:
            self._filter(episode)
        if self._online is not None and episode.complete and not episode.aborted:
            self._online(episode)
        if self._p["episodes"] and count >= self._p["episodes"]:
            self.done.set()

    def _make_filter(self, p: dict[str, Any]):
        """Score and filter each episode with the critic (the rule ``grrl filter`` applies);
        the keep masks of all episodes so far are rewritten to out_dir after each one."""
        from grrl_learner.critic import load_critic
        from grrl_learner.dataset import save_keep_mask
        from grrl_learner.progress_filter import episode_progress, suboptimal

        critic = load_critic(p["critic"])
        out = Path(p["out_dir"] or "filter_out")
        out.mkdir(parents=True, exist_ok=True)
        masks: dict[str, Any] = {}

        def run(episode: Episode) -> None:
            rho = episode_progress(critic, episode)
            drop = suboptimal(rho, critic.config.chunk, p["delta"])
            masks[episode.episode_id] = ~drop
            save_keep_mask(out / "keep_mask.json", masks)
            self.get_logger().info(
                f"episode {episode.episode_id}: progress {rho[0]:.2f} → {rho[-1]:.2f}, "
                f"dropped {drop.mean():.1%} of its steps"
            )

        return run

    def _setup_online(self, p: dict[str, Any]) -> None:
        """Noise-space RL in the loop: executed episodes → OnlineLearner; each new noise
        predictor goes out as a latched PolicyUpdate (the policy node swaps it in between
        episodes). The learner trains on its own thread; its state is saved after every
        update and restored here, so a restart loses no episode."""
        from grrl_learner.online import (
            ExecutedChunk,
            OnlineConfig,
            OnlineLearner,
            record_from_episode,
        )
        from grrl_msgs.msg import ActionChunk, LearnerStatus, PolicyUpdate
        from grrl_policy.checkpoint import load_policy

        if not p["policy"]:
            raise ValueError("learner_node mode 'online' needs the 'policy' parameter")
        base = load_policy(p["policy"])
        cameras = list(base.config.cameras)
        with_objects = bool(base.meta.get("object_poses", not cameras))
        k = base.config.chunk
        config = OnlineConfig(
            update_every=p["update_every"], steps_per_update=p["steps_per_update"],
            warmup_episodes=p["warmup_episodes"], warmup_steps=p["warmup_steps"],
        )  # fmt: skip
        learner = OnlineLearner(p["policy"], p["out_dir"] or "online_rl", config)
        learner.load_state()
        self.learner = learner
        chunks: list[ExecutedChunk] = []
        chunk_lock = threading.Lock()
        records: queue.Queue = queue.Queue()  # the learner's own thread takes them in order
        update_pub = self.create_publisher(
            PolicyUpdate, contract.POLICY_UPDATE, qos_profile(QosKind.LATCHED)
        )

        def on_chunk(msg: ActionChunk) -> None:
            stamp = stamp_seconds(msg.header.stamp)
            noise = np.asarray(msg.noise, np.float32).reshape(int(msg.horizon), -1)
            with chunk_lock:
                chunks.append(ExecutedChunk(stamp, noise, int(msg.policy_version)))

        status_pub = self.create_publisher(
            LearnerStatus, contract.LEARNER_STATUS, qos_profile(QosKind.LATCHED)
        )
        taken = 0

        def publish_status(episode_id: str) -> None:
            nonlocal taken
            taken += 1
            status = LearnerStatus(episode_id=episode_id, episodes=taken,
                                   policy_version=int(learner.version))  # fmt: skip
            status.header.stamp = self.get_clock().now().to_msg()
            status_pub.publish(status)

        def learn() -> None:  # buffers, updates and publishes, off the executor
            while True:
                item = records.get()
                if item is None:
                    return
                episode_id, record = item
                if record is None:  # nothing to learn from; still taken in, in order
                    publish_status(episode_id)
                    continue
                where = learner.add_episode(record)
                self.get_logger().info(
                    f"episode {record.episode_id} → {where} buffer ({len(record.steps)} "
                    f"chunks, v{record.policy_version}); "
                    f"{learner.episodes_until_update()} to the next update"
                )
                path = learner.maybe_update()
                if path is not None:
                    latest = learner.latest_checkpoint
                    update = PolicyUpdate(checkpoint_path=str(path), sha256=latest["sha256"],
                                          version=int(latest["version"]))  # fmt: skip
                    update.header.stamp = self.get_clock().now().to_msg()
                    update_pub.publish(update)
                    self.get_logger().info(f"published policy v{latest['version']}: {path}")
                publish_status(record.episode_id)  # after the update it made, if any

        def on_episode(episode: Episode) -> None:
            with chunk_lock:
                mine = list(chunks)
                chunks.clear()
            record = record_from_episode(episode, mine, with_objects, k)
            if record is None:
                self.get_logger().warning(f"episode {episode.episode_id}: no chunk of it seen")
            records.put((episode.episode_id, record))

        self._learner_queue = records
        self._learner_thread = threading.Thread(target=learn, name="online_learner", daemon=True)
        self._learner_thread.start()
        self.create_subscription(
            ActionChunk, contract.ACTION_CHUNK, on_chunk, qos_profile(QosKind.RELIABLE)
        )
        self._online = on_episode

    def destroy_node(self) -> None:
        self.feed.flush()  # what is still held belongs to the last episode
        if self._online is not None:  # let the learner store what it was given
            self._learner_queue.put(None)
            self._learner_thread.join(timeout=60.0)
        super().destroy_node()


main = node_main(LearnerNode)
