"""Training samples from episodes: normalised (state, action chunk[, images]) per transition.

A transition is (episode, step t). Its action chunk is the executed commands t..t+k-1, padded
past the episode's end by repeating the last command (``action_pad`` marks the padding). The
progress filter's keep mask removes transitions; augmentation hooks (the mirror transform) add
one extra sample per kept transition and hook.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from grrl_common.errors import GrrlError
from grrl_learner.episodes import Episode
from grrl_policy.normalization import NormStats as _PolicyNormStats

KEEP_MASK_FORMAT = "grrl-keep-mask-1"

Sample = dict[str, Any]


class NormStats(_PolicyNormStats):
    """The policy's normalisation statistics (same JSON), computed from episodes.

    States are ``Episode.states()`` (joint positions + object poses), actions the executed
    commands; a constant dimension's std is floored (``grrl_policy.normalization.STD_FLOOR``).
    """

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[Episode],
        object_poses: bool = True,
        chunk: int = 1,
        action_mode: str = "absolute",
    ) -> NormStats:
        """Statistics over every step of ``episodes`` (states as ``Episode.states``).

        ``action_mode="delta"``: action statistics are those of every chunk's actions minus
        the joint positions its chunk starts from (what :class:`ChunkDataset` then yields).
        """
        if not episodes:
            raise ValueError("cannot compute normalisation statistics from no episodes")
        states = [e.states(object_poses) for e in episodes]
        return cls.from_arrays(states, [chunk_actions(e, chunk, action_mode).reshape(
            -1, e.action_dim) for e in episodes])  # fmt: skip


ACTION_MODES = ("absolute", "delta")


def padded_commands(episode: Episode, chunk: int) -> np.ndarray:
    """The executed commands, extended past the end by holding the last one: (T + k − 1, n)."""
    pad = np.repeat(episode.commands[-1:], chunk - 1, axis=0)
    return np.concatenate([episode.commands, pad]).astype(np.float32)


def chunk_actions(episode: Episode, chunk: int, action_mode: str = "absolute") -> np.ndarray:
    """Every step's action chunk in robot units, (T, k, n).

    ``delta``: relative to the measured joint positions at the chunk's start (so the policy's
    normalised output error shrinks to the scale of a motion, not of the workspace).
    """
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
    windows = np.lib.stride_tricks.sliding_window_view(
        padded_commands(episode, chunk), chunk, axis=0
    ).transpose(0, 2, 1)  # (T, k, n)
    if action_mode == "delta":
        return windows - episode.joint_positions[:, None, :].astype(np.float32)
    return np.array(windows)


def idle_transitions(episode: Episode, chunk: int, tolerance: np.ndarray) -> np.ndarray:
    """Transitions t whose action chunk a_{t:t+k} holds the robot still — a pause the operator
    ended by moving on: (T,) bool.

    Still means every command of the chunk stays within ``tolerance`` (robot units, per joint
    or one for all) of a_t. The episode's last still run is not idle: it is the hold that ends
    the task, not a pause. The progress filter cannot see pauses (progress stops rising in one
    but does not fall), and with a state observation a settled robot looks the same at every
    step of a pause, so cloned "stay" actions can hold a policy there.
    """
    commands = padded_commands(episode, chunk)
    windows = np.lib.stride_tricks.sliding_window_view(commands, chunk, axis=0)[: len(episode)]
    drift = np.abs(windows - windows[:, :, :1]).max(axis=2)  # (T, n)
    still = (drift <= np.asarray(tolerance, dtype=np.float32)).all(axis=1)
    moving = np.flatnonzero(~still)
    still[(moving[-1] + 1 if moving.size else 0) :] = False  # the final hold stays
    return still


class KeepMaskError(GrrlError, ValueError):
    """A keep-mask file or mapping that does not fit; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def save_keep_mask(path: str | Path, masks: Mapping[str, np.ndarray | Sequence[bool]]) -> None:
    """Write ``{episode_id: bool per step}`` as a keep-mask JSON file (atomically)."""
    from grrl_teleop.recording import atomic_write

    episodes = {str(k): np.asarray(v, dtype=bool).reshape(-1).astype(int).tolist()
                for k, v in masks.items()}  # fmt: skip
    document = {"format": KEEP_MASK_FORMAT, "episodes": episodes}
    atomic_write(Path(path), json.dumps(document, separators=(",", ":")))


def load_keep_mask(path: str | Path) -> dict[str, np.ndarray]:
    """Read a keep-mask file: ``{episode_id: (T,) bool}``; KeepMaskError on a bad file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise KeepMaskError(f"{path}: cannot read keep mask ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise KeepMaskError(f"{path}: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != KEEP_MASK_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise KeepMaskError(
            f"{path}: not a keep mask (format {found!r}, expected {KEEP_MASK_FORMAT!r})"
        )
    episodes = document.get("episodes")
    if not isinstance(episodes, dict):
        raise KeepMaskError(f"{path}: 'episodes' must map episode ids to lists of 0/1")
    masks: dict[str, np.ndarray] = {}
    for episode_id, values in episodes.items():
        if not isinstance(values, list) or any(v not in (0, 1) for v in values):
            raise KeepMaskError(f"{path}: episode {episode_id}: mask must be a list of 0/1")
        masks[episode_id] = np.asarray(values, dtype=bool)
    return masks


class ChunkDataset(Dataset):
    """One sample per kept transition (× (1 + len(augment))), normalised with ``stats``.

    A sample is ``{"state": (S,) float32, "actions": (k, n) float32, "action_pad": (k,) bool,
    "images": (V, 3, H, W) uint8 (with ``cameras``), "instruction": str, "episode": int (index
    into ``episodes``), "step": int}``; state and actions are normalised (a hook that edits
    them needs ``stats``). With K kept transitions, sample ``i >= K`` is
    ``augment[i // K - 1]`` applied to sample ``i % K``. ``object_poses=False`` leaves the
    object poses out of the state (pixels policies see the objects in the images).
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        chunk: int,
        stats: NormStats,
        keep_mask: Mapping[str, np.ndarray] | None = None,
        augment: Sequence[Callable[[Sample], Sample]] = (),
        cameras: list[str] | None = None,
        object_poses: bool = True,
        action_mode: str = "absolute",
    ) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        self.action_mode = action_mode
        self.episodes = list(episodes)
        self.chunk = int(chunk)
        self.stats = stats
        self.augment = list(augment)
        self.cameras = list(cameras) if cameras else []
        self.object_poses = object_poses
        self._states: list[np.ndarray] = []
        self._padded_commands: list[np.ndarray] = []
        steps: list[np.ndarray] = []
        episode_of: list[np.ndarray] = []
        for i, episode in enumerate(self.episodes):
            self._check(episode, stats, object_poses)
            states = stats.normalize_state(episode.states(object_poses)).astype(np.float32)
            self._states.append(states)
            self._padded_commands.append(padded_commands(episode, self.chunk))
            for camera in self.cameras:
                if len(episode.images.get(camera, ())) == 0:
                    raise ValueError(
                        f"episode {episode.episode_id} has no frames of camera {camera!r}"
                    )
            keep = np.ones(len(episode), dtype=bool)
            if keep_mask is not None:
                keep = self.mask_for(episode, keep_mask)
            kept = np.flatnonzero(keep)
            steps.append(kept)
            episode_of.append(np.full(len(kept), i))
        self._steps = np.concatenate(steps) if steps else np.zeros(0, dtype=np.int64)
        self._episode_of = np.concatenate(episode_of) if episode_of else np.zeros(0, np.int64)

    @staticmethod
    def _check(episode: Episode, stats: NormStats, object_poses: bool) -> None:
        if len(episode) == 0:
            raise ValueError(f"episode {episode.episode_id} has no steps")
        state_dim = episode.state_dim(object_poses)
        if state_dim != stats.state_mean.shape[0]:
            raise ValueError(
                f"episode {episode.episode_id}: state has {state_dim} dims, "
                f"normalisation statistics {stats.state_mean.shape[0]}"
            )
        if episode.action_dim != stats.action_mean.shape[0]:
            raise ValueError(
                f"episode {episode.episode_id}: actions have {episode.action_dim} dims, "
                f"normalisation statistics {stats.action_mean.shape[0]}"
            )

    @staticmethod
    def mask_for(episode: Episode, keep_mask: Mapping[str, np.ndarray]) -> np.ndarray:
        if episode.episode_id not in keep_mask:
            raise KeepMaskError(f"keep mask has no entry for episode {episode.episode_id}")
        mask = np.asarray(keep_mask[episode.episode_id], dtype=bool).reshape(-1)
        if mask.shape[0] != len(episode):
            raise KeepMaskError(
                f"keep mask for episode {episode.episode_id} has {mask.shape[0]} entries "
                f"but the episode has {len(episode)} steps (read with another stride?)"
            )
        return mask

    @property
    def kept_transitions(self) -> int:
        return int(self._steps.shape[0])

    def __len__(self) -> int:
        return self.kept_transitions * (1 + len(self.augment))

    def __getitem__(self, index: int) -> Sample:
        kept = self.kept_transitions
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range (dataset of {len(self)})")
        variant, j = divmod(index % len(self), kept)
        sample = self._sample(int(self._episode_of[j]), int(self._steps[j]))
        return sample if variant == 0 else self.augment[variant - 1](sample)

    def _chunk(self, e: int, t: int) -> np.ndarray:
        actions = self._padded_commands[e][t : t + self.chunk]
        if self.action_mode == "delta":
            actions = actions - self.episodes[e].joint_positions[t]
        return self.stats.normalize_action(actions).astype(np.float32)

    def _sample(self, e: int, t: int) -> Sample:
        episode = self.episodes[e]
        k = self.chunk
        sample: Sample = {
            "state": torch.from_numpy(self._states[e][t].copy()),
            "actions": torch.from_numpy(self._chunk(e, t)),
            "action_pad": torch.from_numpy(np.arange(t, t + k) >= len(episode)),
            "instruction": episode.instruction,
            "episode": e,
            "step": t,
        }
        if self.cameras:
            views = []
            for camera in self.cameras:
                views.append(torch.from_numpy(episode.frame(camera, t)).permute(2, 0, 1))
            sample["images"] = torch.stack(views)  # a copy: the episode's frames stay intact
        return sample


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack a list of samples: tensors → batch tensors, ints → long tensor, str → list."""
    if not samples:
        raise ValueError("cannot collate no samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, bool | int | float):
            batch[key] = torch.tensor(values)
        else:  # instructions and anything else: a list
            batch[key] = list(values)
    return batch
