"""Put training steps (device CLOCK_MONOTONIC) on a power trace's time base and integrate energy per step.

Clock offset: the host asks the device for its clock several times; each round trip gives
(host_send, device_time, host_recv). The device read happened somewhere inside [host_send, host_recv], so
offset = host - device lies within [host_send - d, host_recv - d]. We intersect those intervals over the
minimum-RTT samples; the reported error bound is half the minimum RTT (the intersection is never wider).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from autlearn.profiler.energy import PowerTrace


@dataclass(frozen=True)
class ClockOffset:
    """host_time = device_time + offset_s, within +-error_s (= min RTT / 2)."""

    offset_s: float
    error_s: float
    min_rtt_s: float
    samples_used: int
    samples: int


def estimate_offset(round_trips: Iterable[tuple[float, float, float]], *, keep: float = 0.25) -> ClockOffset:
    """Offset from (host_send_s, device_s, host_recv_s) tuples (seconds; any host clock, any device clock).
    Keeps the `keep` fraction of round trips with the smallest RTT (at least one)."""
    a = np.asarray(list(round_trips), dtype=np.float64).reshape(-1, 3)
    if a.shape[0] == 0:
        raise ValueError("need at least one round trip")
    rtt = a[:, 2] - a[:, 0]
    if np.any(rtt < 0):
        raise ValueError("host_recv before host_send in a round trip")
    order = np.argsort(rtt, kind="stable")
    best = order[: max(1, int(round(keep * len(order))))]
    lo = np.max(a[best, 0] - a[best, 1])
    hi = np.min(a[best, 2] - a[best, 1])
    min_rtt = float(rtt[order[0]])
    if lo <= hi:
        offset = (lo + hi) / 2
    else:  # inconsistent intervals (drift, asymmetric delays): trust the single fastest round trip
        i = order[0]
        offset = (a[i, 0] + a[i, 2]) / 2 - a[i, 1]
    return ClockOffset(float(offset), min_rtt / 2, min_rtt, int(len(best)), int(a.shape[0]))


def _cumulative(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    c = np.zeros_like(t)
    if t.size > 1:
        c[1:] = np.cumsum((p[1:] + p[:-1]) * np.diff(t) / 2)
    return c


def _antiderivative(t: np.ndarray, p: np.ndarray, c: np.ndarray, x: npt.ArrayLike) -> np.ndarray:
    """Integral of the piecewise-linear interpolation of p from t[0] to x (x clipped to the trace)."""
    x = np.clip(np.asarray(x, dtype=np.float64), t[0], t[-1])
    j = np.clip(np.searchsorted(t, x, side="right") - 1, 0, t.size - 2)
    px = np.interp(x, t, p)
    return cast(np.ndarray, c[j] + (x - t[j]) * (p[j] + px) / 2)


def integrate(trace: PowerTrace, t0: npt.ArrayLike, t1: npt.ArrayLike) -> np.ndarray:
    """Energy (J) of V*I over [t0, t1] (trace time), trapezoidal, with partial samples at both edges."""
    t, p = trace.t, trace.power
    if t.size < 2:
        raise ValueError("trace has fewer than 2 samples")
    c = _cumulative(t, p)
    return cast(np.ndarray, _antiderivative(t, p, c, t1) - _antiderivative(t, p, c, t0))


def baseline_power(trace: PowerTrace, t0: float, t1: float) -> float:
    """Mean power (W) over [t0, t1], e.g. the idle window measured before the cell."""
    if t1 <= t0:
        raise ValueError(f"empty baseline window [{t0}, {t1}]")
    return float(integrate(trace, t0, t1)) / (t1 - t0)


@dataclass(frozen=True)
class StepEnergy:
    step: int
    start_s: float  # trace time
    end_s: float
    gross_j: float
    net_j: float | None  # gross minus baseline power x duration
    mean_w: float
    uncertainty_j: float  # energy change if the step window moves by +-error_s
    gap_s: float  # time inside the window not covered by samples (dropped samples), interpolated


@dataclass(frozen=True)
class StepEnergyReport:
    steps: tuple[StepEnergy, ...]
    baseline_w: float | None
    alignment_error_s: float
    labels: tuple[str, ...]

    @property
    def total_gross_j(self) -> float:
        return float(sum(s.gross_j for s in self.steps))

    @property
    def mean_w(self) -> float:
        dur = sum(s.end_s - s.start_s for s in self.steps)
        return self.total_gross_j / dur if dur > 0 else float("nan")


def trace_shift(trace: PowerTrace, clock: ClockOffset) -> float:
    """Seconds to add to a device time (in the clock's device units) to get trace time, for a trace whose
    t=0 is known in host time (Monsoon: t0_host)."""
    if trace.t0_host is None:
        raise ValueError("trace has no host time anchor (t0_host)")
    return clock.offset_s - trace.t0_host


def step_energies(
    trace: PowerTrace,
    steps_ns: Sequence[tuple[int, int]],
    clock: ClockOffset,
    *,
    shift_s: float | None = None,
    baseline_w: float | None = None,
    step_ids: Sequence[int] | None = None,
) -> StepEnergyReport:
    """Per-step energy. `steps_ns`: (start, end) in device CLOCK_MONOTONIC ns. Trace time of a device time d is
    d + shift_s; by default shift_s = clock.offset_s - trace.t0_host. `baseline_w` (see baseline_power) gives
    net energy. Steps outside the trace raise ValueError (a truncated trace must not pass as a cheap step)."""
    shift = trace_shift(trace, clock) if shift_s is None else shift_s
    se = np.asarray(steps_ns, dtype=np.float64).reshape(-1, 2) / 1e9 + shift
    if np.any(se[:, 1] < se[:, 0]):
        raise ValueError("a step ends before it starts")
    t, p = trace.t, trace.power
    if se.size and (se.min() < t[0] - clock.error_s or se.max() > t[-1] + clock.error_s):
        raise ValueError(
            f"steps span [{se.min():.3f}, {se.max():.3f}] s but the trace covers [{t[0]:.3f}, {t[-1]:.3f}] s"
        )
    c = _cumulative(t, p)
    gross = _antiderivative(t, p, c, se[:, 1]) - _antiderivative(t, p, c, se[:, 0])
    e = clock.error_s
    # a common shift by d changes E by int_{end}^{end+d} P - int_{start}^{start+d} P; with P >= 0 that is at
    # most e * max(max P near start, max P near end)
    pmax_start = _window_max(t, p, se[:, 0] - e, se[:, 0] + e)
    pmax_end = _window_max(t, p, se[:, 1] - e, se[:, 1] + e)
    unc = e * np.maximum(pmax_start, pmax_end)
    nominal = 1.0 / trace.sample_rate if trace.sample_rate else float(np.median(np.diff(t)))
    dt = np.diff(t)
    out = []
    ids = list(step_ids) if step_ids is not None else list(range(len(se)))
    for k, ((a, b), g, u) in enumerate(zip(se, gross, unc)):
        dur = b - a
        lo, hi = np.searchsorted(t, a), np.searchsorted(t, b)
        seg = slice(max(lo - 1, 0), min(hi, dt.size))
        gap = float(np.clip(dt[seg] - nominal, 0, None)[dt[seg] > 1.5 * nominal].sum()) if dt.size else 0.0
        out.append(
            StepEnergy(
                step=int(ids[k]),
                start_s=float(a),
                end_s=float(b),
                gross_j=float(g),
                net_j=None if baseline_w is None else float(g - baseline_w * dur),
                mean_w=float(g / dur) if dur > 0 else float("nan"),
                uncertainty_j=float(u),
                gap_s=min(gap, float(dur)),
            )
        )
    return StepEnergyReport(tuple(out), baseline_w, e, trace.labels)


def _window_max(t: np.ndarray, p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    out = np.empty(lo.shape)
    for i, (a, b) in enumerate(zip(lo, hi)):
        i0, i1 = np.searchsorted(t, a, "left"), np.searchsorted(t, b, "right")
        vals = np.concatenate([p[i0:i1], np.interp([a, b], t, p)])
        out[i] = vals.max()
    return out
