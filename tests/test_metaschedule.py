"""MetaSchedule tuning through the fleet: candidates measured on a virtual phone over adb, databases per CPU target,
tuned artifacts checked against PyTorch autograd, under qemu for arm64, and faster than untuned in a campaign."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autlearn.profiler.cputarget import CpuTarget, generic
from autlearn.profiler.errors import ConfigError
from autlearn.workloads import compile as C
from autlearn.workloads import metaschedule as M
from autlearn.workloads import tuning_db as T

# Small enough to tune in about a minute; the tuned kernels carry most of the step.
MOBILENET = {"width": 0.5, "image_size": 64, "batch": 8, "num_classes": 10}
LSTM = {"vocab_size": 200, "hidden_size": 32, "embed_dim": 16, "batch": 4}


def autlearn(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autlearn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------------------------------------ pure parts


def test_target_ids_name_abi_cpu_and_features():
    assert C.parse_target_id("x86_64") == ("x86_64", None, ())
    assert C.parse_target_id("arm64-v8a@cortex-a76,+dotprod,-sve") == ("arm64-v8a", "cortex-a76", ("+dotprod", "-sve"))
    assert C.target_key("arm64-v8a@cortex-a76,+dotprod,-sve") == "arm64-v8a-cortex-a76+dotprod-sve"
    assert C.target_key("x86_64") == "x86_64-generic"
    d = C.target_dict("arm64-v8a@cortex-a76,+dotprod")
    assert d["mcpu"] == "cortex-a76" and d["mattr"] == ["+dotprod", "+neon"] and d["mtriple"].startswith("aarch64")
    assert C.target_dict("x86_64")["mcpu"] == "haswell"  # the generic floor
    for bad in ("mips@x", "x86_64@", "x86_64@znver3,dotprod", "x86_64@a b", "x86_64@znver3;rm"):
        with pytest.raises(ConfigError):
            C.parse_target_id(bad)


def test_campaign_target_is_the_recognised_cpu_else_the_abi_floor():
    from dataclasses import replace

    from autlearn.profiler.probe import parse_probe, target_id

    facts = parse_probe("probe.version=1\nprop.ro.product.cpu.abi=arm64-v8a\nprobe.end=1\n")
    assert target_id(facts) == "arm64-v8a"
    known = CpuTarget("arm64-v8a", "cortex-a76", ("+dotprod",), True, "ARM part 0xd0b", "")
    assert target_id(replace(facts, cpu_target=known)) == "arm64-v8a@cortex-a76,+dotprod"
    unknown = generic("arm64-v8a", "unrecognised CPU part 0x123: generic arm64 target")
    assert target_id(replace(facts, cpu_target=unknown)) == "arm64-v8a"


def test_corrupt_database_is_a_one_line_error(tmp_path):
    d = tmp_path / "x86_64-znver3"
    d.mkdir()
    (d / T.DB_FILES[0]).write_text('["ok"]\n{not json\n')
    with pytest.raises(T.TuningError, match=r"corrupt tuning database .*line 2"):
        T.open_database(d)
    (d / T.DB_FILES[0]).write_text("")
    (d / T.HAND_FILE).write_text("[1, 2")
    with pytest.raises(T.TuningError, match="corrupt tuning database"):
        T.read_hand(d)


def test_output_count_finds_the_trailing_outputs():
    tasks, _ = M.program_tasks("lstm", "full", "x86_64", **LSTM)
    counts = {t.task_name: M.output_count(t.dispatched[0]["main"]) for t in tasks}
    assert all(n >= 1 for n in counts.values())
    assert any(n > 1 for n in counts.values()) or len(counts) > 3


def test_unknown_device_is_one_line_exit_1(adb_env):
    r = autlearn("workloads", "tune", "--device", "no-such-phone", "--model", "lstm", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "no-such-phone" in r.stderr


# ------------------------------------------------------------------------------------------ on a virtual phone

CAMPAIGN = """
name = "{name}"
steps = {steps}
warmup = 1
repetitions = {reps}
energy = "none"
governors = ["performance"]
[devices]
serials = ["{serial}"]
"""
WORKLOAD = """
[[workload]]
model = "{model}"
variants = {variants}
batch = [{batch}]
config = {{ {cfg} }}
"""


def campaign_toml(name: str, serial: str, *workloads: tuple, steps: int = 2, reps: int = 1) -> str:
    """A one-phone campaign; workloads: (model, variants, config with batch, extra config text)."""
    text = CAMPAIGN.format(name=name, serial=serial, steps=steps, reps=reps)
    for model, variants, config, extra in workloads:
        cfg = ", ".join([f"{k} = {v}" for k, v in config.items() if k != "batch"] + ([extra] if extra else []))
        text += WORKLOAD.format(model=model, variants=json.dumps(variants), batch=config["batch"], cfg=cfg)
    return text


def test_a_local_tune_on_a_leased_phone_stops_with_one_line(lab):
    """Issue 33: a local tune took no lease, so it timed its candidates on a phone a campaign was measuring."""
    from autlearn.profiler.device import Device
    from autlearn.profiler.lease import PhoneLease

    phone = next(p for p in lab if p.profile == "legacy")
    with PhoneLease(Device(phone.serial), "someone-elses-campaign", "/results"):
        r = autlearn("workloads", "tune", "--device", phone.serial, "--model", "lstm", "--trials", 1, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 1, lines
    assert "in use by" in lines[0] and "someone-elses-campaign" in lines[0]


@pytest.fixture(scope="module")
def tuned(lab, runner_cache, tmp_path_factory):
    """Into a private tuning directory, on the legacy phone: `autlearn workloads tune` for MobileNet's heaviest
    kernel, and `autlearn run --tune` of a small LSTM campaign (tunes what it compiles, then runs it)."""
    root = tmp_path_factory.mktemp("tuning")
    env = {"AUTLEARN_TUNING_DIR": str(root)}
    phone = next(p for p in lab if p.profile == "legacy")
    os.environ["AUTLEARN_TUNING_DIR"] = str(root)  # builds in this process use it too
    sets = [a for k, v in MOBILENET.items() if k != "batch" for a in ("--set", f"{k}={v}")]
    r = autlearn(
        "workloads",
        "tune",
        "--device",
        phone.serial,
        "--model",
        "mobilenet",
        "--batch",
        MOBILENET["batch"],
        *sets,
        "--top",
        1,
        "--trials",
        8,
        "--minutes",
        10,
        "--threads",
        2,
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {"mobilenet": json.loads(r.stdout)}
    work = tmp_path_factory.mktemp("campaign")
    (work / "c.toml").write_text(campaign_toml("tune-first", phone.serial, ("lstm", ["full", "unoptimized"], LSTM, "")))
    r = autlearn(
        "run",
        work / "c.toml",
        "--results",
        work / "res",
        "--artifacts",
        runner_cache / "artifacts",
        "--tune",
        2,
        "--tune-minutes",
        3,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs["lstm"] = {
        "target_key": runs["mobilenet"]["target_key"],
        "stderr": r.stderr,
        "results": work / "res" / "tune-first",
    }
    yield phone, root, runs, env
    os.environ.pop("AUTLEARN_TUNING_DIR", None)


@pytest.mark.slow
def test_tune_on_a_virtual_phone_writes_a_database_per_cpu_target(tuned):
    phone, root, runs, _ = tuned
    res = runs["mobilenet"]
    assert res["measured_on"] == phone.serial and not res["emulated"]
    assert res["target_key"] != "x86_64-generic", "the virtual phone's CPU (this host's) should be recognised"
    db = root / res["target_key"]
    assert Path(res["database"]) == db and all((db / f).is_file() for f in (*T.DB_FILES, T.HAND_FILE))
    assert res["tuned_tasks"] == 1 and res["trials"] == 8
    (k,) = res["kernels"]
    assert k["tuned_ms"] > 0 and k["hand_ms"] > 0 and k["kept"] in ("tuned", "hand")
    assert T.read_hand(db)[k["workload"]]["verified_ratio"] > 0  # best record vs hand, paired in 3 launches
    records = (db / T.DB_FILES[1]).read_text().splitlines()
    assert len(records) >= 8 + 8  # every measured candidate of both models
    assert [json.loads(ln)["model"] for ln in (db / T.RUNS_FILE).read_text().splitlines()] == ["mobilenet", "lstm"]


@pytest.mark.slow
def test_run_with_tune_tunes_what_the_campaign_compiles_first(tuned):
    from autlearn.engine.store import load_results

    _, _, runs, _ = tuned
    err = runs["lstm"]["stderr"]
    assert "tuning lstm/full batch 4" in err and "tuning lstm/unoptimized" not in err, err[-2000:]
    tools = (
        load_results(runs["lstm"]["results"])
        .drop_duplicates("cell_id")
        .set_index("variant")["tool_versions"]
        .map(json.loads)
    )
    assert tools["full"]["tuning"].startswith("tuned: database") and tools["unoptimized"]["tuning"] == "not optimized"


@pytest.mark.slow
def test_interrupted_or_repeated_tuning_resumes_from_its_database(tuned):
    phone, root, runs, env = tuned
    sets = [a for k, v in LSTM.items() if k != "batch" for a in ("--set", f"{k}={v}")]
    r = autlearn(
        "workloads",
        "tune",
        "--device",
        phone.serial,
        "--model",
        "lstm",
        "--batch",
        LSTM["batch"],
        *sets,
        "--top",
        2,
        "--trials",
        2,
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(r.stdout)
    assert again["trials"] == 0 and again["resumed_records"] >= 4  # `run --tune 2` measured them
    # a corrupt database stops the next run with one line, before any compiling
    rec = Path(again["database"]) / T.DB_FILES[1]
    saved = rec.read_bytes()
    try:
        rec.write_bytes(saved[: len(saved) // 2] + b"\n{garbage")
        bad = autlearn(
            "workloads", "tune", "--device", phone.serial, "--model", "lstm", *sets, "--top", 1, env=env, timeout=300
        )
        assert bad.returncode == 1 and "corrupt tuning database" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        rec.write_bytes(saved)


@pytest.mark.slow
@pytest.mark.parametrize("model, config", [("mobilenet", MOBILENET), ("lstm", LSTM)])
def test_tuned_step_matches_pytorch(tuned, model, config):
    from test_workloads_compile import ATOL, RTOL, torch_step

    from autlearn.workloads.program import run_on_host

    _, root, runs, _ = tuned
    key = runs[model]["target_key"]
    tid = _tid(key)
    prog = C.build_program(model, "full", tid, database={"path": str(root / key), "keep_hand": False}, **config)
    assert prog.meta["tuning"]["tuned_kernels"] >= 1  # MetaSchedule's schedules are what runs
    one = run_on_host(prog, steps=1, target=json.loads(prog.meta["target"]))
    loss, params = torch_step(model, config, prog.tensors["x"], prog.tensors["y"], prog.meta["lr"])
    np.testing.assert_allclose(one[0]["loss"], loss, rtol=RTOL, atol=ATOL)
    for name, ref in params.items():
        np.testing.assert_allclose(one[-1]["tensors"][name], ref, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.slow
def test_two_phones_of_one_target_tune_their_shares_in_parallel(lab, runner_cache, tmp_path):
    legacy, modern = (next(p for p in lab if p.profile == n) for n in ("legacy", "modern"))
    sets = [a for k, v in LSTM.items() if k != "batch" for a in ("--set", f"{k}={v}")]
    r = autlearn(
        "workloads",
        "tune",
        "--device",
        legacy.serial,
        "--device",
        modern.serial,
        "--model",
        "lstm",
        "--batch",
        LSTM["batch"],
        *sets,
        "--top",
        2,
        "--trials",
        2,
        "--json",
        env={"AUTLEARN_TUNING_DIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout)
    assert {x["measured_on"] for x in results} == {legacy.serial, modern.serial}
    assert all(x["tuned_tasks"] == 1 and x["trials"] == 2 for x in results)
    (db,) = {Path(x["database"]).name for x in results}
    assert {x["database"] for x in results} == {str(tmp_path / db)}  # the merged database, not a worker's copy
    assert all(x["device_batches"] >= 1 and x["device_candidates"] >= 2 for x in results)
    runs = [json.loads(ln) for ln in (tmp_path / db / T.RUNS_FILE).read_text().splitlines()]
    assert {x["measured_on"] for x in runs} == {legacy.serial, modern.serial}
    records = (tmp_path / db / T.DB_FILES[1]).read_text().splitlines()
    assert len(records) == 4 and len(T.read_hand(tmp_path / db)) == 2


@pytest.mark.slow
def test_an_emulating_device_checks_candidates_but_records_no_timing(lab, runner_cache, tmp_path):
    """Timing from an emulated CPU (qemu) is not a measurement: candidates run, nothing enters the database."""
    from autlearn.profiler.device import Device

    phone = next(p for p in lab if p.profile == "modern")
    settings = M.TuneSettings(trials=2, top=1, minutes=5, emulated=True)
    res = M.tune(Device(phone.serial), "x86_64", "lstm", settings=settings, root=tmp_path, **LSTM)
    assert res.emulated and res.trials == 2 and res.kernels[0]["tuned_ms"] is None
    db = tmp_path / "x86_64-generic"
    records = [json.loads(ln)[1] for ln in (db / T.DB_FILES[1]).read_text().splitlines()]
    assert records and all(T._seconds(r[1]) is None for r in records)  # tried, never timed
    assert T.applicable_records(db)[1] == {"tuned_workloads": 0, "hand_kept": 0}


QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-aarch64(-static) not installed (Debian: qemu-user-static)")
def test_arm64_artifact_built_with_a_cpu_database_runs_under_qemu(tuned, tmp_path):
    """No arm64 phone here: the records measured on the virtual phone are copied under an arm64 target's key
    (schedules are target-independent traces; a real database comes from `workloads tune` on the phone). What
    is tested: an arm64 artifact compiled for that -mcpu with the database applied runs and matches the host."""
    from test_runner import check_output, host_losses, run, strict_parse

    from autlearn.workloads.artifact import write_artifact

    _, root, runs, _ = tuned
    tid = "arm64-v8a@cortex-a76,+dotprod"
    arm = root / C.target_key(tid)
    shutil.copytree(root / runs["lstm"]["target_key"], arm)
    prog = C.build_program("lstm", "full", tid, database={"path": str(arm), "keep_hand": False}, **LSTM)
    assert prog.meta["tuning"]["tuned_kernels"] >= 2 and json.loads(prog.meta["target"])["mcpu"] == "cortex-a76"
    art = write_artifact(prog, tmp_path / "arm")
    r = run(art.path, "--warmup", 1, "--steps", 3, "--threads", 2, timeout=300, prefix=(QEMU,))
    assert r.returncode == 0, r.stderr
    out = strict_parse(r.stdout)
    check_output(out, abi="arm64-v8a", warmup=1, steps=3, threads=2, phases=prog.phases)
    np.testing.assert_allclose([s.loss for s in out.steps], host_losses(prog, 4), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tuned_artifact_is_faster_than_untuned_in_one_campaign(tuned, runner_cache, tmp_path):
    """The same model with the database and with `tuning = "none"` in one campaign on the phone that tuned it;
    results and report say which database compiled each artifact."""
    from autlearn.engine.campaign import run_campaign
    from autlearn.engine.campaign_config import load_campaign
    from autlearn.engine.store import load_results
    from autlearn.pipelines.artifact_cache import artifact_provider
    from autlearn.reports.build import build_report, load_campaign_data

    phone, _, runs, _ = tuned
    toml = tmp_path / "tuned.toml"
    toml.write_text(
        campaign_toml(
            "tuned-vs-untuned",
            phone.serial,
            ("mobilenet", ["full"], MOBILENET, ""),
            ("mobilenet", ["full"], MOBILENET, 'tuning = "none"'),
            steps=10,
            reps=3,
        )
    )
    out = run_campaign(load_campaign(toml), tmp_path / "results", artifact_provider(runner_cache / "artifacts"))
    assert out.failed == 0
    df = load_results(out.results_dir)
    df = df[~df["warmup"]]
    tools = df["tool_versions"].map(json.loads)
    tuning = tools.map(lambda t: t["tuning"])
    assert set(tools.map(lambda t: t["target"])) == {_tid(runs["mobilenet"]["target_key"])}
    is_tuned = tuning.str.startswith("tuned: database")
    assert is_tuned.any() and (tuning[~is_tuned] == "untuned (hand schedules)").all()
    # how much faster tuned code runs is a benchmark's question (benchmarks/bench_training_step.py), not a test's:
    # two virtual phones tuned in parallel above, on a shared host (the ratio was 1.01 in one fresh-clone run)
    ratio = df[is_tuned]["step_ns"].median() / df[~is_tuned]["step_ns"].median()
    print(f"tuned / untuned step time on {phone.serial}: {ratio:.3f}")
    report = build_report(load_campaign_data(out.results_dir))
    (group,) = [g for g in report.note_groups if g.key == "tuning"]  # one grouped note, a row per artifact
    rows = [r for r in group.rows if r[1].startswith("mobilenet")]
    assert len(rows) == 2 and sum(r[0].startswith("tuned: database") for r in rows) == 1, rows
    assert sum(r[0] == "untuned (hand schedules)" and "tuning=none" in r[1] for r in rows) == 1, rows


def _tid(key: str) -> str:
    """Target id of a database key written for this host's CPU (no attributes on x86 here)."""
    abi, _, mcpu = key.partition("-")
    return f"{abi}@{mcpu}" if mcpu != "generic" else abi
