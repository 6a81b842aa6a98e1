"""Control-normalized latency (autlearn.pipelines.measure): a pure function of campaign results. Synthetic rounds in the
results' own columns: the host slows whole rounds (control included), and per-round ratios cancel that where the
pooled raw median does not."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from autlearn.pipelines.generated import workload_of
from autlearn.pipelines.measure import normalized_latency, paired_ratio, per_round
from autlearn.workloads.models import make_config

CONTROL = make_config("mobilenet", width=0.5, num_classes=10, batch=4, image_size=28)
SMALL = make_config("mobilenet", width=0.25, num_classes=10, batch=4, image_size=28)


def cells(campaign: str, model, ms: float, steps: int = 5, warmup: int = 1) -> list[dict]:
    w = workload_of(model)
    return [
        {
            "campaign": campaign,
            "workload": w.model,
            "variant": w.variants[0],
            "config": json.dumps(w.kwargs),
            "batch": w.batch[0],
            "governor_requested": "interactive",
            "warmup": i < warmup,
            "step_ns": (ms * 1e6 * (50 if i < warmup else 1)) + i,
            "energy_j": float("nan"),
        }
        for i in range(steps + warmup)
    ]


def results(rounds: list[tuple[float | None, float | None]]) -> pd.DataFrame:
    """rounds: (control ms, small ms) per round; None: that cell failed in that round."""
    rows = []
    for k, (c, s) in enumerate(rounds):
        if c is not None:
            rows += cells(f"r{k}", CONTROL, c)
        if s is not None:
            rows += cells(f"r{k}", SMALL, s)
    return pd.DataFrame(rows)


def test_a_slow_round_is_cancelled_by_its_control():
    # The model is 0.8x the control; round r1 ran 1.5x slow throughout, r2 1.3x.
    raw = results([(1.0, 0.8), (1.5, 1.2), (1.3, 1.04)])
    norm = normalized_latency(raw, {"small": SMALL}, CONTROL, reference_ms=1.0)
    assert norm["small"]["ms"] == pytest.approx(0.8, rel=1e-4) and norm["small"]["rounds"] == 3
    assert norm["small"]["drift"] == pytest.approx(1.3, rel=1e-4)  # median control / reference
    raw_median = per_round(raw, {"small": SMALL})["small"].median()
    assert raw_median == pytest.approx(1.04, rel=1e-4)  # the raw median keeps the slow spell


def test_reference_sets_the_conditions_and_unpaired_rounds_are_left_out():
    raw = results([(2.0, 1.0), (None, 5.0), (4.0, 2.0), (3.0, None)])
    norm = normalized_latency(raw, {"small": SMALL}, CONTROL, reference_ms=3.0)
    assert norm["small"]["rounds"] == 2 and norm["small"]["ms"] == pytest.approx(1.5, rel=1e-4)
    assert normalized_latency(results([(None, 1.0)]), {"small": SMALL}, CONTROL, 1.0) == {}
    assert paired_ratio(per_round(raw, {"small": SMALL}), "small", "absent") is None


def test_per_round_matches_labels_by_workload_and_skips_warmup():
    raw = results([(1.0, 0.5)])
    rounds = per_round(raw, {"a": SMALL, "b": SMALL, "c": CONTROL})
    assert list(rounds.index) == ["r0"]
    assert rounds.loc["r0", "a"] == rounds.loc["r0", "b"] == pytest.approx(0.5, rel=1e-4)  # warmup (50x) ignored
    assert rounds.loc["r0", "c"] == pytest.approx(1.0, rel=1e-4)
