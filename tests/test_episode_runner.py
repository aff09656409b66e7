"""episode_runner over DDS: with ``wait_for_learner`` the next episode starts only once the
learner took in the last one and the policy node staged the learner's newest policy."""

from __future__ import annotations

from rclpy.node import Node

from grrl_common import contract
from grrl_common.contract import QosKind, qos_profile
from grrl_common.runtime import spin_until
from grrl_msgs.msg import EpisodeEvent, LearnerStatus, PolicyUpdate


def test_runner_waits_for_the_learner_and_the_policy_between_episodes(
    executor, ros_context, start_process, executable_path, tmp_path
):
    # a 10-step episode that runs without commands (fast pacing steps on its own when idle)
    sim = start_process(
        executable_path("grrl_sim", "sim_node"),
        "--ros-args", "-p", "obs_mode:=state", "-p", "pacing:=fast",
        "-p", "episode_limit_steps:=10", "-p", "fast_idle_s:=0.01",
    )  # fmt: skip
    runner = start_process(
        executable_path("grrl_sim", "episode_runner"),
        "--ros-args", "-p", "episodes:=2", "-p", "seed:=5", "-p", "wait_for_learner:=true",
        "-p", f"results_file:={tmp_path / 'runner.json'}",
    )  # fmt: skip
    node = Node("learner_stand_in", context=ros_context)
    executor.add_node(node)
    events: list[EpisodeEvent] = []
    latched = qos_profile(QosKind.LATCHED)
    node.create_subscription(EpisodeEvent, contract.EPISODE_EVENT, events.append, latched)
    status_pub = node.create_publisher(LearnerStatus, contract.LEARNER_STATUS, latched)
    loaded_pub = node.create_publisher(PolicyUpdate, contract.POLICY_LOADED, latched)

    def started(episode_id: str) -> bool:
        return any(e.type == EpisodeEvent.START and e.episode_id == episode_id for e in events)

    def ended(episode_id: str) -> bool:
        return any(e.type == EpisodeEvent.END and e.episode_id == episode_id for e in events)

    assert spin_until(executor, lambda: ended("eval-5"), 60), sim.text() + runner.text()
    # the learner has not taken the episode in: no next episode
    assert not spin_until(executor, lambda: started("eval-6"), 1.5)
    # taken in, and it published v1, which the policy has not staged yet: still none
    status_pub.publish(LearnerStatus(episode_id="eval-5", episodes=1, policy_version=1))
    assert not spin_until(executor, lambda: started("eval-6"), 1.0)
    loaded_pub.publish(PolicyUpdate(checkpoint_path="/tmp/v1", sha256="0" * 64, version=1))
    assert spin_until(executor, lambda: started("eval-6"), 30), runner.text()
    # after the last episode there is nothing to wait for: the runner is done
    assert spin_until(executor, lambda: ended("eval-6"), 60), runner.text()
    assert runner.process.wait(timeout=30) == 0, runner.text()
