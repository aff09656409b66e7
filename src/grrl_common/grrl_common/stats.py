"""Success statistics shared by the sim-core evaluator and the graph's episode runner."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def success_summary(
    successes: Sequence[bool], stages: Sequence[dict[str, bool]], stage_names: Sequence[str]
) -> dict[str, Any]:
    """``{"episodes", "success", "ci", "stages"}`` over episodes (stages: fraction reaching)."""
    n = len(successes)
    wins = sum(bool(s) for s in successes)
    lo, hi = wilson_interval(wins, n)
    return {
        "episodes": n,
        "success": wins / n if n else 0.0,
        "ci": [round(lo, 4), round(hi, 4)],
        "stages": {s: sum(bool(e.get(s)) for e in stages) / max(n, 1) for s in stage_names},
    }
