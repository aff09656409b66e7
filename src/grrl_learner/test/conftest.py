"""Shared fixtures: real datasets recorded once per session by ``grrl collect``, and helpers.

The workspace conftest gives the session its own ROS_DOMAIN_ID, which the collects inherit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from grrl_common.robot import RobotDescription, load_robot_description
from grrl_learner.episodes import Episode, read_dataset
from grrl_teleop.recording import make_typestore

# Seed 1 of the noisy operator: episode 1 misses the insertion and presses a retry keyframe.
NOISY_SEED = 1


def _collect(out: Path, *args: str) -> Path:
    grrl = shutil.which("grrl")
    if grrl is None:
        pytest.fail("the grrl CLI is not on PATH: source env.sh (make setup)")
    argv = [grrl, "collect", "--sim", "--out", str(out), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
    if result.returncode != 0 or not (out / "index.json").exists():
        tail = (result.stdout + result.stderr)[-3000:]
        pytest.fail(f"{' '.join(argv)} failed (rc {result.returncode}):\n{tail}")
    return out


@pytest.fixture(scope="session")
def robot() -> RobotDescription:
    return load_robot_description()


@pytest.fixture(scope="session")
def noisy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two state-mode episodes of the noisy operator (one with a retry keyframe)."""
    out = tmp_path_factory.mktemp("noisy") / "data"
    return _collect(out, "--episodes", "2", "--obs", "state", "--operator", "noisy",
                    "--seed", str(NOISY_SEED))  # fmt: skip


@pytest.fixture(scope="session")
def pixels_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One pixels-mode episode (3 cameras, 128x128 rgb8 at 10 Hz)."""
    out = tmp_path_factory.mktemp("pixels") / "data"
    return _collect(out, "--episodes", "1", "--obs", "pixels", "--operator", "clean",
                    "--seed", "0")  # fmt: skip


@pytest.fixture(scope="session")
def noisy_episodes(noisy_dataset: Path, robot: RobotDescription) -> list[Episode]:
    return read_dataset(noisy_dataset, include_incomplete=True, robot=robot)


@pytest.fixture(scope="session")
def pixels_episode(pixels_dataset: Path, robot: RobotDescription) -> Episode:
    (episode,) = read_dataset(pixels_dataset, include_incomplete=True, robot=robot)
    return episode


@pytest.fixture(scope="session")
def bag_messages() -> Callable[[Path], list[tuple[str, int, Any]]]:
    """Read a bag independently of grrl_learner: [(topic, bag stamp ns, rosbags message)]."""
    store = make_typestore()

    def read(bag: Path) -> list[tuple[str, int, Any]]:
        with Reader(bag) as reader:
            return [(c.topic, t, store.deserialize_cdr(raw, c.msgtype))
                    for c, t, raw in reader.messages()]  # fmt: skip

    return read


def header_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


@pytest.fixture(scope="session")
def stamped() -> Callable[..., dict[int, list[np.ndarray]]]:
    """Group a bag's messages of one topic by header stamp: {stamp ns: [vector, ...]}.

    Joint vectors are put in robot order by their names; poses flattened (x y z qw qx qy qz).
    """

    def group(messages: list[tuple[str, int, Any]], topic: str, robot: RobotDescription):
        out: dict[int, list[np.ndarray]] = {}
        for name, _, msg in messages:
            if name != topic:
                continue
            if topic == "/joint_states":
                index = [list(msg.name).index(j) for j in robot.joint_names]
                vector = np.asarray(msg.position)[index]
            elif topic == "/grrl/joint_command":
                index = [list(msg.joint_names).index(j) for j in robot.joint_names]
                vector = np.asarray(msg.points[0].positions)[index]
            else:
                vector = np.array([(p.position.x, p.position.y, p.position.z, p.orientation.w,
                                    p.orientation.x, p.orientation.y, p.orientation.z)
                                   for p in msg.poses]).reshape(-1)  # fmt: skip
            out.setdefault(header_ns(msg), []).append(vector)
        return out

    return group


@pytest.fixture(scope="session")
def assert_episodes_equal() -> Callable[[Episode, Episode], None]:
    def check(a: Episode, b: Episode) -> None:
        for name in Episode.__dataclass_fields__:
            if name == "source":
                continue
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=name)
            elif isinstance(x, dict) and any(isinstance(v, np.ndarray) for v in x.values()):
                assert x.keys() == y.keys(), name
                for key in x:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}[{key}]")
            else:
                assert x == y, name

    return check
