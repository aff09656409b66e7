"""Online RL through the live graph: executed episodes reach the learner, which publishes a new
noise predictor that the policy node swaps in at an episode boundary; the runner waits for the
learner between episodes, so each update lands at the episode after the one that completed it."""

from __future__ import annotations

import json


def test_online_rl_through_the_graph_updates_the_policy_between_episodes(
    start_process, executable_path, tiny_policy, tmp_path
):
    policy = tiny_policy("state", object_pose_dim=14, action_std=0.2)
    out = tmp_path / "online"
    graph = start_process(
        executable_path("grrl_bringup", "grrl"), "online-rl", "--sim", "--policy", str(policy),
        "--out", str(out), "--episodes", "5", "--max-steps", "100", "--warmup-episodes", "2",
        "--warmup-steps", "5", "--update-every", "1", "--steps-per-update", "3",
    )  # fmt: skip
    assert graph.process.wait(timeout=240) == 0, graph.text()
    text = graph.text()
    assert "published policy v1" in text, text
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert len(curve) == 5
    # two warm-up episodes on the base policy, then an update after every episode, each used
    # from the next episode on (one version per episode: the swap waits for the next START)
    assert [row["version"] for row in curve] == [0, 0, 1, 2, 3]
    assert "policy update v1: staged" in text
    runner = json.loads((out / "runner.json").read_text())
    assert runner["summary"]["episodes"] == 5
