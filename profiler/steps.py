"""The one parser for the runner's output: a pure function from the text a device printed to step records.

The runner prints a metadata line, W+N step lines numbered from 0 and (runner >= 2) a closing
`{"end": true, "clock_pair": ...}` line. Campaigns parse leniently (`strict=False`): lines that are not runner
output (a vendor linker warning) are kept as noise and a last line cut off by a dying device is dropped. Tests of
the runner itself parse strictly: nothing but runner output, numbering and count as announced. Both modes check
what a measurement relies on: durations >= 0, `t_end_ns - t_start_ns == step_ns`, steps in order without overlap,
well-formed clock pairs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from autlearn.profiler.errors import ParseError


@dataclass(frozen=True)
class Step:
    step: int
    warmup: bool
    step_ns: int
    phases_ns: tuple[tuple[str, int], ...]
    loss: float | None
    t_start_ns: int | None = None  # device CLOCK_MONOTONIC at step start, when the runner reports it
    t_end_ns: int | None = None


@dataclass(frozen=True)
class RunOutput:
    meta: dict[str, Any]  # the runner's metadata line (+ "end_clock_pair" from its closing line)
    steps: tuple[Step, ...]
    noise: tuple[str, ...]  # lines that were not runner output (kept for the record, never silently dropped)
    truncated: bool  # the last line was cut off (device died or the runner crashed mid-line)
    end: dict[str, Any] | None = None  # the closing line (runner >= 2)

    @property
    def timed(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.warmup)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _clock_pair_ok(pair: Any) -> bool:
    return (
        isinstance(pair, dict)
        and all(_is_int(pair.get(k)) for k in ("mono_ns", "real_ns"))
        and all(_is_int(v) and v >= 0 for k, v in pair.items() if k == "gap_ns")
    )


_STRICT_TYPES = {"step": int, "warmup": bool, "phases_ns": dict, "step_ns": int}


def _step(obj: dict[str, Any], line: str, index: int, strict: bool) -> Step:
    where = f"malformed step line {index}"
    if strict and not all(
        isinstance(obj.get(k), t) and (t is bool or _is_int(obj.get(k)) or t is dict) for k, t in _STRICT_TYPES.items()
    ):
        raise ParseError(f"{where} (missing or mistyped step, warmup, phases_ns or step_ns)", line)
    try:
        phases = tuple((str(k), int(v)) for k, v in (obj.get("phases_ns") or {}).items())
        loss = obj.get("loss")
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))):
            raise ValueError("loss is not a number")
        step_ns = int(obj["step_ns"])
        if step_ns < 0 or any(v < 0 for _, v in phases):
            raise ValueError("negative duration")
        t0, t1 = obj.get("t_start_ns"), obj.get("t_end_ns")
        if (t0, t1) != (None, None) and not (_is_int(t0) and _is_int(t1) and t1 - t0 == step_ns):
            raise ValueError("bad t_start_ns/t_end_ns")
        return Step(
            step=int(obj["step"]),
            warmup=bool(obj.get("warmup", False)),
            step_ns=step_ns,
            phases_ns=phases,
            loss=None if loss is None else float(loss) if math.isfinite(loss) else float("nan"),
            t_start_ns=t0,
            t_end_ns=t1,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ParseError(f"{where} ({exc})", line) from exc


def parse_run_output(text: str, *, strict: bool = False) -> RunOutput:
    """Parse runner stdout. Raises ParseError when a line the runner printed is malformed, no step was printed,
    or (strict) anything but runner output appears or the steps are not the announced 0..W+N-1."""
    meta: dict[str, Any] = {}
    end: dict[str, Any] | None = None
    steps: list[Step] = []
    noise: list[str] = []
    lines = text.splitlines()
    truncated = bool(text) and not text.endswith("\n")
    if strict and not text.strip():
        raise ParseError("runner printed nothing")
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            if strict:
                raise ParseError(f"runner line is not JSON ({exc.msg})", stripped) from None
            if truncated and i == len(lines) - 1 and stripped.startswith("{"):
                break  # the device went away mid-line: keep what came before
            noise.append(line)
            continue
        first = not meta and not steps and not noise
        if isinstance(obj, dict) and "step" in obj:
            if strict and not meta:
                raise ParseError("first runner line is not the metadata line", stripped)
            steps.append(_step(obj, stripped, len(steps), strict))
            if strict and steps[-1].step != len(steps) - 1:
                raise ParseError(f"malformed step line {len(steps) - 1} (numbered {steps[-1].step})", stripped)
            if (
                len(steps) > 1
                and steps[-1].t_start_ns is not None
                and steps[-2].t_end_ns is not None
                and steps[-1].t_start_ns < steps[-2].t_end_ns
            ):
                raise ParseError(f"bad t_start_ns/t_end_ns in step line {len(steps) - 1} (overlaps the last)", stripped)
        elif isinstance(obj, dict) and ("runner_version" in obj or "runner" in obj) and (first or not strict):
            if "clock_pair" in obj and not _clock_pair_ok(obj["clock_pair"]):
                raise ParseError("malformed clock_pair in the metadata line", stripped)
            meta = obj
        elif isinstance(obj, dict) and "end" in obj:
            if obj.get("end") is not True or not _clock_pair_ok(obj.get("clock_pair")):
                raise ParseError("malformed end line", stripped)
            end = obj
        elif strict:
            raise ParseError(
                "first runner line is not the metadata line" if first else "unexpected runner line", stripped
            )
        else:
            noise.append(line)
    if not steps:
        raise ParseError("runner printed no step lines", (text.strip() or "(no output)")[-300:])
    if strict:
        expected = meta.get("warmup", 0) + meta.get("steps", len(steps))
        if len(steps) != expected:
            raise ParseError(f"runner printed {len(steps)} step lines, expected {expected}", lines[-1])
    if end is not None:
        meta = {**meta, "end_clock_pair": end["clock_pair"]}
    return RunOutput(meta, tuple(steps), tuple(noise), truncated, end)


def clock_pairs(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The (CLOCK_MONOTONIC, CLOCK_REALTIME) pairs a run printed, for energy alignment."""
    return [p for p in (meta.get("clock_pair"), meta.get("end_clock_pair")) if isinstance(p, dict)]


# `times` (POSIX shell builtin, mksh on Android): two lines, the shell's own user/system CPU time, then its
# children's, each "XmY.YYs XmY.YYs"
_TIMES_RE = re.compile(r"^\s*(\d+)m(\d+(?:\.\d+)?)s\s+(\d+)m(\d+(?:\.\d+)?)s\s*$")
TIMES_SUFFIX = "; s=$?; times >&2; exit $s"  # appended to a launch: its children's CPU time on stderr


def parse_children_cpu_s(stderr: str) -> float | None:
    """The children's user + system CPU seconds from the last `times` output in `stderr` (None: not there)."""
    lines = [m for m in (_TIMES_RE.match(line) for line in stderr.splitlines()) if m]
    if len(lines) < 2:
        return None
    m = lines[-1]
    return int(m[1]) * 60 + float(m[2]) + int(m[3]) * 60 + float(m[4])


def cpu_share(cpu_s: float | None, wall_s: float, threads: Any) -> float | None:
    """The share of its threads' CPUs a launch held: CPU seconds / (wall seconds x threads)."""
    if cpu_s is None or wall_s <= 0 or not _is_int(threads) or threads < 1:
        return None
    return cpu_s / (wall_s * threads)
