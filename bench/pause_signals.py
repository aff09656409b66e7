"""Can anything short of the sim's ground truth see the operator's pauses? One JSON line.

    python bench/pause_signals.py --data W/noisy200 --critic W/critic_distributional_200 \\
        --policy W/policy_bc --episodes 40

Dropping the noisy operator's pauses (with its mistakes) lifts BC where dropping the mistakes
alone does not (``bench/ablation_offline.py --stages oracle_mistakes,oracle``), so the filtered
stage could only beat BC by seeing pauses. This scores four step-level signals against the
ground truth on the last ``--episodes`` demos; a step is a pause when either arm is in one (and
no mistake's chunks reach it), clean when neither. Each signal flags the steps whose score is
lowest; the JSON gives, at its best-F1 threshold, precision and recall for pauses, and the
precision of the 5 % of steps it is surest of (chance: ``pause_fraction_scored``):

- ``progress_rise``: ρ_{t+k} − ρ_t from the critic, i.e. a stall in progress (the paper's rule
  looks for a fall, which a pause never shows);
- ``advantage``: ρ of the demonstrated chunk minus the mean ρ of ``--samples`` chunks the BC
  policy samples at the same state (a hesitation should be worth less than what is usually done);
- ``still_arm``: the stiller arm's largest joint drift over the demonstrated chunk, as a fraction
  of joint range (the data alone; ``grrl train-bc --drop-idle`` needs both arms still);
- ``still_where_policy_moves``: that drift minus the BC policy's mean drift for the same arm
  (an arm held still where the demonstrations usually move it).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from steps import machine

from grrl_common.errors import GrrlError
from grrl_common.robot import load_robot_description
from grrl_learner.critic import load_critic
from grrl_learner.dataset import chunk_actions
from grrl_learner.episodes import read_dataset
from grrl_learner.progress_filter import episode_progress, truth_spans
from grrl_policy.checkpoint import load_policy

CLEAN, PAUSE, MISTAKE = 0, 1, 2


def best_f1(score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Flag ``score`` ≤ a threshold (swept over its quantiles); the best-F1 point for PAUSE."""
    positives = int((label == PAUSE).sum())
    best = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "flagged": 0.0}
    for q in np.linspace(0.01, 0.6, 60):
        flagged = score <= np.quantile(score, q)
        hits = int((flagged & (label == PAUSE)).sum())
        precision, recall = hits / max(int(flagged.sum()), 1), hits / max(positives, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        if f1 > best["f1"]:
            best = {"f1": f1, "precision": precision, "recall": recall,
                    "flagged": float(flagged.mean())}  # fmt: skip
    # a filter wants precision: how pure are the 5 % of steps a signal is surest of?
    surest = score <= np.quantile(score, 0.05)
    best["precision_at_5pct"] = float((label[surest] == PAUSE).mean())
    return {key: round(value, 3) for key, value in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="noisy demos with the sim's ground truth")
    parser.add_argument("--critic", required=True, help="distributional critic checkpoint")
    parser.add_argument("--policy", required=True, help="BC policy trained on all of --data")
    parser.add_argument("--episodes", type=int, default=40, help="the last N demos are scored")
    parser.add_argument("--samples", type=int, default=4, help="policy chunks per state")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    robot = load_robot_description()
    critic = load_critic(args.critic)
    policy = load_policy(args.policy)
    if policy.config.cameras:
        raise GrrlError(f"{args.policy} observes cameras; this bench samples state policies only")
    if critic.config.chunk != policy.config.chunk:
        raise GrrlError(f"critic chunk {critic.config.chunk} != policy chunk "
                        f"{policy.config.chunk}")  # fmt: skip
    episodes = read_dataset(args.data, robot=robot, load_images=False)[-args.episodes :]
    if not episodes:
        raise GrrlError(f"{args.data}: no complete episode to score")
    state_dim = episodes[0].state_dim(critic.object_poses)
    if state_dim != policy.config.state_dim:
        raise GrrlError(f"the policy observes a {policy.config.state_dim}-d state, the critic's "
                        f"is {state_dim}-d: not trained on the same observations")  # fmt: skip
    k = critic.config.chunk
    # vectors follow the episodes' joint order (the robot description's when read with it)
    joints = {name: i for i, name in enumerate(episodes[0].joint_names)}
    arms = [[joints[j] for j in arm.all_joints] for arm in robot.arms]
    order = [robot.joint_names.index(name) for name in episodes[0].joint_names]
    joint_range = (robot.upper - robot.lower)[order].astype(np.float32)
    generator = torch.Generator().manual_seed(args.seed)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in (
        "progress_rise", "advantage", "still_arm", "still_where_policy_moves")}  # fmt: skip
    labels = []

    def drift(chunks: np.ndarray) -> np.ndarray:
        """(T, arms): each arm's largest joint drift over its chunk, as a fraction of range."""
        per_joint = (np.abs(chunks - chunks[:, :1]) / joint_range).max(axis=1)
        return np.stack([per_joint[:, members].max(axis=1) for members in arms], axis=1)

    for episode in episodes:
        n = len(episode)
        mistakes, pauses = truth_spans(episode, lead=k - 1)
        label = np.full(n, CLEAN)
        for first, last in pauses:
            label[first : last + 1] = PAUSE
        for first, last in mistakes:
            label[first : last + 1] = MISTAKE
        labels.append(label)

        # a shared-trunk critic's policy features, computed once for both of its uses
        features = critic.trunk.episode_features(episode) if critic.trunk else None
        rho = episode_progress(critic, episode, features=features)
        ahead = np.concatenate([rho[k:], np.repeat(rho[-1:], min(k, n))])[:n]
        scores["progress_rise"].append(ahead - rho)
        state = torch.as_tensor(critic.inputs(episode, features), dtype=torch.float32)
        raw_states = episode.states(critic.object_poses)
        sampled_value, sampled_drift = [], []
        with torch.no_grad():
            for _ in range(args.samples):
                chunks, _ = policy.act(raw_states, [episode.instruction] * n, generator=generator)
                actions = torch.as_tensor(critic.norm.normalize_action(chunks), dtype=torch.float32)
                sampled_value.append(critic.model.progress(state, actions).numpy())
                sampled_drift.append(drift(chunks))
        scores["advantage"].append(rho - np.mean(sampled_value, axis=0))
        demo_drift = drift(chunk_actions(episode, k))
        scores["still_arm"].append(demo_drift.min(axis=1))
        scores["still_where_policy_moves"].append(
            (demo_drift - np.mean(sampled_drift, axis=0)).min(axis=1)
        )

    label = np.concatenate(labels)
    scored = label != MISTAKE  # pauses against clean steps
    result: dict = {"bench": "pause_signals", "episodes": len(episodes), "steps": int(label.size),
                    "pause_fraction": round(float((label == PAUSE).mean()), 4),
                    "pause_fraction_scored": round(float((label[scored] == PAUSE).mean()), 4),
                    "samples": args.samples}  # fmt: skip
    for name, parts in scores.items():
        score = np.concatenate(parts)
        result[name] = best_f1(score[scored], label[scored])
        result[name]["median_pause"] = round(float(np.median(score[label == PAUSE])), 5)
        result[name]["median_clean"] = round(float(np.median(score[label == CLEAN])), 5)
    result.update(machine())
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except GrrlError as exc:
        sys.exit(f"bench/pause_signals.py: {exc}")
