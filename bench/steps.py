"""Shared pieces of the benchmarks: a step run as a child process (the ``grrl`` CLI or a
sibling benchmark), and the description of the machine every JSON line carries.

Benchmarks print exactly one JSON line on stdout, so a child's stdout is returned to the caller
(and, with ``echo``, copied to stderr beside the child's own progress), never passed through.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time


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


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def python_loop_s(n: int = 5_000_000) -> float:
    """Seconds one core takes for a fixed pure-Python loop, now: the same machine type has run
    wall-time-budgeted benchmarks 2–3× slower when its host was busy, so figures carry this."""
    began, total = time.perf_counter(), 0
    for i in range(n):
        total += i
    return round(time.perf_counter() - began, 3)


def machine() -> dict[str, object]:
    """``{"machine": "x86_64, <cpu model>, N cpus", "python_loop_s": ...}`` for a JSON line."""
    return {
        "machine": f"{platform.machine()}, {_cpu_model()}, {os.cpu_count()} cpus",
        "python_loop_s": python_loop_s(),
    }
