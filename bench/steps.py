"""One step of a benchmark run as a child process (the ``grrl`` CLI or a sibling benchmark).

Benchmarks print exactly one JSON line on stdout, so a child's stdout is returned to the caller
(and, with ``echo``, copied to stderr beside the child's own progress), never passed through.
"""

from __future__ import annotations

import json
import subprocess
import sys


def run_step(argv: list[str], echo: bool = True) -> str:
    """Run ``argv`` and return its stdout; exit with one line naming it if it fails."""
    result = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if echo:
        sys.stderr.write(result.stdout)
    if result.returncode != 0:
        sys.exit(f"{sys.argv[0]}: {' '.join(argv)} failed with status {result.returncode}")
    return result.stdout


def last_json_line(stdout: str) -> dict:
    """The JSON line a benchmark or ``grrl`` command ends its output with."""
    return json.loads(stdout.strip().splitlines()[-1])
