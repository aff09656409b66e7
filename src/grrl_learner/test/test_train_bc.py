"""BC training end to end: CLI, checkpoints, exact resume, DDP gradient, eval, errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

from grrl_common.robot import load_robot_description
from grrl_learner.dataset import load_keep_mask, save_keep_mask
from grrl_learner.episodes import read_dataset
from grrl_learner.train_bc import drop_idle
from grrl_policy.checkpoint import load_policy

SMALL = ["--width", "64", "--layers", "2", "--chunk", "8", "--batch-size", "8", "--no-progress"]


def grrl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    exe = shutil.which("grrl")
    assert exe, "grrl is not on PATH (source env.sh)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def test_train_resume_is_exact_and_checkpoint_evaluates(noisy_dataset: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(straight), "--steps", "6",
             "--save-every", "3", "--flow-steps", "4", *SMALL)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    # interrupted after its first step (a zero time budget), then resumed to the end
    cut = tmp_path / "cut"
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(cut), "--steps", "6",
             "--save-every", "3", "--max-minutes", "0", *SMALL)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((cut / "train_state" / "state.json").read_text())["step"] == 1
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(cut), "--steps", "6",
             "--save-every", "3", *SMALL)  # fmt: skip
    assert r.returncode == 0 and "resuming" in r.stderr and "from step 1" in r.stderr
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # a resumable run with other settings is refused in one line
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(cut), "--steps", "6",
             "--lr", "1e-3", *SMALL)  # fmt: skip
    assert r.returncode == 2 and "different settings (lr)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    policy = load_policy(straight)
    assert policy.meta["obs"] == "state" and policy.meta["step"] == 6
    assert policy.config.chunk == 8 and policy.config.state_dim == 14 + 14
    assert policy.config.flow_steps == 4 and load_policy(cut).config.flow_steps == 5
    with safe_open(str(straight / "model.safetensors"), "pt") as handle:  # safetensors, no pickle
        assert len(list(handle.keys())) > 10

    r = grrl("eval", "--policy", str(straight), "--episodes", "2", "--max-steps", "40",
             "--seed", "7", "--flow-steps", "3", "--max-chunks", "3")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and 0.0 <= summary["success"] <= 1.0
    assert summary["flow_steps"] == 3
    assert len(summary["ci"]) == 2 and summary["ci"][0] <= summary["success"] <= summary["ci"][1]
    assert set(summary["stages"]) == {"peg_grasped", "socket_grasped", "aligned", "inserted"}
    assert summary["mean_length_steps"] == 40  # an untrained policy runs to the step limit
    for option in ("--max-chunks", "--replan-every"):
        r = grrl("eval", "--policy", str(straight), option, "0")
        assert r.returncode == 2 and f"{option}: must be >= 1" in r.stderr
        assert "Traceback" not in r.stderr


def test_keep_mask_is_used_and_bad_input_gives_one_line(noisy_dataset: Path, tmp_path: Path):
    episodes = read_dataset(noisy_dataset)
    masks = {e.episode_id: [t % 2 == 0 for t in range(len(e))] for e in episodes}
    mask_file = tmp_path / "keep.json"
    save_keep_mask(mask_file, masks)
    out = tmp_path / "masked"
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(out), "--steps", "1",
             "--keep-mask", str(mask_file), *SMALL)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    kept = sum(sum(m) for m in masks.values())
    assert load_policy(out).meta["transitions"] == kept
    mirrored = tmp_path / "mirrored"
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(mirrored), "--steps", "1",
             "--keep-mask", str(mask_file), "--mirror", *SMALL)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_policy(mirrored).meta["transitions"] == 2 * kept  # each sample and its mirror
    # pauses dropped on top of the mask: what the core finds, counted in the checkpoint
    robot = load_robot_description()
    idle_mask, idle = drop_idle(episodes, load_keep_mask(mask_file), 8, 0.01, robot)  # SMALL
    assert idle > 0
    paused = tmp_path / "paused"
    r = grrl("train-bc", "--data", str(noisy_dataset), "--out", str(paused), "--steps", "1",
             "--keep-mask", str(mask_file), "--drop-idle", "0.01", *SMALL)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    meta = load_policy(paused).meta
    assert meta["idle_dropped"] == idle and meta["transitions"] == kept - idle
    assert meta["transitions"] == sum(int(m.sum()) for m in idle_mask.values())

    for args, text in [
        (["--data", str(tmp_path / "missing")], "missing"),
        (["--data", str(noisy_dataset), "--keep-mask", str(tmp_path / "nope.json")], "nope.json"),
        (["--data", str(noisy_dataset), "--drop-idle", "2"], "idle tolerance"),
    ]:
        r = grrl("train-bc", *args, "--out", str(tmp_path / "x"), "--steps", "1", *SMALL)
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and text in r.stderr
    r = grrl("eval", "--policy", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a policy checkpoint" in r.stderr
    r = grrl("eval", "--policy", str(out), "--obs", "pixels", "--episodes", "1")
    assert r.returncode == 2 and "observes state, not pixels" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_process_gradient_equals_single_process(noisy_dataset: Path, tmp_path: Path):
    probe = str(Path(__file__).with_name("ddp_gradient_probe.py"))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    single, double = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    r = subprocess.run([sys.executable, probe, str(noisy_dataset), str(single)],
                       capture_output=True, text=True, timeout=180, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), probe,
         str(noisy_dataset), str(double)],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    with safe_open(str(double), "pt") as handle:
        assert handle.metadata()["world"] == "2"
    a, b = load_file(str(single)), load_file(str(double))
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(a[name].abs().sum() > 0 for name in a)
