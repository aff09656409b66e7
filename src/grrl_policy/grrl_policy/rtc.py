"""Real-time chunking (Black et al. 2025): the prefix guide from the previous chunk (ROS-free).

While the policy computes a new chunk for ``latency_steps`` control steps, the robot keeps
executing the previous one: the new chunk's first ``latency_steps`` actions are already
committed. The new chunk is sampled with those actions inpainted (see
:class:`grrl_policy.model.PrefixGuide`), and the rest of the overlap with the previous chunk
softly guided toward it, so that switching chunks needs no large correction.

Soft mask (the paper's eq. 5). With d = ``latency_steps`` and m the number of new-chunk steps
the previous chunk covers (its overlap, counted from the new chunk's start), new step i weighs

    w_i = 1                                  for i < d            (committed: frozen)
    w_i = c_i · (e^{c_i} − 1) / (e − 1)      for d ≤ i < m        ("exp" decay)
    w_i = 0                                  for i ≥ m            (no previous action)

with c_i = (m − i) / (m − d + 1) ∈ (0, 1), falling from ≈ 1 just after the committed part to
1/(m − d + 1) at the last overlapping step. ``decay="linear"`` uses c_i itself, ``"none"``
gives the hard mask (only the committed steps are guided).
"""

from __future__ import annotations

import math

import numpy as np

DECAYS = ("exp", "linear", "none")
_EPS = 1e-6  # chunk steps: start-time offsets this close to an integer are that integer


def _chunk_positions(previous_start: float, dt: float, new_start: float, k: int) -> np.ndarray:
    """Where the new chunk's steps fall in the previous chunk, in previous-chunk steps."""
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be > 0, got {dt}")
    offset = (new_start - previous_start) / dt
    if abs(offset - round(offset)) < _EPS:  # 0.3 / 0.1 is 2.9999999999999996
        offset = float(round(offset))
    return offset + np.arange(k, dtype=np.float64)


def _interpolate(actions: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actions at fractional chunk positions (linear, held outside) and which are covered."""
    k_prev = actions.shape[0]
    covered = (positions >= -_EPS) & (positions <= k_prev - 1 + _EPS)
    if k_prev == 1:
        return np.repeat(actions, positions.shape[0], axis=0), covered
    x = np.clip(positions, 0.0, k_prev - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.intp), k_prev - 2)
    frac = (x - i0)[:, None]
    return actions[i0] * (1.0 - frac) + actions[i0 + 1] * frac, covered


def _check_chunk(name: str, actions: np.ndarray) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 1:
        raise ValueError(f"{name} must be (k, n) with k >= 1, got shape {actions.shape}")
    return actions


def prefix_guide(
    previous_actions: np.ndarray,
    previous_start: float,
    dt: float,
    new_start: float,
    latency_steps: int,
    k: int,
    decay: str = "exp",
) -> tuple[np.ndarray, np.ndarray]:
    """The guide for a new chunk of ``k`` steps from the previous chunk → (target, weights).

    ``previous_actions`` (k_prev, n) in robot units, action i at ``previous_start + i·dt``; the
    new chunk's action j is at ``new_start + j·dt``. ``target`` (k, n) is the previous chunk
    re-indexed to the new chunk's times (linearly interpolated between its steps, its last
    action held beyond its end, where the weight is 0); ``weights`` (k,) follow the module's
    soft mask.
    """
    previous = _check_chunk("previous_actions", previous_actions)
    if latency_steps < 0 or k < 1:
        raise ValueError(f"need latency_steps >= 0 and k >= 1, got {latency_steps}, {k}")
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    positions = _chunk_positions(previous_start, dt, new_start, k)
    target, covered = _interpolate(previous, positions)
    # m: new steps up to the previous chunk's end (steps before its start are masked below)
    overlap = int(np.flatnonzero(covered)[-1]) + 1 if covered.any() else 0
    steps = np.arange(k, dtype=np.float64)
    weights = np.zeros(k)
    weights[steps < latency_steps] = 1.0
    soft = (steps >= latency_steps) & (steps < overlap)
    if decay != "none" and soft.any():
        c = (overlap - steps[soft]) / (overlap - latency_steps + 1)
        weights[soft] = c * np.expm1(c) / math.expm1(1.0) if decay == "exp" else c
    weights = np.where(covered, weights, 0.0)
    return target, weights


def switch_jump(
    previous_actions: np.ndarray,
    previous_start: float,
    new_actions: np.ndarray,
    new_start: float,
    dt: float,
    latency_steps: int,
) -> float:
    """Max-abs joint difference between the chunks at the first executed new action.

    The new chunk arrives ``latency_steps`` steps after its start, so its first executed action
    is row ``latency_steps`` (time ``new_start + latency_steps·dt``); it is compared with what
    the previous chunk commands then (interpolated; its last action held beyond its end, as the
    smoother holds it). Robot units (rad, m).
    """
    previous = _check_chunk("previous_actions", previous_actions)
    new = _check_chunk("new_actions", new_actions)
    if not 0 <= latency_steps < new.shape[0]:
        raise ValueError(
            f"latency_steps must be in [0, {new.shape[0]}) for a chunk of {new.shape[0]}, "
            f"got {latency_steps}"
        )
    if previous.shape[1] != new.shape[1]:
        raise ValueError(f"chunks have {previous.shape[1]} and {new.shape[1]} joints")
    position = _chunk_positions(previous_start, dt, new_start, latency_steps + 1)[-1:]
    before, _ = _interpolate(previous, position)
    return float(np.max(np.abs(new[latency_steps] - before[0])))
