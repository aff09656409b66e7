"""What the policy shows in RViz, as plain data: predicted gripper paths and a progress bar.

ROS-free: the markers are dataclasses with numpy geometry; ``grrl_policy.marker_msgs`` only copies
them into ``visualization_msgs`` messages. All layout (bar fill length, colours, label text)
is decided here so that it is testable without a ROS graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RGBA = tuple[float, float, float, float]

ARM_COLORS: dict[str, RGBA] = {
    "left": (0.15, 0.45, 1.0, 1.0),  # blue
    "right": (1.0, 0.55, 0.0, 1.0),  # orange
}
# arms of other robots get these, in order, so every path still has a distinct colour
FALLBACK_COLORS: tuple[RGBA, ...] = (
    (0.6, 0.2, 0.9, 1.0),
    (0.1, 0.8, 0.7, 1.0),
    (0.9, 0.2, 0.6, 1.0),
)
BAR_BACKGROUND: RGBA = (0.25, 0.25, 0.25, 0.8)
LABEL_COLOR: RGBA = (1.0, 1.0, 1.0, 1.0)
# above the middle of the ALOHA table, clear of both arms' workspace
DEFAULT_BAR_POSITION = (0.0, 0.5, 0.75)
DEFAULT_BAR_SIZE = (0.4, 0.03, 0.03)  # length along x, depth, height (m)
MIN_BOX_EXTENT = 1e-3  # RViz warns about (and may not draw) a box with a zero-size side


def _as_vector(values: object, size: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.shape != (size,):
        raise ValueError(f"{what} must have {size} values, got {np.shape(values)}")
    return array


@dataclass
class PathMarker:
    """A polyline through ``points`` (T, 3), drawn as a line strip ``width`` metres wide."""

    ns: str
    id: int
    points: np.ndarray
    rgba: RGBA
    width: float = 0.006
    frame_id: str = "world"

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=float)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"points must have shape (T, 3), got {self.points.shape}")


@dataclass
class BoxMarker:
    """An axis-aligned box centred at ``position`` with full edge lengths ``size``."""

    ns: str
    id: int
    position: np.ndarray
    size: np.ndarray
    rgba: RGBA
    frame_id: str = "world"


@dataclass
class TextMarker:
    """Camera-facing text centred at ``position``, ``height`` metres tall."""

    ns: str
    id: int
    position: np.ndarray
    text: str
    height: float
    rgba: RGBA
    frame_id: str = "world"


@dataclass
class BarMarker:
    """A horizontal progress bar along x: background box, filled box, text label.

    ``position`` is the centre of the full bar, ``size`` its full extent; the fill starts at the
    bar's -x end and is ``fraction`` of its length. ``fraction`` is clipped to [0, 1].
    """

    ns: str
    id: int
    fraction: float
    position: np.ndarray = field(default_factory=lambda: np.array(DEFAULT_BAR_POSITION))
    size: np.ndarray = field(default_factory=lambda: np.array(DEFAULT_BAR_SIZE))
    rgba: RGBA = (0.0, 1.0, 0.0, 1.0)
    label: str = "progress"
    frame_id: str = "world"

    def __post_init__(self) -> None:
        self.fraction = float(np.clip(self.fraction, 0.0, 1.0))
        self.position = _as_vector(self.position, 3, "position")
        self.size = _as_vector(self.size, 3, "size")

    def parts(self) -> list[BoxMarker | TextMarker]:
        """The drawable pieces: background, fill, label (namespaces ``<ns>/background`` etc.)."""
        length = self.size[0]
        fill_length = max(self.fraction * length, MIN_BOX_EXTENT)
        fill_centre = self.position.copy()
        fill_centre[0] += (fill_length - length) / 2  # left-aligned with the background
        # The fill is slightly fatter than the background so it is drawn in front of it from any
        # viewpoint instead of z-fighting with it.
        fill_size = np.array([fill_length, self.size[1] * 1.2, self.size[2] * 1.2])
        text_height = max(self.size[2], 0.02)
        label_position = self.position + np.array([0.0, 0.0, self.size[2] / 2 + text_height])
        return [
            BoxMarker(
                f"{self.ns}/background",
                self.id,
                self.position.copy(),
                self.size.copy(),
                BAR_BACKGROUND,
                self.frame_id,
            ),
            BoxMarker(f"{self.ns}/fill", self.id, fill_centre, fill_size, self.rgba, self.frame_id),
            TextMarker(
                f"{self.ns}/label",
                self.id,
                label_position,
                f"{self.label} {self.fraction:.2f}",
                text_height,
                LABEL_COLOR,
                self.frame_id,
            ),
        ]


VisualMarker = PathMarker | BarMarker | BoxMarker | TextMarker  # anything marker_msgs converts


def progress_color(fraction: float) -> RGBA:
    """Green at 1, through yellow at 0.5, to red at 0 (progress dropping turns the bar red)."""
    f = float(np.clip(fraction, 0.0, 1.0))
    return (min(1.0, 2.0 * (1.0 - f)), min(1.0, 2.0 * f), 0.0, 1.0)


def arm_color(arm: str, index: int) -> RGBA:
    return ARM_COLORS.get(arm, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def chunk_markers(
    paths: dict[str, np.ndarray],
    progress: float | None,
    frame_id: str = "world",
    bar_position: tuple[float, float, float] = DEFAULT_BAR_POSITION,
    bar_size: tuple[float, float, float] = DEFAULT_BAR_SIZE,
) -> list[PathMarker | BarMarker]:
    """Markers for one predicted chunk: a line strip per arm, and the progress bar if given.

    ``paths`` maps arm name → gripper positions (T, 3) (e.g. from grrl_sim's GripperKinematics);
    ``progress`` is the critic's mean task progress in [0, 1], or None (no critic, no bar). Ids
    are stable per arm and for the bar, so each new chunk replaces the previous one in RViz.
    """
    markers: list[PathMarker | BarMarker] = [
        PathMarker(f"chunk_path/{arm}", 0, points, arm_color(arm, i), frame_id=frame_id)
        for i, (arm, points) in enumerate(paths.items())
    ]
    if progress is not None and np.isfinite(progress):
        fraction = float(np.clip(progress, 0.0, 1.0))
        markers.append(
            BarMarker(
                "progress",
                0,
                fraction,
                np.array(bar_position, dtype=float),
                np.array(bar_size, dtype=float),
                progress_color(fraction),
                frame_id=frame_id,
            )
        )
    return markers
