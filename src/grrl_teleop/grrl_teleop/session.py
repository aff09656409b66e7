"""The operator's episode session (ROS-free): start, retry keyframes, end, abort."""

from __future__ import annotations

from dataclasses import dataclass, field


class SessionError(ValueError):
    """An operator action that does not fit the session state (e.g. END while idle)."""


@dataclass
class Session:
    """Which episode is running and what the operator pressed; ids are ``<prefix>_<n>``."""

    prefix: str = "episode"
    counter: int = 0
    episode_id: str = ""
    retries: list[float] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.episode_id)

    def start(self, episode_id: str = "") -> str:
        if self.active:
            raise SessionError(f"episode {self.episode_id} is still running")
        self.counter += 1
        self.episode_id = episode_id or f"{self.prefix}_{self.counter:05d}"
        self.retries = []
        return self.episode_id

    def retry(self, stamp_s: float) -> str:
        if not self.active:
            raise SessionError("no episode running: retry ignored")
        self.retries.append(stamp_s)
        return self.episode_id

    def finish(self) -> str:
        """END or ABORT: returns the id of the episode that ended."""
        if not self.active:
            raise SessionError("no episode running")
        episode_id, self.episode_id = self.episode_id, ""
        return episode_id
