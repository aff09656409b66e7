"""Progress and filtering: ``grrl filter --data DIR --critic CKPT --out REPORT``.

Progress ρ_t is the critic's expected value of (s_t, a_{t:t+k}) with the recorded chunk (the
mean of the categorical distribution for the distributional critic). Transition t is
suboptimal iff some j ∈ [t, t+h] (clamped to the episode) has ρ_t − ρ_j > δ — the progress
falls within the next h steps (h defaults to the critic's chunk k). Suboptimal transitions are
dropped from behaviour cloning: the keep mask (``grrl_learner.dataset.save_keep_mask``) is
what ``grrl train-bc --keep-mask`` reads.

The report directory holds ``keep_mask.json``, one PNG per episode (ρ_t, dropped spans
shaded, retry keyframes marked, ground-truth mistakes when known), ``index.md`` and
``summary.json``. With the sim's ground truth (``Episode.ground_truth``: the scripted
operator's mistakes, in control steps = episode steps), it scores detection:

* span level — a true mistake span counts as detected if any dropped frame overlaps it
  (recall); a dropped span is a true positive if it overlaps a mistake span (precision);
* frame level — dropped frames inside mistake spans over dropped frames (precision) and over
  mistake frames (recall);
* the fraction of all frames dropped.

A mistake span runs from the mistake's start step to its end step (the recovery brought the
task back on track), or to the retry press with ``truth_until="retry"``. Scoring is in
transitions, as the filter drops them: transition t is (s_t, a_{t:t+k}), so with
``truth_from="chunk"`` (the default) a mistake starts k−1 steps before its first wrong command —
the first transition whose chunk carries it, which behaviour cloning would learn it from.
``truth_from="step"`` scores against the commands' own steps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grrl_common.errors import GrrlError
from grrl_learner import DEFAULT_DELTA
from grrl_learner.critic import LoadedCritic, load_critic
from grrl_learner.dataset import chunk_actions, save_keep_mask
from grrl_learner.episodes import Episode, read_dataset

KEEP_MASK_NAME = "keep_mask.json"
TRUTH_UNTIL = ("end", "retry")
TRUTH_FROM = ("chunk", "step")

Span = tuple[int, int]  # inclusive [first, last] step


class FilterError(GrrlError):
    """Filtering cannot run (data and critic do not fit, ...); one-line message."""


# --- progress -------------------------------------------------------------------------------
@torch.no_grad()
def episode_progress(
    critic: LoadedCritic,
    episode: Episode,
    batch_size: int = 4096,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """ρ_t for every step of ``episode`` with its recorded (padded) action chunks: (T,).
    ``features``: a shared-trunk critic's policy features of the episode, when already
    computed (else computed here, which needs the episode's frames for a pixels policy)."""
    cfg = critic.config
    if critic.object_poses and episode.object_poses is None:
        raise FilterError(
            f"episode {episode.episode_id}: the critic observes object poses the bag lacks"
        )
    if episode.state_dim(critic.object_poses) != critic.norm.state_mean.shape[0] or (
        episode.action_dim != cfg.action_dim
    ):
        raise FilterError(
            f"episode {episode.episode_id}: state/action dims "
            f"{episode.state_dim(critic.object_poses)}/{episode.action_dim}, the critic expects "
            f"{critic.norm.state_mean.shape[0]}/{cfg.action_dim}"
        )
    states = critic.inputs(episode, features)
    actions = critic.norm.normalize_action(chunk_actions(episode, cfg.chunk))
    device = critic.device
    out = []
    for i in range(0, len(episode), batch_size):
        s = torch.as_tensor(states[i : i + batch_size], dtype=torch.float32, device=device)
        a = torch.as_tensor(actions[i : i + batch_size], dtype=torch.float32, device=device)
        out.append(critic.model.progress(s, a).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def suboptimal(rho: np.ndarray, horizon: int, delta: float) -> np.ndarray:
    """The filter rule: t is suboptimal iff max_{j ∈ [t, t+horizon]} (ρ_t − ρ_j) > δ. (T,)."""
    rho = np.asarray(rho, dtype=np.float64).reshape(-1)
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    if rho.size == 0:
        return np.zeros(0, dtype=bool)
    # past the end the window just shortens: pad with +inf, which never is the minimum
    padded = np.concatenate([rho, np.full(horizon, np.inf)])
    future_min = np.lib.stride_tricks.sliding_window_view(padded, horizon + 1).min(axis=1)
    return rho - future_min > delta


def spans(mask: np.ndarray) -> list[Span]:
    """Runs of True in a boolean array as inclusive (first, last) index pairs."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def mistake_spans(
    ground_truth: dict[str, Any] | None, length: int, until: str = "end", lead: int = 0
) -> list[Span] | None:
    """The operator's mistakes as inclusive step spans clipped to the episode, or None when
    the episode has no ground truth. ``until``: "end" (recovered) or "retry" (retry press);
    a mistake whose end (or retry) never came runs to the episode's end. ``lead``: steps each
    span starts early (k−1 scores transitions whose k-step chunk reaches the mistake)."""
    if until not in TRUTH_UNTIL:
        raise ValueError(f"until must be one of {TRUTH_UNTIL}, got {until!r}")
    if lead < 0:
        raise ValueError(f"lead must be >= 0, got {lead}")
    if not isinstance(ground_truth, dict) or not isinstance(ground_truth.get("mistakes"), list):
        return None
    out: list[Span] = []
    for m in ground_truth["mistakes"]:
        start = int(m.get("start_step", -1))
        stop = int(m.get("end_step" if until == "end" else "retry_step", -1))
        if until == "end" and stop < 0:
            stop = int(m.get("retry_step", -1))
        if start < 0 or start >= length:
            continue
        stop = length - 1 if stop < 0 else min(stop, length - 1)
        out.append((max(0, start - lead), max(start, stop)))
    return out


def pause_spans(
    ground_truth: dict[str, Any] | None, length: int, lead: int = 0
) -> list[Span] | None:
    """The operator's pauses (``hesitations``) as inclusive step spans clipped to the episode,
    or None when the ground truth lists none (older recordings). ``lead`` as for mistakes."""
    if not isinstance(ground_truth, dict) or not isinstance(ground_truth.get("hesitations"), list):
        return None
    out: list[Span] = []
    for h in ground_truth["hesitations"]:
        start, end = int(h.get("start_step", -1)), int(h.get("end_step", -1))
        if 0 <= start < length:
            out.append((max(0, start - lead), min(max(start, end), length - 1)))
    return out


def truth_spans(episode: Episode, lead: int = 0) -> tuple[list[Span], list[Span]]:
    """The episode's mistakes (up to the retry press, ``lead`` steps early) and pauses from the
    sim's ground truth; FilterError (one line) when it lists neither, as a non-sim bag."""
    mistakes = mistake_spans(episode.ground_truth, len(episode), until="retry", lead=lead)
    pauses = pause_spans(episode.ground_truth, len(episode))
    if mistakes is None or pauses is None:
        raise FilterError(f"{episode.episode_id} has no ground truth of mistakes and pauses "
                          "(not recorded by the sim's noisy operator?)")  # fmt: skip
    return mistakes, pauses


def _overlaps(span: Span, others: Sequence[Span]) -> bool:
    return any(span[0] <= b and a <= span[1] for a, b in others)


@dataclass
class Scores:
    """Detection counts over episodes with ground truth (and dropped frames over all)."""

    mistakes: int = 0
    mistakes_detected: int = 0
    dropped_spans: int = 0  # in episodes with ground truth
    dropped_spans_true: int = 0
    mistake_frames: int = 0
    dropped_frames_scored: int = 0  # dropped frames in episodes with ground truth
    true_dropped_frames: int = 0
    dropped_frames: int = 0  # all episodes
    frames: int = 0
    scored_episodes: int = 0
    # the operator's pauses, which the rule cannot see (progress stalls but does not fall)
    pauses: int = 0
    pauses_dropped: int = 0  # with at least one dropped transition

    def add(
        self, drop: np.ndarray, truth: list[Span] | None, pauses: list[Span] | None = None
    ) -> None:
        drop = np.asarray(drop, dtype=bool)
        self.pauses += len(pauses or ())
        self.pauses_dropped += sum(bool(drop[a : b + 1].any()) for a, b in pauses or ())
        self.frames += drop.size
        self.dropped_frames += int(drop.sum())
        if truth is None:
            return
        self.scored_episodes += 1
        dropped = spans(drop)
        truth_mask = np.zeros(drop.size, dtype=bool)
        for a, b in truth:
            truth_mask[a : b + 1] = True
        self.mistakes += len(truth)
        self.mistakes_detected += sum(bool(drop[a : b + 1].any()) for a, b in truth)
        self.dropped_spans += len(dropped)
        self.dropped_spans_true += sum(_overlaps(s, truth) for s in dropped)
        self.mistake_frames += int(truth_mask.sum())
        self.dropped_frames_scored += int(drop.sum())
        self.true_dropped_frames += int((drop & truth_mask).sum())

    @staticmethod
    def _ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    def metrics(self) -> dict[str, float | int | None]:
        """Precision/recall/F1 (span and frame level; None where undefined) and drop fraction."""
        m: dict[str, float | int | None] = {
            "span_precision": self._ratio(self.dropped_spans_true, self.dropped_spans),
            "span_recall": self._ratio(self.mistakes_detected, self.mistakes),
            "frame_precision": self._ratio(self.true_dropped_frames, self.dropped_frames_scored),
            "frame_recall": self._ratio(self.true_dropped_frames, self.mistake_frames),
        }
        for level in ("span", "frame"):
            p, r = m[f"{level}_precision"], m[f"{level}_recall"]
            m[f"{level}_f1"] = 2 * p * r / (p + r) if p is not None and r and p + r > 0 else None
        m["dropped_fraction"] = self._ratio(self.dropped_frames, self.frames)
        m["mistakes"] = self.mistakes
        m["scored_episodes"] = self.scored_episodes
        m["pauses"] = self.pauses
        m["pause_recall"] = self._ratio(self.pauses_dropped, self.pauses)
        return m


# --- the command ----------------------------------------------------------------------------
@dataclass
class FilterConfig:
    data: str
    critic: str
    out: str
    delta: float = DEFAULT_DELTA
    horizon: int | None = None  # None: the critic's chunk k
    sweep: list[float] = field(default_factory=list)  # extra δ values scored in the summary
    drop_failed: bool = False  # also drop every transition of failed episodes
    truth_until: str = "end"
    truth_from: str = "chunk"  # "chunk": transitions whose chunk reaches a mistake; "step"
    plots: bool = True
    device: str = "cpu"
    policy: str | None = None  # a shared-trunk critic's policy, if it moved since training


@dataclass
class EpisodeResult:
    episode_id: str
    success: bool | None
    rho: np.ndarray
    drop: np.ndarray
    retry_steps: list[int]
    truth: list[Span] | None
    pauses: list[Span] | None = None


def episode_drop(
    rho: np.ndarray, success: bool | None, horizon: int, delta: float, drop_failed: bool
) -> np.ndarray:
    drop = suboptimal(rho, horizon, delta)
    if drop_failed and success is not True:
        drop[:] = True
    return drop


def run_filter(cfg: FilterConfig) -> dict[str, Any]:
    """Score every complete episode of ``cfg.data``, write the report, return the summary."""
    if cfg.truth_until not in TRUTH_UNTIL:
        raise FilterError(f"truth_until must be one of {TRUTH_UNTIL}")
    if cfg.truth_from not in TRUTH_FROM:
        raise FilterError(f"truth_from must be one of {TRUTH_FROM}")
    critic = load_critic(cfg.critic, device=cfg.device, policy=cfg.policy)
    truth_lead = critic.config.chunk - 1 if cfg.truth_from == "chunk" else 0
    horizon = critic.config.chunk if cfg.horizon is None else int(cfg.horizon)
    if horizon < 0:
        raise FilterError(f"--horizon must be >= 0, got {horizon}")
    # the episodes train-bc reads (complete, failed ones included), so the mask fits them
    episodes = read_dataset(cfg.data, load_images=False)
    if not episodes:
        raise FilterError(f"{cfg.data}: no complete episodes to filter")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    features: list[np.ndarray | None] = [None] * len(episodes)
    if critic.trunk is not None:  # the shared trunk's features, frames read once per episode
        features = list(critic.trunk.dataset_features(cfg.data, episodes))
    results = []
    for episode, episode_features in zip(episodes, features, strict=True):
        rho = episode_progress(critic, episode, features=episode_features)
        results.append(EpisodeResult(
            episode.episode_id, episode.success, rho,
            episode_drop(rho, episode.success, horizon, cfg.delta, cfg.drop_failed),
            list(episode.retry_steps),
            mistake_spans(episode.ground_truth, len(episode), cfg.truth_until, truth_lead),
            pause_spans(episode.ground_truth, len(episode), truth_lead),
        ))  # fmt: skip
    scores = Scores()
    for r in results:
        scores.add(r.drop, r.truth, r.pauses)
    sweep = []
    for delta in sorted(set(cfg.sweep)):
        s = Scores()
        for r in results:
            drop = episode_drop(r.rho, r.success, horizon, delta, cfg.drop_failed)
            s.add(drop, r.truth, r.pauses)
        sweep.append({"delta": delta, **s.metrics()})
    mask_path = out / KEEP_MASK_NAME
    save_keep_mask(mask_path, {r.episode_id: ~r.drop for r in results})
    if cfg.plots:
        plot_dir = out / "episodes"
        plot_dir.mkdir(exist_ok=True)
        for r in results:
            plot_episode(plot_dir / f"{_safe(r.episode_id)}.png", r, cfg.delta, horizon)
    summary = {
        "critic": str(cfg.critic),
        "kind": critic.config.kind,
        "data": str(cfg.data),
        "delta": cfg.delta,
        "horizon": horizon,
        "truth_until": cfg.truth_until,
        "truth_from": cfg.truth_from,
        "truth_lead": truth_lead,
        "drop_failed": cfg.drop_failed,
        "episodes": len(results),
        "keep_mask": str(mask_path),
        **scores.metrics(),
        "sweep": sweep,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rho = {r.episode_id: np.round(r.rho, 5).tolist() for r in results}
    (out / "rho.json").write_text(json.dumps(rho, separators=(",", ":")))
    write_index(out / "index.md", summary, results, cfg.plots)
    return summary


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "episode"


def plot_episode(path: Path, r: EpisodeResult, delta: float, horizon: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=90)
    steps = np.arange(r.rho.size)
    for a, b in spans(r.drop):
        ax.axvspan(a - 0.5, b + 0.5, color="tab:red", alpha=0.25, lw=0)
    for a, b in r.truth or []:
        ax.axvspan(a - 0.5, b + 0.5, ymin=0.0, ymax=0.06, color="tab:orange", alpha=0.9, lw=0)
    ax.plot(steps, r.rho, color="tab:blue", lw=1.3, label="ρ (progress)")
    for i, m in enumerate(r.retry_steps):
        ax.axvline(m, color="black", ls="--", lw=1, label="retry keyframe" if i == 0 else None)
    handles, labels = ax.get_legend_handles_labels()
    from matplotlib.patches import Patch

    handles.append(Patch(color="tab:red", alpha=0.25))
    labels.append("dropped")
    if r.truth:
        handles.append(Patch(color="tab:orange"))
        labels.append("true mistake")
    ax.legend(handles, labels, loc="upper left", fontsize=8, framealpha=0.8)
    outcome = {True: "success", False: "failed", None: "unknown"}[r.success]
    ax.set_title(f"{r.episode_id} ({outcome}): {int(r.drop.sum())}/{r.drop.size} dropped, "
                 f"δ={delta:g}, h={horizon}", fontsize=10)  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("ρ")
    ax.set_xlim(-0.5, max(r.rho.size - 0.5, 0.5))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def write_index(path: Path, summary: dict[str, Any], results: list[EpisodeResult], plots: bool):
    lines = [
        "# Progress filter report",
        "",
        f"- critic: `{summary['critic']}` ({summary['kind']})",
        f"- data: `{summary['data']}` ({summary['episodes']} episodes)",
        f"- rule: drop t iff ρ_t − ρ_j > δ for some j ∈ [t, t+h]; δ = {summary['delta']:g}, "
        f"h = {summary['horizon']}"
        + (", failed episodes dropped" if summary["drop_failed"] else ""),  # fmt: skip
        f"- keep mask: `{summary['keep_mask']}`",
        f"- dropped fraction: {_fmt(summary['dropped_fraction'])}",
        "",
    ]
    keys = ("span_precision", "span_recall", "span_f1", "frame_precision", "frame_recall",
            "frame_f1")  # fmt: skip
    if summary["scored_episodes"]:
        lines += [
            f"## Detection against ground truth ({summary['scored_episodes']} episodes, "
            f"{summary['mistakes']} mistakes; span = start − {summary['truth_lead']} → "
            f"{summary['truth_until']}, in transitions: truth from {summary['truth_from']})",
            "",
            "| level | precision | recall | F1 |",
            "|---|---|---|---|",
            f"| span | {_fmt(summary['span_precision'])} | {_fmt(summary['span_recall'])} | "
            f"{_fmt(summary['span_f1'])} |",
            f"| frame | {_fmt(summary['frame_precision'])} | {_fmt(summary['frame_recall'])} | "
            f"{_fmt(summary['frame_f1'])} |",
            "",
        ]
        if summary["pauses"]:
            lines += [
                f"The operator's {summary['pauses']} pauses: {_fmt(summary['pause_recall'])} have "
                "a dropped transition. Progress stalls in a pause but does not fall, so the rule "
                "does not see one (`grrl train-bc --drop-idle` drops pauses).",
                "",
            ]
    else:
        lines += ["No ground truth in these episodes: detection is not scored.", ""]
    if summary["sweep"]:
        lines += ["## δ sweep", "", "| δ | " + " | ".join(keys) + " | dropped fraction |",
                  "|---" * (len(keys) + 2) + "|"]  # fmt: skip
        for row in summary["sweep"]:
            cells = [_fmt(row[k]) for k in (*keys, "dropped_fraction")]
            lines.append(f"| {row['delta']:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Episodes", "", "| episode | outcome | steps | retries | mistakes | dropped | "
              "dropped spans | mistakes detected | plot |", "|---" * 9 + "|"]  # fmt: skip
    for r in results:
        dropped = spans(r.drop)
        if r.truth is None:
            truth, detected = "–", "–"
        else:
            truth = str(len(r.truth))
            detected = str(sum(bool(r.drop[a : b + 1].any()) for a, b in r.truth))
        outcome = {True: "success", False: "failed", None: "unknown"}[r.success]
        plot = f"[png](episodes/{_safe(r.episode_id)}.png)" if plots else "–"
        lines.append(
            f"| {r.episode_id} | {outcome} | {r.drop.size} | {len(r.retry_steps)} | {truth} | "
            f"{int(r.drop.sum())} | {len(dropped)} | {detected} | {plot} |"
        )
    path.write_text("\n".join(lines) + "\n")


def summary_line(summary: dict[str, Any]) -> str:
    """A short human summary of a filter run."""
    text = (
        f"dropped {summary['dropped_fraction']:.1%} of the transitions of "
        f"{summary['episodes']} episodes (δ={summary['delta']:g}, h={summary['horizon']})"
    )
    if summary["scored_episodes"]:
        text += (
            f"; mistakes: span precision {_fmt(summary['span_precision'])} recall "
            f"{_fmt(summary['span_recall'])}, frame precision "
            f"{_fmt(summary['frame_precision'])} recall {_fmt(summary['frame_recall'])}"
        )
    if summary.get("pauses"):
        text += f"; pauses with a drop {_fmt(summary['pause_recall'])} of {summary['pauses']}"
    return text


__all__ = [
    "DEFAULT_DELTA",
    "FilterConfig",
    "Scores",
    "episode_progress",
    "mistake_spans",
    "pause_spans",
    "run_filter",
    "spans",
    "suboptimal",
]


# --- live progress (policy_node's /grrl/progress) -------------------------------------------
@dataclass
class ProgressEstimate:
    mean: float  # ρ
    distribution: np.ndarray  # (atoms,) probabilities (one atom at ρ for scalar critics)
    support: tuple[float, float]
    suboptimal: bool  # ρ fell by more than δ below a value of the last ``horizon`` steps


class ProgressTracker:
    """ρ of each executed chunk as the policy produces it, and the filter rule applied online:
    the current chunk is suboptimal when ρ dropped by more than ``delta`` from any estimate of
    the last ``horizon_s`` seconds (the offline rule looks forward from t; online, the drop is
    seen when it happens)."""

    def __init__(self, critic: LoadedCritic, delta: float = 0.05, horizon_s: float = 0.4):
        self.critic = critic
        self.delta = float(delta)
        self.horizon_s = float(horizon_s)
        self._recent: list[tuple[float, float]] = []

    def reset(self) -> None:
        self._recent = []

    @torch.no_grad()
    def update(self, state: np.ndarray, actions: np.ndarray, stamp: float) -> ProgressEstimate:
        """``state`` (S,) and ``actions`` (k', n) in robot units; k' is cut/padded to k."""
        cfg, norm = self.critic.config, self.critic.norm
        k = cfg.chunk
        actions = np.asarray(actions, np.float32)
        if len(actions) < k:
            actions = np.concatenate([actions, np.repeat(actions[-1:], k - len(actions), 0)])
        s = torch.as_tensor(norm.normalize_state(np.asarray(state, np.float32))[None])
        a = torch.as_tensor(norm.normalize_action(actions[:k])[None])
        device = self.critic.device
        raw = self.critic.model.last(s.to(device), a.to(device))  # (C, 1, outputs)
        model = self.critic.model
        if cfg.distributional:
            probs = raw.softmax(-1).mean(0)[0].float().cpu().numpy()
            mean = float(probs @ model.atoms.float().cpu().numpy())
        else:
            mean = float(model.values(raw).mean())
            probs = np.array([1.0])
        self._recent = [(t, r) for t, r in self._recent if stamp - t <= self.horizon_s]
        suboptimal = any(r - mean > self.delta for _, r in self._recent)
        self._recent.append((stamp, mean))
        return ProgressEstimate(mean, probs, (cfg.v_min, cfg.v_max), suboptimal)
