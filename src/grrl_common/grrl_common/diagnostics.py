"""One ``diagnostic_msgs/DiagnosticArray`` per report, for nodes' ``/diagnostics`` (thin)."""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

# levels as ints (the message constants are one-byte ``bytes``)
OK, WARN, ERROR, STALE = (ord(DiagnosticStatus.OK), ord(DiagnosticStatus.WARN),
                          ord(DiagnosticStatus.ERROR), ord(DiagnosticStatus.STALE))  # fmt: skip

DIAGNOSTICS_TOPIC = "/diagnostics"


def diagnostic_array(
    stamp: Any, name: str, hardware_id: str, level: int, message: str, values: dict[str, Any]
) -> DiagnosticArray:
    """A one-status DiagnosticArray; ``values`` become key/value strings."""
    status = DiagnosticStatus(
        level=bytes([level]),
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=_text(v)) for k, v in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
