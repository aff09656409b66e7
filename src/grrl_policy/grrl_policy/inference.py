"""Policy inference off the ROS executor, with verified weight hot-swaps (ROS-free).

:class:`PolicyRunner` owns the loaded policy and one worker thread. ``submit`` hands the worker
an observation and returns at once (False while a chunk is still being generated), so node
callbacks never block on the model. A checkpoint published by online RL samples from its
noise predictor (:func:`grrl_policy.deployed.deployed`). ``request_update`` loads new weights on a
separate thread,
checks their sha256 first, and stages them; the worker swaps them in before the next chunk
(``swap="chunk"``) or when the caller says an episode starts (``swap="episode"``) — never in the
middle of generating a chunk. A refused or broken update leaves the running policy untouched.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from grrl_policy.checkpoint import LoadedPolicy, checkpoint_sha256, load_policy
from grrl_policy.deployed import deployed
from grrl_policy.observation import PolicyInputs
from grrl_policy.rtc import prefix_guide


@dataclass
class GeneratedChunk:
    """One chunk as the policy produced it, in robot units."""

    chunk_id: int
    stamp: float  # the observation's time: action i targets stamp + i * dt
    dt: float
    actions: np.ndarray  # (k, n)
    noise: np.ndarray  # (k, n) the initial flow noise it was integrated from
    policy_version: int
    inference_ms: float
    rtc_prefix_steps: int  # actions held to the previous chunk (0: RTC off or no previous)
    state: np.ndarray | None = None  # (S,) the observation's state vector


@dataclass
class UpdateOutcome:
    version: int
    accepted: bool
    message: str
    path: str = ""  # of an accepted checkpoint
    sha256: str = ""


class PolicyRunner:
    """Generates chunks on a worker thread; swaps weights between chunks."""

    def __init__(
        self,
        policy: LoadedPolicy,
        on_chunk: Callable[[GeneratedChunk], None],
        *,
        version: int = 0,
        seed: int = 0,
        noise_scale: float = 1.0,
        rtc: bool = False,
        swap: str = "chunk",
        flow_steps: int | None = None,
        clock: Callable[[], float] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_update: Callable[[UpdateOutcome], None] | None = None,
    ) -> None:
        if swap not in ("chunk", "episode"):
            raise ValueError(f"swap must be 'chunk' or 'episode', got {swap!r}")
        self.policy = deployed(policy)
        self.version = version
        self.noise_scale = noise_scale
        self.rtc = rtc
        self.swap = swap
        self.flow_steps = flow_steps  # an override that updates keep (None: each checkpoint's)
        self._on_chunk = on_chunk
        self._on_error = on_error or (lambda message: None)
        self._on_update = on_update or (lambda outcome: None)
        self._clock = clock or time.monotonic
        self._generator = torch.Generator(device=policy.device).manual_seed(seed)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: PolicyInputs | None = None
        self._busy = False
        self._closed = False
        self._staged: tuple[LoadedPolicy, int] | None = None
        self._previous: GeneratedChunk | None = None
        self._chunk_id = 0
        # observation → chunk ready, in control steps: what RTC must treat as committed
        self._delays: deque[float] = deque(maxlen=20)
        self.inference_ms: deque[float] = deque(maxlen=200)
        self.chunks = 0
        self._thread = threading.Thread(target=self._work, name="policy_inference", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._busy or self._pending is not None

    def submit(self, inputs: PolicyInputs) -> bool:
        """Queue an observation for the next chunk; False (not queued) while one is in work."""
        with self._lock:
            if self._closed or self._busy or self._pending is not None:
                return False
            self._pending = inputs
            self._wake.notify()
            return True

    def new_episode(self) -> None:
        """An episode starts: forget the previous chunk; apply staged weights in episode mode."""
        with self._lock:
            self._previous = None
            if self.swap == "episode" and not self._busy:
                self._apply_staged_locked()

    def request_update(self, path: str, sha256: str, version: int) -> None:
        """Verify and load ``path`` off-thread; stage it for the next swap point."""
        threading.Thread(
            target=self._load_update, args=(path, sha256, version), name="policy_load", daemon=True
        ).start()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=timeout)

    @property
    def latency_steps(self) -> int:
        """Control steps between an observation and its chunk being usable (recent p90)."""
        if not self._delays:
            return 0
        return int(math.ceil(np.percentile(np.asarray(self._delays), 90) - 1e-9))

    # -- internals ------------------------------------------------------------------------

    def _load_update(self, path: str, sha256: str, version: int) -> None:
        if version <= self.version:
            self._on_update(UpdateOutcome(version, False, f"version {version} is not newer"))
            return
        try:
            digest = checkpoint_sha256(path)
        except OSError as exc:
            self._on_update(UpdateOutcome(version, False, f"{path}: unreadable ({exc.strerror})"))
            return
        if digest != sha256.strip().lower():
            self._on_update(UpdateOutcome(
                version, False, f"{path}: sha256 {digest[:12]}… does not match {sha256[:12]}…"
            ))  # fmt: skip
            return
        try:
            loaded = deployed(
                load_policy(path, device=self.policy.device, flow_steps=self.flow_steps)
            )
        except Exception as exc:  # a broken checkpoint must not take the running policy down
            self._on_update(UpdateOutcome(version, False, str(exc).splitlines()[0]))
            return
        problem = self._incompatible(loaded)
        if problem:
            self._on_update(UpdateOutcome(version, False, f"{path}: {problem}"))
            return
        with self._lock:
            self._staged = (loaded, version)
            if self.swap == "chunk" and not self._busy:
                self._apply_staged_locked()
        self._on_update(UpdateOutcome(
            version, True, f"staged {path} (swap at next {self.swap})", path, digest
        ))  # fmt: skip

    def _incompatible(self, other: LoadedPolicy) -> str:
        mine, theirs = self.policy.config, other.config
        if other.joint_names != self.policy.joint_names:
            return "joint names differ from the running policy"
        if (theirs.state_dim, theirs.chunk, tuple(theirs.cameras)) != (
            mine.state_dim, mine.chunk, tuple(mine.cameras),
        ):  # fmt: skip
            return "observation or chunk shape differs from the running policy"
        return ""

    def _apply_staged_locked(self) -> None:
        if self._staged is not None:
            self.policy, self.version = self._staged
            self._staged = None

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                inputs, self._pending = self._pending, None
                self._busy = True
                if self.swap == "chunk":
                    self._apply_staged_locked()  # between chunks only
                policy, version, previous = self.policy, self.version, self._previous
            try:
                chunk = self._generate(policy, version, previous, inputs)
            except Exception as exc:  # report, keep serving: the smoother's watchdog holds
                self._on_error(
                    f"inference failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                )
                chunk = None
            with self._lock:
                self._busy = False
                if chunk is not None:
                    self._previous = chunk
            if chunk is not None:
                self._on_chunk(chunk)

    def _generate(
        self,
        policy: LoadedPolicy,
        version: int,
        previous: GeneratedChunk | None,
        inputs: PolicyInputs,
    ) -> GeneratedChunk:
        dt = policy.control_dt
        k = policy.config.chunk
        started = time.perf_counter()
        guide_target = guide_weights = None
        prefix = 0
        if self.rtc and previous is not None:
            prefix = self.latency_steps
            target, weights = prefix_guide(
                previous.actions, previous.stamp, dt, inputs.stamp, prefix, k
            )
            if np.any(weights > 0):
                guide_target, guide_weights = target[None], weights[None]
            else:
                prefix = 0
        noise = self.noise_scale * torch.randn(
            (1, *policy.model.chunk_shape), generator=self._generator, device=policy.device
        )
        images = inputs.images[None] if inputs.images is not None else None
        actions, used = policy.act(
            inputs.state[None], [inputs.instruction], images, noise=noise,
            guide_target=guide_target, guide_weights=guide_weights,
        )  # fmt: skip
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self.inference_ms.append(elapsed_ms)
        self._delays.append(max(0.0, self._clock() - inputs.stamp) / dt)
        self._chunk_id += 1
        self.chunks += 1
        return GeneratedChunk(
            chunk_id=self._chunk_id,
            stamp=inputs.stamp,
            dt=dt,
            actions=actions[0],
            noise=used[0],
            policy_version=version,
            inference_ms=elapsed_ms,
            rtc_prefix_steps=prefix,
            state=inputs.state,
        )
