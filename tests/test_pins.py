"""Issue 34: frequency pins as a factor. `pin:CLUSTER=LEVEL,...` governor entries (autlearn.profiler.governor):
the parser and the plan (pure), `governor.sh pin` against a fake sysfs, then a sweep over three frequencies of the
big cluster on a virtual phone (a real compiled LSTM: step times ordered by frequency, the report's time- and
energy-vs-frequency figures, every knob restored byte for byte) and a pin held by limits where userspace is absent."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_governor_parse import POLICIES, LocalDevice, make_sysfs, sh, tree_bytes

from autlearn.engine.campaign import run_campaign
from autlearn.engine.campaign_config import load_campaign, parse_campaign
from autlearn.engine.store import load_results, load_status
from autlearn.pipelines.artifact_cache import artifact_provider
from autlearn.profiler.cpufreq import CpuPolicy
from autlearn.profiler.device import Device
from autlearn.profiler.errors import ConfigError, DeviceCommandFailed
from autlearn.profiler.governor import (
    GovernorGuard,
    GovernorIntent,
    GovernorUnavailable,
    Pin,
    PinError,
    parse_intent,
    parse_pins,
    parse_state,
    pending,
    plan_pins,
    resolve_governor,
)
from autlearn.reports.build import build_report, load_campaign_data, render_html

CACHE = Path(os.environ.get("AUTLEARN_TEST_CACHE_DIR") or Path.home() / ".cache" / "autlearn-test") / "artifacts"


# ------------------------------------------------------------------------------------------------------ parser
def test_pin_entries_parse_to_one_canonical_form():
    it = parse_intent(" PIN: Big = 1.8GHz , little=MIN ")
    assert it == GovernorIntent("pin", pins=(Pin("little", "min"), Pin("big", 1_800_000)))
    assert str(it) == "pin:little=min,big=1800000" and parse_intent(str(it)) == it  # round trip, order-free
    assert parse_intent("pin:big=max,little=min") == parse_intent("pin:little=min,big=max")
    assert str(parse_intent("pin:cpu4=1200MHz,policy0=300000,all=max,mid=1.5GHz")) == (
        "pin:all=max,mid=1500000,policy0=300000,cpu4=1200000"
    )
    assert parse_pins("big=1200000") == (Pin("big", 1_200_000),)  # the prefix is optional here


@pytest.mark.parametrize(
    "bad, match",
    [
        ("pin:", "pins nothing"),
        ("pin:huge=1GHz", "unknown cluster 'huge'"),
        ("pin:big", "not CLUSTER=LEVEL"),
        ("pin:big=", "not CLUSTER=LEVEL"),
        ("pin:big=fast", "not a frequency"),
        ("pin:big=1GHz,big=2GHz", "pinned twice"),
        ("pin:big=0", "out of range"),
        ("pin:policy=1GHz", "unknown cluster"),
    ],
)
def test_bad_pin_entries_say_why(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_intent(bad)


def test_a_campaign_sweeps_pins_like_any_governor():
    c = parse_campaign(
        {
            "name": "sweep",
            "workload": [{"model": "lstm"}],
            "governors": ["pin:big=min", "pin:big=1.2GHz", "pin:big=max", "pin:little=min,big=1.8GHz"],
        }
    )
    assert [str(i) for i in c.governors.intents] == [
        "pin:big=min",
        "pin:big=1200000",
        "pin:big=max",
        "pin:little=min,big=1800000",
    ]
    with pytest.raises(ConfigError) as e:
        parse_campaign({"name": "x", "workload": [{"model": "lstm"}], "governors": ["pin:big=1GHz", "pin:big=1e6"]})
    assert e.value.key == "governors[1]"
    with pytest.raises(ConfigError, match="duplicate") as e:  # two spellings of one pin
        parse_campaign({"name": "x", "workload": [{"model": "lstm"}], "governors": ["pin:big=1GHz", "pin:big=1000MHz"]})
    assert e.value.key == "governors[1]"


# ------------------------------------------------------------------------------------------------------ plan
def _policy(name, cpus, freqs, governors=("schedutil", "userspace", "performance", "powersave")):
    return CpuPolicy(name, tuple(cpus), tuple(governors), None, tuple(freqs), hw_min_khz=freqs[0], hw_max_khz=freqs[-1])


LITTLE = _policy("policy0", range(4), (300000, 576000, 1017600, 1420800, 1804800))
BIG = _policy("policy4", range(4, 8), (710400, 1401600, 2016000, 2841600))


def test_userspace_pins_named_clusters_and_holds_the_rest_at_max():
    plan = plan_pins(parse_pins("pin:big=1.4GHz"), (LITTLE, BIG))
    assert plan.governor == "userspace" and plan.pinned_khz == (("policy4", 1401600),)
    # the full range as limits; scaling_setspeed = the pin, or max for a policy the pin does not name
    assert plan.script_args() == [
        *("policy0", "userspace", "300000", "1804800", "1804800"),
        *("policy4", "userspace", "710400", "2841600", "1401600"),
    ]
    assert "1400000 -> 1401600 kHz (nearest offered)" in plan.reason and "policy0 1804800 kHz" in plan.reason
    plan = plan_pins(parse_pins("pin:little=min,big=max"), (BIG, LITTLE))  # policy order does not name clusters
    assert dict(plan.pinned_khz) == {"policy0": 300000, "policy4": 2841600}


def test_limits_pin_where_userspace_is_absent():
    modern = ("schedutil", "performance", "powersave")
    little, mid, big = (
        _policy("policy0", range(4), (300000, 1000000, 1800000), modern),
        _policy("policy4", (4, 5, 6), (700000, 1200000, 2400000), modern),
        _policy("policy7", (7,), (800000, 1300000, 3000000), modern),
    )
    plan = plan_pins(parse_pins("pin:mid=1.2GHz"), (little, mid, big))
    assert plan.governor == "performance" and "scaling_min_freq = scaling_max_freq" in plan.reason
    assert [(s.policy, s.min_khz, s.max_khz, s.setspeed_khz) for s in plan.settings] == [
        ("policy0", 300000, 1800000, None),
        ("policy4", 1200000, 1200000, None),  # min = max: held
        ("policy7", 800000, 3000000, None),
    ]
    # `all` first, a named cluster overrides it: all's level need not fit the overridden policy
    plan = plan_pins(parse_pins("pin:all=1GHz,big=max,cpu5=min"), (little, mid, big))
    assert dict(plan.pinned_khz) == {"policy0": 1000000, "policy4": 700000, "policy7": 3000000}


@pytest.mark.parametrize(
    "entry, match",
    [
        ("pin:mid=max", "mid is the middle of exactly three clusters; this phone has 2: little = policy0"),
        ("pin:policy2=max", "no cluster 'policy2'; this phone has 2"),
        ("pin:cpu9=max", "no cluster 'cpu9'"),
        ("pin:big=5GHz", r"within 10% of 5000000 kHz \(offered: 710400 1401600 2016000 2841600 kHz\)"),
        ("pin:big=max,policy4=min", "big=max and policy4=min both reach policy4"),
    ],
)
def test_a_pin_the_phone_cannot_hold_names_what_it_has(entry, match):
    with pytest.raises(PinError, match=match):
        plan_pins(parse_pins(entry), (LITTLE, BIG))


def test_per_cpu_directories_of_one_domain_are_one_cluster():
    """Old kernels without policyN or related_cpus list a directory per CPU: those offering the same frequencies are
    one cluster, every one of them written alike (on the kernel they are one policy)."""
    old = "interactive", "userspace", "performance"
    dirs = [_policy(f"cpu{i}", (i,), LITTLE.frequencies_khz if i < 4 else BIG.frequencies_khz, old) for i in range(8)]
    plan = plan_pins(parse_pins("pin:big=2GHz"), dirs)
    assert dict(plan.pinned_khz) == {f"cpu{i}": 2016000 for i in range(4, 8)}
    assert {s.setspeed_khz for s in plan.settings if s.policy in ("cpu0", "cpu3")} == {1804800}
    assert dict(plan_pins(parse_pins("pin:cpu2=min"), dirs).pinned_khz) == {f"cpu{i}": 300000 for i in range(4)}
    with pytest.raises(PinError, match=r"little = cpu0\+cpu1\+cpu2\+cpu3 \(cpus 0-3\), big = cpu4"):
        plan_pins(parse_pins("pin:mid=min"), dirs)


def test_one_cluster_has_no_little_or_big_and_no_root_means_no_pin():
    with pytest.raises(PinError, match="little and big need two clusters"):
        plan_pins(parse_pins("pin:big=max"), (LITTLE,))
    assert plan_pins(parse_pins("pin:all=max"), (LITTLE,)).pinned_khz == (("policy0", 1804800),)
    # without the policies nothing says which is big: an unrooted phone (the worker's fallback) runs no pin cell
    assert resolve_governor("pin:big=max", ("performance", "userspace")).applied is None


# ------------------------------------------------------------------------------------------------------ script
@pytest.mark.parametrize("userspace", [True, False])
def test_guard_pins_through_the_script_and_restores_byte_identical(tmp_path, userspace):
    sysfs = make_sysfs(tmp_path)
    if not userspace:
        for name in POLICIES:
            (sysfs / "devices/system/cpu/cpufreq" / name / "scaling_available_governors").write_text(
                "schedutil performance powersave\n"
            )
    before = tree_bytes(sysfs)
    dev = LocalDevice(sysfs, tmp_path / "work")
    with GovernorGuard(dev, tmp_path / "results") as g:
        a = g.apply_intent("pin:little=min,big=2GHz")
        assert dev.calls[-1][0] == "pin" and a.resolution.exact  # one call writes every policy
        assert dict(a.pinned_khz) == {"policy0": 300000, "policy4": 2016000}
        st = {s.policy: s for s in a.policies}
        if userspace:
            assert a.resolution.applied == "userspace" and (st["policy4"].setspeed, st["policy0"].setspeed) == (
                "2016000",
                "300000",
            )
        else:
            assert a.resolution.applied == "performance"
            assert (st["policy4"].min_khz, st["policy4"].max_khz) == (2016000, 2016000)
        a = g.apply_intent("pin:big=min")  # the next cell of a sweep: little back to its max
        assert dict(a.pinned_khz) == {"policy4": 710400}
        assert pending(tmp_path / "results") == ("fake-1",)
        skipped = g.apply_intent("pin:mid=max")  # changes nothing, says why
        assert skipped.resolution.applied is None and "this phone has 2" in skipped.resolution.reason
        with pytest.raises(GovernorUnavailable):
            g.apply_intent("pin:mid=max", "fail")
    assert tree_bytes(sysfs) == before and pending(tmp_path / "results") == ()


def test_script_pin_usage_and_a_pin_the_kernel_does_not_keep(tmp_path):
    sysfs = make_sysfs(tmp_path)
    assert sh(sysfs, "pin", "policy0", "userspace", "300000", "1804800").returncode == 2
    assert sh(sysfs, "pin", "policy0", "userspace", "300000", "1804800", "fast").returncode == 2
    assert sh(sysfs, "pin", "policy9", "userspace", "300000", "1804800", "-").returncode == 3
    r = sh(sysfs, "pin", "policy0", "performance", "576000", "576000", "-")
    assert r.returncode == 0 and [s.policy for s in parse_state(r.stdout)] == ["policy0", "policy4"]

    class Capped(LocalDevice):  # a vendor cap: scaling_max_freq never goes above 1420800 on policy0
        def run_script(self, name, *args, root=True):
            r = super().run_script(name, *args, root=root)
            node = self.sysfs / "devices/system/cpu/cpufreq/policy0/scaling_max_freq"
            if int(node.read_text()) > 1420800:
                node.write_text("1420800\n")
                r = super().run_script(name, "read", root=root) if args and args[0] == "pin" else r
            return r

    sysfs = make_sysfs(tmp_path / "capped")
    before = tree_bytes(sysfs)
    with pytest.raises(DeviceCommandFailed, match="did not hold"):
        with GovernorGuard(Capped(sysfs, tmp_path / "work"), tmp_path / "results") as g:
            g.apply_intent("pin:little=max")
    assert tree_bytes(sysfs) == before


# ------------------------------------------------------------------------------------------------------ phones
KNOB_SKIP = ("scaling_cur_freq", "cpuinfo_cur_freq")  # the model's output, not a knob


def knob_bytes(root: Path) -> dict[str, bytes]:
    """Every cpufreq file of every policy (governor, limits, setspeed, ...) but the current frequency, and the
    charging switches the fuel gauge turns off: the knobs a run changes."""
    sys_ = Path(root) / "sys"
    files = [
        p
        for p in sorted((sys_ / "devices/system/cpu/cpufreq").rglob("*"))
        if p.is_file() and p.name not in KNOB_SKIP and "stats" not in p.parts
    ]
    files += [
        p
        for n in ("input_suspend", "charging_enabled", "battery_charging_enabled")
        for p in sys_.glob(f"class/power_supply/*/{n}")
    ]
    assert len(files) > 8
    return {str(p.relative_to(sys_)): p.read_bytes() for p in files}


SWEEP = ("pin:big=min", "pin:big=1GHz", "pin:big=max")


def _sweep(tmp_path: Path, name: str, serial: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        textwrap.dedent(f"""
        name = "{name}"
        warmup = 1
        steps = 5
        repetitions = 1
        energy = "fuelgauge"
        affinity = "big"
        [devices]
        serials = ["{serial}"]
        [[workload]]
        model = "lstm"
        variants = ["full"]
        batch = [16]
        [governors]
        intents = {json.dumps(list(SWEEP))}
        [cooldown]
        max_temp_c = 95
        timeout_s = 5
        zones = "*"
        """)
    )
    return p


def test_a_pin_sweep_orders_step_times_by_frequency_reports_it_and_restores_every_knob(
    lab_factory, runner_cache, tmp_path
):
    """The acceptance of issue 34 on the legacy phone (userspace + scaling_setspeed): three frequencies of the big
    cluster, the LSTM step on it (CPU-bound: the phone scales its host CPU share with the frequency, ~8x from min to
    max). The host's own speed drifts (test_dvfs.py): a second round is pooled when the first is out of order."""
    _, (phone,) = lab_factory(["legacy"])
    before = knob_bytes(phone.root)
    frames, out = [], None
    for rnd in range(2):
        c = load_campaign(_sweep(tmp_path, f"pins{rnd}", phone.serial))
        out = run_campaign(c, tmp_path / f"results{rnd}", artifact_provider(CACHE), threads=1)
        status = load_status(out.results_dir)
        assert out.failed == 0 and out.skipped == 0 and out.ok == 3, status[["label", "reason"]].values.tolist()
        assert knob_bytes(phone.root) == before  # restored byte for byte after every run
        frames.append(load_results(out.results_dir))
        df = pd.concat(frames)
        timed = df[~df["warmup"].astype(bool)]
        medians = {
            g: float(np.median(rows["step_ns"])) / 1e6 for g, rows in timed.groupby("governor_requested", sort=False)
        }
        print(f"round {rnd}: median step ms by pin {medians}")
        if medians["pin:big=min"] > medians["pin:big=1000000"] > medians["pin:big=max"]:
            break
    assert medians["pin:big=min"] > medians["pin:big=1000000"] > medians["pin:big=max"], medians
    cells = df.drop_duplicates("cell_id").set_index("governor_requested")
    pinned = {g: json.loads(cells.loc[g, "pinned_khz"]) for g in cells.index}
    assert {g: list(p.values()) for g, p in pinned.items()} == {  # one policy each; 1 GHz: nearest offered
        "pin:big=min": [300000],
        "pin:big=1000000": [979200],
        "pin:big=max": [2457600],
    }
    assert set(cells["governor_applied"]) == {"userspace"} and "1000000 -> 979200 kHz" in str(
        cells.loc["pin:big=1000000", "governor_reason"]
    )
    (policy,) = set(pinned["pin:big=max"])
    # the phone ran at the pins: scaling_cur_freq of the big policy at the end of each cell
    assert {g: json.loads(cells.loc[g, "freqs_end_khz"])[policy] for g in cells.index} == {
        g: p[policy] for g, p in pinned.items()
    }

    assert out is not None
    rep = build_report(load_campaign_data(out.results_dir))
    slots = {f.key: f for f in rep.figures}
    tfig, efig = slots[f"pin-time:{phone.serial}"], slots[f"pin-energy:{phone.serial}"]
    assert tfig.section == "time" and efig.section == "energy" and tfig.figure is not None and efig.figure is not None
    assert "[virtual]" in tfig.title and "[modeled]" in efig.title and "MODELED" in efig.note
    for slot in (tfig, efig):
        (trace,) = slot.figure.data  # one line: lstm full on the big policy
        assert list(trace.x) == [300.0, 979.2, 2457.6] and policy in trace.name
        assert all(np.isfinite(trace.y)) and "MODELED (virtual phone)" in slot.figure.layout.xaxis.title.text
    last = {
        g: float(np.median(rows["step_ns"])) / 1e6
        for g, rows in frames[-1][~frames[-1]["warmup"].astype(bool)].groupby("governor_requested")
    }
    page = render_html(rep)
    assert "Time per step vs pinned frequency" in page and "Energy per step vs pinned frequency" in page
    y = list(tfig.figure.data[0].y)
    assert y == pytest.approx([last["pin:big=min"], last["pin:big=1000000"], last["pin:big=max"]], rel=0.01)


def test_a_pin_without_userspace_holds_min_equal_max_on_a_virtual_phone(lab_factory, tmp_path):
    """The modern phone (GKI-like: no userspace): performance with scaling_min_freq = scaling_max_freq; the model's
    frequency follows; three clusters name little, mid and big; every knob byte-identical afterwards."""
    _, (phone,) = lab_factory(["modern"])
    before = knob_bytes(phone.root)
    dev = Device(phone.serial)
    with GovernorGuard(dev, tmp_path / "results") as g:
        a = g.apply_intent("pin:little=min,mid=1.2GHz")
        assert a.resolution.applied == "performance", a.resolution.reason
        pinned = dict(a.pinned_khz)
        assert len(pinned) == 2 and min(pinned.values()) == 300000
        for s in a.policies:
            if s.policy in pinned:
                assert s.min_khz == s.max_khz == pinned[s.policy]
        deadline, cur = time.monotonic() + 10, {}
        while time.monotonic() < deadline:  # the model applies it at its next tick
            cur = {s.policy: s.cur_khz for s in g.read()}
            if all(cur[p] == k for p, k in pinned.items()):
                break
            time.sleep(0.2)
        assert all(cur[p] == k for p, k in pinned.items()), (cur, pinned)
        assert g.apply_intent("pin:big=4GHz").resolution.applied is None  # its prime core tops out at 2.84 GHz
    assert knob_bytes(phone.root) == before and pending(tmp_path / "results") == ()
