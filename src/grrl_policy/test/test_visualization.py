"""Policy markers: layout (ROS-free), message conversion, and the installed RViz config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from grrl_policy.visualization import (
    ARM_COLORS,
    BarMarker,
    BoxMarker,
    PathMarker,
    TextMarker,
    chunk_markers,
    progress_color,
)

RVIZ = Path(__file__).resolve().parents[2] / "grrl_bringup" / "rviz" / "grrl.rviz"


def _paths(steps: int = 20) -> dict[str, np.ndarray]:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return {
        "left": np.hstack([-0.2 + 0.1 * t, 0.5 + 0 * t, 0.3 - 0.1 * t]),
        "right": np.hstack([0.2 - 0.1 * t, 0.5 + 0 * t, 0.3 - 0.1 * t]),
    }


def test_chunk_markers_paths_and_bar():
    markers = chunk_markers(_paths(), 0.73, frame_id="world")
    strips = [m for m in markers if isinstance(m, PathMarker)]
    bars = [m for m in markers if isinstance(m, BarMarker)]
    assert len(strips) == 2 and len(bars) == 1 and len(markers) == 3
    assert strips[0].rgba == ARM_COLORS["left"] and strips[1].rgba == ARM_COLORS["right"]
    assert {(m.ns, m.id) for m in strips} == {("chunk_path/left", 0), ("chunk_path/right", 0)}
    assert all(m.points.shape == (20, 3) and m.frame_id == "world" for m in strips)

    background, fill, label = bars[0].parts()
    assert isinstance(background, BoxMarker) and isinstance(fill, BoxMarker)
    assert isinstance(label, TextMarker)
    assert label.text == "progress 0.73"
    assert len({(p.ns, p.id) for p in (background, fill, label)}) == 3
    # the fill is 73 % of the bar, starting at the bar's -x end
    np.testing.assert_allclose(fill.size[0], 0.73 * background.size[0])
    np.testing.assert_allclose(
        fill.position[0] - fill.size[0] / 2, background.position[0] - background.size[0] / 2
    )
    assert label.position[2] > background.position[2]


def test_no_progress_no_bar():
    assert all(isinstance(m, PathMarker) for m in chunk_markers(_paths(), None, "world"))
    assert all(isinstance(m, PathMarker) for m in chunk_markers(_paths(), float("nan"), "world"))
    assert chunk_markers({}, None, "world") == []


@pytest.mark.parametrize(("progress", "expected"), [(1.7, 1.0), (-0.4, 0.0), (0.5, 0.5)])
def test_bar_fraction_clipped(progress, expected):
    bar = next(m for m in chunk_markers(_paths(), progress, "world") if isinstance(m, BarMarker))
    assert bar.fraction == expected
    assert BarMarker("p", 0, progress).fraction == expected
    background, fill, _ = bar.parts()
    assert 0.0 < fill.size[0] <= background.size[0] + 1e-12  # never empty, never overhanging


def test_colour_goes_green_to_red():
    assert progress_color(1.0) == (0.0, 1.0, 0.0, 1.0)
    assert progress_color(0.0) == (1.0, 0.0, 0.0, 1.0)
    r, g, _, _ = progress_color(0.5)
    assert r == g == 1.0  # yellow halfway
    reds = [progress_color(f)[0] for f in np.linspace(0.0, 1.0, 11)]
    assert reds == sorted(reds, reverse=True)


def test_marker_array_conversion():
    from builtin_interfaces.msg import Time
    from visualization_msgs.msg import Marker, MarkerArray

    from grrl_policy.marker_msgs import to_marker_array

    stamp = Time(sec=12, nanosec=345)
    array = to_marker_array(chunk_markers(_paths(17), 0.4, "world"), stamp, lifetime_s=1.0)
    assert isinstance(array, MarkerArray)
    kinds = [m.type for m in array.markers]
    assert kinds == [Marker.LINE_STRIP, Marker.LINE_STRIP, Marker.CUBE, Marker.CUBE] + [
        Marker.TEXT_VIEW_FACING
    ]
    for msg in array.markers:
        assert msg.header.frame_id == "world"
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
        assert msg.action == Marker.ADD
        assert (msg.lifetime.sec, msg.lifetime.nanosec) == (1, 0)
        assert msg.pose.orientation.w == 1.0
    left, right = array.markers[:2]
    assert len(left.points) == len(right.points) == 17
    assert left.points[0].x == pytest.approx(-0.2) and left.scale.x > 0
    assert left.color.b == pytest.approx(ARM_COLORS["left"][2])
    fill = array.markers[3]
    assert fill.ns == "progress/fill" and fill.scale.x == pytest.approx(0.4 * 0.4)
    assert array.markers[4].text == "progress 0.40" and array.markers[4].scale.z > 0
    assert len({(m.ns, m.id) for m in array.markers}) == len(array.markers)


def test_marker_array_accepts_rclpy_time_and_default_stamp():
    from rclpy.time import Time as RclpyTime

    from grrl_policy.marker_msgs import to_marker_array

    array = to_marker_array(chunk_markers(_paths(), None, "world"), RclpyTime(seconds=3))
    assert array.markers[0].header.stamp.sec == 3
    array = to_marker_array(chunk_markers(_paths(), None, "world"), lifetime_s=0.25)
    assert array.markers[0].header.stamp.sec == 0
    assert array.markers[0].lifetime.nanosec == 250_000_000
    with pytest.raises(TypeError):
        to_marker_array([], stamp=1.5)


def _displays(config: dict) -> list[dict]:
    return config["Visualization Manager"]["Displays"]


def test_rviz_config_parses_and_names_topics():
    config = yaml.safe_load(RVIZ.read_text())
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "world"
    displays = _displays(config)
    by_class: dict[str, list[dict]] = {}
    for display in displays:
        by_class.setdefault(display["Class"], []).append(display)
    assert len(by_class["rviz_default_plugins/Grid"]) == 1
    (markers,) = by_class["rviz_default_plugins/MarkerArray"]
    assert markers["Topic"]["Value"] == "/grrl/markers"
    assert markers["Topic"]["Reliability Policy"] == "Reliable"
    images = by_class["rviz_default_plugins/Image"]
    assert {d["Topic"]["Value"] for d in images} == {
        "/camera/head/image_raw",
        "/camera/left_wrist/image_raw",
        "/camera/right_wrist/image_raw",
    }
    assert all(d["Topic"]["Reliability Policy"] == "Best Effort" for d in images)
    names = [d["Name"] for d in displays]
    assert len(names) == len(set(names))  # RViz keys dock panels by display name
    assert all(d["Enabled"] is True for d in displays)


def test_rviz_config_is_installed():
    setup = (RVIZ.parents[1] / "setup.py").read_text()
    assert 'glob("rviz/*.rviz")' in setup
