"""The workspace itself: package manifests, lint, env script, setup idempotence."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_PACKAGES = ["grrl_common", "grrl_policy", "grrl_teleop", "grrl_learner", "grrl_sim",
                   "grrl_bringup"]  # fmt: skip


def _manifest(package: str) -> ET.Element:
    return ET.parse(ROOT / "src" / package / "package.xml").getroot()


@pytest.mark.parametrize("package", PYTHON_PACKAGES)
def test_ament_python_package_layout(package):
    root = _manifest(package)
    assert root.get("format") == "3"
    assert root.findtext("name") == package
    assert root.find("export/build_type").text == "ament_python"
    pkg_dir = ROOT / "src" / package
    assert (pkg_dir / "resource" / package).is_file()
    assert (pkg_dir / package / "__init__.py").is_file()
    assert (pkg_dir / "test").is_dir()
    assert f"script_dir=$base/lib/{package}" in (pkg_dir / "setup.cfg").read_text()
    assert f'package_name = "{package}"' in (pkg_dir / "setup.py").read_text()
    # every workspace package it depends on exists
    for dep in root.iter("exec_depend"):
        if dep.text.startswith("grrl_"):
            assert (ROOT / "src" / dep.text / "package.xml").is_file(), dep.text


def test_grrl_msgs_is_ament_cmake_interface_package():
    root = _manifest("grrl_msgs")
    assert root.get("format") == "3"
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    cmake = (ROOT / "src/grrl_msgs/CMakeLists.txt").read_text()
    for path in sorted((ROOT / "src/grrl_msgs").glob("*/*.*")):
        if path.suffix in (".msg", ".srv"):
            assert f'"{path.parent.name}/{path.name}"' in cmake, path.name
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            fields = [
                i for i, line in enumerate(lines) if not line.startswith("#") and line != "---"
            ]
            for i in fields:  # each field is documented by the comment line(s) above it
                assert lines[i - 1].startswith("#") or "=" in lines[i], f"{path.name}: {lines[i]}"


def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_script_confines_dds_and_sets_domain():
    text = (ROOT / "env.sh").read_text()
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE="${GRRL_DISCOVERY_RANGE:-LOCALHOST}"' in text
    assert "ROS_DOMAIN_ID" in text
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "GRRL_"))}
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"  # a stray value is not an opt-out
    show = ". ./env.sh && echo $ROS_AUTOMATIC_DISCOVERY_RANGE $ROS_DOMAIN_ID $GRRL_ENV"
    out = subprocess.run(
        ["bash", "-c", show], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "LOCALHOST" and out[1].isdigit() and out[2] == "1"


def test_setup_is_a_no_op_when_nothing_changed():
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/setup.sh")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == ["[setup] ready: source env.sh to use the workspace"], result.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and line[0] != "#"]
    assert ci[-1] == "make test"


def test_grrl_cli_parser_imports_no_torch():
    # every `grrl` command builds the whole parser; torch there would cost every command, `grrl
    # up` on a robot included, seconds at start-up and ~1.4 s at exit (seen on a busy 2-core box)
    probe = (
        "import sys\n"
        "from grrl_bringup.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted({'torch', 'mujoco'} & set(sys.modules))\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "none"
