"""The deployment chunk smoother: continuity, hard limits, ensembling, tracking, fail-safe."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grrl_common.robot import load_robot_description
from grrl_policy.smoother import (
    ChunkSmoother,
    JointLimits,
    SmootherCommand,
    SmootherConfig,
    SmootherInputError,
    _advance,
    _brake,
    _Guard,
)

ROBOT = load_robot_description()
LIMITS = JointLimits.from_robot(ROBOT)
N = LIMITS.n_joints
HOME = np.array(ROBOT.sim["home"] * 2, dtype=float)
REL = 1e-9  # the limits hold to rounding


def loose_limits(n: int = 3) -> JointLimits:
    return JointLimits(
        lower=np.full(n, -10.0),
        upper=np.full(n, 10.0),
        velocity=np.full(n, 100.0),
        acceleration=np.full(n, 1e4),
        jerk=np.full(n, 1e6),
    )


def history(start: SmootherCommand, commands: list[SmootherCommand]) -> dict[str, np.ndarray]:
    """Stack the state at reset/resume and the commands after it."""
    rows = [start, *commands]
    return {
        "t": np.array([c.time for c in rows]),
        "p": np.array([c.position for c in rows]),
        "v": np.array([c.velocity for c in rows]),
        "a": np.array([c.acceleration for c in rows]),
    }


def assert_within_limits(h: dict[str, np.ndarray], limits: JointLimits, dt: float) -> None:
    """Every limit, on the reported values and on finite differences of the emitted positions."""
    p, v, a = h["p"], h["v"], h["a"]
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(v)) and np.all(np.isfinite(a))
    assert np.all(p >= limits.lower) and np.all(p <= limits.upper)
    assert np.all(np.abs(v) <= limits.velocity * (1 + REL))
    assert np.all(np.abs(a) <= limits.acceleration * (1 + REL))
    jerk = np.diff(a, axis=0) / dt
    assert np.all(np.abs(jerk) <= limits.jerk * (1 + REL)), np.abs(jerk / limits.jerk).max()
    # What the robot receives is positions: their differences obey the same limits.
    fd_v = np.diff(p, axis=0) / dt
    fd_a = np.diff(fd_v, axis=0) / dt
    fd_j = np.diff(fd_a, axis=0) / dt
    assert np.all(np.abs(fd_v) <= limits.velocity * (1 + REL))
    assert np.all(np.abs(fd_a) <= limits.acceleration * (1 + REL))
    assert np.all(np.abs(fd_j) <= limits.jerk * (1 + REL)), np.abs(fd_j / limits.jerk).max()
    # ... and they are the reported velocities (no hidden jumps between samples).
    np.testing.assert_allclose(fd_v, v[1:], rtol=0, atol=1e-9 * limits.velocity.max())


def stop_bounds(
    v: np.ndarray, a: np.ndarray, limits: JointLimits, scale: float, dt: float
) -> tuple[float, np.ndarray]:
    """Time and distance within which a jerk/acc-limited stop from (v, a) must end.

    The stop uses ``scale`` of the acceleration and jerk limits: take |a| to zero, then at
    most the time-optimal stop from the velocity reached, with a few control steps of slack;
    the speed never exceeds |v| + a^2/(2J).
    """
    acc, jerk = limits.acceleration * scale, limits.jerk * scale
    a = np.abs(a)
    peak = np.abs(v) + a * a / (2 * jerk)
    t = 2 * (a + acc) / jerk + peak / acc + acc / jerk + 10 * dt
    return t.max(), peak * t


# ---------------------------------------------------------------------------------------------


def test_limits_from_robot_and_config_validation():
    assert N == 14
    np.testing.assert_array_equal(LIMITS.velocity, ROBOT.max_velocity)
    np.testing.assert_array_equal(LIMITS.jerk, ROBOT.max_jerk)
    with pytest.raises(ValueError, match="lower < upper"):
        JointLimits(np.ones(2), np.zeros(2), np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="mode"):
        ChunkSmoother(LIMITS, SmootherConfig(mode="average"))
    smoother = ChunkSmoother(LIMITS)
    assert smoother.state == "idle"
    with pytest.raises(RuntimeError, match="reset"):
        smoother.step()


@pytest.mark.parametrize("mode", ["ensemble", "receding"])
@pytest.mark.parametrize("control_dt", [0.02, 0.01])
def test_continuity_when_chunks_disagree(mode, control_dt):
    """Chunks 0.2 rad apart, switching every few steps: p, v and a stay continuous."""
    config = SmootherConfig(control_dt=control_dt, mode=mode, receding_steps=5)
    smoother = ChunkSmoother(LIMITS, config)
    smoother.reset(HOME)
    start = smoother.command
    commands = []
    per_chunk = round(0.1 / control_dt)
    for i in range(30):
        offset = 0.2 if i % 2 else -0.2
        target = np.clip(HOME + offset, LIMITS.lower, LIMITS.upper)
        smoother.add_chunk(np.tile(target, (20, 1)), smoother.time - 0.03, 0.02)  # 30 ms late
        commands += [smoother.step() for _ in range(per_chunk)]
    h = history(start, commands)
    assert_within_limits(h, LIMITS, control_dt)
    # It did move: the switches are absorbed smoothly, not ignored.
    assert np.ptp(h["p"][:, 0]) > 0.1
    assert smoother.state == "tracking"


@pytest.mark.parametrize(("mode", "control_dt"), [("ensemble", 0.01), ("receding", 0.02)])
def test_random_chunks_never_exceed_limits(mode, control_dt):
    """A few hundred random chunks: jumps, noise, latency, targets far outside the limits,
    chunk dts other than the control step, explicit stops and stale gaps."""
    rng = np.random.default_rng(1234 if mode == "ensemble" else 4321)
    smoother = ChunkSmoother(LIMITS, SmootherConfig(control_dt=control_dt, mode=mode))
    smoother.reset(HOME)
    start = smoother.command
    commands: list[SmootherCommand] = []
    span = LIMITS.upper - LIMITS.lower
    centre = HOME.copy()
    for _ in range(300):
        kind = rng.random()
        if kind < 0.3:
            centre = centre + rng.normal(0, 0.3, N) * span  # a jump, often beyond the limits
        elif kind < 0.4:
            centre = LIMITS.upper + rng.uniform(0.0, 1.0, N) * span  # far outside
        else:
            centre = np.clip(centre + rng.normal(0, 0.02, N) * span, LIMITS.lower, LIMITS.upper)
        k = int(rng.integers(2, 30))
        slope = rng.normal(0, 2.0, N) * LIMITS.velocity
        actions = centre + np.arange(k)[:, None] * 0.02 * slope
        actions += rng.normal(0, 0.01, (k, N)) * span  # per-action noise
        latency = rng.uniform(0.0, 0.1)
        try:
            smoother.add_chunk(actions, smoother.time - latency, float(rng.choice([0.02, 0.05])))
        except SmootherInputError:
            pass  # too late to cover the next step: fine, it is rejected
        if rng.random() < 0.03:
            smoother.stop("test")
        stale = round(0.6 / control_dt)  # beyond stale_after_s
        gap = int(rng.integers(1, 12)) if rng.random() > 0.05 else stale
        for _ in range(gap):
            commands.append(smoother.step())
    h = history(start, commands)
    assert_within_limits(h, LIMITS, control_dt)
    # The stream pushed joints onto their limits: the guard must have had work to do.
    at_limit = np.isclose(h["p"], LIMITS.upper) | np.isclose(h["p"], LIMITS.lower)
    assert at_limit.any()


@pytest.mark.parametrize("control_dt", [0.02, 0.01])
def test_ensembling_weights_follow_act(control_dt):
    """Three overlapping constant chunks: the command settles on sum(exp(-m i) c_i) / sum(w)."""
    limits = loose_limits()
    m = 1.0
    config = SmootherConfig(
        control_dt=control_dt, mode="ensemble", ensemble_m=m, jerk_weight=1e-14, stale_after_s=5
    )
    smoother = ChunkSmoother(limits, config)
    smoother.reset(np.zeros(3))
    values = [np.array([1.0, -1.0, 0.5]), np.array([0.0, 2.0, 0.5]), np.array([-1.0, 0.0, 3.0])]
    # Delivered newest first: the weights follow the time each chunk speaks for, not arrival.
    for i in (2, 1, 0):
        smoother.add_chunk(np.tile(values[i], (200, 1)), 0.02 * i, 0.02)
    for _ in range(round(1.0 / control_dt)):
        command = smoother.step()
    weights = np.exp(-m * np.arange(3))  # i = 0: the oldest prediction
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / weights.sum()
    np.testing.assert_allclose(command.position, expected, atol=1e-6)
    np.testing.assert_allclose(command.velocity, 0.0, atol=1e-5)

    # A fourth, newer chunk joins with the smallest weight; the oldest keeps weight 1.
    late = np.array([5.0, 5.0, 5.0])
    smoother.add_chunk(np.tile(late, (200, 1)), smoother.time, 0.02)
    for _ in range(round(1.0 / control_dt)):
        command = smoother.step()
    weights = np.exp(-m * np.arange(4))
    expected = sum(w * v for w, v in zip(weights, [*values, late], strict=True)) / weights.sum()
    np.testing.assert_allclose(command.position, expected, atol=1e-6)


def test_ensembling_blends_only_the_newest_max_chunks():
    """Older chunks beyond ``max_chunks`` are dropped, whatever order they arrive in."""
    limits = loose_limits()
    config = SmootherConfig(
        mode="ensemble", ensemble_m=0.0, max_chunks=2, jerk_weight=1e-14, stale_after_s=5
    )
    smoother = ChunkSmoother(limits, config)
    smoother.reset(np.zeros(3))
    values = [np.full(3, 3.0), np.full(3, 1.0), np.full(3, -1.0)]  # oldest first
    for i in (1, 0, 2):
        smoother.add_chunk(np.tile(values[i], (200, 1)), 0.02 * i, 0.02)
    for _ in range(50):
        command = smoother.step()
    np.testing.assert_allclose(command.position, (values[1] + values[2]) / 2, atol=1e-6)


def test_receding_follows_the_newest_chunk():
    limits = loose_limits()
    config = SmootherConfig(mode="receding", jerk_weight=1e-14, stale_after_s=5)
    smoother = ChunkSmoother(limits, config)
    smoother.reset(np.zeros(3))
    smoother.add_chunk(np.tile([1.0, 1.0, 1.0], (100, 1)), 0.02, 0.02)  # newer, arrives first
    smoother.add_chunk(np.tile([-1.0, 2.0, 0.0], (100, 1)), 0.0, 0.02)  # older
    for _ in range(50):
        command = smoother.step()
    np.testing.assert_allclose(command.position, [1.0, 1.0, 1.0], atol=1e-6)
    # h = 10 actions of the newest chunk (start 0.02) are executed at 0.22 s: a chunk is due.
    smoother.reset(np.zeros(3))
    smoother.add_chunk(np.tile([1.0, 1.0, 1.0], (100, 1)), 0.02, 0.02)
    due = []
    for _ in range(15):
        smoother.step()
        due.append(smoother.chunk_due)
    assert due.index(True) == 10  # time 0.22 after 11 steps of 0.02


@pytest.mark.parametrize("mode", ["ensemble", "receding"])
@pytest.mark.parametrize("control_dt", [0.02, 0.01])
def test_tracks_a_smooth_stream(mode, control_dt):
    """A slow sinusoid within the limits, one chunk per chunk step (ensemble) or per h steps."""
    omega = 2 * np.pi * 0.4
    room = np.minimum(LIMITS.upper - HOME, HOME - LIMITS.lower)
    amplitude = np.minimum(0.4 * room, 0.5 * LIMITS.velocity / omega)  # inside, half speed
    sign = np.where(np.arange(N) % 2, 1.0, -1.0)

    def truth(t: np.ndarray) -> np.ndarray:
        return HOME + sign * amplitude * (1 - np.cos(omega * t[:, None]))  # starts at rest

    smoother = ChunkSmoother(LIMITS, SmootherConfig(control_dt=control_dt, mode=mode))
    smoother.reset(HOME)
    start = smoother.command
    commands, errors = [], []
    while smoother.time < 6.0 - 1e-9:
        if smoother.chunk_due:
            t0 = smoother.time - 0.02  # the observation was 20 ms ago
            smoother.add_chunk(truth(t0 + 0.02 * np.arange(20)), t0, 0.02)
        command = smoother.step()
        commands.append(command)
        errors.append(np.abs(command.position - truth(np.array([command.time]))[0]))
    assert_within_limits(history(start, commands), LIMITS, control_dt)
    settled = np.array(errors[round(1.0 / control_dt) :])  # after the start-up transient
    assert settled.max() < 2e-3, settled.max()
    assert np.median(settled) < 2e-4


@pytest.mark.parametrize("control_dt", [0.02, 0.01])
def test_watchdog_stops_smoothly_when_chunks_go_stale(control_dt):
    config = SmootherConfig(control_dt=control_dt, mode="receding", stale_after_s=0.3)
    smoother = ChunkSmoother(LIMITS, config)
    smoother.reset(HOME)
    start = smoother.command
    commands = []
    # Fast motion toward a far target, chunks long enough never to run out.
    target = np.clip(HOME + 1.0, LIMITS.lower, LIMITS.upper)
    for _ in range(3):
        smoother.add_chunk(np.tile(target, (100, 1)), smoother.time, 0.02)
        last_chunk = smoother.time
        commands += [smoother.step() for _ in range(round(0.1 / control_dt))]
    while smoother.state == "tracking":
        commands.append(smoother.step())
    assert smoother.stop_reason.startswith("stale")
    assert smoother.time - last_chunk == pytest.approx(0.3, abs=control_dt + 1e-9)
    at_stop = commands[-2]  # the last command planned while tracking
    assert np.abs(at_stop.velocity).max() > 0.5  # it was moving fast when the watchdog fired
    t_bound, d_bound = stop_bounds(
        at_stop.velocity, at_stop.acceleration, LIMITS, config.stop_limit_scale, control_dt
    )
    stop_started = len(commands)
    while smoother.state == "stopping":
        commands.append(smoother.step())
        assert smoother.time - at_stop.time <= t_bound
    assert smoother.state == "stopped"
    final = commands[-1]
    assert np.all(final.velocity == 0.0) and np.all(final.acceleration == 0.0)
    assert np.all(np.abs(final.position - at_stop.position) <= d_bound + 1e-12)
    assert_within_limits(history(start, commands), LIMITS, control_dt)
    # At rest it stays put.
    held = [smoother.step() for _ in range(5)]
    for command in held:
        np.testing.assert_array_equal(command.position, final.position)
    assert stop_started < len(commands)


def test_plan_running_out_and_explicit_stop_end_at_rest():
    control_dt = 0.01
    smoother = ChunkSmoother(LIMITS, SmootherConfig(control_dt=control_dt, stale_after_s=10))
    smoother.reset(HOME)
    start = smoother.command
    target = np.clip(HOME - 0.8, LIMITS.lower, LIMITS.upper)
    smoother.add_chunk(np.tile(target, (10, 1)), 0.0, 0.02)  # ends at 0.18 s, still moving
    commands = []
    while smoother.state == "tracking":
        commands.append(smoother.step())
    assert smoother.stop_reason.startswith("plan ran out")
    while smoother.state == "stopping":
        commands.append(smoother.step())
        assert len(commands) < 500
    assert_within_limits(history(start, commands), LIMITS, control_dt)

    # A new chunk resumes from where the stop left the robot; an explicit stop ends at rest.
    smoother.add_chunk(np.tile(HOME, (50, 1)), smoother.time, 0.02)
    assert smoother.state == "tracking" and smoother.stop_reason is None
    commands += [smoother.step() for _ in range(15)]
    smoother.stop("operator")
    assert smoother.state == "stopping" and smoother.stop_reason == "operator"
    assert smoother.planned_positions.shape[1] == N
    while smoother.state == "stopping":
        commands.append(smoother.step())
        assert len(commands) < 1000
    assert_within_limits(history(start, commands), LIMITS, control_dt)
    assert np.all(commands[-1].velocity == 0) and np.all(commands[-1].acceleration == 0)


def test_bad_chunks_are_rejected_and_the_plan_continues():
    """A rejected chunk leaves no trace: the commands equal those of a twin that never saw it."""
    config = SmootherConfig(control_dt=0.01)
    smoothers = [ChunkSmoother(LIMITS, config) for _ in range(2)]
    rng = np.random.default_rng(7)
    chunk = HOME + rng.normal(0, 0.05, (20, N))
    for s in smoothers:
        s.reset(HOME)
        s.add_chunk(chunk, 0.0, 0.02)
        for _ in range(3):
            s.step()
    victim, twin = smoothers
    planned = victim.planned_positions.copy()
    bad = chunk.copy()
    bad[4, 2] = np.nan
    cases = [
        (bad, 0.03, 0.02, "non-finite"),
        (np.where(np.isnan(bad), np.inf, bad), 0.03, 0.02, "non-finite"),
        (chunk[:, :-1], 0.03, 0.02, "shape"),
        (chunk[0], 0.03, 0.02, "shape"),
        (chunk, 0.03, 0.0, "dt"),
        (chunk, math.nan, 0.02, "start_time"),
        (chunk, -5.0, 0.02, "before the next control step"),
        ("not numbers", 0.03, 0.02, "numeric"),
    ]
    for actions, start_time, dt, words in cases:
        with pytest.raises(SmootherInputError, match=words) as error:
            victim.add_chunk(actions, start_time, dt)
        assert "\n" not in str(error.value)
    np.testing.assert_array_equal(victim.planned_positions, planned)
    for _ in range(30):
        a, b = victim.step(), twin.step()
        np.testing.assert_array_equal(a.position, b.position)
        np.testing.assert_array_equal(a.acceleration, b.acceleration)
    assert victim.state == twin.state == "tracking"


def test_deterministic_and_reports_qp_stats():
    def run() -> np.ndarray:
        rng = np.random.default_rng(3)
        smoother = ChunkSmoother(LIMITS, SmootherConfig(control_dt=0.01))
        smoother.reset(HOME)
        out = []
        for _ in range(20):
            smoother.add_chunk(HOME + rng.normal(0, 0.1, (20, N)), smoother.time, 0.02)
            assert smoother.last_qp_ms >= 0 and smoother.last_qp_iterations >= 0
            assert smoother.horizon_steps == 40
            out += [smoother.step().position for _ in range(4)]
        return np.array(out)

    np.testing.assert_array_equal(run(), run())


def test_reset_clips_into_the_limits_and_idles_at_rest():
    smoother = ChunkSmoother(LIMITS)
    outside = HOME.copy()
    outside[6] = LIMITS.upper[6] + 1e-4  # a gripper squeezed a hair past its range
    smoother.reset(outside, time=12.5)
    assert smoother.state == "stopped" and smoother.time == 12.5
    assert smoother.command.position[6] == LIMITS.upper[6]
    command = smoother.step()
    assert command.time == pytest.approx(12.52)
    np.testing.assert_array_equal(command.velocity, 0.0)
    with pytest.raises(SmootherInputError, match="reset position"):
        smoother.reset(np.full(N, np.nan))


def test_guard_alone_holds_the_limits_against_any_request():
    """The last line of defence: wild requested accelerations, joints driven into the limits."""
    rng = np.random.default_rng(5)
    dt = 0.01
    guard = _Guard(LIMITS, dt)
    p, v, a = HOME.copy(), np.zeros(N), np.zeros(N)
    rows = [(p, v, a)]
    for i in range(1500):
        push = 3 * LIMITS.acceleration * (1 if (i // 150) % 2 else -1)  # slam into a limit
        wanted = rng.uniform(-3, 3, N) * LIMITS.acceleration if i % 300 > 200 else push
        a = np.clip(guard.filter(p, v, a, wanted), -LIMITS.acceleration, LIMITS.acceleration)
        p, v = _advance(p, v, a, LIMITS.velocity, dt)
        rows.append((p, v, a))
    p, v, a = (np.array(x) for x in zip(*rows, strict=True))
    h = {"p": p, "v": v, "a": a}
    assert_within_limits(h, LIMITS, dt)
    assert np.isclose(p, LIMITS.upper).any() and np.isclose(p, LIMITS.lower).any()


def test_braking_distance_bound_covers_the_braking_law():
    """The guard skips its exact braking check far from limits on the strength of this bound."""
    rng = np.random.default_rng(11)
    for dt in (0.002, 0.01, 0.02, 0.05):
        for vmax, amax, jmax in ((3.0, 15.0, 300.0), (0.15, 2.0, 50.0), (5.0, 1.0, 10.0)):
            v = rng.uniform(-vmax, vmax, 4000)
            a = rng.uniform(-amax, amax, 4000)
            v[:10], a[:10] = vmax - amax**2 / (2 * jmax), amax  # on the envelope, full throttle
            keep = np.abs(v + a * np.abs(a) / (2 * jmax)) <= vmax  # the guard's invariant set
            v, a = v[keep], a[keep]
            m = v.shape[0]
            limits = JointLimits(
                np.full(m, -1e9), np.full(m, 1e9), np.full(m, vmax), np.full(m, amax),
                np.full(m, jmax),
            )  # fmt: skip
            guard = _Guard(limits, dt)
            bound = guard.stop_distance_bound(v, a)
            p, furthest = np.zeros(m), np.zeros(m)
            for _ in range(guard.max_brake_steps):
                a = _brake(v, a, limits.acceleration, limits.jerk, dt)
                p, v = _advance(p, v, a, limits.velocity, dt)
                furthest = np.maximum(furthest, p)
            assert np.all(v == 0) and np.all(a == 0)  # the law ends exactly at rest
            assert np.all(furthest <= bound)
