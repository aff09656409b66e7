"""Assembling a policy observation from the latest sensor messages (ROS-free).

The policy node feeds every joint state, object-pose array, camera frame and instruction in as
it arrives; :meth:`ObservationAssembler.assemble` then gives the observation the policy was
trained on — joints (+ object poses) and the cameras in the policy's order — or the reasons it
cannot: an input missing or older than ``max_age_s``. Bad inputs (NaN, wrong joint set, wrong
image size) are refused at the door with a one-line reason, so they never reach the model and
the previous good input keeps being used until it goes stale.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PolicyInputs:
    """One observation in the layout the policy was trained on."""

    stamp: float  # seconds: the joint state's stamp (what the chunk is conditioned on)
    state: np.ndarray  # (S,) float32: joint positions (+ object poses)
    joint_positions: np.ndarray  # (n,) float64
    instruction: str
    images: np.ndarray | None  # (V, H, W, 3) uint8 in the policy's camera order


@dataclass
class _Stamped:
    value: np.ndarray
    stamp: float


class ObservationAssembler:
    """Keeps the latest valid input of each kind; thread-safe (subscriptions vs the worker)."""

    def __init__(
        self,
        joint_names: Sequence[str],
        cameras: Sequence[str] = (),
        image_size: tuple[int, int] | None = None,
        object_pose_dim: int = 0,
        max_age_s: float = 0.5,
        instruction: str = "",
    ) -> None:
        self.joint_names = list(joint_names)
        self.cameras = list(cameras)
        self.image_size = image_size  # (H, W); None: take the first frame's size
        self.object_pose_dim = int(object_pose_dim)  # 0: the policy does not observe objects
        self.max_age_s = float(max_age_s)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self._lock = threading.Lock()
        self._joints: _Stamped | None = None
        self._objects: _Stamped | None = None
        self._images: dict[str, _Stamped] = {}
        self._instruction = instruction
        self._not_before = -np.inf

    # -- inputs: each returns "" when accepted, else the one-line reason it was refused ------

    def set_joints(self, names: Sequence[str], positions: Sequence[float], stamp: float) -> str:
        positions = np.asarray(positions, dtype=np.float64)
        if len(names) != positions.size:
            return f"joint state has {len(names)} names but {positions.size} positions"
        order = [self._index.get(name, -1) for name in names]
        missing = [n for n in self.joint_names if n not in set(names)]
        if missing:
            return f"joint state lacks {', '.join(missing[:4])}"
        if not np.all(np.isfinite(positions)):
            bad = [n for n, p in zip(names, positions, strict=True) if not np.isfinite(p)]
            return f"non-finite joint position for {', '.join(bad[:4])}: message ignored"
        vector = np.empty(len(self.joint_names))
        for i, j in enumerate(order):
            if j >= 0:
                vector[j] = positions[i]
        with self._lock:
            self._joints = _Stamped(vector, float(stamp))
        return ""

    def set_object_poses(self, poses: np.ndarray, stamp: float) -> str:
        flat = np.asarray(poses, dtype=np.float64).reshape(-1)
        if self.object_pose_dim and flat.size != self.object_pose_dim:
            return (
                f"object poses have {flat.size} values, the policy expects {self.object_pose_dim}"
            )
        if not np.all(np.isfinite(flat)):
            return "non-finite object pose: message ignored"
        with self._lock:
            self._objects = _Stamped(flat, float(stamp))
        return ""

    def set_image(self, camera: str, image: np.ndarray, stamp: float) -> str:
        if camera not in self.cameras:
            return ""  # a camera the policy does not use
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = f"{image.shape} {image.dtype}"
            return f"camera {camera}: expected an H×W×3 uint8 (rgb8) image, got {got}"
        size = tuple(image.shape[:2])
        if self.image_size is not None and size != tuple(self.image_size):
            h, w = self.image_size
            return f"camera {camera}: image is {size[1]}x{size[0]}, the policy expects {w}x{h}"
        with self._lock:
            self._images[camera] = _Stamped(np.array(image, copy=True), float(stamp))
        return ""

    def set_instruction(self, text: str) -> None:
        with self._lock:
            self._instruction = str(text)

    @property
    def instruction(self) -> str:
        return self._instruction

    def clear(self, not_before: float = -np.inf) -> None:
        """Forget every input (an episode reset); inputs stamped before ``not_before`` are old."""
        with self._lock:
            self._joints = self._objects = None
            self._images = {}
            self._not_before = float(not_before)

    # -- output ---------------------------------------------------------------------------

    def assemble(self, now: float) -> tuple[PolicyInputs | None, list[str]]:
        """The observation at ``now``, or None and why (each missing or stale input named)."""
        with self._lock:
            joints, objects, images = self._joints, self._objects, dict(self._images)
            instruction, not_before = self._instruction, self._not_before
        problems: list[str] = []

        def check(name: str, item: _Stamped | None) -> None:
            if item is None or item.stamp < not_before:
                problems.append(f"{name}: none received")
            elif now - item.stamp > self.max_age_s:
                problems.append(f"{name}: stale ({now - item.stamp:.2f} s old)")

        check("joint_states", joints)
        if self.object_pose_dim:
            check("object_poses", objects)
        for camera in self.cameras:
            check(f"camera {camera}", images.get(camera))
        if problems:
            return None, problems
        state = joints.value
        if self.object_pose_dim:
            state = np.concatenate([state, objects.value])
        stacked = np.stack([images[c].value for c in self.cameras]) if self.cameras else None
        inputs = PolicyInputs(
            stamp=joints.stamp,
            state=state.astype(np.float32),
            joint_positions=joints.value.copy(),
            instruction=instruction,
            images=stacked,
        )
        return inputs, []
