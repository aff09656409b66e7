"""Chunk transitions for the offline critic: (s_t, a_{t:t+k}) → s_{t+k}, rewards, terminals.

Episodes become *segments*: every episode as recorded, plus — hindsight failures — for every
retry keyframe m_i of a successful episode, its prefix τ_{0:m_i} (steps 0..m_i) as an extra
episode that failed: it ends at m_i with reward 0. The prefix keeps the recorded states and
actions (only the outcome differs): padding its chunks with a held command instead would let
the critic tell prefixes apart by the padding rather than by the state.

A transition is (segment, step t). Reward, terminal flag and bootstrap state are given per
*chunk prefix* j = 1..k (Q-chunking: Q(s_t, a_{t:t+j}) for each j): the prefix reaches the
segment's end iff t + j >= T (T the segment's length), and then it is terminal with reward
r = γ^{T−t}·I(success) (the paper's sparse reward r_t = γ^{T−t}·I(τ) for t > T−k); else its
reward is 0 and it bootstraps from s_{t+j} with discount γ^j. So on a successful episode
Q ≈ γ^{T−t}, a progress-like value in [0, 1]. The time-progress target of the regression
baseline is I(success)·min(t + j, T)/T.

Arrays are stored once per recorded episode (states, action chunks normalised) and indexed;
a hindsight prefix costs only its index rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from grrl_learner.dataset import padded_commands
from grrl_learner.episodes import Episode
from grrl_policy.normalization import NormStats


@dataclass(frozen=True)
class Segment:
    """One training episode: the first ``length`` steps of ``episodes[source]``."""

    source: int
    length: int
    success: bool
    hindsight: bool = False  # a failed prefix cut at a retry keyframe


def hindsight_keyframes(episode: Episode) -> list[int]:
    """The retry keyframes that yield a failed prefix: sorted, unique, ≥ 1, inside the episode
    (a keyframe at step 0 would make an empty prefix)."""
    return sorted({int(m) for m in episode.retry_steps if 1 <= int(m) < len(episode)})


def make_segments(episodes: Sequence[Episode], hindsight: bool = True) -> list[Segment]:
    """Every episode (success as recorded; None counts as failed), then the hindsight failures
    of successful ones: prefix 0..m_i (length m_i + 1) per retry keyframe m_i."""
    segments = [Segment(i, len(e), e.success is True) for i, e in enumerate(episodes)]
    if hindsight:
        for i, episode in enumerate(episodes):
            if episode.success is True:
                segments += [Segment(i, m + 1, False, True) for m in hindsight_keyframes(episode)]
    return segments


class TransitionSet:
    """All chunk transitions of ``episodes`` (+ hindsight failures) as tensors.

    ``states`` (ΣT, S) and ``actions`` (Σ(T+k−1), n) are normalised with ``norm``; with
    ``features`` (a shared trunk's, one (T, F) array per episode) ``states`` is (ΣT, S + F).
    The actions of a step's chunk are rows ``action_offset[e] + t .. + k`` (padded past the
    end by holding the last command, as :func:`grrl_learner.dataset.chunk_actions` does).
    Transition i is step ``step[i]`` of a segment of ``length[i]`` steps of episode ``episode[i]``.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        norm: NormStats,
        chunk: int,
        gamma: float,
        object_poses: bool = True,
        hindsight: bool = True,
        stride: int = 1,
        features: Sequence[np.ndarray] | None = None,
    ) -> None:
        if not episodes:
            raise ValueError("no episodes to make transitions of")
        if chunk < 1 or stride < 1:
            raise ValueError(f"chunk and stride must be >= 1, got {chunk}, {stride}")
        self.chunk, self.gamma = int(chunk), float(gamma)
        self.segments = make_segments(episodes, hindsight)
        states, actions, state_offset, action_offset = [], [], [0], [0]
        if features is not None and len(features) != len(episodes):
            raise ValueError(f"{len(features)} feature arrays for {len(episodes)} episodes")
        for i, episode in enumerate(episodes):
            state = norm.normalize_state(episode.states(object_poses)).astype(np.float32)
            if features is not None:  # a shared trunk's features, after the state
                state = np.concatenate([state, np.asarray(features[i], np.float32)], axis=1)
            states.append(state)
            padded = padded_commands(episode, self.chunk)
            actions.append(norm.normalize_action(padded).astype(np.float32))
            state_offset.append(state_offset[-1] + len(episode))
            action_offset.append(action_offset[-1] + padded.shape[0])
        self.states = torch.from_numpy(np.concatenate(states))
        self.actions = torch.from_numpy(np.concatenate(actions))
        self.state_offset = torch.tensor(state_offset[:-1])
        self.action_offset = torch.tensor(action_offset[:-1])
        rows = [
            (s.source, t, s.length, s.success, s.hindsight)
            for s in self.segments
            for t in range(0, s.length, stride)
        ]
        table = torch.tensor([r[:3] for r in rows], dtype=torch.long)
        self.episode, self.step, self.length = table.unbind(1)
        self.success = torch.tensor([r[3] for r in rows], dtype=torch.bool)
        self.hindsight = torch.tensor([r[4] for r in rows], dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def state_at(self, episode: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return self.states[self.state_offset[episode] + step]

    def chunk_at(self, episode: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """(B,) episodes and steps → their recorded action chunks (B, k, n)."""
        rows = (self.action_offset[episode] + step)[:, None] + torch.arange(self.chunk)
        return self.actions[rows]

    def batch(self, index: torch.Tensor, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Transitions ``index`` (B,) with targets for chunk prefixes ``positions`` (B, P) in
        1..k: state (B, S), actions (B, k, n), and per (B, P): reward, discount (0 when
        terminal), terminal, next state (B, P, S) with its episode and step (the segment's
        last state when terminal: a placeholder) and the regression target."""
        episode, step = self.episode[index], self.step[index]
        length, success = self.length[index], self.success[index]
        reach = step[:, None] + positions  # step after the prefix
        terminal = reach >= length[:, None]
        final = torch.tensor(self.gamma, dtype=torch.float64) ** (length - step).double()
        reward = torch.where(terminal, (final * success)[:, None], 0.0).float()
        discount = torch.where(terminal, 0.0, self.gamma ** positions.double()).float()
        next_step = torch.minimum(reach, length[:, None] - 1)
        next_episode = episode[:, None].expand_as(next_step)
        next_state = self.state_at(next_episode, next_step)
        progress = torch.minimum(reach, length[:, None]).float() / length[:, None].float()
        return {
            "state": self.state_at(episode, step),
            "actions": self.chunk_at(episode, step),
            "positions": positions,
            "reward": reward,
            "discount": discount,
            "terminal": terminal,
            "next_state": next_state,
            "next_episode": next_episode,
            "next_step": next_step,
            "regression_target": progress * success[:, None].float(),
        }
