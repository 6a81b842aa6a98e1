"""The campaign engine against virtual phones through the real adb server.

The workload here is a runner *test double*: a shell script with the real runner's command line and output format,
so these tests exercise the engine (governors, deploy, resume, failures) in seconds. The TVM runner itself is
tested in test_runner.py; the example campaign with real artifacts runs in test_example_campaign.py.
"""

import _thread
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from autlearn.engine.campaign import ArtifactRef, CampaignError, run_campaign
from autlearn.engine.campaign_config import load_campaign
from autlearn.engine.store import load_results, load_status

FAKE_RUNNER = r"""#!/bin/sh
# Test double of workloads' runner: same CLI, same JSON lines; sleeps SLEEP s per step.
dir=$1; shift; W=1; N=3
while [ $# -gt 0 ]; do case $1 in --warmup) W=$2; shift 2;; --steps) N=$2; shift 2;; *) shift 2;; esac; done
echo '{"runner": {"version": "test-double"}}'
i=0
while [ $i -lt $((W + N)) ]; do
  w=false; [ $i -lt $W ] && w=true
  sleep SLEEP
  echo "{\"step\": $i, \"warmup\": $w, \"phases_ns\": {\"forward_backward\": 90000$i, \"update\": 10000}, "\
"\"step_ns\": 100000$i, \"loss\": 1.$i}"
  i=$((i + 1))
done
"""


def make_artifact(tmp_path: Path, sleep: float = 0.0) -> Path:
    d = tmp_path / "fake-artifact"
    d.mkdir(exist_ok=True)
    (d / "runner").write_text(FAKE_RUNNER.replace("SLEEP", str(sleep)))
    (d / "runner").chmod(0o755)
    return d


def provider(art_dir: Path):
    def provide(cell, abi):
        digest = hashlib.sha256(f"{art_dir}:{cell.workload}:{cell.variant}".encode()).hexdigest()
        return ArtifactRef(art_dir, digest, ("runner",), (("runner", "test-double"),))

    return provide


def campaign_file(
    tmp_path: Path,
    serials,
    name="t",
    variants=("full", "unoptimized"),
    governors=("interactive", "powersave"),
    steps=3,
    reps=2,
    energy="none",
    batch=4,
) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        textwrap.dedent(f"""
        name = "{name}"
        energy = "{energy}"
        warmup = 1
        steps = {steps}
        repetitions = {reps}
        [devices]
        serials = {json.dumps(list(serials))}
        [[workload]]
        model = "lstm"
        variants = {json.dumps(list(variants))}
        batch = [{batch}]
        [governors]
        intents = {json.dumps(list(governors))}
        fallback = "nearest"
        [cooldown]
        max_temp_c = 95
        timeout_s = 5
    """)
    )
    return p


def governors(phone) -> list[str]:
    base = Path(phone.root) / "sys/devices/system/cpu/cpufreq"
    return [(d / "scaling_governor").read_text().strip() for d in sorted(base.glob("policy*"))]


def test_three_profiles_requested_vs_applied_and_unrooted_skips(lab, tmp_path):
    before = {p.serial: governors(p) for p in lab}
    c = load_campaign(campaign_file(tmp_path, [p.serial for p in lab]))
    out = run_campaign(c, tmp_path / "results", provider(make_artifact(tmp_path)))
    assert (out.ok, out.skipped, out.failed) == (10, 2, 0)
    df = load_results(out.results_dir)
    timed = df[~df["warmup"]]
    assert len(timed) == 10 * 2 * 3  # one row per step per repetition per finished cell
    by = {p.profile: p.serial for p in lab}
    rows = df.drop_duplicates("cell_id").set_index(["device_serial", "variant", "governor_requested"])
    assert rows.loc[(by["legacy"], "full", "interactive"), "governor_applied"] == "interactive"
    assert rows.loc[(by["modern"], "full", "interactive"), "governor_applied"] == "schedutil"  # nearest
    assert rows.loc[(by["modern"], "full", "powersave"), "governor_applied"] == "powersave"
    assert rows.loc[(by["unrooted"], "full", "interactive"), "governor_applied"] == "schedutil"  # its default
    assert set(df["labels"]) == {"virtual"}
    cells = df.drop_duplicates("cell_id")  # where each cell's own time beyond its steps went
    assert cells["harness_s"].gt(0).all()
    parts = cells["harness"].map(json.loads)
    assert all({"governor", "cooldown", "deploy", "launch", "end_read"} <= set(p) for p in parts)
    assert all(abs(sum(p.values()) - h) < 0.01 for p, h in zip(parts, cells["harness_s"]))
    status = load_status(out.results_dir)
    skipped = status[status["status"] == "skipped"]
    assert len(skipped) == 2 and all("root" in r for r in skipped["reason"])
    assert {p.serial: governors(p) for p in lab} == before


def test_results_exist_without_resume_is_an_error(lab, tmp_path):
    c = load_campaign(campaign_file(tmp_path, [lab[0].serial], variants=("full",), governors=("powersave",)))
    prov = provider(make_artifact(tmp_path))
    run_campaign(c, tmp_path / "results", prov)
    with pytest.raises(CampaignError, match="--resume"):
        run_campaign(c, tmp_path / "results", prov)
    again = run_campaign(c, tmp_path / "results", prov, resume=True)
    assert (again.ok, again.resumed) == (0, 1)


DRIVER = """
import hashlib, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_campaign import provider
from autlearn.engine.campaign import run_campaign
from autlearn.engine.campaign_config import load_campaign
out = run_campaign(load_campaign({toml!r}), Path({results!r}), provider(Path({art!r})), resume={resume})
print("OUTCOME", out.ok, out.failed, out.skipped, out.resumed, flush=True)
"""


def _driver(tmp_path, toml, art, resume):
    script = tmp_path / f"driver_{int(resume)}.py"
    script.write_text(
        DRIVER.format(
            tests=str(Path(__file__).parent),
            toml=str(toml),
            results=str(tmp_path / "results"),
            art=str(art),
            resume=resume,
        )
    )
    return [sys.executable, str(script)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_then_resume_runs_every_cell_exactly_once_and_restores_governors(lab, tmp_path, sig):
    phones = [p for p in lab if p.profile in ("legacy", "modern")]
    before = {p.serial: governors(p) for p in phones}
    toml = campaign_file(tmp_path, [p.serial for p in phones], name=f"kill{sig}", steps=4, reps=1)
    art = make_artifact(tmp_path, sleep=0.15)
    proc = subprocess.Popen(
        _driver(tmp_path, toml, art, False),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    results = tmp_path / "results" / f"kill{sig}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once some cells finished and others are under way
        done = len(list((results / "status").glob("*.json"))) if (results / "status").is_dir() else 0
        if done >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.wait(60)
    finished_before = len(list((results / "status").glob("*.json")))
    assert 2 <= finished_before < 8
    if sig == signal.SIGTERM:  # a catchable signal restores on the way out
        assert {p.serial: governors(p) for p in phones} == before
        # stop means stop: the cells under way are interrupted (no data), never ok with steps measured after the
        # governors were restored (test_ctrl_c_mid_cell_... times it); a cell whose launches had ended is kept
        status = load_status(results)
        assert set(status["status"]) <= {"ok", "interrupted"}, status[["status", "reason"]].values.tolist()
        assert all("--resume" in r for r in status[status["status"] == "interrupted"]["reason"])
        ok = set(status.loc[status["status"] == "ok", "cell_id"])
        assert set(load_results(results)["cell_id"]) == ok
    proc2 = subprocess.run(
        _driver(tmp_path, toml, art, True), capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    ok, failed, skipped, resumed = map(int, proc2.stdout.split("OUTCOME")[1].split())
    assert failed == 0 and ok + resumed == 8 and resumed >= 2
    status = load_status(results)
    assert len(status) == 8 and set(status["status"]) == {"ok"} and status["cell_id"].is_unique
    df = load_results(results)
    assert df.groupby("cell_id").size().eq(5).all() and df["cell_id"].nunique() == 8  # 1 warm-up + 4 steps each
    assert {p.serial: governors(p) for p in phones} == before
    assert not list((results / "governor-pending").glob("*.json"))


def test_a_phone_stopped_mid_run_fails_its_cells_while_others_finish(lab_factory, tmp_path):
    lab, phones = lab_factory(["legacy", "modern"])
    victim, survivor = phones
    c = load_campaign(campaign_file(tmp_path, [p.serial for p in phones], steps=4, reps=1))
    results = tmp_path / "results"
    holder = {}

    def go():
        holder["out"] = run_campaign(c, results, provider(make_artifact(tmp_path, sleep=0.2)))

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((results / "t" / "status").glob("*.json")):
        time.sleep(0.1)
    lab.kill_phone(victim.name)
    t.join(300)
    out = holder["out"]
    status = load_status(results / "t")
    mine = status[status["label"].str.startswith(victim.serial)]
    other = status[status["label"].str.startswith(survivor.serial)]
    assert len(other) == 4 and set(other["status"]) == {"ok"}
    assert len(mine) == 4 and (mine["status"] == "failed").sum() >= 1
    assert all(("lost" in r or "unreachable" in r) for r in mine[mine["status"] == "failed"]["reason"])
    assert out.failed >= 1 and out.ok + out.failed == 8


@pytest.mark.parametrize(
    "body,key",
    [
        ('name = "x"\n[[workload]]\nmodle = "lstm"\n', "modle"),
        ('name = "x"\nrepetitions = -3\n[[workload]]\nmodel = "lstm"\n', "repetitions"),
        ('name = "x"\n[[workload]]\nmodel = "lstm"\n[governors]\nintents = ["turbo"]\n', "governors.intents"),
        ('name = "x"\n[[workload\n', "bad.toml:2"),
    ],
)
def test_malformed_campaign_file_is_one_line_exit_1(tmp_path, body, key):
    bad = tmp_path / "bad.toml"
    bad.write_text(body)
    r = subprocess.run(
        [sys.executable, "-m", "autlearn", "run", str(bad), "--results", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and key in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()  # nothing touched before the file is valid


def test_two_runs_on_one_phone_second_is_refused_or_waits_and_governors_stay_right(lab, tmp_path):
    """A lease per phone: while one run holds the phone, another is refused (naming the holder) or waits for it;
    neither records the other's governor as the phone's own."""
    from autlearn.profiler.lease import PhoneBusy

    phone = next(p for p in lab if p.profile == "legacy")
    before = governors(phone)
    art = make_artifact(tmp_path, sleep=0.2)
    first = campaign_file(
        tmp_path, [phone.serial], name="first", variants=("full",), governors=("powersave",), steps=10, reps=1
    )
    proc = subprocess.Popen(
        _driver(tmp_path, first, art, False),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    holder = Path(phone.root) / "data/local/tmp/autlearn/lease/holder"
    deadline = time.monotonic() + 60
    while not (holder.is_file() and "campaign=first" in holder.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = load_campaign(
        campaign_file(
            tmp_path, [phone.serial], name="second", variants=("full",), governors=("performance",), steps=2, reps=1
        )
    )
    with pytest.raises(PhoneBusy, match=r"in use by campaign 'first' \(pid \d+"):
        run_campaign(second, tmp_path / "results", provider(art))
    assert not (tmp_path / "results" / "second").exists()  # refused before anything was written
    out = run_campaign(second, tmp_path / "results", provider(art), wait_s=120)  # waits, then runs
    assert proc.wait(60) == 0 and out.ok == 1
    rows = {n: load_results(tmp_path / "results" / n).iloc[0] for n in ("first", "second")}
    assert rows["first"]["governor_applied"] == "powersave" and rows["second"]["governor_applied"] == "performance"
    assert rows["second"]["started_at"] >= rows["first"]["finished_at"]  # never at the same time
    assert governors(phone) == before and not holder.exists()


def test_a_lease_left_by_a_killed_run_on_this_host_is_broken(lab, tmp_path):
    phone = next(p for p in lab if p.profile == "modern")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    lease = Path(phone.root) / "data/local/tmp/autlearn/lease"
    lease.mkdir(parents=True)
    now = int(time.time())
    (lease / "holder").write_text(
        f"token=x\nhost={os.uname().nodename}\npid={dead}\ncampaign=gone\nresults=/r\nstarted={now}\nbeat={now}\n"
    )
    logs = []
    c = load_campaign(
        campaign_file(tmp_path, [phone.serial], variants=("full",), governors=("powersave",), steps=1, reps=1)
    )
    out = run_campaign(c, tmp_path / "results", provider(make_artifact(tmp_path)), log=logs.append)
    assert out.ok == 1 and any("breaking a stale lease" in m and "is gone" in m for m in logs), logs
    assert not lease.exists()


def _sampler_pids() -> list[str]:
    return subprocess.run(["pgrep", "-f", "fuelgauge[.]sh"], capture_output=True, text=True).stdout.split()


def _kill_9_mid_fuel_gauge_cell(phone, tmp_path: Path, name: str) -> tuple[Path, tuple]:
    """A run killed by SIGKILL while its fuel-gauge cell measures (charging suspended, governor changed, adbd
    rooted, the phone-side sampler polling): (the charging switch, the phone's state before it)."""
    switch = Path(phone.root) / "sys/class/power_supply/battery/input_suspend"
    before = (governors(phone), switch.read_text())
    toml = campaign_file(
        tmp_path,
        [phone.serial],
        name=name,
        variants=("full",),
        governors=("powersave",),
        steps=40,
        reps=1,
        energy="fuelgauge",
    )
    proc = subprocess.Popen(
        _driver(tmp_path, toml, make_artifact(tmp_path, sleep=0.2), False),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + 90
    while (
        (switch.read_text().strip() != "1" or not _sampler_pids())
        and time.monotonic() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    assert switch.read_text().strip() == "1", proc.stderr.read() if proc.poll() is not None else "never suspended"
    proc.kill()  # SIGKILL: nothing of the run's own cleanup happens
    proc.wait(30)
    assert switch.read_text().strip() == "1" and governors(phone) != before[0]  # left changed
    return switch, before


def test_kill_9_during_a_fuel_gauge_cell_then_the_next_run_restores_charging_and_root(lab, tmp_path):
    """Every knob is persisted before it is turned: after a kill -9 mid-cell (charging suspended, governor
    changed, adbd rooted) the next run on the phone puts each back before it starts, and undoes its own root."""
    phone = next(p for p in lab if p.profile == "legacy")
    switch, before = _kill_9_mid_fuel_gauge_cell(phone, tmp_path, "gauge")
    logs = []
    c = load_campaign(
        campaign_file(
            tmp_path, [phone.serial], name="after", variants=("full",), governors=("performance",), steps=1, reps=1
        )
    )
    out = run_campaign(c, tmp_path / "results", provider(make_artifact(tmp_path)), log=logs.append)
    assert out.ok == 1
    assert any("charging" in m and "restored" in m for m in logs), logs
    assert any("governor" in m and "restored" in m for m in logs), logs
    assert (governors(phone), switch.read_text()) == before
    from autlearn.profiler import knobs

    assert knobs.entries(knobs.default_root(), phone.serial) == []  # nothing left pending
    deadline = time.monotonic() + 10  # the killed run's sampler was stopped by this run's lease: none is left
    while _sampler_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sampler_pids() == []


def test_devices_restore_after_kill_9_puts_everything_back_and_leaves_no_process(lab, tmp_path):
    """Issue 31: `autlearn devices restore SERIAL` after a kill -9 mid fuel-gauge cell: charging, governors and adbd
    root are put back, the orphaned sampler is stopped, and no process of the killed run is left on the phone."""
    phone = next(p for p in lab if p.profile == "legacy")
    switch, before = _kill_9_mid_fuel_gauge_cell(phone, tmp_path, "gauge9")
    sampler = _sampler_pids
    time.sleep(1)
    assert sampler() and switch.read_text().strip() == "1"  # left behind by the killed run
    r = subprocess.run(
        [sys.executable, "-m", "autlearn", "devices", "restore", phone.serial],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "charging" in r.stdout and "governor" in r.stdout and "sampler" in r.stdout, r.stdout
    assert (governors(phone), switch.read_text()) == before
    deadline = time.monotonic() + 10
    while sampler() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sampler() == []
    left = subprocess.run(["pgrep", "-f", f"{phone.root}/.*/runner"], capture_output=True, text=True).stdout.split()
    assert left == []
    from autlearn.profiler import knobs

    assert knobs.entries(knobs.default_root(), phone.serial) == []
    again = subprocess.run(
        [sys.executable, "-m", "autlearn", "devices", "restore", phone.serial],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "nothing left changed" in again.stdout, again.stdout + again.stderr


def test_a_cell_whose_governor_changed_under_its_launches_is_not_ok(lab, tmp_path):
    """Issue 31: a cell is ok only if its launches ran under the state it asked for, as read back after them;
    something else switching the governor mid-cell fails it with the reason, and `--resume` redoes it."""
    phone = next(p for p in lab if p.profile == "legacy")
    before = governors(phone)
    toml = campaign_file(
        tmp_path, [phone.serial], name="meddle", variants=("full",), governors=("powersave",), steps=6, reps=1
    )
    art = make_artifact(tmp_path, sleep=0.3)

    def meddle():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if subprocess.run(["pgrep", "-f", f"{phone.root}/.*/runner"], capture_output=True).returncode == 0:
                time.sleep(0.3)
                (Path(phone.root) / "sys/devices/system/cpu/cpufreq/policy0/scaling_governor").write_text(
                    "performance\n"
                )
                return
            time.sleep(0.05)

    t = threading.Thread(target=meddle, daemon=True)
    t.start()
    out = run_campaign(load_campaign(toml), tmp_path / "results", provider(art))
    t.join(5)
    status = load_status(out.results_dir)
    assert status["status"].tolist() == ["failed"], status[["status", "reason"]].values.tolist()
    assert "read back" in status["reason"].iloc[0] and "performance" in status["reason"].iloc[0]
    assert not list(out.results_dir.glob("cells/*"))
    assert governors(phone) == before
    again = run_campaign(load_campaign(toml), tmp_path / "results", provider(art), resume=True)
    assert (again.ok, again.failed) == (1, 0)
    assert governors(phone) == before


def test_an_old_kernel_with_per_cpu_cpufreq_and_no_interactive_or_powersave(lab_factory, tmp_path):
    """cpuN/cpufreq per CPU, no policyN, no related_cpus, neither interactive nor powersave: the probe finds the
    two clusters (by maximum frequency), affinity pins to one of them, interactive maps to the nearest governor
    offered, powersave is skipped with the reason, frequencies are recorded and every CPU's governor restored."""
    from autlearn.profiler.device import Device
    from autlearn.profiler.probe import probe

    _, (phone,) = lab_factory(["oldkernel"])
    facts = probe(Device(phone.serial))
    assert facts.clusters == "4+4" and facts.governors == ("ondemand", "userspace", "performance")
    assert not (Path(phone.root) / "sys/devices/system/cpu/cpufreq").exists()
    from autlearn.engine.campaign import affinity_mask

    assert (affinity_mask("big", facts), affinity_mask("little", facts)) == ("0xf0", "0xf")
    before = [
        (Path(phone.root) / f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor").read_text() for c in range(8)
    ]
    p = campaign_file(tmp_path, [phone.serial], variants=("full",), steps=2, reps=1)
    # (little: the virtual CPUs 0-3 exist on any host; this host may have no CPU 4-7 for `big`)
    p.write_text(p.read_text().replace("warmup = 1", 'warmup = 1\naffinity = "little"'))
    out = run_campaign(load_campaign(p), tmp_path / "results", provider(make_artifact(tmp_path)))
    assert (out.ok, out.skipped, out.failed) == (1, 1, 0), load_status(out.results_dir)[["status", "reason"]].values
    df = load_results(out.results_dir).iloc[0]
    assert (df["governor_requested"], df["governor_applied"]) == ("interactive", "ondemand")
    assert df["affinity"] == "little" and json.loads(df["freqs_start_khz"]) and json.loads(df["freqs_end_khz"])
    skipped = load_status(out.results_dir).query("status == 'skipped'")
    assert "powersave" in skipped["reason"].iloc[0]
    assert [
        (Path(phone.root) / f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor").read_text() for c in range(8)
    ] == before


def test_truncated_garbled_and_swapped_cell_files_are_named_then_redone_by_resume(lab, tmp_path):
    phone = next(p for p in lab if p.profile == "legacy")
    toml = campaign_file(tmp_path, [phone.serial], name="damage", steps=2, reps=1)
    prov = provider(make_artifact(tmp_path))
    out = run_campaign(load_campaign(toml), tmp_path / "results", prov)
    assert out.ok == 4
    ids = sorted(p.stem for p in (out.results_dir / "cells").glob("*.parquet"))
    cells, summary = out.results_dir / "cells", out.results_dir / "summary"
    data = (cells / f"{ids[0]}.parquet").read_bytes()
    (cells / f"{ids[0]}.parquet").write_bytes(data[: len(data) // 3])  # truncated
    garbled = bytearray((summary / f"{ids[1]}.parquet").read_bytes())
    garbled[100:140] = b"\0" * 40
    (summary / f"{ids[1]}.parquet").write_bytes(bytes(garbled))  # garbled
    (cells / f"{ids[2]}.parquet").write_bytes((cells / f"{ids[3]}.parquet").read_bytes())  # another cell's data
    r = subprocess.run(
        [sys.executable, "-m", "autlearn", "results", "show", str(out.results_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    named = [ln for ln in r.stderr.splitlines() if "bad cell" in ln]
    assert sorted(ln.split()[3] for ln in named) == ids[:3], r.stderr  # one line each, nothing shown as data
    assert ids[3] in r.stdout or "1 finished cell" in r.stdout
    again = run_campaign(load_campaign(toml), tmp_path / "results", prov, resume=True)
    assert (again.ok, again.resumed) == (3, 1)
    df = load_results(out.results_dir)
    assert sorted(df["cell_id"].unique()) == ids and not df.attrs["bad"]


def test_ctrl_c_mid_cell_ends_its_launch_and_stores_it_interrupted(lab, tmp_path):
    """Issue 31: Ctrl-C restores the governors at once, so the cell under way must not go on under the restored
    governor and be stored ok: its launch is ended, it is stored `interrupted` with nothing it measured, and
    `--resume` redoes it."""
    phone = next(p for p in lab if p.profile == "legacy")
    before = governors(phone)
    toml = campaign_file(
        tmp_path, [phone.serial], name="stop", variants=("full",), governors=("powersave",), steps=4, reps=2
    )
    prov = provider(make_artifact(tmp_path, sleep=2.0))  # two launches of 10 s
    running = lambda: (  # noqa: E731
        subprocess.run(
            ["pgrep", "-f", f"{phone.root}/.*/runner"],
            capture_output=True,
        ).returncode
        == 0
    )

    def ctrl_c():
        deadline = time.monotonic() + 60
        while not running() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        sent.append(time.monotonic())
        _thread.interrupt_main()  # as SIGINT: the handlers run in the main thread

    sent: list[float] = []
    threading.Thread(target=ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_campaign(load_campaign(toml), tmp_path / "results", prov)
    # the launch ended now, not after the ~9.5 s of steps it had left (or the ~19.5 s with the cell's second launch).
    # 6 s, not 3: on a loaded host (a runtime build alongside) a stop once took 3.45 s to restore and end
    assert sent and time.monotonic() - sent[0] < 6 and not running()
    assert governors(phone) == before
    status = load_status(tmp_path / "results" / "stop")
    assert status["status"].tolist() == ["interrupted"] and "--resume" in status["reason"].iloc[0]
    assert not list((tmp_path / "results" / "stop").glob("cells/*"))  # nothing it measured is kept
    again = run_campaign(load_campaign(toml), tmp_path / "results", provider(make_artifact(tmp_path)), resume=True)
    assert (again.ok, again.resumed) == (1, 0)
    assert governors(phone) == before
