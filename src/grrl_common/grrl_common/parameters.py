"""Declaring node parameters with descriptors in one call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node


@dataclass(frozen=True)
class Param:
    """A node parameter: default value, description and optional numeric range."""

    name: str
    default: Any
    description: str
    low: float | int | None = None
    high: float | int | None = None
    read_only: bool = False


def declare(node: Node, params: list[Param]) -> dict[str, Any]:
    """Declare ``params`` on ``node`` with descriptors; return their current values by name."""
    values = {}
    for p in params:
        descriptor = ParameterDescriptor(description=p.description, read_only=p.read_only)
        if p.low is not None and p.high is not None:
            if isinstance(p.default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=float(p.low), to_value=float(p.high))
                ]
            elif isinstance(p.default, int) and not isinstance(p.default, bool):
                descriptor.integer_range = [
                    IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)
                ]
        values[p.name] = node.declare_parameter(p.name, p.default, descriptor).value
    return values
