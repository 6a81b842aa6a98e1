"""The closed loop's rule (workloads.pruning.loop) without a device: a toy "search" whose model sits just under each
target and a toy "device" that is a fixed factor slower than the table. The real loop runs on the virtual lab in
test_tables_device.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autlearn.workloads.pruning.budget import Budget
from autlearn.workloads.pruning.loop import close_loop, corrected


class Toy:
    """propose: one model per target, its predicted value the largest multiple of `grain` <= target.
    measure: predicted * slowdown (the table under-predicts), counting what it was asked to measure."""

    def __init__(self, root: Path, slowdown: float, grain: float = 0.1, floor: float = 1.0):
        self.root, self.slowdown, self.grain, self.floor = root, slowdown, grain, floor
        self.measured: list[list[str]] = []

    def value(self, target: Budget) -> float:
        return max(self.floor, int(target.value / self.grain + 1e-9) * self.grain)

    def propose(self, targets: list[Budget]) -> dict[str, str]:
        out = {}
        for t in targets:
            v = self.value(t)
            d = self.root / t.slug
            d.mkdir(parents=True, exist_ok=True)
            (d / "compressed.json").write_text(json.dumps({"config": {"size": round(v, 6)}, "value": v}))
            out[str(t)] = str(d / "compressed.json")
        return out

    def measure(self, exports: dict[str, str], k: int):
        self.measured.append(sorted(exports))
        vals = {}
        for label, path in exports.items():
            v = json.loads(Path(path).read_text())["value"] * self.slowdown
            vals[label] = {"latency": v, "energy": None}
        return vals, {"results": f"round-{k}"}


def test_a_model_over_its_budget_is_searched_again_until_it_measures_under(tmp_path):
    toy = Toy(tmp_path, slowdown=1.2)
    b = Budget("latency", 10.0)
    final, history = close_loop(
        [b], toy.propose, toy.measure, corrections=2, margin=0.05, smallest=lambda kind: toy.floor
    )
    assert [a.verdict for a in history] == ["exceeded", "met"]
    assert history[0].measured == pytest.approx(12.0) and history[0].target == b
    assert history[1].target.value == pytest.approx(10.0 * 10.0 / 12.0 * 0.95)
    assert final[0] is history[1] and final[0].measured <= b.value and final[0].round == 1
    assert history[0].architecture != history[1].architecture  # each attempt keeps its own model
    assert json.loads(history[0].architecture) == {"size": 10.0}
    assert final[0].row()["met"] and final[0].row()["results"] == "round-1"


def test_a_model_already_measured_is_not_measured_again_and_exact_kinds_are_not_measured(tmp_path):
    toy = Toy(tmp_path, slowdown=0.9)
    budgets = [Budget("latency", 5.0), Budget("latency", 5.05), Budget("flops", 3.0)]  # 5.0, 5.05: same model
    final, history = close_loop(budgets, toy.propose, toy.measure)
    assert [a.verdict for a in final] == ["met", "met", "met"] and len(history) == 3
    assert len(toy.measured) == 1 and len(toy.measured[0]) == 1  # one architecture, measured once
    assert final[2].measured == final[2].predicted == pytest.approx(3.0)


def test_per_budget_measures_a_shared_model_for_each_budget(tmp_path):
    """A measure relative to each budget's own reference (the benchmark's side-by-side ratio) cannot lend its
    value to another budget: with per_budget a model two budgets share is measured for both."""
    toy = Toy(tmp_path, slowdown=0.9)
    budgets = [Budget("latency", 5.0), Budget("latency", 5.05)]  # same model
    final, _ = close_loop(budgets, toy.propose, toy.measure, per_budget=True)
    assert toy.measured == [sorted(str(b) for b in budgets)]
    assert final[0].architecture == final[1].architecture


def test_a_budget_the_smallest_model_cannot_meet_ends_exceeded(tmp_path):
    toy = Toy(tmp_path, slowdown=2.0, floor=1.0)
    b = Budget("latency", 1.5)  # the smallest model measures 2.0
    final, history = close_loop([b], toy.propose, toy.measure, corrections=5, smallest=lambda kind: toy.floor)
    assert final[0].verdict == "exceeded" and final[0].measured == pytest.approx(2.0)
    assert history[-1].target.value == pytest.approx(1.0)  # the last correction went down to the smallest model
    assert len(history) < 6  # and the loop stopped there


def test_corrections_are_bounded(tmp_path):
    toy = Toy(tmp_path, slowdown=3.0)
    final, history = close_loop([Budget("latency", 10.0)], toy.propose, toy.measure, corrections=0)
    assert len(history) == 1 and final[0].verdict == "exceeded" and final[0].measured == pytest.approx(30.0)
    final, history = close_loop([Budget("latency", 10.0)], toy.propose, toy.measure, corrections=1, margin=0.1)
    assert len(history) == 2 and final[0].verdict == "met"


def test_corrected_target_takes_out_the_measured_excess():
    t = corrected(Budget("latency", 8.0), None, Budget("latency", 10.0), 12.5, 0.1)
    assert t.kind == "latency" and t.value == pytest.approx(8.0 * 0.8 * 0.9)
    t = corrected(Budget("latency", 8.0), 6.0, Budget("latency", 10.0), 12.5, 0.1)  # the model's own prediction
    assert t.value == pytest.approx(6.0 * 0.8 * 0.9)


def test_a_search_that_lands_far_under_its_target_is_not_handed_the_same_model_again(tmp_path):
    """Coarse pruning steps: target 9.9 gives a model predicted at 8 that measures 10.4. A target corrected from 9.9
    (8.95, then 8.1) would pick that model twice more; corrected from its prediction it picks a smaller one."""
    toy = Toy(tmp_path, slowdown=1.3, grain=2.0, floor=2.0)
    final, history = close_loop(
        [Budget("latency", 9.9)], toy.propose, toy.measure, corrections=2, margin=0.05, smallest=lambda kind: toy.floor
    )
    assert [a.verdict for a in history] == ["exceeded", "met"]
    assert history[1].predicted < history[0].predicted and final[0].measured <= 9.9


def test_measure_extras_reach_the_attempt_and_the_verdict_uses_the_kind_value(tmp_path):
    """A measure reporting a normalized latency as the kind's value keeps the raw one beside it in the row."""
    toy = Toy(tmp_path, slowdown=1.0)

    def measure(exports, k):
        vals, info = toy.measure(exports, k)
        return {
            label: {**v, "measured_ms": v["latency"] * 1.3, "judged_on": "control-normalized"}
            for label, v in vals.items()
        }, info

    final, _ = close_loop([Budget("latency", 5.0)], toy.propose, measure)
    row = final[0].row()
    assert row["verdict"] == "met" and row["value"] == pytest.approx(5.0)
    assert row["measured_ms"] == pytest.approx(6.5) and row["judged_on"] == "control-normalized"


def test_verdict_values_use_the_normalized_latency_unless_told_or_unpaired():
    import pandas as pd

    from autlearn.workloads.pruning.loop import verdict_values

    got = pd.DataFrame(
        {
            "model": ["a", "b"],
            "ms": [1.3, 2.0],
            "mj": [float("nan")] * 2,
            "ms_normalized": [1.0, float("nan")],
            "drift": [1.3, float("nan")],
        }
    )
    v = verdict_values(got, ["a", "b", "c"], "control-normalized")
    assert set(v) == {"a", "b"}  # c was not measured
    assert v["a"]["latency"] == 1.0 and v["a"]["measured_ms"] == 1.3 and v["a"]["judged_on"] == "control-normalized"
    assert v["b"]["latency"] == 2.0 and v["b"]["judged_on"] == "raw"  # never beside the control: raw
    assert verdict_values(got, ["a"], "raw")["a"]["latency"] == 1.3
    assert verdict_values(got.drop(columns=["ms_normalized", "drift"]), ["a"], "raw")["a"]["latency"] == 1.3
