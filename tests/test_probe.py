"""The probe parser is a pure function of text; the probe script runs under Android's shell against a sysfs tree."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from autlearn.profiler.errors import ParseError
from autlearn.profiler.probe import parse_cpu_list, parse_probe

DATA = Path(__file__).parent / "data"
SCRIPT = Path(__file__).parents[1] / "device_scripts" / "probe.sh"


def test_parses_a_modern_phone():
    f = parse_probe((DATA / "probe_pixel7.txt").read_text(), serial="abc")
    assert (f.serial, f.model, f.manufacturer, f.soc, f.abi) == ("abc", "Pixel 7", "Google", "GS201", "arm64-v8a")
    assert f.abilist == ("arm64-v8a", "armeabi-v7a", "armeabi")
    assert (f.android, f.sdk, f.uid, f.has_su, f.virtual) == ("14", 34, 2000, False, False)
    assert f.cores == 8 and f.clusters == "4+2+2"
    assert [p.name for p in f.policies] == ["policy0", "policy4", "policy6"]
    p0 = f.policies[0]
    assert p0.governor == "sched_pixel" and "interactive" not in p0.governors
    assert p0.frequencies_khz[0] == 300000 and p0.frequencies_khz[-1] == 1803000 and p0.cur_khz == 738000
    assert f.policies[2].frequencies_khz == () and f.policies[2].hw_max_khz == 2850000  # missing nodes -> empty
    assert f.governors == ("sched_pixel", "schedutil", "performance", "powersave")
    # millidegrees, a deci-degree battery zone, and an empty reading
    assert [z.temp_c for z in f.thermal] == [41.25, 31.2, None]
    assert [z.name for z in f.thermal] == ["thermal_zone0", "thermal_zone1", "thermal_zone10"]
    assert f.max_temp_c == 41.25
    assert f.battery.current_now == -412000 and f.battery.status == "Charging" and f.battery.capacity == 87
    usb = next(p for p in f.power if p.name == "usb")
    assert usb.online is True


def test_parser_is_pure_and_tolerant():
    text = (DATA / "probe_pixel7.txt").read_text()
    assert parse_probe(text) == parse_probe(text)
    # a probe that found nothing but its own markers still parses
    bare = parse_probe("probe.version=1\nprobe.end=1\n")
    assert bare.policies == () and bare.cores == 0 and bare.governors == () and bare.battery is None
    # junk lines and values are ignored, not fatal
    junk = parse_probe("probe.version=1\nnot a pair\npolicy.policy0.scaling_min_freq=abc\n=x\n")
    assert junk.policies[0].min_khz is None


def test_rejects_text_that_is_not_probe_output():
    with pytest.raises(ParseError, match="probe.version"):
        parse_probe("sh: probe.sh: not found\n")


@pytest.mark.parametrize(
    "text,cpus", [("0-3", (0, 1, 2, 3)), ("0-1,4,6-7", (0, 1, 4, 6, 7)), ("4 5", (4, 5)), ("", ()), ("x-y", ())]
)
def test_cpu_lists(text, cpus):
    assert parse_cpu_list(text) == cpus


def _write(path: Path, value: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


@pytest.mark.parametrize("shell", ["mksh", "sh"])
def test_probe_script_reads_a_sysfs_tree(tmp_path, shell):
    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    sysfs = tmp_path / "sys"
    pol = sysfs / "devices/system/cpu/cpufreq/policy0"
    _write(sysfs / "devices/system/cpu/possible", "0-3")
    _write(pol / "related_cpus", "0 1 2 3")
    _write(pol / "scaling_available_governors", "interactive powersave performance")
    _write(pol / "scaling_governor", "interactive")
    _write(sysfs / "class/thermal/thermal_zone0/type", "cpu <b>")
    _write(sysfs / "class/thermal/thermal_zone0/temp", "38000")
    _write(sysfs / "class/power_supply/battery/capacity", "55")
    env = dict(os.environ, AUTLEARN_SYSFS=str(sysfs))
    out = subprocess.run([shell, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30).stdout
    f = parse_probe(out)
    assert f.cores == 4 and f.policies[0].governor == "interactive"
    assert f.policies[0].governors == ("interactive", "powersave", "performance")
    assert f.thermal[0].type == "cpu <b>" and f.thermal[0].temp_c == 38.0
    assert f.battery.capacity == 55 and f.battery.status is None


@pytest.mark.parametrize("lists", ["related", "affected", "none", "none-nocap"])
@pytest.mark.parametrize("shell", ["mksh", "sh"])
def test_old_per_cpu_cpufreq_layout_gives_clusters_governors_and_affinity(tmp_path, shell, lists):
    """No policyN: cpuN/cpufreq per CPU, related_cpus (or even affected_cpus) missing; clusters from capacity or
    from the maximum frequency; no interactive or powersave offered."""
    from autlearn.engine.campaign import affinity_mask

    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    sysfs = tmp_path / "sys"
    cpu = sysfs / "devices/system/cpu"
    _write(cpu / "possible", "0-7")
    for n in range(8):
        big = n >= 4
        d = cpu / f"cpu{n}/cpufreq"
        if not lists.startswith("none"):
            _write(d / f"{lists}_cpus", "4 5 6 7" if big else "0 1 2 3")
        _write(d / "scaling_available_governors", "ondemand userspace performance")
        _write(d / "scaling_governor", "ondemand")
        _write(d / "cpuinfo_max_freq", "2208000" if big else "1497600")
        _write(d / "scaling_cur_freq", "1200000")
        if lists == "none":  # capacity decides where reported; else the maximum frequency
            _write(cpu / f"cpu{n}/cpu_capacity", "1024" if big else "430")
    out = subprocess.run(
        [shell, str(SCRIPT)],
        env=dict(os.environ, AUTLEARN_SYSFS=str(sysfs)),
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    f = parse_probe(out, serial="old")
    assert f.cores == 8 and f.governors == ("ondemand", "userspace", "performance")
    assert f.clusters == "4+4" and [c.cpus for c in f.cpu_clusters] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert affinity_mask("big", f) == "0xf0" and affinity_mask("little", f) == "0xf"
    assert all(p.cur_khz == 1200000 for p in f.policies)  # start/end frequencies are read
    assert len(f.policies) == (8 if lists.startswith("none") else 2)


def test_one_policy_parser_for_probe_and_governor():
    from autlearn.profiler.cpufreq import parse_policy
    from autlearn.profiler.errors import ParseError
    from autlearn.profiler.governor import parse_available

    files = {
        "related_cpus": "4-5",
        "scaling_available_governors": "schedutil performance",
        "scaling_available_frequencies": "900 300 300",
        "cpuinfo_min_freq": "300",
        "cpuinfo_max_freq": "900",
    }
    lenient = parse_policy("policy4", files)
    offered = parse_available(
        "policy=policy4\ncpus=4 5\ngovernors=schedutil performance\nfrequencies=900 300 300\n"
        "cpuinfo_min=300\ncpuinfo_max=900\n"
    )
    assert offered == (lenient,) and lenient.frequencies_khz == (300, 900) and lenient.nearest_frequency(700) == 900
    assert parse_policy("p", {"scaling_min_freq": "x"}).min_khz is None  # the probe tolerates junk
    with pytest.raises(ParseError):
        parse_policy("p", {"scaling_min_freq": "x"}, strict=True)  # governor.sh output must be exact
