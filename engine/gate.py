"""A regression gate for CI: a candidate run's results directory against a baseline run's, cell by cell.

`gate(base, candidate, max_slowdown=0.05, alpha=0.05, allow=())` -> `GateResult`; `compare_frames` does the same on
loaded frames.

- Cells match by `KEY`: device, workload, model config, variant, batch, governor (requested), affinity. Two configs of
  one model are two keys, never pooled; within one side the cells of a key (several campaigns under a results root)
  are pooled only when their fixed metadata agree (`store.check_poolable`).
- A matched pair whose tool versions, artifact hash or device facts differ (the campaign's probed facts, the model,
  the governor applied, pinned frequencies) is refused, unless its kind is allowed (`KINDS`); then it is compared and
  the difference is named in its reason and the JSON.
- A compared pair: `stats.slowdown` of the timed step times (Mann-Whitney U, bootstrap CI of the median ratio), and
  of the energy per step where both sides have it. A regression: significantly slower (or more energy) by at least
  1 + max_slowdown, asv-style.
- `GateResult.exit_code`: 1 when a cell regressed, a pair was refused or nothing matched; else 0. `to_json()` and
  `junit()` (one testcase per cell: a failure for a regression, skipped for an unmatched or refused cell).
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autlearn.engine.store import bad_cell_lines, check_poolable, load_devices, load_results
from autlearn.profiler import stats
from autlearn.profiler.errors import UserError

KEY = ("device_serial", "workload", "config", "variant", "batch", "governor_requested", "affinity")
KINDS = ("tools", "artifact", "device")  # what may differ between the two sides when allowed
_DEVICE_COLUMNS = ("device_model", "device_virtual", "governor_applied", "pinned_khz")
PASS, REGRESSION, REFUSED = "pass", "regression", "refused"
ONLY_BASE, ONLY_CANDIDATE = "only in base", "only in candidate"
JSON_SCHEMA = "autlearn.gate/1"

Devices = Mapping[str, Mapping[str, Mapping[str, Any]]]  # campaign -> serial -> facts (store.load_devices)


class GateError(UserError):
    """Nothing to compare: a missing directory, one without finished cells, or no cell in both."""


class GateRefused(UserError):
    """Matched cells differ in what `--allow-different` must allow (tool versions, artifact, device facts)."""


@dataclass(frozen=True, order=True)
class CellKey:
    device: str
    workload: str
    config: str  # the model config as stored: sorted JSON ("{}" for none)
    variant: str
    batch: int
    governor: str
    affinity: str

    @property
    def workload_label(self) -> str:
        """`lstm` or `lstm[hidden_size=32]`: the workload with its config when it has one."""
        try:
            cfg = json.loads(self.config) if self.config else {}
        except ValueError:
            return f"{self.workload}[{self.config}]"
        if not cfg:
            return self.workload
        return f"{self.workload}[{','.join(f'{k}={_plain(v)}' for k, v in sorted(cfg.items()))}]"

    @property
    def label(self) -> str:
        return f"{self.device}/{self.workload_label}-{self.variant}/b{self.batch}/{self.governor}/{self.affinity}"

    def to_dict(self) -> dict[str, Any]:
        cfg: Any
        try:
            cfg = json.loads(self.config) if self.config else {}
        except ValueError:
            cfg = self.config
        return {
            "device": self.device,
            "workload": self.workload,
            "config": cfg,
            "variant": self.variant,
            "batch": self.batch,
            "governor": self.governor,
            "affinity": self.affinity,
        }


@dataclass(frozen=True)
class Difference:
    kind: str  # one of KINDS
    what: str  # e.g. "artifact_hash 3f2a9c01b7e4 -> 9be07d2210aa"
    allowed: bool


@dataclass(frozen=True)
class CellResult:
    key: CellKey
    status: str  # PASS | REGRESSION | REFUSED | ONLY_BASE | ONLY_CANDIDATE
    reason: str
    differences: tuple[Difference, ...] = ()
    time: stats.Slowdown | None = None  # of the step times (ns)
    energy: stats.Slowdown | None = None  # of the energy per step (J), when both sides have it

    @property
    def compared(self) -> bool:
        return self.status in (PASS, REGRESSION)


@dataclass(frozen=True)
class GateResult:
    base: str
    candidate: str
    max_slowdown: float  # 0.05: at least 5 % slower (and significant) is a regression
    alpha: float
    allowed: tuple[str, ...]
    cells: tuple[CellResult, ...]
    warnings: tuple[str, ...] = ()  # cells left out as bad, too few samples to show a difference

    def with_status(self, *status: str) -> tuple[CellResult, ...]:
        return tuple(c for c in self.cells if c.status in status)

    @property
    def compared(self) -> tuple[CellResult, ...]:
        return tuple(c for c in self.cells if c.compared)

    @property
    def verdict(self) -> str:
        """The first that applies: "regression", "refused", "nothing compared", else "pass"."""
        if self.with_status(REGRESSION):
            return REGRESSION
        if self.with_status(REFUSED):
            return REFUSED
        return PASS if self.compared else "nothing compared"

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == PASS else 1

    def error(self) -> UserError | None:
        """What stops the gate besides a regression: refused pairs, or no pair at all (one line each)."""
        refused = self.with_status(REFUSED)
        if refused:
            kinds = sorted({d.kind for c in refused for d in c.differences if not d.allowed})
            return GateRefused(
                f"refused to compare {len(refused)} cell(s): different {', '.join(kinds)} (first: "
                f"{refused[0].key.label}: {'; '.join(d.what for d in refused[0].differences if not d.allowed)}); "
                f"--allow-different {','.join(kinds)} compares them anyway"
            )
        if not self.compared:
            return GateError(
                f"nothing to compare: no cell of {self.base} matches one of {self.candidate} (by device, workload, "
                "config, variant, batch, governor and affinity)"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": JSON_SCHEMA,
            "base": self.base,
            "candidate": self.candidate,
            "max_slowdown": self.max_slowdown,
            "max_ratio": 1 + self.max_slowdown,
            "alpha": self.alpha,
            "allowed_differences": list(self.allowed),
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "counts": {
                "cells": len(self.cells),
                "compared": len(self.compared),
                "regressions": len(self.with_status(REGRESSION)),
                "refused": len(self.with_status(REFUSED)),
                "unmatched": len(self.with_status(ONLY_BASE, ONLY_CANDIDATE)),
                "compared_despite_differences": sum(1 for c in self.compared if c.differences),
            },
            "warnings": list(self.warnings),
            "cells": [
                {
                    "cell": c.key.label,
                    **c.key.to_dict(),
                    "status": c.status,
                    "reason": c.reason,
                    "differences": [{"kind": d.kind, "what": d.what, "allowed": d.allowed} for d in c.differences],
                    "time": _slowdown_json(c.time, "ms", 1e-6),
                    "energy": _slowdown_json(c.energy, "J", 1.0),
                }
                for c in self.cells
            ],
        }

    def junit(self) -> ET.ElementTree:
        """JUnit XML: one testsuite, one testcase per cell (failure: regression; skipped: unmatched or refused)."""
        counts = {
            "tests": str(len(self.cells)),
            "failures": str(len(self.with_status(REGRESSION))),
            "errors": "0",
            "skipped": str(len(self.cells) - len(self.compared)),
        }
        root = ET.Element("testsuites", {"name": "autlearn results compare", **counts})
        suite = ET.SubElement(root, "testsuite", {"name": f"{self.candidate} vs {self.base}", **counts})
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("base", self.base),
            ("candidate", self.candidate),
            ("max_slowdown", f"{self.max_slowdown:g}"),
            ("alpha", f"{self.alpha:g}"),
            ("allowed_differences", ",".join(self.allowed)),
        ):
            ET.SubElement(props, "property", {"name": name, "value": value})
        for c in self.cells:
            case = ET.SubElement(suite, "testcase", {"classname": "autlearn.gate", "name": c.key.label, "time": "0"})
            if c.status == REGRESSION:
                ET.SubElement(case, "failure", {"type": REGRESSION, "message": c.reason}).text = c.reason
            elif not c.compared:
                ET.SubElement(case, "skipped", {"message": f"{c.status}: {c.reason}"})
            details = [f"{c.status}: {c.reason}", *(f"{d.kind} differs: {d.what}" for d in c.differences)]
            ET.SubElement(case, "system-out").text = "\n".join(details)
        ET.indent(root)
        return ET.ElementTree(root)

    def write_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    def write_junit(self, path: str | os.PathLike[str]) -> None:
        self.junit().write(path, encoding="utf-8", xml_declaration=True)


def gate(
    base: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    *,
    max_slowdown: float = 0.05,
    alpha: float = 0.05,
    allow: Iterable[str] = (),
) -> GateResult:
    """Compare two results directories (a campaign directory or a results root each); see the module docstring."""
    frames, devices, warnings = [], [], []
    for side, path in (("base", base), ("candidate", candidate)):
        if not Path(path).is_dir():
            raise GateError(f"{path}: no such results directory")
        df = load_results(path)
        warnings += [f"{side}: {line}" for line in bad_cell_lines(df)]
        if df.empty:
            raise GateError(f"{path}: no finished cells to compare")
        frames.append(df)
        devices.append(load_devices(path))
    result = compare_frames(
        frames[0],
        frames[1],
        devices[0],
        devices[1],
        max_slowdown=max_slowdown,
        alpha=alpha,
        allow=allow,
        names=(str(base), str(candidate)),
    )
    return replace(result, warnings=(*warnings, *result.warnings))


def compare_frames(
    base: pd.DataFrame,
    candidate: pd.DataFrame,
    base_devices: Devices,
    candidate_devices: Devices,
    *,
    max_slowdown: float = 0.05,
    alpha: float = 0.05,
    allow: Iterable[str] = (),
    names: tuple[str, str] = ("base", "candidate"),
) -> GateResult:
    """The gate on raw samples (`store.load_results` frames) and device facts (`store.load_devices`)."""
    allowed = tuple(k for k in KINDS if k in set(allow))
    unknown = set(allow) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; valid: {', '.join(KINDS)}")
    if not max_slowdown >= 0:
        raise ValueError("max_slowdown must be >= 0")
    a, b = _cells(base), _cells(candidate)
    cells, warnings = [], []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            cells.append(CellResult(key, ONLY_BASE, f"no finished cell in {names[1]} (not run, failed or stale)"))
            continue
        if key not in a:
            cells.append(CellResult(key, ONLY_CANDIDATE, f"no finished cell in {names[0]} (not run, failed or stale)"))
            continue
        diffs = _differences(a[key], b[key], base_devices, candidate_devices, allowed)
        refused = [d for d in diffs if not d.allowed]
        if refused:
            kinds = ",".join(sorted({d.kind for d in refused}))
            why = "; ".join(d.what for d in refused)
            cells.append(CellResult(key, REFUSED, f"{why} (--allow-different {kinds} to compare)", diffs))
            continue
        time = stats.slowdown(
            _values(a[key], "step_ns"), _values(b[key], "step_ns"), max_ratio=1 + max_slowdown, alpha=alpha
        )
        ea, eb = _values(a[key], "energy_j"), _values(b[key], "energy_j")
        energy = stats.slowdown(ea, eb, max_ratio=1 + max_slowdown, alpha=alpha) if len(ea) and len(eb) else None
        reason = f"time: {time.reason}" + (f"; energy: {energy.reason}" if energy else "")
        if diffs:
            reason += f" (compared despite: {'; '.join(d.what for d in diffs)})"
        bad = time.regression or (energy is not None and energy.regression)
        cells.append(CellResult(key, REGRESSION if bad else PASS, reason, diffs, time, energy))
        if time.underpowered:
            warnings.append(f"{key.label}: {time.reason}: it cannot fail the gate (more steps or repetitions)")
    return GateResult(names[0], names[1], max_slowdown, alpha, allowed, tuple(cells), tuple(warnings))


def _cells(df: pd.DataFrame) -> dict[CellKey, pd.DataFrame]:
    """Timed samples by cell key; the cells of one key must be poolable (else IncompatibleRuns)."""
    if df.empty:
        return {}
    timed = df[~df["warmup"].astype(bool)]
    check_poolable(timed, by=KEY)
    out = {}
    for k, g in timed.groupby(list(KEY), sort=False, dropna=False):
        d, w, c, v, batch, gov, aff = k
        out[CellKey(str(d), str(w), str(c), str(v), int(batch), str(gov), str(aff))] = g
    return out


def _values(g: pd.DataFrame, column: str) -> np.ndarray:
    if column not in g:
        return np.empty(0)
    x = pd.to_numeric(g[column], errors="coerce").to_numpy(float)
    return np.asarray(x[np.isfinite(x)])


def _differences(
    a: pd.DataFrame, b: pd.DataFrame, da: Devices, db: Devices, allowed: tuple[str, ...]
) -> tuple[Difference, ...]:
    out: list[Difference] = []

    def add(kind: str, what: str) -> None:
        out.append(Difference(kind, what, kind in allowed))

    if _first(a, "artifact_hash") != _first(b, "artifact_hash"):
        add("artifact", f"artifact_hash {_short(_first(a, 'artifact_hash'))} -> {_short(_first(b, 'artifact_hash'))}")
    for tool, (x, y) in _dict_diff(_json(_first(a, "tool_versions")), _json(_first(b, "tool_versions"))):
        add("tools", f"{tool} {x} -> {y}")
    for col in _DEVICE_COLUMNS:
        if _first(a, col) != _first(b, col):
            add("device", f"{col} {_first(a, col)} -> {_first(b, col)}")
    fa, fb = _facts(a, da), _facts(b, db)
    for fact, (x, y) in _dict_diff(fa, fb):
        add("device", f"{fact} {x} -> {y}")
    return tuple(out)


def _facts(g: pd.DataFrame, devices: Devices) -> dict[str, Any]:
    """The probed facts of the cell's device, as its campaign recorded them (campaigns pooled in one key must agree)."""
    serial = str(g["device_serial"].iloc[0])
    found = [devices.get(str(c), {}).get(serial) for c in g["campaign"].unique()] if "campaign" in g else []
    recorded = [dict(f) for f in found if f is not None]
    if any(f != recorded[0] for f in recorded[1:]):
        raise GateError(f"{serial}: the campaigns pooled in one cell recorded different device facts")
    return recorded[0] if recorded else {}


def _dict_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, tuple[str, str]]]:
    return [
        (k, (_plain(a[k]) if k in a else "(none)", _plain(b[k]) if k in b else "(none)"))
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k) or (k in a) != (k in b)
    ]


def _first(g: pd.DataFrame, column: str) -> Any:
    if column not in g:
        return None
    v = g[column].iloc[0]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v


def _json(text: Any) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {"?": text}
    return doc if isinstance(doc, dict) else {"?": doc}


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if len(s) > 16 and all(ch in "0123456789abcdef" for ch in s) else s


def _plain(v: Any) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _slowdown_json(s: stats.Slowdown | None, unit: str, scale: float) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "unit": unit,
        "baseline_median": _finite(s.baseline_median * scale),
        "candidate_median": _finite(s.candidate_median * scale),
        "ratio": _finite(s.ratio),
        "ci_low": _finite(s.ci_low),
        "ci_high": _finite(s.ci_high),
        "p_value": _finite(s.p_value),
        "min_p": _finite(s.min_p),
        "n_baseline": s.n_baseline,
        "n_candidate": s.n_candidate,
        "significant": s.significant,
        "regression": s.regression,
        "verdict": s.verdict,
        "reason": s.reason,
    }


__all__ = [
    "KEY",
    "KINDS",
    "CellKey",
    "CellResult",
    "Difference",
    "GateError",
    "GateRefused",
    "GateResult",
    "compare_frames",
    "gate",
]
