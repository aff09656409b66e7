"""Normalisation statistics of states and actions (stored in every checkpoint's JSON)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

STD_FLOOR = 1e-3  # constant dimensions (a gripper never moved) must not blow up


@dataclass
class NormStats:
    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray

    @classmethod
    def from_arrays(cls, states: Iterable[np.ndarray], actions: Iterable[np.ndarray]) -> NormStats:
        """Statistics over stacked (T, S) state and (T, n) action arrays of many episodes."""
        s = np.concatenate([np.asarray(x, np.float64) for x in states])
        a = np.concatenate([np.asarray(x, np.float64) for x in actions])
        return cls(
            s.mean(0).astype(np.float32),
            np.maximum(s.std(0), STD_FLOOR).astype(np.float32),
            a.mean(0).astype(np.float32),
            np.maximum(a.std(0), STD_FLOOR).astype(np.float32),
        )

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).astype(float).tolist() for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        try:
            return cls(**{k: np.asarray(d[k], np.float32) for k in cls.__dataclass_fields__})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad normalisation statistics ({exc})") from None

    @staticmethod
    def _apply(x, mean, std, inverse: bool):
        if isinstance(x, torch.Tensor):
            mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
            std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
        return x * std + mean if inverse else (x - mean) / std

    def normalize_state(self, x):
        return self._apply(x, self.state_mean, self.state_std, False)

    def normalize_action(self, x):
        return self._apply(x, self.action_mean, self.action_std, False)

    def denormalize_action(self, x):
        return self._apply(x, self.action_mean, self.action_std, True)
