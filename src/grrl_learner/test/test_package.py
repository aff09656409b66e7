"""grrl_learner is built, installed and registered in the ament index."""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory

import grrl_learner


def test_installed_and_registered():
    share = Path(get_package_share_directory("grrl_learner"))
    source = Path(__file__).resolve().parents[1]
    assert (share / "package.xml").read_text() == (source / "package.xml").read_text()
    assert Path(grrl_learner.__file__).resolve().parent == source / "grrl_learner"
