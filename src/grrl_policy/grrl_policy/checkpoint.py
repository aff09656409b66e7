"""Policy checkpoints: a directory with ``config.json`` + ``model.safetensors`` (never pickle).

``config.json`` holds the model configuration, the normalisation statistics, the joint names
and control period the policy was trained for, and free-form metadata (training step, data).
Writes are atomic (a temporary directory renamed into place), so a reader (a policy node
hot-swapping weights) never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from grrl_common.atomic import write_directory_atomically
from grrl_common.errors import GrrlError
from grrl_policy.encoders import ObservationBatch
from grrl_policy.model import FlowMatchingPolicy, PolicyConfig, PrefixGuide
from grrl_policy.normalization import NormStats

FORMAT = "grrl-policy-1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(GrrlError):
    """A checkpoint cannot be read or written; one-line message naming the path."""


@dataclass
class LoadedPolicy:
    """A policy ready for inference in robot units (radians, metres)."""

    model: FlowMatchingPolicy
    norm: NormStats
    joint_names: list[str]
    control_dt: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> PolicyConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def observation(
        self,
        states: np.ndarray,
        instructions: list[str],
        images: np.ndarray | None = None,
    ) -> ObservationBatch:
        """Raw states (B, S) and images (B, V, H, W, 3) uint8 → a normalised model batch."""
        states = np.asarray(states, np.float32)
        if states.ndim != 2 or states.shape[1] != self.config.state_dim:
            raise ValueError(
                f"states must be (B, {self.config.state_dim}), got {tuple(states.shape)}"
            )
        state = torch.from_numpy(self.norm.normalize_state(states)).to(self.device)
        tensor_images = None
        if self.config.cameras:
            if images is None:
                raise ValueError(f"policy needs images of {list(self.config.cameras)}")
            tensor_images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 1, 4, 2, 3)
            tensor_images = tensor_images.to(self.device)
        return ObservationBatch(state, list(instructions), tensor_images)

    @torch.no_grad()
    def act(
        self,
        states: np.ndarray,
        instructions: list[str],
        images: np.ndarray | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        guide_target: np.ndarray | None = None,
        guide_weights: np.ndarray | None = None,
        max_guidance: float = 5.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sample chunks: → (actions (B, k, n) in robot units, initial noise (B, k, n)).

        ``guide_target`` (B, k, n) robot units and ``guide_weights`` (B, k) in [0, 1] inpaint
        the chunks' prefixes (real-time chunking, see :mod:`grrl_policy.rtc`).
        """
        obs = self.observation(states, instructions, images)
        guide = None
        if (guide_target is None) != (guide_weights is None):
            raise ValueError("guide_target and guide_weights go together")
        if guide_target is not None:
            target = np.asarray(guide_target, np.float32)
            if self.config.action_mode == "delta":  # the model's actions are relative, too
                target = target - np.asarray(states, np.float32)[:, None, : target.shape[-1]]
            guide = PrefixGuide(
                torch.from_numpy(self.norm.normalize_action(target)).to(self.device),
                torch.as_tensor(np.asarray(guide_weights, np.float32), device=self.device),
                max_guidance,
            )
        chunk, used = self.model.sample(obs, noise=noise, generator=generator, guide=guide)
        actions = self.norm.denormalize_action(chunk.float().cpu().numpy())
        if self.config.action_mode == "delta":  # relative to the joints the chunk starts from
            actions = actions + np.asarray(states, np.float32)[:, None, : actions.shape[-1]]
        return actions, used.float().cpu().numpy()


def save_policy(
    path: str | Path,
    model: FlowMatchingPolicy,
    norm: NormStats,
    joint_names: list[str],
    control_dt: float,
    meta: dict[str, Any] | None = None,
) -> Path:
    document = {
        "format": FORMAT,
        "policy": model.cfg.to_dict(),
        "normalization": norm.to_dict(),
        "joint_names": list(joint_names),
        "control_dt": control_dt,
        "meta": meta or {},
    }

    return save_checkpoint_dir(path, document, model)


# --- one checkpoint layout for every model (policies here, critics in grrl_learner) ----------
def save_checkpoint_dir(path: str | Path, document: dict[str, Any], model: torch.nn.Module) -> Path:
    """``config.json`` (``document``) + ``model.safetensors``, published atomically."""

    def write(tmp: Path) -> None:
        (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=1))
        save_model(model, str(tmp / WEIGHTS_NAME))

    return write_directory_atomically(path, write, replaces=(CONFIG_NAME, WEIGHTS_NAME))


def read_checkpoint_json(
    path: str | Path, expected_format: str, what: str, error: type[GrrlError] = CheckpointError
) -> dict[str, Any]:
    """A checkpoint's config.json, checked for ``expected_format``; ``error`` names the file."""
    path = Path(path)
    config = path / CONFIG_NAME
    if not config.is_file():
        raise error(f"{path}: not a {what} checkpoint (no {CONFIG_NAME})")
    try:
        document = json.loads(config.read_text())
    except ValueError as exc:
        raise error(f"{config}: unreadable JSON ({exc})") from None
    found = document.get("format") if isinstance(document, dict) else None
    if found != expected_format:
        raise error(f"{config}: format {found!r}, expected {expected_format!r}")
    return document


def load_checkpoint_weights(
    model: torch.nn.Module, path: str | Path, device: str | torch.device,
    error: type[GrrlError] = CheckpointError,
) -> None:  # fmt: skip
    """Load ``model.safetensors`` into ``model`` (strict) and move it to ``device``, eval mode."""
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise error(f"{path}: missing {WEIGHTS_NAME}")
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except Exception as exc:  # safetensors raises several types; the message is what matters
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{weights}: cannot load weights ({first})") from None
    model.to(device).eval()


def read_config(path: str | Path) -> dict[str, Any]:
    return read_checkpoint_json(path, FORMAT, "policy")


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", flow_steps: int | None = None
) -> LoadedPolicy:
    """A checkpoint, ready to sample; ``flow_steps`` overrides its Euler steps at inference."""
    path = Path(path)
    document = read_config(path)
    if flow_steps is not None and flow_steps < 1:
        raise CheckpointError(f"flow_steps must be >= 1, got {flow_steps}")
    try:
        cfg = PolicyConfig.from_dict(document["policy"])
        if flow_steps is not None:  # sampling only: the weights do not depend on it
            cfg = replace(cfg, flow_steps=flow_steps)
        norm = NormStats.from_dict(document["normalization"])
        joint_names = list(document["joint_names"])
        control_dt = float(document["control_dt"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG_NAME}: bad config ({exc})") from None
    model = FlowMatchingPolicy(cfg)
    load_checkpoint_weights(model, path, device)
    return LoadedPolicy(model, norm, joint_names, control_dt, document.get("meta", {}))


def checkpoint_sha256(path: str | Path) -> str:
    """Digest of a checkpoint's config and weights (what PolicyUpdate carries)."""
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        with open(Path(path) / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
