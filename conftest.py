"""Workspace-wide pytest setup: the ROS env, an isolated DDS domain, and ROS fixtures."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

if os.environ.get("GRRL_ENV") != "1":
    pytest.exit("tests need the workspace env: run `make test` (or `. env.sh` first)", returncode=4)

# A domain of its own per test session, so concurrent runs (CI beside a demo) never cross-talk;
# every subprocess a test starts inherits it. Discovery stays on loopback (env.sh sets it too).
os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


@pytest.fixture
def ros_context() -> Iterator[object]:
    """A fresh rclpy context, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def executor(ros_context: object) -> Iterator[object]:
    """A single-threaded executor on ``ros_context``; nodes added to it are destroyed after."""
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=ros_context)
    try:
        yield ex
    finally:
        for node in list(ex.get_nodes()):
            ex.remove_node(node)
            node.destroy_node()
        ex.shutdown(timeout_sec=1.0)


class ProcessOutput:
    """Collects a subprocess's merged output line by line and lets tests wait for a line."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """Block until a line containing ``text`` has been printed (or timeout / process end)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self.lines) or not self._reader.is_alive(),
                timeout,
            ) and any(text in line for line in self.lines)

    def text(self) -> str:
        self._reader.join(timeout=5)
        return "\n".join(self.lines)


@pytest.fixture
def start_process() -> Iterator[object]:
    """Start a command with the workspace env; output is collected; killed after the test."""
    processes: list[subprocess.Popen] = []

    def start(*argv: str) -> ProcessOutput:
        env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        processes.append(process)
        return ProcessOutput(process)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def installed_executable(package: str, executable: str) -> str:
    """Path of a console script installed by colcon in lib/<package>."""
    path = ROOT / "install" / package / "lib" / package / executable
    if not path.exists():
        raise FileNotFoundError(f"{path} not installed; run `make setup`")
    return str(path)


@pytest.fixture
def executable_path() -> object:
    return installed_executable


@pytest.fixture
def python() -> str:
    return sys.executable


def write_tiny_policy(
    path: Path,
    cameras: tuple[str, ...] = (),
    object_pose_dim: int = 0,
    chunk: int = 8,
    seed: int = 0,
    action_std: float = 0.05,
) -> Path:
    """A small random-weight policy checkpoint for the sim robot: actions near the home pose.

    Untrained, so its chunks are arbitrary but bounded (home ± a few ``action_std``): enough to
    drive the real graph (nodes, smoother, sim) without training first.
    """
    import numpy as np
    import torch

    from grrl_common.robot import load_robot_description
    from grrl_policy.checkpoint import save_policy
    from grrl_policy.model import ExpertConfig, FlowMatchingPolicy, PolicyConfig
    from grrl_policy.normalization import NormStats
    from grrl_policy.small_encoder import SmallEncoderConfig

    robot = load_robot_description()
    n = robot.n_joints
    torch.manual_seed(seed)
    small = SmallEncoderConfig(width=32, layers=2, heads=2, kv_heads=1, head_dim=16,
                               state_tokens=2, image_size=32, conv_channels=8)  # fmt: skip
    config = PolicyConfig(
        state_dim=n + object_pose_dim, action_dim=n, chunk=chunk, cameras=cameras, small=small,
        expert=ExpertConfig(width=32, heads=2, time_dim=16), noise_hidden=32,
    )  # fmt: skip
    home = np.array(robot.sim["home"] * 2, np.float32)
    state_mean = np.concatenate([home, np.zeros(object_pose_dim, np.float32)])
    norm = NormStats(state_mean, np.ones_like(state_mean), home, np.full(n, action_std, np.float32))
    meta = {"instruction": "insert the peg into the socket", "object_poses": bool(object_pose_dim)}
    return save_policy(path, FlowMatchingPolicy(config), norm, robot.joint_names,
                       1.0 / robot.control_rate_hz, meta)  # fmt: skip


@pytest.fixture
def tiny_policy(tmp_path: Path):
    """Factory: ``tiny_policy(name, **kwargs)`` writes a checkpoint (see write_tiny_policy)."""

    def make(name: str = "policy", **kwargs) -> Path:
        return write_tiny_policy(tmp_path / name, **kwargs)

    return make
