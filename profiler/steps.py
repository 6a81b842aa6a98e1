"""Parser for the runner's output: a pure function from the text a device printed to step records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from profiler.errors import ParseError


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
    meta: dict  # the runner's metadata line (+ "end_clock_pair" from its closing line)
    steps: tuple[Step, ...]
    noise: tuple[str, ...]  # lines that were not runner output (kept for the record, never silently dropped)
    truncated: bool  # the last line was cut off (device died or the runner crashed mid-line)


def _step(obj: dict, line: str) -> Step:
    try:
        phases = tuple((str(k), int(v)) for k, v in (obj.get("phases_ns") or {}).items())
        loss = obj.get("loss")
        loss = None if loss is None else float(loss)
        step_ns = int(obj["step_ns"])
        if step_ns < 0 or any(v < 0 for _, v in phases):
            raise ValueError("negative duration")
        return Step(step=int(obj["step"]), warmup=bool(obj.get("warmup", False)), step_ns=step_ns,
                    phases_ns=phases, loss=loss if loss is None or math.isfinite(loss) else float("nan"),
                    t_start_ns=None if obj.get("t_start_ns") is None else int(obj["t_start_ns"]),
                    t_end_ns=None if obj.get("t_end_ns") is None else int(obj["t_end_ns"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ParseError(f"malformed step line ({exc})", line) from exc


def parse_run_output(text: str) -> RunOutput:
    """Parse runner stdout. Raises ParseError when a step line is malformed or no step was printed."""
    meta: dict = {}
    steps: list[Step] = []
    noise: list[str] = []
    lines = text.splitlines()
    truncated = bool(text) and not text.endswith("\n")
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:
            if truncated and i == len(lines) - 1 and stripped.startswith("{"):
                break  # the device went away mid-line: keep what came before
            noise.append(line)
            continue
        if isinstance(obj, dict) and "step" in obj:
            steps.append(_step(obj, stripped))
        elif isinstance(obj, dict) and ("runner_version" in obj or "runner" in obj):
            meta = obj
        elif isinstance(obj, dict) and obj.get("end") is True:
            meta = {**meta, "end_clock_pair": obj.get("clock_pair")}
        else:
            noise.append(line)
    if not steps:
        raise ParseError("runner printed no step lines", (text.strip() or "(no output)")[-300:])
    return RunOutput(meta, tuple(steps), tuple(noise), truncated)


def clock_pairs(meta: dict) -> list[dict]:
    """The (CLOCK_MONOTONIC, CLOCK_REALTIME) pairs a run printed, for energy alignment."""
    return [p for p in (meta.get("clock_pair"), meta.get("end_clock_pair")) if isinstance(p, dict)]
