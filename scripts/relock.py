"""Rewrite the transitive part of requirements.lock from what pip installed in the venv.

Usage (after changing the top-level part and `pip install`-ing it): ``python scripts/relock.py``.
Only distributions pip installed are pinned: the ROS wheels also register egg-info metadata
(rclpy, std_msgs, ...) that is not installable on its own.
"""

from __future__ import annotations

import re
from importlib.metadata import distributions
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
MARKER = "# --- transitive"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    head = LOCK.read_text().split(MARKER)[0].rstrip() + "\n\n"
    pinned = {canonical(line.split("==")[0]) for line in head.splitlines() if "==" in line}
    installed = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if (dist.read_text("INSTALLER") or "").strip() != "pip" or canonical(name) == "pip":
            continue
        installed[canonical(name)] = f"{name}=={dist.version}"
    missing = pinned - set(installed)
    if missing:
        raise SystemExit(f"top-level requirements not installed: {', '.join(sorted(missing))}")
    rest = [installed[n] for n in sorted(installed) if n not in pinned]
    LOCK.write_text(head + MARKER + "\n" + "\n".join(rest) + "\n")
    print(f"requirements.lock: {len(pinned)} top-level, {len(rest)} transitive pins")


if __name__ == "__main__":
    main()
