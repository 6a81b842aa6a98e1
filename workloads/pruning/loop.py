"""Closing the loop from device back to model.

A table predicts; the device decides. Each budget is first searched with the table as given. Every pruned model is
compiled and measured on the device. A model that measures over its budget gets a lower search target:
`predicted * budget / measured * (1 - margin)`, i.e. the table's error on that very model is taken out, plus a
margin for the measurement's own noise. The base is the model's own prediction, not the target it was searched to:
a search lands below its target by up to one pruning step, and a target corrected from above that landing point
can pick the same model again (CI once saw a budget end `exceeded` after three rounds of one model). That budget is
then pruned further. This repeats for at most `corrections` rounds.
A budget ends `met` (measured <= budget), `exceeded` (still over after the last correction, or already at the
smallest reachable model), `not measured` (the cell failed) or `not reached by the search` (max_iterations).

The module only orchestrates. `propose` (search or SVD: targets -> exports) and `measure` (a device campaign:
exports -> values) are passed in, so the rule is tested without a device and the CLI wires in the real ones.
Latency is independent of the weights, so a model whose architecture was already measured is not measured again.
With `per_budget=True` (a `measure` that reports each value relative to the budget's own reference, e.g. measured
beside the model defining the budget) that holds per budget only: a model two budgets share is measured for each.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autlearn.workloads.pruning.budget import Budget
from autlearn.workloads.registry import canonical_config

MEASURED_KINDS = ("latency", "energy")


@dataclass(frozen=True)
class Attempt:
    """One pruned model for one budget in one round of the loop."""

    budget: Budget  # the user's budget (device units)
    target: Budget  # what the table was asked to meet
    round: int
    export: str
    predicted: float | None  # the table's value for the model (base unit of the kind)
    measured: float | None  # device value (latency/energy), exact value (flops/memory)
    verdict: str  # met | exceeded | not measured | not reached by the search
    info: Mapping[str, Any] = field(default_factory=dict)  # measurement provenance (results dir, rounds)
    architecture: str = ""  # the model config (JSON) of this attempt; the export file is rewritten later

    def row(self) -> dict[str, Any]:
        return {
            "budget": str(self.budget),
            "kind": self.budget.kind,
            "budget_value": self.budget.value,
            "search_target": self.target.value,
            "loop_round": self.round,
            "predicted": self.predicted,
            "value": self.measured,
            "met": self.verdict == "met",
            "verdict": self.verdict,
            "export": self.export,
            "architecture": self.architecture,
            **self.info,
        }


def corrected(target: Budget, predicted: float | None, budget: Budget, measured: float, margin: float) -> Budget:
    """The next search target of a model the table predicted at `predicted` (searched to `target`) that measured
    `measured` against `budget`: always under the model's own prediction, so the search picks a smaller model."""
    base = target.value if predicted is None or predicted != predicted else min(target.value, predicted)
    return Budget(target.kind, base * budget.value / measured * (1.0 - margin))


def _arch(doc: Mapping[str, Any]) -> str:
    """What latency depends on: the model config of a compressed.json (not its weights)."""

    return canonical_config(doc["config"])


def close_loop(
    budgets: Sequence[Budget],
    propose: Callable[[list[Budget]], Mapping[str, str]],
    measure: Callable[[dict[str, str], int], tuple[Mapping[str, Mapping[str, float | None]], Mapping[str, Any]]],
    *,
    corrections: int = 2,
    margin: float = 0.05,
    smallest: Callable[[str], float] | None = None,
    start: Mapping[Budget, Budget] | None = None,
    per_budget: bool = False,
    emit: Callable[[str], None] = lambda m: None,
) -> tuple[list[Attempt], list[Attempt]]:
    """(final attempt per budget, every attempt). `propose(targets)` returns {str(target): compressed.json};
    `measure({label: export}, round)` returns ({label: {"latency": ms, "energy": mJ, ...}}, provenance): the kinds'
    values are what verdicts use, other keys (e.g. the raw measurement beside a normalized one) go to the attempt's
    info. `start` gives a budget's first search target (default: the budget itself)."""
    targets = {str(b): (start or {}).get(b, b) for b in budgets}
    known: dict[tuple[str, str], tuple[dict[str, float | None], dict[str, Any]]] = {}  # key -> (values, provenance)
    history: list[Attempt] = []
    final: dict[str, Attempt] = {}
    for k in range(corrections + 1):
        exports = propose(sorted(set(targets.values())))
        chosen = {label: exports[str(t)] for label, t in targets.items() if str(t) in exports}
        docs = {label: json.loads(Path(path).read_text()) for label, path in chosen.items()}  # read once a round
        archs = {label: _arch(doc) for label, doc in docs.items()}
        keys = {label: (label if per_budget else "", arch) for label, arch in archs.items()}
        todo: dict[tuple[str, str], str] = {}  # key -> one label (a key is measured once)
        for label in chosen:
            if targets[label].kind in MEASURED_KINDS and keys[label] not in known:
                todo.setdefault(keys[label], label)
        if todo:
            emit(f"round {k}: measuring {len(todo)} model(s) on the device")
            values, info = measure({label: chosen[label] for label in todo.values()}, k)
            for key, label in todo.items():
                known[key] = (dict(values.get(label) or {}), dict(info))
        again = False
        for b in budgets:
            label, target = str(b), targets[str(b)]
            path = chosen.get(label)
            if path is None:  # the search stopped above the target (max_iterations)
                final[label] = Attempt(b, target, k, "", None, None, "not reached by the search")
                history.append(final[label])
                continue
            predicted = docs[label].get("value")
            if b.kind in MEASURED_KINDS:
                vals, info = known[keys[label]]
                value = vals.get(b.kind)
                info = {
                    **info,
                    "measured_ms": vals.get("latency"),
                    "measured_mj": vals.get("energy"),
                    **{k: v for k, v in vals.items() if k not in MEASURED_KINDS},
                }  # e.g. the raw value
            else:  # flops / memory are exact
                value, info = predicted, {}
            if value is None or value != value:
                verdict = "not measured"
            elif value <= b.value:
                verdict = "met"
            else:
                verdict = "exceeded"
            att = Attempt(b, target, k, path, predicted, value, verdict, info, archs[label])
            history.append(att)
            final[label] = att
            if verdict != "exceeded" or k == corrections or b.kind not in MEASURED_KINDS:
                continue
            assert value is not None  # "exceeded" was judged on a measured value
            nxt = corrected(target, predicted, b, value, margin)
            floor = smallest(b.kind) if smallest is not None else None
            if floor is not None and nxt.value < floor:
                if target.value <= floor:
                    emit(f"{b}: the smallest reachable model measures {value:.4g}; cannot prune further")
                    continue
                nxt = Budget(b.kind, floor)
            emit(f"{b}: measured {value:.4g} > {b.value:.4g}; searching again to {nxt} (table units)")
            targets[label] = nxt
            again = True
        if not again:
            break
    return [final[str(b)] for b in budgets], history


def verdict_values(measured: Any, labels: Iterable[str], judged_on: str) -> dict[str, dict[str, Any]]:
    """Rows of `measure_models`' frame -> close_loop values: the latency a verdict uses (control-normalized or raw;
    raw for a model no round measured beside the control), energy (raw), and both latencies with the drift."""
    nan = float("nan")
    by = {r.model: r for r in measured.itertuples()}
    values: dict[str, dict[str, Any]] = {}
    for label in labels:
        if label not in by:
            continue
        r = by[label]
        norm = getattr(r, "ms_normalized", nan)
        basis = judged_on if norm == norm else "raw"
        values[label] = {
            "latency": norm if basis == "control-normalized" else r.ms,
            "energy": r.mj,
            "measured_ms": r.ms,
            "normalized_ms": norm,
            "drift": getattr(r, "drift", nan),
            "judged_on": basis,
        }
    return values
