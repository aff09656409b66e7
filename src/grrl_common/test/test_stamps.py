from types import SimpleNamespace

import pytest

from grrl_common.stamps import sec_nanosec, stamp_ns, stamp_seconds


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (0.0, (0, 0)),
        (1.5, (1, 500_000_000)),
        (2.9999999999, (3, 0)),  # rounds up across the second: carried, not wrapped to 2 s + 0
        (12.000000001, (12, 1)),
    ],
)
def test_sec_nanosec_carries_and_round_trips(seconds: float, expected: tuple[int, int]):
    sec, nanosec = sec_nanosec(seconds)
    assert (sec, nanosec) == expected and 0 <= nanosec < 1_000_000_000
    stamp = SimpleNamespace(sec=sec, nanosec=nanosec)
    assert stamp_ns(stamp) == round(seconds * 1e9)
    assert stamp_seconds(stamp) == pytest.approx(seconds, abs=1e-9)
