"""The deployment chunk smoother (SPEC §5): action chunks in, one limit-respecting command out.

A policy emits chunks of ``k`` joint-position targets spaced ``dt`` apart; action ``i`` of a chunk
is the command for ``start_time + i * dt``. :class:`ChunkSmoother` keeps the chunks it receives
and, once per ``control_dt``, emits one command (position, velocity, acceleration). It is plain
numpy, deterministic and thread-free, so offline evaluation (in-process with MuJoCo) and the ROS
node run the same code.

Pipeline
--------
1. **Target.** The chunks are blended into one target trajectory sampled at the control rate:
   ``"ensemble"`` mode is ACT's temporal ensembling (each of the ``max_chunks`` newest chunks
   covering a time predicts it; the predictions are averaged with weights ``exp(-m * i)``,
   ``i = 0`` the oldest), ``"receding"`` follows the newest chunk (by ``start_time``).
   Chunk actions are interpolated linearly between chunk steps; after the last action the
   target holds it. Targets are clipped to the position limits (pushing a plan against a limit
   it cannot cross only slows the solver).
2. **Plan (a QP per new chunk).** From the commanded state ``(p0, v0, a0)`` the plan over ``H``
   control steps minimises ``sum_k (p_k - r_k)^2 + jerk_weight * sum_k j_k^2`` subject to the
   jerk, acceleration, velocity and position limits at every step (:class:`PlanQP`).
3. **Guard.** Every emitted command passes an exact one-step safety filter (:class:`_Guard`): the
   QP is solved approximately, so the guard, not the QP, is what makes the limits hard.
4. **Fail-safe.** Stale chunk stream, plan run out, or :meth:`ChunkSmoother.stop`: a braking law
   brings every joint to rest from the commanded state, jerk-limited, through the same guard.

Discrete model (why backward differences)
-----------------------------------------
A command is a sample; what the robot sees are the emitted positions. The state is therefore
advanced with backward differences: ``a' = a + j dt``, ``v' = v + a' dt``, ``p' = p + v' dt``.
The finite differences of the emitted positions *are* the reported velocities, their differences
the accelerations, and theirs the jerks (up to rounding), so bounding the reported values bounds
what the robot receives, and continuity at a chunk switch is continuity of the emitted samples.
It also makes the QP cheap to state: with ``p_1..p_H`` as unknowns, velocity, acceleration and jerk
are first, second and third differences (banded), the initial state entering through ``p_0,
p_-1, p_-2``, so continuity of position, velocity and acceleration at every re-plan is automatic.

The QP and its solver (why not plain ADMM)
------------------------------------------
Per joint the unknown is ``x = (p - p_free) / (J dt^3)``: the deviation from the motion that
keeps the current acceleration, in units of one full jerk step. In these units every joint has
the same Hessian ``P = I + mu D3^T D3`` (``mu = jerk_weight / dt^6``) and the same constraint
matrix ``C = [D3; D2; D1; I]``; only the bounds differ, so all joints are solved together as the
rows of small matmuls against matrices cached per horizon. When the unconstrained minimiser
``P^-1 d`` is feasible it is the answer (one matmul). Otherwise an OSQP-style ADMM (cached
inverse of ``P + C^T R C``, over-relaxation, warm start from the previous plan and multipliers
shifted in time, residual-based termination, capped iterations) runs on the infeasible joints.

The triple integrator makes the QP badly conditioned (``cond ~ H^6``): ADMM with one ``rho``
was measured still centimetres off after hundreds of iterations. What made it usable, measured
against an interior-point reference on re-plans recorded from chunk streams:

* Jacobi-scaling the dual, ``rho_i = rho0 w_type / (C P^-1 C^T)_ii``, with small weights on the
  rarely active velocity and position rows (jerk 1, acceleration 0.3, velocity/position 0.03);
* leaving out row types no joint comes near (a cached factorisation per subset);
* iterating in float32 on ``z`` and the scaled multipliers only (``P >= I`` needs no proximal
  ``sigma``), which halves the cost; the unit of ``x`` is one jerk step, so float32 rounding is
  ~1e-7 rad;
* stopping when the constraints hold to ``qp_tolerance`` of the limits and the plan moved less
  than ``qp_tolerance`` of a full-speed step over the last 5 iterations (a gradient-based dual
  residual is swamped by float32 rounding amplified by ``|P| ~ 64 mu``).

Constrained re-plans from chunk streams then stop after 25-40 iterations on average, within
a millimetre of the exact optimum (median ~0.1 mm); see ``bench/smoother_qp.py`` for timings.
The iteration cap bounds the worst case; what is left of the error is the guard's business,
and a re-plan follows whenever the guard has to bend the plan, so hard cases keep converging,
warm-started, over the next control steps. The plan has no terminal constraint: what happens
after its horizon is covered by the guard's braking check below and by re-planning before the
plan is half used.

The guard (why the limits hold exactly)
---------------------------------------
Each control step the guard picks the next acceleration ``a'`` (equivalently the jerk) as close
to the plan's as an exact feasible interval allows:

* jerk and acceleration: ``|a' - a| <= J dt``, ``|a'| <= A``;
* velocity with room to brake: ``g(a') = v + a' dt + a'|a'| / (2J)`` (the velocity reached after
  taking the acceleration back to zero at full jerk) in ``[-V, V]``. ``g`` is increasing, so this
  is an interval with a closed-form end (``_inverse_envelope``). The set ``{|v| <= V, |a| <= A,
  |v + a|a|/(2J)| <= V}`` is invariant: from it, braking at full jerk lowers the envelope by
  ``J dt^2 / 2`` per step, so the interval is never empty;
* position: the next state must be one from which the braking law ``_brake`` (full limits,
  deterministic state feedback) reaches rest inside ``[lower, upper]``. This is checked by
  simulating the law, but only for joints a conservative stopping-distance bound cannot clear
  (near a limit); the candidates lie between the plan's choice and the braking action. The
  braking action from a state that passed the check is always acceptable (its braking run is the
  tail of the checked one, computed by the same code), so the check never paints itself into a
  corner.

Together: emitted positions stay in the limits and velocity, acceleration and jerk are bounded,
for any input and however inexact the QP.

Stopping (why a feedback law, not a stop QP)
--------------------------------------------
A stop is the braking law ``_brake`` run with ``stop_limit_scale`` of the acceleration and jerk
limits, through the guard. Being exact state feedback it needs no solver, cannot be left
half-converged, ends at rest (``v = a = 0`` exactly) in finite time, and its distance is
bounded by the state and the limits; a QP stop plan would be approximate and need the same
guard anyway.

Limitations
-----------
* The QP is solved to ADMM accuracy (iteration-capped); plan quality after large disagreements
  recovers over a few control steps while the guard keeps the limits. With adversarial input
  (a jump every few steps) nearly every step re-plans: up to ~1 ms of QP plus ~1 ms of guard
  braking checks near the limits per control step on one core.
* The guard's velocity envelope is the continuous-time one, more conservative than the QP's
  discrete constraints by up to ``A dt / 2`` of velocity: plans accelerating hard into the
  velocity limit get bent (and re-planned) slightly early.
* The objective is the one SPEC §5 names: squared tracking error plus squared jerk. Its optimum
  answers a step in the target with the ~8 % overshoot of a third-order Butterworth response
  (the LQ optimum for a triple integrator), whatever ``jerk_weight``; that is the QP's exact
  answer (checked against a long solve), not solver error. Ensembling makes steps rare.
* Near a position limit the guard's choice is quantised to 1/64 of the admissible interval.
* A new horizon length builds its matrices on first use (a few ms, once): set
  ``horizon_steps`` to build them in the constructor.
* Stops use fixed fractions of the limits (``stop_limit_scale``); a stop ends where braking
  ends, not at a chosen position.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the smoother itself needs nothing but numpy
    from grrl_common.robot import RobotDescription

MODES = ("ensemble", "receding")
STATES = ("idle", "tracking", "stopping", "stopped")


class SmootherInputError(ValueError):
    """A chunk (or reset position) was rejected; the message is one line naming the problem."""


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous: compare fields explicitly
class JointLimits:
    """Per-joint limits, vectors in the robot's joint order (rad or m, and per s, s^2, s^3)."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    jerk: np.ndarray

    def __post_init__(self) -> None:
        fields = ("lower", "upper", "velocity", "acceleration", "jerk")
        arrays = [np.array(getattr(self, f), dtype=np.float64).reshape(-1) for f in fields]
        n = arrays[0].shape[0]
        if n == 0 or any(a.shape != (n,) for a in arrays):
            raise ValueError("JointLimits: all five vectors need the same non-zero length")
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise ValueError("JointLimits: limits must be finite")
        if np.any(arrays[0] >= arrays[1]) or any(np.any(a <= 0) for a in arrays[2:]):
            raise ValueError("JointLimits: need lower < upper and positive vel/acc/jerk bounds")
        for name, array in zip(fields, arrays, strict=True):
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def n_joints(self) -> int:
        return int(self.lower.shape[0])

    @classmethod
    def from_robot(cls, robot: RobotDescription) -> JointLimits:
        """The limits of a :class:`grrl_common.robot.RobotDescription`."""
        return cls(
            lower=robot.lower,
            upper=robot.upper,
            velocity=robot.max_velocity,
            acceleration=robot.max_acceleration,
            jerk=robot.max_jerk,
        )


@dataclass(frozen=True)
class SmootherConfig:
    """Smoother settings.

    ``jerk_weight`` (s^6) weighs ``sum_k j_k^2`` against ``sum_k (p_k - r_k)^2``; both sums run
    over control steps, so its effect does not depend on ``control_dt``. It acts like a
    smoothing filter with time constant ``jerk_weight ** (1/6)``: the default 1e-9 is 32 ms
    (about 5 Hz), well below the 25 Hz a 50 Hz chunk can carry and well above the motions a
    policy means.
    """

    control_dt: float = 0.02
    mode: str = "ensemble"  # "ensemble" | "receding"
    ensemble_m: float = 0.01  # ACT: weight exp(-m * i), i = 0 the oldest prediction
    receding_steps: int = 10  # h: chunk actions executed before the next chunk is due
    horizon_steps: int | None = None  # QP horizon in control steps; None: a chunk's span (<= 64)
    jerk_weight: float = 1e-9  # s^6, see the class docstring
    stale_after_s: float = 0.5  # watchdog: stop when no chunk arrived for this long
    # Chunks blended by ensembling, the newest ones (older ones are dropped). With a chunk every
    # control step, 5 is the last 0.1 s of predictions: blending all 20 overlapping chunks
    # scored about 0.1 lower on the sim's insertion (docs/BENCHMARKS.md, bench/bc.py).
    max_chunks: int = 5
    stop_limit_scale: float = 0.5  # fraction of the acc/jerk limits a stop uses
    qp_max_iterations: int = 60  # ADMM cap per solve (the latency budget)
    qp_tolerance: float = 0.01  # ADMM residual tolerance, as a fraction of the limits

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if not (math.isfinite(self.control_dt) and self.control_dt > 0):
            raise ValueError("SmootherConfig.control_dt must be > 0")
        if self.mode not in MODES:
            raise ValueError(f"SmootherConfig.mode must be one of {MODES}, not {self.mode!r}")
        if not (math.isfinite(self.ensemble_m) and self.ensemble_m >= 0):
            raise ValueError("SmootherConfig.ensemble_m must be >= 0")
        if self.receding_steps < 1:
            raise ValueError("SmootherConfig.receding_steps must be >= 1")
        if self.horizon_steps is not None and not 2 <= self.horizon_steps <= 400:
            raise ValueError("SmootherConfig.horizon_steps must be in [2, 400]")
        if not (math.isfinite(self.jerk_weight) and self.jerk_weight > 0):
            raise ValueError("SmootherConfig.jerk_weight must be > 0")
        if not self.stale_after_s > 0:
            raise ValueError("SmootherConfig.stale_after_s must be > 0")
        if self.max_chunks < 1:
            raise ValueError("SmootherConfig.max_chunks must be >= 1")
        if not 0 < self.stop_limit_scale <= 1:
            raise ValueError("SmootherConfig.stop_limit_scale must be in (0, 1]")
        if self.qp_max_iterations < 0 or not self.qp_tolerance > 0:
            raise ValueError("SmootherConfig: qp_max_iterations >= 0 and qp_tolerance > 0")


@dataclass(eq=False)
class SmootherCommand:
    """One emitted command: the targets for ``time``."""

    time: float
    position: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray


# --------------------------------------------------------------------------------------------
# Exact one-step kinematics shared by the guard, the braking check and the smoother.


def _inverse_envelope(y: np.ndarray, jerk: np.ndarray, dt: float) -> np.ndarray:
    """The ``x`` with ``x|x| / (2 jerk) + x dt = y`` (the left side increases with ``x``)."""
    mag = np.abs(y)
    # 2|y| / (sqrt(dt^2 + 2|y|/J) + dt) is J (sqrt(..) - dt) without the cancellation.
    return np.copysign(2.0 * mag / (np.sqrt(dt * dt + 2.0 * mag / jerk) + dt), y)


def _brake(
    v: np.ndarray, a: np.ndarray, amax: np.ndarray, jerk: np.ndarray, dt: float
) -> np.ndarray:
    """The braking law: next acceleration that drives ``(v, a)`` to rest, jerk-limited.

    Aims at the acceleration whose release lands on zero velocity (``g(a') = 0``), moving toward
    it at most ``jerk * dt`` per step and staying within ``amax`` (first clipped to ``amax``,
    then to the jerk step, so a state above ``amax`` never jumps). Once a two-step exact stop is
    possible it takes it, so rest (``v = a = 0``) is reached exactly, in finite time.
    """
    step = jerk * dt
    # np.minimum/np.maximum rather than np.clip: same values, a fraction of the overhead.
    target = np.minimum(np.maximum(_inverse_envelope(-v, jerk, dt), -amax), amax)
    a_next = np.minimum(np.maximum(target, a - step), a + step)
    deadbeat = -v / dt
    exact = (np.abs(v) <= step * dt) & (np.abs(deadbeat - a) <= step) & (np.abs(deadbeat) <= amax)
    return np.where(exact, deadbeat, a_next)


def _advance(
    p: np.ndarray, v: np.ndarray, a_next: np.ndarray, vmax: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Backward-difference step: ``v' = v + a' dt``, ``p' = p + v' dt`` (position unclamped)."""
    v_next = v + a_next * dt
    # The two-step exact stop leaves rounding dust (~1e-17); zero it so rest is exact.
    v_next[np.abs(v_next) <= 1e-12 * vmax] = 0.0
    # A no-op but for rounding: the velocity envelope already holds |v'| <= V.
    np.minimum(np.maximum(v_next, -vmax, out=v_next), vmax, out=v_next)
    return p + v_next * dt, v_next


class _Guard:
    """The exact per-step safety filter (see the module docstring)."""

    CANDIDATES = 9  # first pass between the braking action and the plan's choice
    REFINE = 7  # second pass inside the bracket found: resolution 1/64

    def __init__(self, limits: JointLimits, dt: float) -> None:
        self.lim = limits
        self.dt = dt
        lim = limits
        # Longest braking run the simulation allows: far more than the law needs (about
        # 2A/J + V/A), so a run hitting the cap means a bug, and counts as unsafe.
        t_cap = 3.0 * float(
            np.max(2 * lim.acceleration / lim.jerk + lim.velocity / lim.acceleration)
        )
        self.max_brake_steps = int(math.ceil(t_cap / dt)) + 20

    # -- pieces ---------------------------------------------------------------------------

    def interval(self, v: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Next accelerations allowed by the jerk, acceleration and velocity-envelope limits."""
        lim, dt = self.lim, self.dt
        step = lim.jerk * dt
        lo = np.maximum(
            np.maximum(a - step, -lim.acceleration),
            _inverse_envelope(-lim.velocity - v, lim.jerk, dt),
        )
        hi = np.minimum(
            np.minimum(a + step, lim.acceleration),
            _inverse_envelope(lim.velocity - v, lim.jerk, dt),
        )
        return lo, hi

    def stop_distance_bound(self, v: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Upper bound on how far the braking law travels in the +direction from ``(v, a)``.

        The velocity peaks at ``v + max(a, 0)^2 / (2J)`` (the discrete sum is below the
        continuous one); the time to rest is at most the time to take a positive acceleration
        to zero plus the time-optimal jerk/acceleration-limited stop from that peak, plus a few
        steps of rounding up. Distance <= peak speed x time, with a 25 % margin. Only used to
        skip the exact simulation far from the limits (tests check it against the simulation).
        """
        lim, dt = self.lim, self.dt
        a_pos = np.maximum(a, 0.0)
        peak = np.maximum(v + a_pos * a_pos / (2 * lim.jerk), 0.0)
        ramp = lim.acceleration / lim.jerk
        t_stop = np.where(
            peak >= lim.acceleration * ramp,
            peak / lim.acceleration + ramp,
            2.0 * np.sqrt(peak / lim.jerk),
        )
        return 1.25 * peak * (a_pos / lim.jerk + t_stop + 4 * dt) + 1e-12

    def braking_is_safe(
        self, p: np.ndarray, v: np.ndarray, a: np.ndarray, index: np.ndarray
    ) -> np.ndarray:
        """Whether braking from each state reaches rest inside the position limits.

        ``p, v, a`` have shape (m, c): joints ``index`` (m) by candidates (c).
        """
        lim, dt = self.lim, self.dt
        lower, upper = lim.lower[index, None], lim.upper[index, None]
        vmax, amax, jerk = (
            lim.velocity[index, None],
            lim.acceleration[index, None],
            lim.jerk[index, None],
        )
        ok = (p >= lower) & (p <= upper)
        for _ in range(self.max_brake_steps):
            moving = (v != 0.0) | (a != 0.0)
            if not np.any(moving & ok):
                return ok & ~moving
            a = _brake(v, a, amax, jerk, dt)
            p, v = _advance(p, v, a, vmax, dt)
            ok &= (p >= lower) & (p <= upper)
        return ok & (v == 0.0) & (a == 0.0)

    # -- the filter -----------------------------------------------------------------------

    def filter(
        self, p: np.ndarray, v: np.ndarray, a: np.ndarray, a_wanted: np.ndarray
    ) -> np.ndarray:
        """The admissible next acceleration closest to ``a_wanted`` (per joint)."""
        lim, dt = self.lim, self.dt
        lo, hi = self.interval(v, a)
        fallback = _brake(v, a, lim.acceleration, lim.jerk, dt)
        # Rounding can cross lo/hi by an ulp when the state sits on the envelope; the braking
        # action is admissible there (it is what proves the interval non-empty).
        empty = lo > hi
        lo = np.where(empty, fallback, lo)
        hi = np.where(empty, fallback, hi)
        fallback = np.clip(fallback, lo, hi)
        a_next = np.clip(a_wanted, lo, hi)

        p1, v1 = _advance(p, v, a_next, lim.velocity, dt)
        clear = (p1 + self.stop_distance_bound(v1, a_next) <= lim.upper) & (
            p1 - self.stop_distance_bound(-v1, -a_next) >= lim.lower
        )
        if np.all(clear):
            return a_next
        index = np.flatnonzero(~clear)
        base, span = fallback[index, None], (a_next - fallback)[index, None]

        def safe_fractions(fractions: np.ndarray) -> np.ndarray:
            cand = base + fractions * span
            pc, vc = _advance(p[index, None], v[index, None], cand, lim.velocity[index, None], dt)
            return self.braking_is_safe(pc, vc, cand, index)

        grid = np.linspace(0.0, 1.0, self.CANDIDATES)[None, :]
        safe = safe_fractions(np.broadcast_to(grid, (len(index), self.CANDIDATES)))
        # The braking action is safe whenever the current state is (module docstring); a
        # failed check here would be rounding on the boundary, and braking is still the answer.
        safe[:, 0] = True
        best = np.where(safe, grid, -1.0).max(axis=1)
        # Refine between the best safe fraction and the next (unsafe or the plan's) one.
        width = 1.0 / (self.CANDIDATES - 1)
        need = best < 1.0
        if np.any(need):
            fine = best[:, None] + width * np.arange(1, self.REFINE + 1)[None, :] / (
                self.REFINE + 1
            )
            fine = np.minimum(fine, 1.0)
            safe_fine = safe_fractions(fine)
            best = np.maximum(best, np.where(safe_fine & need[:, None], fine, -1.0).max(axis=1))
        out = a_next.copy()
        out[index] = (base + best[:, None] * span)[:, 0]
        return out


# --------------------------------------------------------------------------------------------
# The plan QP.


class PlanQP:
    """The batched plan QP for one horizon ``H`` and control step ``dt`` (see module docstring).

    Unknown per joint: ``x = (p_1..p_H - p_free) / (J dt^3)``. Minimise ``|x - d|^2 + mu |D3 x|^2``
    subject to ``lo <= C x <= hi`` with ``C = [D3; D2; D1; I]`` (jerk, acceleration, velocity,
    position rows, H each). Everything that does not depend on the bounds is computed here, once.

    ADMM details (tuned on re-plans recorded from chunk streams, against an interior-point
    reference): ``rho_i = RHO0 * TYPE_WEIGHT[type] / (C P^-1 C^T)_ii``; velocity and position
    rows get a small weight because they are rarely active and a large one slows the jerk rows
    down; rows of a type no joint comes near are left out of the solve altogether (a cached
    factorisation per subset). With ``sigma = 0`` (``P >= I`` needs no proximal term) the
    iteration only carries ``z`` and the scaled multipliers ``u = y / rho``; it runs in float32,
    which is ample for plans whose unit is one jerk step (errors ~1e-7 rad) and halves the cost.
    """

    RHO0 = 10.0
    TYPE_WEIGHT = (1.0, 0.3, 0.03, 0.03)  # jerk, acceleration, velocity, position rows
    ALPHA = 1.8  # over-relaxation
    CHECK_EVERY = 5
    NEAR = 0.7  # a row type joins the solve once the unconstrained plan uses 70 % of its range

    def __init__(self, horizon: int, dt: float, jerk_weight: float) -> None:
        h = int(horizon)
        self.horizon, self.dt = h, dt
        eye = np.eye(h)
        d1 = eye - np.eye(h, k=-1)
        d2 = d1 @ d1
        d3 = d2 @ d1
        self.d2 = d2
        mu = jerk_weight / dt**6
        self.P = eye + mu * (d3.T @ d3)
        self.P_inv = np.linalg.inv(self.P)
        self.C = np.vstack([d3, d2, d1, eye])  # (4H, H)
        self.CT = np.ascontiguousarray(self.C.T)
        dual_diag = np.einsum("ij,jk,ik->i", self.C, self.P_inv, self.C)
        self.rho = self.RHO0 * np.repeat(np.asarray(self.TYPE_WEIGHT), h) / dual_diag
        self.k = np.arange(1, h + 1, dtype=np.float64)
        self._variants: dict[tuple[bool, ...], dict[str, np.ndarray]] = {}
        for types in ((True, True, v, p) for v in (False, True) for p in (False, True)):
            self._variant(types)  # all four now: a first use mid-run would cost a spike

    def _variant(self, types: tuple[bool, ...]) -> dict[str, np.ndarray]:
        """Factorisation and float32 operators for the rows of the included types."""
        cached = self._variants.get(types)
        if cached is None:
            h = self.horizon
            rows = np.concatenate([np.arange(t * h, (t + 1) * h) for t in range(4) if types[t]])
            c, rho = self.C[rows], self.rho[rows]
            k_inv = np.linalg.inv(self.P + c.T @ (rho[:, None] * c))
            f32 = np.float32
            cached = {
                "rows": rows,
                "k_inv": k_inv,
                "ck": (c @ k_inv).astype(f32),
                "ct": np.ascontiguousarray(c.T).astype(f32),
                "rho": rho.astype(f32),
            }
            self._variants[types] = cached
        return cached

    def bounds(
        self,
        p0: np.ndarray,
        v0: np.ndarray,
        a0: np.ndarray,
        lim: JointLimits,
        scale: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Free motion ``p_free`` (n, H); bounds ``lo, hi`` and residual units (n, 4H)."""
        h, dt, k = self.horizon, self.dt, self.k
        p_free = p0[:, None] + (k * dt) * v0[:, None] + (dt * dt * k * (k + 1) / 2) * a0[:, None]
        v_free = v0[:, None] + (k * dt) * a0[:, None]
        jdt = (lim.jerk * dt)[:, None]
        jdt2 = jdt * dt
        s = scale[:, None]
        acc, vel = lim.acceleration[:, None], lim.velocity[:, None]
        n = p0.shape[0]
        lo = np.empty((n, 4 * h))
        hi = np.empty((n, 4 * h))
        lo[:, :h], hi[:, :h] = -1.0, 1.0
        lo[:, h : 2 * h] = (-acc - a0[:, None]) / jdt
        hi[:, h : 2 * h] = (acc - a0[:, None]) / jdt
        lo[:, 2 * h : 3 * h] = (-vel - v_free) / jdt2
        hi[:, 2 * h : 3 * h] = (vel - v_free) / jdt2
        lo[:, 3 * h :] = (lim.lower[:, None] - p_free) / s
        hi[:, 3 * h :] = (lim.upper[:, None] - p_free) / s
        unit = np.empty((n, 4 * h))
        unit[:, :h] = 1.0
        unit[:, h : 2 * h] = acc / jdt
        unit[:, 2 * h :] = vel / jdt2  # positions too: a fraction of a full-speed step
        return p_free, lo, hi, unit

    def solve(
        self,
        d: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        unit: np.ndarray,
        x0: np.ndarray | None,
        y0: np.ndarray | None,
        max_iterations: int,
        tolerance: float,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Solve for all joints (rows of ``d``): returns ``x`` (n, H), multipliers ``y``
        (n, 4H) and the ADMM iterations used (0: the unconstrained minimiser was feasible)."""
        h = self.horizon
        x = d @ self.P_inv
        z = x @ self.CT
        y = np.zeros_like(z)
        outside = (z < lo) | (z > hi)
        bad = np.flatnonzero(np.any(outside, axis=1))
        if bad.size == 0 or max_iterations == 0:
            return x, y, 0
        # Which row types can matter: violated, or used beyond NEAR of their range.
        mid, half = (hi[bad] + lo[bad]) / 2, (hi[bad] - lo[bad]) / 2
        near = (np.abs(z[bad] - mid) > self.NEAR * half).reshape(bad.size, 4, h).any(axis=(0, 2))
        types = (True, True, bool(near[2]), bool(near[3]))
        op = self._variant(types)
        rows = op["rows"]
        start = x[bad] if x0 is None else x0[bad]
        y_rows = None if y0 is None else y0[bad][:, rows]
        xs, ys, iterations = self._admm(
            op, d[bad], lo[bad][:, rows], hi[bad][:, rows], unit[bad][:, rows], start, y_rows,
            max_iterations, tolerance,
        )  # fmt: skip
        x[bad] = xs
        y_bad = np.zeros((bad.size, 4 * h))
        y_bad[:, rows] = ys
        y[bad] = y_bad
        return x, y, iterations

    def _admm(
        self,
        op: dict[str, np.ndarray],
        d: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        unit: np.ndarray,
        x_start: np.ndarray,
        y_start: np.ndarray | None,
        max_iterations: int,
        tolerance: float,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        f32 = np.float32
        ck, ct, rho = op["ck"], op["ct"], op["rho"]
        alpha = f32(self.ALPHA)
        lo, hi = lo.astype(f32), hi.astype(f32)
        q_term = (d @ op["k_inv"]).astype(f32)  # K^-1 d: the x-update's constant part
        u = np.zeros(lo.shape, f32) if y_start is None else (y_start / op["rho"]).astype(f32)
        z = np.clip((x_start @ op["ct"]).astype(f32) + u, lo, hi)
        w = rho * (z - u)  # rho z - y: what the x-update needs
        tol_primal = (tolerance * unit).astype(f32)
        tol_move = tol_primal[:, -1:]  # positions: the tolerance times a full-speed step
        x = np.empty(d.shape, f32)
        x_check = x_start.astype(f32)
        z_tilde = np.empty(lo.shape, f32)
        v = np.empty(lo.shape, f32)
        it = 0
        while it < max_iterations:
            it += 1
            np.matmul(w, ck, out=x)
            x += q_term
            np.matmul(x, ct, out=z_tilde)
            np.multiply(z_tilde, alpha, out=v)
            v += (1 - alpha) * z
            v += u
            np.minimum(np.maximum(v, lo, out=z), hi, out=z)
            np.subtract(v, z, out=u)
            if it % self.CHECK_EVERY == 0 or it == max_iterations:
                # Converged: constraints met to the tolerance (C x - z, free to evaluate) and
                # the plan settled (it moved less than the tolerance over the last few
                # iterations). A gradient-based dual residual is useless here: |P| ~ 64 mu
                # amplifies float32 rounding of x far above any meaningful threshold.
                settled = np.abs(x - x_check) <= tol_move
                if np.all(settled) and np.all(np.abs(z_tilde - z) <= tol_primal):
                    break
                x_check[...] = x
            np.subtract(z, u, out=w)
            w *= rho
        return x.astype(np.float64), u.astype(np.float64) * op["rho"], it


# --------------------------------------------------------------------------------------------
# The smoother.


@dataclass
class _Chunk:
    actions: np.ndarray  # (k, n)
    start: float
    dt: float
    seq: int

    @property
    def end(self) -> float:
        return self.start + (self.actions.shape[0] - 1) * self.dt

    def predict(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linearly interpolated actions at ``times`` (held outside the chunk) and coverage."""
        k = self.actions.shape[0]
        x = (times - self.start) / self.dt
        eps = 1e-9
        covered = (x >= -eps) & (x <= (k - 1) + eps)
        if k == 1:
            return np.broadcast_to(
                self.actions[0], (times.shape[0], self.actions.shape[1])
            ), covered
        x = np.clip(x, 0.0, k - 1.0)
        i0 = np.minimum(np.floor(x).astype(np.intp), k - 2)
        frac = (x - i0)[:, None]
        return self.actions[i0] * (1.0 - frac) + self.actions[i0 + 1] * frac, covered


def _ensemble(chunks: list[_Chunk], times: np.ndarray, m: float) -> np.ndarray:
    """ACT temporal ensembling at ``times``: (len(times), n), NaN where no chunk covers.

    ``chunks`` oldest first; at each time the i-th covering chunk (i = 0 the oldest) weighs
    ``exp(-m i)``. All chunks at once: padded to a common length (holding the last action).
    """
    k_max = max(2, max(c.actions.shape[0] for c in chunks))
    n = chunks[0].actions.shape[1]
    actions = np.empty((len(chunks), k_max, n))
    for i, c in enumerate(chunks):
        k = c.actions.shape[0]
        actions[i, :k] = c.actions
        actions[i, k:] = c.actions[-1]
    start = np.array([c.start for c in chunks])[:, None]
    dt = np.array([c.dt for c in chunks])[:, None]
    last = np.array([c.actions.shape[0] - 1 for c in chunks], dtype=np.float64)[:, None]
    x = (times[None, :] - start) / dt  # (C, T) position in chunk steps
    covered = (x >= -1e-9) & (x <= last + 1e-9)
    x = np.clip(x, 0.0, last)
    i0 = np.minimum(np.floor(x), np.maximum(last - 1, 0)).astype(np.intp)
    frac = (x - i0)[:, :, None]
    rows = np.arange(len(chunks))[:, None]
    pred = actions[rows, i0] * (1.0 - frac) + actions[rows, i0 + 1] * frac  # (C, T, n)
    rank = np.cumsum(covered, axis=0) - covered  # covering chunks older than this one
    weight = np.where(covered, np.exp(-m * rank), 0.0)
    total = np.einsum("ct,ctn->tn", weight, pred)
    weight_sum = weight.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight_sum[:, None]


class ChunkSmoother:
    """Blends action chunks into one smooth, limit-respecting command stream (SPEC §5).

    Call :meth:`reset` with the robot's position, :meth:`add_chunk` whenever the policy
    produces a chunk and :meth:`step` once per ``control_dt``; each step returns the command for
    the new time. See the module docstring for how it works and what it guarantees.
    """

    MAX_DEFAULT_HORIZON = 64

    def __init__(self, limits: JointLimits, config: SmootherConfig | None = None) -> None:
        self.limits = limits
        self.config = config if config is not None else SmootherConfig()
        self.config.validate()
        self.n = limits.n_joints
        self._dt = float(self.config.control_dt)
        self._guard = _Guard(limits, self._dt)
        self._qps: dict[int, PlanQP] = {}
        self._scale = limits.jerk * self._dt**3  # one full jerk step, per joint (QP units)
        self._stop_acc = limits.acceleration * self.config.stop_limit_scale
        self._stop_jerk = limits.jerk * self.config.stop_limit_scale
        self._state = "idle"
        self._stop_reason: str | None = None
        self._t0 = 0.0
        self._steps = 0
        self._p = np.zeros(self.n)
        self._v = np.zeros(self.n)
        self._a = np.zeros(self.n)
        self._chunks: list[_Chunk] = []
        self._seq = 0
        self._last_chunk_time = 0.0
        self._clear_plan()
        # Diagnostics: the last QP solve (ms, ADMM iterations; 0 = unconstrained optimum was
        # feasible), the last re-plan including target blending, and running counts.
        self.last_qp_ms = 0.0
        self.last_qp_iterations = 0
        self.last_replan_ms = 0.0
        self.qp_solves = 0
        self.guard_interventions = 0
        if self.config.horizon_steps is not None:
            self._qp(self.config.horizon_steps)  # build now, not at the first chunk

    # -- public state ---------------------------------------------------------------------

    @property
    def time(self) -> float:
        """The time of the last emitted command (or of the reset)."""
        return self._t0 + self._steps * self._dt

    @property
    def state(self) -> str:
        """``"idle"`` (before reset), ``"tracking"``, ``"stopping"`` or ``"stopped"``.

        ``"stopped"`` is at rest, holding: after a stop, and after :meth:`reset` until the first
        chunk. Any accepted chunk (re)starts ``"tracking"``.
        """
        return self._state

    @property
    def stop_reason(self) -> str | None:
        """Why the last stop happened (``None`` while tracking or after a reset)."""
        return self._stop_reason

    @property
    def command(self) -> SmootherCommand:
        """The current commanded state (the last emitted command)."""
        return SmootherCommand(self.time, self._p.copy(), self._v.copy(), self._a.copy())

    @property
    def horizon_steps(self) -> int | None:
        """The QP horizon of the current plan (None before the first chunk)."""
        return self._plan_horizon

    @property
    def planned_positions(self) -> np.ndarray:
        """The remaining plan, (m, n) positions for the next m control steps (for display).

        While stopping: the braking run as the stop law alone would play it.
        """
        if self._state == "tracking":
            return self._plan_pos[:, self._plan_next :].T.copy()
        if self._state == "stopping":
            p, v, a = self._p.copy(), self._v.copy(), self._a.copy()
            rows = []
            for _ in range(self._guard.max_brake_steps):
                if not (np.any(v != 0) or np.any(a != 0)):
                    break
                a = _brake(v, a, self._stop_acc, self._stop_jerk, self._dt)
                p, v = _advance(p, v, a, self.limits.velocity, self._dt)
                rows.append(np.clip(p, self.limits.lower, self.limits.upper))
            return np.array(rows).reshape(-1, self.n)
        return np.empty((0, self.n))

    @property
    def chunk_due(self) -> bool:
        """Whether the policy should produce a new chunk now.

        Receding mode: once ``receding_steps`` actions of the newest chunk are in the past
        (counted from its start: actions that were already late on arrival count).
        Ensemble mode: once a chunk step has passed since the last chunk arrived.
        """
        if self._state == "idle":
            return False
        if not self._chunks:
            return True
        newest = self._newest()
        if self.config.mode == "receding":
            return self.time >= newest.start + self.config.receding_steps * newest.dt - 1e-9
        return self.time >= self._last_chunk_time + newest.dt - 1e-9

    # -- commands -------------------------------------------------------------------------

    def reset(self, position: np.ndarray, time: float = 0.0) -> None:
        """Start at rest at ``position`` (clipped into the limits) at ``time``; clears chunks."""
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (self.n,) or not np.all(np.isfinite(position)):
            raise SmootherInputError(
                f"reset position must be {self.n} finite values, got shape {position.shape}"
            )
        if not math.isfinite(time):
            raise SmootherInputError("reset time must be finite")
        # A robot resting a hair outside its command range (a gripper squeezed by contact)
        # starts at the nearest commandable position: a one-off offset, not a jump in motion.
        self._p = np.clip(position, self.limits.lower, self.limits.upper)
        self._v = np.zeros(self.n)
        self._a = np.zeros(self.n)
        self._t0, self._steps = float(time), 0
        self._chunks = []
        self._last_chunk_time = float(time)
        self._clear_plan()
        self._state = "stopped"
        self._stop_reason = None

    def add_chunk(self, actions: np.ndarray, start_time: float, dt: float) -> None:
        """Accept a chunk (k, n) whose action i targets ``start_time + i * dt`` and re-plan.

        Raises SmootherInputError (one line) for a malformed chunk; the current plan continues.
        A chunk received while stopping or stopped resumes tracking from the commanded state.
        """
        if self._state == "idle":
            raise RuntimeError("ChunkSmoother.add_chunk before reset()")
        chunk = self._validate(actions, start_time, dt)
        self._seq += 1
        self._chunks.append(chunk)
        self._prune_chunks()
        self._last_chunk_time = self.time
        if self._state != "tracking":
            self._state = "tracking"
            self._stop_reason = None
        self._replan()

    def stop(self, reason: str) -> None:
        """Bring every joint smoothly to rest from the commanded state; drops the chunks."""
        if self._state == "idle":
            self._stop_reason = reason
            return
        self._chunks = []
        self._clear_plan()
        self._stop_reason = reason
        at_rest = not (np.any(self._v != 0.0) or np.any(self._a != 0.0))
        self._state = "stopped" if at_rest else "stopping"

    def step(self) -> SmootherCommand:
        """Advance one ``control_dt`` and return the command for the new time."""
        if self._state == "idle":
            raise RuntimeError("ChunkSmoother.step before reset()")
        t_next = self._t0 + (self._steps + 1) * self._dt
        if self._state == "tracking":
            if t_next - self._last_chunk_time > self.config.stale_after_s + 1e-9:
                self.stop(f"stale: no chunk for {t_next - self._last_chunk_time:.3f} s")
            elif t_next > self._latest_end() + 1e-9:
                self.stop("plan ran out: no chunk covers the next control step")
            elif self._needs_replan():
                self._replan()

        lim = self.limits
        if self._state == "tracking":
            wanted = self._plan_acc[:, self._plan_next]
        elif self._state == "stopping":
            wanted = _brake(self._v, self._a, self._stop_acc, self._stop_jerk, self._dt)
        else:
            wanted = np.zeros(self.n)
        a_next = self._guard.filter(self._p, self._v, self._a, wanted)
        if self._state == "tracking":
            deviation = np.abs(a_next - wanted)
            # Bent by more than the QP's own tolerance: the plan no longer holds, re-plan.
            if np.any(deviation > 2 * self.config.qp_tolerance * lim.jerk * self._dt):
                self._replan_pending = True
                self.guard_interventions += 1
        a_next = np.clip(a_next, -lim.acceleration, lim.acceleration)
        p_next, v_next = _advance(self._p, self._v, a_next, lim.velocity, self._dt)
        self._p = np.clip(p_next, lim.lower, lim.upper)  # no-op: the guard checked it
        self._v, self._a = v_next, a_next
        self._steps += 1
        if self._state == "tracking":
            self._plan_next += 1
        elif self._state == "stopping" and not (np.any(self._v != 0) or np.any(self._a != 0)):
            self._state = "stopped"
        return self.command

    # -- internals ------------------------------------------------------------------------

    def _clear_plan(self) -> None:
        self._plan_pos = np.empty((self.n, 0))
        self._plan_acc = np.empty((self.n, 0))
        self._plan_y: np.ndarray | None = None
        self._plan_next = 0
        self._plan_horizon: int | None = None
        self._replan_pending = False

    def _validate(self, actions: Any, start_time: float, dt: float) -> _Chunk:
        try:
            array = np.array(actions, dtype=np.float64)
        except (TypeError, ValueError):
            raise SmootherInputError("chunk is not a numeric array") from None
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != self.n:
            raise SmootherInputError(f"chunk shape {array.shape}, expected (k, {self.n})")
        finite = np.isfinite(array)
        if not np.all(finite):
            i, j = np.argwhere(~finite)[0]
            raise SmootherInputError(f"chunk has a non-finite value at action {i}, joint {j}")
        try:
            start_time, dt = float(start_time), float(dt)
        except (TypeError, ValueError):
            raise SmootherInputError("chunk start_time and dt must be numbers") from None
        if not (math.isfinite(start_time) and math.isfinite(dt) and dt > 0):
            raise SmootherInputError(f"chunk needs finite start_time and dt > 0, got {dt}")
        chunk = _Chunk(array, start_time, dt, self._seq)
        next_time = self.time + self._dt
        if chunk.end < next_time - 1e-9:
            raise SmootherInputError(
                f"chunk ends at t={chunk.end:.4f}, before the next control step t={next_time:.4f}"
            )
        return chunk

    def _newest(self) -> _Chunk:
        return max(self._chunks, key=lambda c: (c.start, c.seq))

    def _latest_end(self) -> float:
        return max(c.end for c in self._chunks) if self._chunks else -math.inf

    def _prune_chunks(self) -> None:
        """Drop chunks that cover no future step (keeping the newest) and beyond max_chunks."""
        newest = self._newest()
        horizon_start = self.time + self._dt - 1e-9
        live = [c for c in self._chunks if c is newest or c.end >= horizon_start]
        live.sort(key=lambda c: (c.start, c.seq))
        self._chunks = live[-self.config.max_chunks :]

    def _horizon(self) -> int:
        if self.config.horizon_steps is not None:
            return self.config.horizon_steps
        newest = self._newest()
        span = newest.actions.shape[0] * newest.dt
        # Long chunks are planned in pieces (re-planned when half consumed): the QP's cost grows
        # with H^2 per iteration and a plan far beyond a second ahead changes nothing now.
        return int(min(self.MAX_DEFAULT_HORIZON, max(2, round(span / self._dt))))

    def _qp(self, horizon: int) -> PlanQP:
        qp = self._qps.get(horizon)
        if qp is None:
            qp = self._qps[horizon] = PlanQP(horizon, self._dt, self.config.jerk_weight)
        return qp

    def _targets(self, times: np.ndarray) -> np.ndarray:
        """The blended target (n, len(times)), clipped to the position limits."""
        if self.config.mode == "receding":
            target, _ = self._newest().predict(times)
        else:
            chunks = sorted(self._chunks, key=lambda c: (c.start, c.seq))  # oldest first
            target = _ensemble(chunks, times, self.config.ensemble_m)
            # Times no chunk covers (beyond every end): hold the newest chunk.
            none = np.isnan(target[:, 0])
            if np.any(none):
                target[none] = self._newest().predict(times[none])[0]
        return np.clip(target.T, self.limits.lower[:, None], self.limits.upper[:, None])

    def _needs_replan(self) -> bool:
        if self._replan_pending:
            return True
        remaining = self._plan_pos.shape[1] - self._plan_next
        if remaining <= 0:
            return True
        horizon = self._plan_horizon or 0
        plan_end = self.time + remaining * self._dt
        return remaining < horizon / 2 and self._latest_end() > plan_end + 1e-9

    def _replan(self) -> None:
        started = _time.perf_counter()
        self._prune_chunks()
        horizon = self._horizon()
        qp = self._qp(horizon)
        times = self.time + self._dt * qp.k
        target = self._targets(times)
        p_free, lo, hi, unit = qp.bounds(self._p, self._v, self._a, self.limits, self._scale)
        scale = self._scale[:, None]
        d = (target - p_free) / scale
        x0, y0 = self._warm_start(horizon, p_free, scale)
        solve_started = _time.perf_counter()
        x, y, iterations = qp.solve(
            d, lo, hi, unit, x0, y0, self.config.qp_max_iterations, self.config.qp_tolerance
        )
        self.last_qp_ms = (_time.perf_counter() - solve_started) * 1e3
        self.last_qp_iterations = iterations
        self.qp_solves += 1
        self._plan_pos = p_free + scale * x
        self._plan_acc = self._a[:, None] + (self.limits.jerk * self._dt)[:, None] * (x @ qp.d2.T)
        self._plan_y = y
        self._plan_next = 0
        self._plan_horizon = horizon
        self._replan_pending = False
        self.last_replan_ms = (_time.perf_counter() - started) * 1e3

    def _warm_start(
        self, horizon: int, p_free: np.ndarray, scale: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The previous plan and multipliers shifted to now (None when there is none)."""
        remaining = self._plan_pos.shape[1] - self._plan_next
        if self._plan_y is None or remaining <= 0 or self._plan_horizon is None:
            return None, None
        old_h, shift = self._plan_horizon, self._plan_next
        pos = self._plan_pos[:, shift:]
        if pos.shape[1] >= horizon:
            pos = pos[:, :horizon]
        else:
            pad = np.repeat(pos[:, -1:], horizon - pos.shape[1], axis=1)
            pos = np.concatenate([pos, pad], axis=1)
        x0 = (pos - p_free) / scale
        y_old = self._plan_y.reshape(self.n, 4, old_h)[:, :, shift:]
        y0 = np.zeros((self.n, 4, horizon))
        keep = min(horizon, y_old.shape[2])
        y0[:, :, :keep] = y_old[:, :, :keep]
        return x0, y0.reshape(self.n, 4 * horizon)
