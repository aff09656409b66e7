"""The demo's report: a summary table (markdown) and PNG plots (ROS-free, matplotlib Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STAGE_LABELS = {
    "peg_grasped": "grasped peg",
    "socket_grasped": "grasped socket",
    "aligned": "aligned",
    "inserted": "inserted",
}


def summary_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per evaluated stage, success with its CI and per-stage rates."""
    stages = list(STAGE_LABELS)
    head = ["evaluation", "episodes", "success [95 % CI]", *(STAGE_LABELS[s] for s in stages)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, s in rows.items():
        lo, hi = s["ci"]
        cells = [name, str(s["episodes"]), f"{s['success']:.2f} [{lo:.2f}, {hi:.2f}]"]
        cells += [f"{s['stages'].get(stage, 0.0):.2f}" for stage in stages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(log: Path, png: Path) -> bool:
    """Flow-matching loss against steps from a train-bc log; False when there is no log."""
    records = [r for r in _read_jsonl(log) if "loss" in r]
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="tab:blue")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (mean of 100 steps)")
    ax.set_title("BC training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def plot_stages(rows: dict[str, dict[str, Any]], png: Path) -> None:
    """Grouped bars: per-stage success of each evaluation, success with its CI as error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = list(STAGE_LABELS)
    labels = [STAGE_LABELS[s] for s in stages] + ["success"]
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for i, (name, s) in enumerate(rows.items()):
        values = [s["stages"].get(stage, 0.0) for stage in stages] + [s["success"]]
        lo, hi = s["ci"]
        err = np.zeros((2, len(values)))
        err[:, -1] = [s["success"] - lo, hi - s["success"]]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, yerr=err, capsize=3,
               label=f"{name} (n={s['episodes']})")  # fmt: skip
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of episodes")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def filter_lines(filtered: Path | None) -> list[str]:
    """What the progress filter did to the demos (from ``grrl filter``'s summary.json)."""
    if filtered is None or not (filtered / "summary.json").exists():
        return []
    s = json.loads((filtered / "summary.json").read_text())

    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    lines = [
        f"- progress filter (δ = {s.get('delta')}): dropped {fmt(s.get('dropped_fraction'))} of "
        f"the transitions; against the operator's injected mistakes, span precision "
        f"{fmt(s.get('span_precision'))}, recall {fmt(s.get('span_recall'))} "
        f"(per-episode plots: `{filtered / 'index.md'}`)",
    ]
    return lines


def online_lines(online: Path | None, out: Path) -> list[str]:
    """The online phase: success per policy version along the episodes, and the curve."""
    curve = online / "curve.jsonl" if online is not None else None
    if curve is None or not curve.exists():
        return []
    rows = _read_jsonl(curve)
    by_version: dict[int, list[bool]] = {}
    for row in rows:
        by_version.setdefault(int(row["version"]), []).append(bool(row["success"]))
    parts = [f"v{v}: {sum(w)}/{len(w)}" for v, w in sorted(by_version.items())]
    lines = [f"- online RL (noise space, {len(rows)} episodes in the sim core): successes per "
             f"policy version {', '.join(parts)}"]  # fmt: skip
    png = online / "curve.png"
    if png.exists():
        lines += ["", f"![online learning curve]({png.relative_to(out)})"]
    return lines


def write_report(
    out: Path,
    rows: dict[str, dict[str, Any]],
    policy: Path,
    data: Path,
    timings: dict[str, float],
    filtered: Path | None = None,
    online: Path | None = None,
) -> str:
    """Write ``out/report.md`` (+ PNGs); return the summary table."""
    table = summary_table(rows)
    plot_stages(rows, out / "stages.png")
    has_training = plot_training(policy.with_name(policy.name + ".log.jsonl"), out / "training.png")
    index = json.loads((data / "index.json").read_text()) if (data / "index.json").exists() else {}
    episodes = index.get("episodes", index) if isinstance(index, dict) else index
    meta = {}
    if (policy / "config.json").exists():
        meta = json.loads((policy / "config.json").read_text()).get("meta", {})
    lines = [
        "# grrl demo report",
        "",
        f"- demonstrations: `{data}` ({len(episodes) if hasattr(episodes, '__len__') else '?'} "
        "episodes, noisy scripted operator through teleop + recorder)",
        f"- policy: `{policy}` (BC on the kept transitions + their mirror images, "
        f"{meta.get('step', '?')} steps, "
        f"{meta.get('transitions', '?')} transitions)",
        "- minutes per stage: " + ", ".join(f"{k} {v}" for k, v in timings.items()) + (
            "" if timings else "all stages reused from an earlier run"),
        *filter_lines(filtered),
        "",
        table,
        "",
        "![per-stage success](stages.png)",
    ]  # fmt: skip
    if has_training:
        lines += ["", "![training loss](training.png)"]
    online_part = online_lines(online, out)
    if online_part:
        lines += ["", *online_part]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return table
