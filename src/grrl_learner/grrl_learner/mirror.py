"""Left/right mirror augmentation of training samples (the dataset's ``augment`` hook).

GR-RL's morphological symmetry: flip every image horizontally, swap the left and right wrist
cameras, mirror joint states and actions with the robot description's signed permutation, mirror
object poses in the world frame (the robot YAML's ``world_axis``), and swap spatial words in the
instruction ("left" ↔ "right", "clockwise" ↔ "counterclockwise", 左 ↔ 右).

Samples are normalised, so the transform denormalises, mirrors and normalises again with the
same statistics (compute them over original and mirrored data: :func:`mirror_state_vector`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from grrl_common.robot import RobotDescription
from grrl_policy.normalization import NormStats

POSE_SIZE = 7  # x, y, z, qw, qx, qy, qz
_AXES = {"x": 0, "y": 1, "z": 2}


def mirror_poses(poses: np.ndarray, axis: str = "x") -> np.ndarray:
    """Mirror flattened world poses (..., m·7) through the plane normal to ``axis``.

    Position: that coordinate changes sign. Orientation: R → M R M with M = diag(±1), which
    for a unit quaternion keeps w and the axis's own component and negates the other two.
    """
    p = np.array(poses, dtype=np.float64, copy=True)
    shaped = p.reshape(*p.shape[:-1], -1, POSE_SIZE)
    a = _AXES[axis]
    shaped[..., a] *= -1.0
    for other in {0, 1, 2} - {a}:
        shaped[..., 4 + other] *= -1.0
    return shaped.reshape(p.shape).astype(np.asarray(poses).dtype)


def mirror_instruction(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """Swap each pair's words, on word boundaries for Latin words and anywhere for CJK ones."""
    table = {}
    for a, b in pairs:
        table[a.lower()] = b
        table[b.lower()] = a
    # longer words first, so "counterclockwise" is not read as "counter" + "clockwise"
    words = sorted(table, key=len, reverse=True)
    parts = [rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in words]
    pattern = re.compile("|".join(parts), re.IGNORECASE)

    def swap(match: re.Match) -> str:
        word = table[match.group(0).lower()]
        return word.capitalize() if match.group(0)[0].isupper() else word

    return pattern.sub(swap, text)


def mirror_state_vector(state: np.ndarray, robot: RobotDescription) -> np.ndarray:
    """Joint positions (+ flattened object poses) mirrored, in robot order."""
    n = robot.n_joints
    out = np.array(state, copy=True)
    out[..., :n] = robot.mirror_joints(state[..., :n])
    if state.shape[-1] > n:
        out[..., n:] = mirror_poses(state[..., n:], robot.mirror_world_axis)
    return out


def mirror_transform(
    robot: RobotDescription, stats: NormStats, cameras: list[str] | None = None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The dataset hook: a normalised sample → its mirror image (a new dict)."""
    cameras = list(cameras or [])
    # mirrored view v shows what camera camera_mirror[cameras[v]] saw, flipped
    source_view = [cameras.index(robot.camera_mirror.get(c, c)) for c in cameras]

    def transform(original: dict[str, Any]) -> dict[str, Any]:
        # numpy views of the (torch or numpy) sample: flips need negative strides
        sample = {k: np.asarray(v) if hasattr(v, "shape") else v for k, v in original.items()}
        out = dict(sample)
        state = sample["state"] * stats.state_std + stats.state_mean
        out["state"] = ((mirror_state_vector(state, robot) - stats.state_mean)
                        / stats.state_std).astype(np.float32)  # fmt: skip
        actions = stats.denormalize_action(sample["actions"])
        out["actions"] = stats.normalize_action(robot.mirror_joints(actions)).astype(np.float32)
        if "images" in sample and cameras:
            images = sample["images"]  # (V, 3, H, W)
            out["images"] = np.ascontiguousarray(images[source_view][..., ::-1])
        out["instruction"] = mirror_instruction(sample["instruction"], robot.instruction_word_pairs)
        # hand back the container types the dataset gave (torch tensors stay tensors)
        return {
            k: torch.from_numpy(np.ascontiguousarray(out[k])) if torch.is_tensor(v) else out[k]
            for k, v in original.items()
        }

    return transform
