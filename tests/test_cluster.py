"""Issue 21: a fleet across USB hosts on Ray. A real local Ray cluster of two nodes (one per simulated host), each
host with its own adb server, home, virtual phones and agent (autlearn.testbed.cluster_lab); the controller is this test
process or the `autlearn` CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autlearn.engine.campaign import run_campaign
from autlearn.engine.campaign_config import load_campaign, parse_campaign
from autlearn.engine.cluster import ClusterError, tune_on_cluster
from autlearn.engine.fleet import BuildRequest
from autlearn.engine.store import load_status, load_summaries
from autlearn.pipelines.artifact_cache import artifact_provider
from autlearn.workloads.metaschedule import TuneSettings
from autlearn.workloads.tuning_db import DB_FILES, RUNS_FILE

pytest.importorskip("ray")

EXAMPLE = Path(__file__).parents[1] / "examples" / "paper.toml"


def governors(root) -> list[str]:
    base = Path(root) / "sys/devices/system/cpu/cpufreq"
    return [(d / "scaling_governor").read_text().strip() for d in sorted(base.glob("policy*"))]


@pytest.fixture(scope="module")
def cluster(adb_env, runner_cache, tmp_path_factory):
    """`autlearn lab up --hosts 2`: the default trio dealt in turn, host1: legacy + unrooted, host2: modern (the
    session lab's profiles over two hosts)."""
    from autlearn.cli.main import main
    from autlearn.testbed.cluster_lab import ClusterLab, host_env

    home = tmp_path_factory.mktemp("cluster_lab_home")
    with host_env({"AUTLEARN_HOME": str(home)}):
        assert main(["lab", "up", "--hosts", "2", "--no-keep-warm"]) == 0
    cl = ClusterLab(home)
    yield cl, cl.address
    with host_env({"AUTLEARN_HOME": str(home)}):
        main(["lab", "down"])


def test_lab_status_names_each_phones_host(cluster, capsys):
    from autlearn.cli.main import main
    from autlearn.testbed.cluster_lab import host_env

    cl, address = cluster
    capsys.readouterr()
    with host_env({"AUTLEARN_HOME": str(cl.home)}):
        assert main(["lab", "status", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["cluster"] == address
    assert sorted((p["host"], p["profile"]) for p in got["phones"]) == [
        ("host1", "legacy"),
        ("host1", "unrooted"),
        ("host2", "modern"),
    ]


def phones_of(cl, host: str):
    from autlearn.testbed.lab import Lab

    return Lab(Path(cl.host(host)["home"])).phones()


def fleet(address):
    from autlearn.engine.cluster import ClusterFleet

    return ClusterFleet(address)


def small(name: str, **devices) -> object:
    """Two cells a phone: LSTM b16 under interactive, then powersave."""
    return parse_campaign(
        {
            "name": name,
            "warmup": 1,
            "steps": 2,
            "repetitions": 1,
            "energy": "auto",
            "devices": {"virtual": True, **devices},
            "workload": [{"model": "lstm", "variants": ["full"], "batch": [16]}],
            "governors": {"intents": ["interactive", "powersave"]},
            "cooldown": {"max_temp_c": 95, "timeout_s": 5},
        }
    )


def cell_set(results_dir) -> set:
    """What a campaign produced, independent of where the phones were plugged: per cell its device model,
    workload, variant, batch, governors, status (with the reason of a skip) and labels."""
    out = set()
    for r in load_summaries(results_dir).itertuples():
        out.add(
            (
                r.device_model,
                r.workload,
                r.variant,
                r.batch,
                r.governor_requested,
                r.governor_applied,
                "ok",
                "",
                r.labels,
            )
        )
    for r in load_status(results_dir).itertuples():
        if r.status != "ok":
            out.add(("/".join(str(r.label).split("/")[-4:]), r.status, r.reason))
    return out


@pytest.mark.slow
def test_example_campaign_on_two_hosts_gives_the_cells_of_one_host(cluster, example_run, runner_cache, tmp_path):
    cl, address = cluster
    _, one_host, _ = example_run  # the same campaign on the same profiles on one host (test_example_campaign)
    # one launch of 1 timed step a cell: cells and labels do not depend on how many steps a launch times
    campaign = dataclasses.replace(load_campaign(EXAMPLE), steps=1, repetitions=1)
    out = run_campaign(
        campaign, tmp_path / "results", artifact_provider(runner_cache / "artifacts"), fleet=fleet(address)
    )
    assert out.failed == 0, load_status(out.results_dir).query("status == 'failed'")["reason"].tolist()
    got = load_summaries(out.results_dir)
    assert {s.partition("/")[0] for s in got["device_serial"]} == {"host1", "host2"}  # host/serial names
    assert cell_set(out.results_dir) == cell_set(one_host.results_dir)


def _agent_pid(address: str, host: str) -> int:
    from autlearn.engine.cluster import list_agents

    return next(a["pid"] for a in list_agents(address) if a["host"] == host)


@pytest.mark.slow
def test_an_agent_that_does_not_answer_at_discovery_is_said(cluster, monkeypatch):
    """Issue 33: the fleet's log was set by lease(), after discovery, so `run --cluster` dropped this line."""
    from autlearn.engine import cluster as cluster_mod
    from autlearn.engine.cluster.agent import PREFIX

    _, address = cluster
    ray = cluster_mod.connect(address)

    @ray.remote
    class Mute:  # an agent that never answers: a real actor under an agent's name
        def info(self):
            time.sleep(300)

    mute = Mute.options(name=f"{PREFIX}host9", num_cpus=0).remote()
    ray.get(mute.__ray_ready__.remote(), timeout=120)  # alive and named before discovery lists the agents
    # long enough for the real agents to probe their phones on a loaded host, far shorter than the mute one's sleep
    monkeypatch.setattr(cluster_mod, "INFO_TIMEOUT_S", 20.0)
    said: list[str] = []
    try:
        entries = cluster_mod.ClusterFleet(address, say=said.append).discover()
    finally:
        ray.kill(mute)
    assert [s for s in said if s.startswith("host host9: agent not answering")], said
    assert entries and not [e for e in entries if e.serial.startswith("host9/")]


def test_a_lost_host_fails_its_cells_and_resume_completes(cluster, runner_cache, tmp_path):
    cl, address = cluster
    modern = phones_of(cl, "host2")[0]
    before = governors(modern.root)
    campaign = small("lost")
    results = tmp_path / "results"
    provider = artifact_provider(runner_cache / "artifacts")
    outcome = {}
    t = threading.Thread(
        target=lambda: outcome.update(o=run_campaign(campaign, results, provider, fleet=fleet(address)))
    )
    t.start()
    # kill host2's agent while its phone runs a cell under powersave (its governors are then changed)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and t.is_alive():
        if governors(modern.root) != before:
            break
        time.sleep(0.02)
    changed = governors(modern.root)
    os.kill(_agent_pid(address, "host2"), signal.SIGKILL)
    assert changed != before
    t.join(300)
    o = outcome["o"]
    status = load_status(o.results_dir)
    lost = status[status["label"].str.startswith("host2/")]
    assert len(lost) and (lost["status"] != "ok").any()
    assert all("host lost: host2" in r for r in lost.query("status == 'failed'")["reason"])
    assert (status[status["label"].str.startswith("host1/")]["status"] != "failed").all()  # host1 finished
    # the agent comes back: it puts back what the killed one left changed, before it answers
    info = cl.start_agent("host2")
    assert governors(modern.root) == before, (changed, info["restored"])
    again = run_campaign(campaign, results, provider, resume=True, fleet=fleet(address))
    assert again.failed == 0 and again.ok == len(lost.query("status == 'failed'"))
    assert again.resumed == o.ok and again.skipped == o.skipped


@pytest.mark.slow
def test_a_phone_plugged_in_while_the_agent_runs_is_used_with_its_monitor(cluster, runner_cache, tmp_path):
    cl, address = cluster
    phone = cl.plug("host2", "legacy", monsoon=True, keep_warm=False)  # no agent restarted
    campaign = small("plugged", serials=[f"host2/{phone.serial}"])
    out = run_campaign(
        campaign, tmp_path / "results", artifact_provider(runner_cache / "artifacts"), fleet=fleet(address)
    )
    assert out.ok == 2 and out.failed == 0
    got = load_summaries(out.results_dir)
    assert set(got["device_serial"]) == {f"host2/{phone.serial}"}
    # the monitor plugged into host2 measured it there
    assert set(got["energy_source"]) == {phone.monsoon and f"monsoon:{phone.monsoon}"}
    assert all("simulated" in labels for labels in got["labels"])


@pytest.mark.slow
def test_two_controllers_never_share_a_phone(cluster, runner_cache, tmp_path):
    cl, address = cluster
    legacy = next(p for p in phones_of(cl, "host1") if p.profile == "legacy")
    name = f"host1/{legacy.serial}"
    provider = artifact_provider(runner_cache / "artifacts")
    toml = tmp_path / "second.toml"
    toml.write_text(
        f'name = "second"\nwarmup = 1\nsteps = 2\nrepetitions = 1\nenergy = "none"\n'
        f'[devices]\nserials = ["{name}"]\n[[workload]]\nmodel = "lstm"\nvariants = ["full"]\n'
        f'batch = [16]\n[governors]\nintents = ["powersave"]\n[cooldown]\nmax_temp_c = 95\n'
        f"timeout_s = 5\n"
    )
    results = {}
    first = threading.Thread(
        target=lambda: results.update(
            a=run_campaign(small("first", serials=[name]), tmp_path / "r", provider, fleet=fleet(address))
        )
    )
    first.start()
    deadline = time.monotonic() + 120  # until the first controller holds the phone's lease
    while time.monotonic() < deadline and not any(
        "campaign=first" in p.read_text() for p in Path(legacy.root).rglob("lease/holder")
    ):
        time.sleep(0.1)
    cli = [
        sys.executable,
        "-m",
        "autlearn.cli.main",
        "run",
        str(toml),
        "--cluster",
        address,
        "--results",
        str(tmp_path / "r"),
        "--artifacts",
        str(runner_cache / "artifacts"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    busy = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=600)
    waited = subprocess.run([*cli, "--wait", "600"], capture_output=True, text=True, env=env, timeout=900)
    first.join(600)
    assert busy.returncode == 1 and "is in use by campaign 'first'" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr
    assert waited.returncode == 0, waited.stderr
    a = load_summaries(tmp_path / "r" / "first")
    b = load_summaries(tmp_path / "r" / "second")
    assert len(a) == 2 and len(b) == 1
    # the phone's cells of the two runs never overlapped in time
    assert b["started_at"].min() >= a["finished_at"].max() or b["finished_at"].max() <= a["started_at"].min()


@pytest.mark.slow
def test_builds_run_as_ray_tasks_on_both_nodes_once_per_key_across_controllers(cluster, tmp_path):
    _, address = cluster
    spec = parse_campaign(
        {
            "name": "builds",
            "devices": {"virtual": True},
            "workload": [
                {
                    "model": "lstm",
                    "variants": ["full"],
                    "batch": [1, 2],
                    "config": {"vocab_size": 50, "embed_dim": 8, "hidden_size": 8, "num_layers": 1, "seq_len": 3},
                }
            ],
        }
    )
    cells = spec.plan([type("D", (), {"serial": "x", "model": "", "virtual": True})()])
    requests = [BuildRequest(c, "x86_64", tmp_path / "tuning") for c in cells]
    first = artifact_provider(tmp_path / "first")
    one = fleet(address).provider(first)  # the fleet's provider: Ray tasks, then the injected cache
    one.prebuild(requests)
    assert not first.missing([(c, "x86_64") for c in cells])  # both built, verified into this controller's cache
    assert all(b["started_here"] for b in one.builds.values())
    assert len({b["node"] for b in one.builds.values()}) == 2  # one on each node (1 CPU each)
    second = artifact_provider(tmp_path / "second")  # another controller, an empty cache: nothing built again
    two = fleet(address).provider(second)
    two.prebuild(requests)
    assert not second.missing([(c, "x86_64") for c in cells]) and not any(
        b["started_here"] for b in two.builds.values()
    )
    assert {one(r).hash for r in requests} == {two(r).hash for r in requests}


TINY_LSTM = {"vocab_size": 50, "embed_dim": 8, "hidden_size": 8, "num_layers": 1, "seq_len": 3, "batch": 1}
TINY_TUNE = TuneSettings(trials=2, top=1, minutes=5)


@pytest.mark.slow
def test_tune_through_the_agent_of_the_phones_host(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTLEARN_TUNING_DIR", str(tmp_path / "tuning"))  # this controller's databases
    cl, address = cluster
    modern = phones_of(cl, "host2")[0]
    (r,) = tune_on_cluster(address, [f"host2/{modern.serial}"], "lstm", settings=TINY_TUNE, **TINY_LSTM)
    assert r["trials"] == 2 and r["tuned_tasks"] == 1 and not r["emulated"]
    db = Path(r["database"])
    assert db.parent == tmp_path / "tuning" and any(db.iterdir())  # the database came back here


@pytest.mark.slow
def test_two_concurrent_tunes_on_one_agent_keep_their_own_databases(cluster, tmp_path):
    """Issue 33: the agent redirected its tunes by setting AUTLEARN_TUNING_DIR in its process; each tune now gets
    its own root passed down. Two controllers (threads here, each with its own databases) tune host1's two phones
    at once through host1's agent; each database comes back to its own controller, holding only its own run."""
    cl, address = cluster
    names = [f"host1/{p.serial}" for p in phones_of(cl, "host1")]
    roots = {n: tmp_path / f"controller{i}" for i, n in enumerate(names)}
    got: dict[str, object] = {}

    def one(name: str) -> None:
        try:
            got[name] = tune_on_cluster(address, [name], "lstm", settings=TINY_TUNE, root=roots[name], **TINY_LSTM)
        except Exception as exc:  # noqa: BLE001 - asserted below, with the other thread's outcome
            got[name] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert len(names) == 2 and all(isinstance(got.get(n), list) for n in names), got
    for name in names:
        (r,) = got[name]
        db = Path(r["database"])
        assert db.parent == roots[name] and r["trials"] == 2 and r["measured_on"] == name.partition("/")[2]
        runs = [json.loads(ln) for ln in (db / RUNS_FILE).read_text().splitlines()]
        assert [x["measured_on"] for x in runs] == [r["measured_on"]]  # its own run, not the other's
        assert (db / DB_FILES[1]).read_text().strip()  # with the records it measured


def test_a_tune_on_an_agent_takes_the_phones_lease(cluster, tmp_path):
    """Every tune, local or on an agent, takes the phone's lease: a phone a campaign holds is not tuned on."""
    cl, address = cluster
    legacy = next(p for p in phones_of(cl, "host1") if p.profile == "legacy")
    name = f"host1/{legacy.serial}"
    holder = fleet(address)
    facts = [e.facts for e in holder.discover() if e.serial == name]
    with contextlib.ExitStack() as stack:
        holder.lease(facts, small("holder", serials=[name]), str(tmp_path / "results"), 0.0, stack)
        with pytest.raises(ClusterError, match=f"{legacy.serial} is in use by campaign 'holder'"):
            tune_on_cluster(address, [name], "lstm", settings=TINY_TUNE, root=tmp_path / "tuning", **TINY_LSTM)
    assert not (tmp_path / "tuning").exists()  # nothing tuned, nothing came back
