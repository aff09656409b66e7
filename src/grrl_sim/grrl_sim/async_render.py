"""Rendering camera frames off the physics thread (ROS-free).

CPU rendering through Mesa costs ~25 ms per camera frame, more than a 20 ms control period, so
a simulator that renders inline falls behind real time. Here the stepping thread only copies the
simulation state (``mj_copyData``) at each frame tick; a render thread, which owns the EGL
context, renders the newest copy and hands the frames to a callback. Ticks that arrive while a
frame is being rendered replace each other: frames may drop, physics never waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import mujoco
import numpy as np

FramesCallback = Callable[[float, dict[str, np.ndarray]], None]


class AsyncRenderer:
    """Renders ``cameras`` (robot name → MJCF camera) of submitted states on its own thread."""

    def __init__(self, model: mujoco.MjModel, cameras: Mapping[str, str], width: int, height: int,
                 on_frames: FramesCallback) -> None:  # fmt: skip
        self._model = model
        self._cameras = dict(cameras)
        self._size = (width, height)
        self._on_frames = on_frames
        self._staging = mujoco.MjData(model)
        self._rendering = mujoco.MjData(model)
        self._stamp = 0.0
        self._pending = False
        self._busy = False
        self._closed = False
        self._changed = threading.Condition()
        self.frames_rendered = 0
        self.frames_dropped = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._loop, name="sim_render", daemon=True)
        self._thread.start()

    def submit(self, data: mujoco.MjData, stamp: float) -> None:
        """Queue a copy of ``data`` for rendering (replacing one not yet started)."""
        with self._changed:
            if self._pending:
                self.frames_dropped += 1
            mujoco.mj_copyData(self._staging, self._model, data)
            self._stamp = stamp
            self._pending = True
            self._changed.notify_all()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until the last submitted state has been rendered (for lockstep pacing)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (not self._pending and not self._busy) or not self._thread.is_alive(),
                timeout,
            )

    def _loop(self) -> None:
        width, height = self._size
        try:
            renderer = mujoco.Renderer(self._model, height=height, width=width)
        except Exception as exc:  # no GL: report once, keep physics running
            self.error = exc
            return
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._pending or self._closed)
                    if self._closed:
                        return
                    self._staging, self._rendering = self._rendering, self._staging
                    stamp, self._pending, self._busy = self._stamp, False, True
                frames = {}
                for name, camera in self._cameras.items():
                    renderer.update_scene(self._rendering, camera=camera)
                    frames[name] = renderer.render().copy()
                self.frames_rendered += 1
                self._on_frames(stamp, frames)
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
        finally:
            renderer.close()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=5.0)
