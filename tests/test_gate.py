"""Issue 34: `autlearn results compare BASE CANDIDATE`, a regression gate for CI.

Three small campaigns on the session lab's legacy phone (three cells each: two configs of one model, two variants of
one of them) with the runner test double of test_campaign. Its step times are fixed by each artifact (`step_ns` =
its sleep + 1 us per step index; one launch of four timed steps a cell), so the verdicts are deterministic: a re-run
with the same artifacts is identical, a re-run whose `full` artifact sleeps 0.08 s instead of 0.05 s is 1.6x slower.
"""

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_campaign import FAKE_RUNNER

from autlearn.cli.main import main
from autlearn.engine.campaign import run_campaign
from autlearn.engine.campaign_config import load_campaign
from autlearn.engine.gate import KEY, compare_frames
from autlearn.engine.store import (
    CellMeta,
    IncompatibleRuns,
    Sample,
    load_results,
    load_status,
    pooled_summary,
    samples_frame,
)
from autlearn.engine.worker import ArtifactRef
from autlearn.profiler.stats import slowdown

CAMPAIGN = """
name = "{name}"
warmup = 1
steps = 4
repetitions = 1
[devices]
serials = ["{serial}"]
[[workload]]
model = "lstm"
variants = ["full", "unoptimized"]
batch = [4]
config = {{ hidden_size = 32 }}
[[workload]]
model = "lstm"
variants = ["full"]
batch = [4]
config = {{ hidden_size = 64 }}
[governors]
intents = ["interactive"]
[cooldown]
max_temp_c = 95
timeout_s = 5
"""


def artifact(root: Path, name: str, sleep: float) -> Path:
    """The runner test double, reporting `sleep` s + 1 us per step index as each step's time."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    step_ns = f"$(({int(sleep * 1e9)} + i * 1000))"
    (d / "runner").write_text(FAKE_RUNNER.replace("SLEEP", str(sleep)).replace("100000$i", step_ns))
    (d / "runner").chmod(0o755)
    return d


def provider(arts: dict[tuple[int, str], Path]):
    """An artifact per (hidden_size, variant); its hash is its directory's."""

    def provide(cell, abi):
        d = arts[(dict(cell.config)["hidden_size"], cell.variant)]
        return ArtifactRef(d, hashlib.sha256(str(d).encode()).hexdigest(), ("runner",), (("runner", "test-double"),))

    return provide


@pytest.fixture(scope="module")
def runs(lab, tmp_path_factory):
    """Results directories: base, an identical re-run, and a re-run whose hidden_size=32 `full` is slower."""
    tmp = tmp_path_factory.mktemp("gate")
    serial = next(p.serial for p in lab if p.profile == "legacy")
    fast, slow, mid = artifact(tmp, "fast", 0.05), artifact(tmp, "slow", 0.08), artifact(tmp, "mid", 0.06)
    usual = {(32, "full"): fast, (32, "unoptimized"): slow, (64, "full"): mid}
    out = {}
    for name, arts in (("base", usual), ("same", usual), ("slower", {**usual, (32, "full"): artifact(tmp, "b", 0.08)})):
        toml = tmp / f"{name}.toml"
        toml.write_text(CAMPAIGN.format(name=name, serial=serial))
        outcome = run_campaign(load_campaign(toml), tmp / "results", provider(arts))
        assert (outcome.ok, outcome.failed) == (3, 0), load_status(outcome.results_dir)["reason"].tolist()
        out[name] = outcome.results_dir
    return out


def autlearn(capsys, *args) -> tuple[int, str, str]:
    code = main(["results", "compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def junit_cases(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert int(suite.get("tests")) == len(cases)
    return cases


def test_an_identical_rerun_passes(runs, tmp_path, capsys):
    code, out, err = autlearn(
        capsys, runs["base"], runs["same"], "--json", tmp_path / "g.json", "--junit", tmp_path / "g.xml"
    )
    assert code == 0, out + err
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["verdict"] == "pass" and doc["exit_code"] == 0 and doc["allowed_differences"] == []
    assert [c["status"] for c in doc["cells"]] == ["pass"] * 3
    assert all(c["time"]["ratio"] == 1.0 and c["time"]["p_value"] == 1.0 for c in doc["cells"])
    cases = junit_cases(tmp_path / "g.xml")
    assert len(cases) == 3 and all(c.find("failure") is None and c.find("skipped") is None for c in cases.values())


def test_a_slower_variant_fails_the_gate_with_junit_failures(runs, tmp_path, capsys):
    # its artifact changed: refused unless allowed, never compared silently
    code, out, err = autlearn(capsys, runs["base"], runs["slower"], "--junit", tmp_path / "r.xml")
    assert code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and "refused" in err and "--allow-different artifact" in err, err
    skipped = [n for n, c in junit_cases(tmp_path / "r.xml").items() if c.find("skipped") is not None]
    assert len(skipped) == 1 and "hidden_size=32]-full" in skipped[0]

    code, out, err = autlearn(
        capsys,
        runs["base"],
        runs["slower"],
        "--max-slowdown",
        "5%",
        "--allow-different",
        "artifact",
        "--json",
        tmp_path / "g.json",
        "--junit",
        tmp_path / "g.xml",
    )
    assert code == 1 and "Traceback" not in err, out + err
    assert "regression" in out and "compared despite different artifact" in out, out
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["verdict"] == "regression" and doc["allowed_differences"] == ["artifact"]
    assert doc["counts"] == {
        "cells": 3,
        "compared": 3,
        "regressions": 1,
        "refused": 0,
        "unmatched": 0,
        "compared_despite_differences": 1,
    }
    (bad,) = [c for c in doc["cells"] if c["status"] == "regression"]
    assert (bad["variant"], bad["config"]) == ("full", {"hidden_size": 32})
    assert bad["differences"][0]["kind"] == "artifact" and bad["differences"][0]["allowed"]
    t = bad["time"]
    assert t["ratio"] == pytest.approx(1.6, rel=0.01) and t["ci_low"] > 1.05 and t["p_value"] < 0.05
    cases = junit_cases(tmp_path / "g.xml")
    failed = {n: c.find("failure") for n, c in cases.items() if c.find("failure") is not None}
    assert list(failed) == [bad["cell"]] and "slower" in failed[bad["cell"]].get("message")
    # a 70 % slowdown is allowed: the same runs pass
    allowed = ("--allow-different", "artifact")
    code, out, err = autlearn(capsys, runs["base"], runs["slower"], "--max-slowdown", "70%", *allowed)
    assert code == 0, out + err


def test_two_configs_of_one_model_stay_two_rows(runs, tmp_path, capsys):
    code, out, err = autlearn(capsys, runs["base"], runs["same"], "--json", tmp_path / "g.json")
    assert code == 0
    full = [c for c in json.loads((tmp_path / "g.json").read_text())["cells"] if c["variant"] == "full"]
    medians = {c["config"]["hidden_size"]: c["time"]["baseline_median"] for c in full}
    assert medians == {32: pytest.approx(50, rel=1e-3), 64: pytest.approx(60, rel=1e-3)}  # ms: never one pooled row
    # asked to pool the two configs as one row, the store refuses
    df = load_results(runs["base"])
    with pytest.raises(IncompatibleRuns, match="config"):
        pooled_summary(df[df["variant"] == "full"], by=[k for k in KEY if k != "config"])
    # the one-directory variant comparison keeps its configs apart too
    code, out, err = autlearn(capsys, runs["base"], "--baseline", "unoptimized", "--candidate", "full")
    assert code == 0 and "hidden_size" in out and "faster" in out, out + err


@pytest.mark.parametrize(
    "args,words",
    [
        (["{tmp}/missing", "{tmp}"], "no such results directory"),
        (["{tmp}", "{tmp}"], "no autlearn results"),
        (["{tmp}", "{tmp}", "--baseline", "full"], "ONE directory"),
        (["{tmp}", "--junit", "{tmp}/x.xml"], "two directories"),
        (["{tmp}", "{tmp}", "--max-slowdown", "5"], "percentage"),
        (["{tmp}", "{tmp}", "--allow-different", "tools,firmware"], "firmware"),
        (["{base}", "{base}", "--json", "{tmp}/no/such/dir/g.json"], "cannot write"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(runs, tmp_path, capsys, args, words):
    code, out, err = autlearn(capsys, *(a.format(tmp=tmp_path, base=runs["base"]) for a in args))
    assert code == 1 and err.count("\n") == 1 and words in err and "Traceback" not in err, err


def _frame(serial="s1", artifact="a" * 64, tools=(("runner", "1"),), energy=1.0, step_ms=10.0, n=8, campaign="c"):
    meta = CellMeta(
        campaign=campaign,
        cell_id=hashlib.sha256(f"{campaign}{artifact}{tools}".encode()).hexdigest()[:16],
        spec_key="k",
        device_serial=serial,
        device_model="Pixel",
        device_virtual=False,
        workload="lstm",
        variant="full",
        batch=4,
        governor_requested="schedutil",
        governor_applied="schedutil",
        affinity="all",
        artifact_hash=artifact,
        labels=("measured",),
        tool_versions=tools,
    )
    steps = [
        Sample(0, i, False, int(step_ms * 1e6) + i * 1000, energy_j=energy + i * 1e-4) for i in range(n)
    ]  # one repetition of n timed steps
    return samples_frame(meta, steps)


def test_energy_regression_and_refused_tools_and_device_facts():
    """The gate's core on frames: more energy per step at the same time is a regression; differing tool versions or
    device facts are refused unless allowed; too few samples can never fail and say so."""
    facts = {"c": {"s1": {"model": "Pixel", "android": "14"}}}
    base = _frame()
    r = compare_frames(base, _frame(energy=1.2), facts, facts)
    (cell,) = r.cells
    assert cell.status == "regression" and cell.time is not None and not cell.time.regression
    assert cell.energy is not None and cell.energy.regression and r.exit_code == 1

    r = compare_frames(base, _frame(tools=(("runner", "2"),)), facts, facts)
    assert r.cells[0].status == "refused" and "runner 1 -> 2" in r.cells[0].reason and r.exit_code == 1
    assert "--allow-different tools" in str(r.error())
    r = compare_frames(base, _frame(tools=(("runner", "2"),)), facts, facts, allow=["tools"])
    assert r.cells[0].status == "pass" and r.exit_code == 0 and r.to_json()["counts"]["compared_despite_differences"]

    newer = {"c": {"s1": {"model": "Pixel", "android": "15"}}}
    r = compare_frames(base, base, facts, newer)
    assert r.cells[0].status == "refused" and "android 14 -> 15" in r.cells[0].reason
    assert compare_frames(base, base, facts, newer, allow=["device"]).exit_code == 0

    r = compare_frames(_frame(n=3), _frame(n=3, step_ms=20.0, energy=2.0), facts, facts)
    assert r.cells[0].status == "pass" and r.cells[0].time is not None and r.cells[0].time.underpowered
    assert r.warnings and "cannot fail the gate" in r.warnings[0]

    r = compare_frames(base, _frame(serial="s2"), facts, {"c": {"s2": facts["c"]["s1"]}})
    assert [c.status for c in r.cells] == ["only in base", "only in candidate"] and r.exit_code == 1
    assert "nothing to compare" in str(r.error())


def test_slowdown_needs_significance_and_the_ratio():
    base = [10.0, 10.1, 10.2, 10.3, 10.4, 10.5]
    s = slowdown(base, [x * 1.03 for x in base], max_ratio=1.05)  # significant, but under the limit
    assert not s.regression and s.ratio == pytest.approx(1.03) and s.ci_low <= s.ratio <= s.ci_high
    s = slowdown(base, [x * 1.2 for x in base], max_ratio=1.05)
    assert s.regression and s.significant and s.verdict == "slower" and s.ci_low > 1.05
    s = slowdown(base, [10.0, 30.0, 10.1, 30.0, 10.2, 30.0], max_ratio=1.05)  # slower median, not significant
    assert not s.regression and not s.significant
    assert not slowdown(base, [x / 1.2 for x in base]).regression  # faster
