"""Left/right mirror augmentation of training samples (the dataset's ``augment`` hook).

GR-RL's morphological symmetry: flip every image horizontally, swap the left and right wrist
cameras, mirror joint states and actions with the robot description's signed permutation, mirror
object poses in the world frame (the robot YAML's ``world_axis``), mirror end-effector poses
through the world and back into each arm's base frame (:func:`mirror_ee_poses`, for
end-effector action spaces), and swap spatial words in the instruction ("left" ↔ "right",
"clockwise" ↔ "counterclockwise", 左 ↔ 右).

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


def mirror_partner_arms(robot: RobotDescription) -> list[int]:
    """For each arm (robot order), the index of the arm its mirror image is (from the joint map)."""
    starts = [robot.arm_slice(arm.name).start for arm in robot.arms]
    partner = []
    for start in starts:
        image = int(robot.mirror_index[start])
        partner.append(max(i for i, s in enumerate(starts) if s <= image))
    return partner


def mirror_ee_poses(poses: np.ndarray, robot: RobotDescription) -> np.ndarray:
    """Mirror end-effector poses (..., arms·7: x, y, z, qw, qx, qy, qz, each in its arm's base
    frame, arms in robot order) into the poses the mirrored arms must take.

    Each pose goes to the world (the YAML's ``arms.*.base``), through the world mirror plane
    (``mirror.world_axis``), and back into the base frame of the arm that plays it in the mirror
    image. A reflection is not a rotation: the orientation becomes M·R·E, with M the world
    reflection and E the reflection of the gripper's own symmetry axis (``mirror.ee_axis``),
    so that the mirrored gripper is again a right-handed frame.
    """
    from scipy.spatial.transform import Rotation

    p = np.asarray(poses, dtype=np.float64)
    arms = len(robot.arms)
    if p.shape[-1] != arms * POSE_SIZE:
        raise ValueError(f"expected (..., {arms * POSE_SIZE}) end-effector poses, got {p.shape}")
    shaped = p.reshape(-1, arms, POSE_SIZE)
    world_m = np.diag([-1.0 if a == _AXES[robot.mirror_world_axis] else 1.0 for a in range(3)])
    ee_m = np.diag([-1.0 if a == _AXES[robot.mirror_ee_axis] else 1.0 for a in range(3)])
    bases = [(np.asarray(arm.base_position), Rotation.from_quat(arm.base_orientation,
              scalar_first=True).as_matrix()) for arm in robot.arms]  # fmt: skip
    out = np.empty_like(shaped)
    for source, target in enumerate(mirror_partner_arms(robot)):
        (t_src, r_src), (t_dst, r_dst) = bases[source], bases[target]
        rot = Rotation.from_quat(shaped[:, source, 3:], scalar_first=True).as_matrix()
        world_pos = shaped[:, source, :3] @ r_src.T + t_src
        world_rot = r_src @ rot
        mirrored_pos = world_pos @ world_m  # M is diagonal: row vectors times M = M·p
        mirrored_rot = world_m @ world_rot @ ee_m
        out[:, target, :3] = (mirrored_pos - t_dst) @ r_dst  # R_dst^T (p − t), as row vectors
        quat = Rotation.from_matrix(r_dst.T @ mirrored_rot).as_quat(scalar_first=True)
        # the w ≥ 0 hemisphere: mirror∘mirror gives back poses given in it exactly
        out[:, target, 3:] = quat * np.where(quat[:, :1] < 0, -1.0, 1.0)
    return out.reshape(p.shape)


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
