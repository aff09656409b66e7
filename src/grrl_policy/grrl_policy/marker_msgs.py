"""Thin conversion of grrl_policy.visualization markers to visualization_msgs/MarkerArray.

No layout happens here: a BarMarker is expanded by its own ``parts()``; this module only copies
fields into messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from grrl_common.stamps import sec_nanosec
from grrl_policy.visualization import (
    RGBA,
    BarMarker,
    BoxMarker,
    PathMarker,
    TextMarker,
    VisualMarker,
)

# Longer than the chunk period so paths do not flicker, short enough that a stopped policy's
# last prediction disappears from RViz.
DEFAULT_LIFETIME_S = 1.0


def _duration(seconds: float) -> Duration:
    sec, nanosec = sec_nanosec(seconds)
    return Duration(sec=sec, nanosec=nanosec)


def _color(rgba: RGBA) -> ColorRGBA:
    r, g, b, a = (float(v) for v in rgba)
    return ColorRGBA(r=r, g=g, b=b, a=a)


def _point(xyz: Any) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _base(ns: str, marker_id: int, kind: int, frame_id: str, stamp: Time, life: Duration) -> Marker:
    msg = Marker()
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp
    msg.ns = ns
    msg.id = int(marker_id)
    msg.type = kind
    msg.action = Marker.ADD
    msg.pose.orientation.w = 1.0
    msg.lifetime = life
    return msg


def _convert(marker: VisualMarker, stamp: Time, life: Duration) -> list[Marker]:
    if isinstance(marker, BarMarker):
        return [m for part in marker.parts() for m in _convert(part, stamp, life)]
    if isinstance(marker, PathMarker):
        msg = _base(marker.ns, marker.id, Marker.LINE_STRIP, marker.frame_id, stamp, life)
        msg.scale.x = float(marker.width)  # line width; y and z are unused for line strips
        msg.points = [_point(p) for p in marker.points]
    elif isinstance(marker, BoxMarker):
        msg = _base(marker.ns, marker.id, Marker.CUBE, marker.frame_id, stamp, life)
        msg.pose.position = _point(marker.position)
        msg.scale.x, msg.scale.y, msg.scale.z = (float(v) for v in marker.size)
    elif isinstance(marker, TextMarker):
        msg = _base(marker.ns, marker.id, Marker.TEXT_VIEW_FACING, marker.frame_id, stamp, life)
        msg.pose.position = _point(marker.position)
        msg.scale.z = float(marker.height)  # text uses only z: the height of a capital letter
        msg.text = marker.text
    else:
        raise TypeError(f"cannot convert {type(marker).__name__} to a Marker")
    msg.color = _color(marker.rgba)
    return [msg]


def to_marker_array(
    markers: Iterable[VisualMarker],
    stamp: Any = None,
    lifetime_s: float = DEFAULT_LIFETIME_S,
) -> MarkerArray:
    """MarkerArray (action ADD, ``lifetime_s`` lifetime) of the given markers.

    ``stamp`` is a builtin_interfaces Time or an rclpy Time; None leaves it zero, which RViz
    reads as "latest available transform".
    """
    if stamp is None:
        stamp = Time()
    elif hasattr(stamp, "to_msg"):
        stamp = stamp.to_msg()
    if not isinstance(stamp, Time):
        raise TypeError(f"stamp must be a Time message or rclpy Time, not {stamp!r}")
    life = _duration(lifetime_s)
    return MarkerArray(markers=[m for marker in markers for m in _convert(marker, stamp, life)])
