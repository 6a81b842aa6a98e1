"""CPU target: a pure parser from /proc/cpuinfo text to an LLVM -mcpu/-mattr choice, and the probe that feeds it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autlearn.profiler.cputarget import CpuTarget, generic, parse_cpuinfo
from autlearn.profiler.errors import ConfigError
from autlearn.profiler.probe import parse_probe

V2 = "fpu sse sse2 cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3"
V3 = V2 + " avx avx2 bmi1 bmi2 f16c fma abm movbe xsave"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"


def x86(vendor: str, family: int, model: int, flags: str, name: str = "", cores: int = 2) -> str:
    block = (
        f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        f"model name\t: {name}\nstepping\t: 2\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
        "power management:\n\n"
    )
    return "".join(block.format(n=n) for n in range(cores))


def arm(cores: list[tuple[str, str, str]], hardware: str = "") -> str:
    """cores: (implementer, part, features) per CPU, in cpuinfo order."""
    text = "".join(
        f"processor\t: {n}\nBogoMIPS\t: 38.40\nFeatures\t: {feat}\nCPU implementer\t: {impl}\n"
        f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 14\n\n"
        for n, (impl, part, feat) in enumerate(cores)
    )
    return text + (f"Hardware\t: {hardware}\n" if hardware else "")


V82 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
V80 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"


def test_zen4_with_avx512():
    t = parse_cpuinfo("x86_64", x86("AuthenticAMD", 25, 17, V4 + " avx512_bf16", "AMD Ryzen 9 7950X"))
    assert (t.mcpu, t.mattr, t.recognised, t.key) == ("znver4", (), True, "x86_64-znver4")
    assert t.cpu == "AMD family 25 model 17 (avx512): AMD Ryzen 9 7950X"


@pytest.mark.parametrize(
    "family,model,flags,mcpu",
    [
        (23, 0x01, V3, "znver1"),
        (23, 0x31, V3, "znver2"),
        (25, 0x01, V3, "znver3"),
        (26, 0x44, V4, "znver5"),
        (26, 0x44, V3, "znver3"),  # a hypervisor hid AVX-512
        (25, 0x01, V2, "x86-64-v2"),  # ... or AVX2: a znver target would fault, the feature level is safe
    ],
)
def test_amd_families(family, model, flags, mcpu):
    assert parse_cpuinfo("x86_64", x86("AuthenticAMD", family, model, flags)).mcpu == mcpu


def test_intel_by_feature_level():
    t = parse_cpuinfo("x86_64", x86("GenuineIntel", 6, 158, V3, "Intel(R) Core(TM) i7-8700"))
    assert (t.mcpu, t.recognised, t.key) == ("x86-64-v3", True, "x86_64-x86-64-v3") and "feature level" in t.note
    assert parse_cpuinfo("x86_64", x86("GenuineIntel", 6, 85, V4)).mcpu == "x86-64-v4"
    assert parse_cpuinfo("x86_64", x86("GenuineIntel", 6, 85, V3.replace("movbe", ""))).mcpu == "x86-64-v2"
    base = parse_cpuinfo("x86_64", x86("GenuineIntel", 6, 15, "fpu sse sse2"))
    assert (base.mcpu, base.recognised, base.key) == (None, True, "x86_64-generic")
    # the first processor block decides (flags are the same on every core)
    assert parse_cpuinfo("x86_64", x86("GenuineIntel", 6, 158, V3, cores=1) + x86("X", 1, 1, "fpu")).mcpu == "x86-64-v3"


def test_snapdragon_855_picks_the_big_core():
    # 4x Kryo 485 silver (0x805, A55) + 3x gold + 1x prime (0x804, A76), in cpuinfo order (little first)
    cores = [("0x51", "0x805", V82)] * 4 + [("0x51", "0x804", V82)] * 4
    t = parse_cpuinfo("arm64-v8a", arm(cores, "Qualcomm Technologies, Inc SM8150"))
    assert (t.mcpu, t.mattr, t.recognised) == ("cortex-a76", ("+dotprod", "+fullfp16"), True)
    assert t.key == "arm64-v8a-cortex-a76+dotprod+fullfp16"
    assert t.cpu == "Qualcomm part 0x804 x4 + 0x805 x4: Qualcomm Technologies, Inc SM8150"


def test_arm_features_must_be_on_every_core():
    # A76 big cores with dotprod, A55 littles without: code may run on any core, so no +dotprod and the
    # dotprod LLVM's cortex-a76 implies is switched off
    cores = [("0x41", "0xd05", V80 + " fphp asimdhp")] * 4 + [("0x41", "0xd0b", V82)] * 4
    t = parse_cpuinfo("arm64-v8a", arm(cores))
    assert (t.mcpu, t.mattr) == ("cortex-a76", ("+fullfp16", "-dotprod"))
    assert t.key == "arm64-v8a-cortex-a76+fullfp16-dotprod" and t.cpu == "ARM part 0xd0b x4 + 0xd05 x4"
    # v9 cores whose SoC leaves SVE off (no 'sve' in Features): -sve, i8mm kept
    v9 = V82 + " i8mm bf16"
    t = parse_cpuinfo(
        "arm64-v8a", arm([("0x41", "0xd46", v9)] * 4 + [("0x41", "0xd4d", v9)] * 3 + [("0x41", "0xd4e", v9)])
    )
    assert (t.mcpu, t.mattr) == ("cortex-x3", ("+dotprod", "+fullfp16", "+i8mm", "-sve"))
    t = parse_cpuinfo("arm64-v8a", arm([("0x41", "0xd80", v9 + " sve")] * 4 + [("0x41", "0xd82", v9 + " sve")] * 4))
    assert (t.mcpu, t.mattr) == ("cortex-x4", ("+dotprod", "+fullfp16", "+i8mm", "+sve"))
    # no Features lines: nothing known, nothing added
    t = parse_cpuinfo("arm64-v8a", "processor : 0\nCPU implementer : 0x41\nCPU part : 0xd03\n")
    assert (t.mcpu, t.mattr, t.key) == ("cortex-a53", (), "arm64-v8a-cortex-a53")


def test_unknown_part_is_generic_and_named():
    cores = [("0x41", "0xd05", V82)] * 4 + [("0x41", "0x123", V82)] * 4
    t = parse_cpuinfo("arm64-v8a", arm(cores))
    assert (t.mcpu, t.recognised, t.mattr) == (None, False, ("+dotprod", "+fullfp16"))
    assert "0x123" in t.note and "generic" in t.note and t.key == "arm64-v8a-generic+dotprod+fullfp16"
    apple = parse_cpuinfo("arm64-v8a", arm([("0x61", "0x022", V80)]))
    assert not apple.recognised and "Apple" in apple.note and apple.mattr == ()


@pytest.mark.parametrize("abi", ["x86_64", "arm64-v8a"])
@pytest.mark.parametrize("text", ["", "garbage\n\x00\n:::\n", "processor : x\nCPU part : zz\nflags\n"])
def test_empty_or_odd_text_is_generic(abi, text):
    t = parse_cpuinfo(abi, text)
    assert (t.mcpu, t.recognised, t.key) == (None, False, f"{abi}-generic")
    assert t == generic(abi, t.note, cpu=t.cpu, mattr=t.mattr)


def test_other_abi_and_serialisation():
    with pytest.raises(ConfigError, match="armeabi-v7a"):
        parse_cpuinfo("armeabi-v7a", "")
    with pytest.raises(ConfigError):
        generic("x86", "n")
    t = CpuTarget("arm64-v8a", "cortex-a55", ("+dotprod",), True, "c", "n")
    assert json.loads(json.dumps(t.to_dict())) == {
        "abi": "arm64-v8a",
        "mcpu": "cortex-a55",
        "mattr": ["+dotprod"],
        "recognised": True,
        "cpu": "c",
        "note": "n",
        "key": "arm64-v8a-cortex-a55+dotprod",
    }


def test_mcpu_names_are_known_to_llvm():
    """Every -mcpu the parser can emit is valid for the installed TVM's LLVM (an unknown one silently
    falls back to generic code)."""
    from autlearn.profiler import cputarget

    names = {
        "x86_64-linux-gnu": ["znver1", "znver2", "znver3", "znver4", "znver5", "x86-64-v2", "x86-64-v3", "x86-64-v4"],
        "aarch64-linux-android": sorted({n for parts in cputarget._PARTS.values() for n in parts.values()}),
    }
    script = (
        "import json, sys\nfrom tvm.target import codegen\nnames = json.loads(sys.argv[1])\n"
        "print(json.dumps([n for trip, ns in names.items() for n in ns if not codegen.llvm_is_valid_cpu(n, trip)]))"
    )
    out = subprocess.run([sys.executable, "-c", script, json.dumps(names)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_probe_output_round_trip():
    text = "probe.version=1\nprop.ro.product.cpu.abi=arm64-v8a\n" + "".join(
        f"cpuinfo.{n}={line}\n" for n, line in enumerate(arm([("0x41", "0xd0b", V82)] * 2).splitlines()) if line
    )
    f = parse_probe(text + "probe.end=1\n")
    assert f.cpu_target.key == "arm64-v8a-cortex-a76+dotprod+fullfp16"
    assert json.loads(json.dumps(f.to_dict()))["cpu_target"]["key"] == f.cpu_target.key
    assert parse_probe("probe.version=1\nprobe.end=1\n").cpu_target is None  # dynamic probes print no cpuinfo
    assert parse_probe(text.replace("arm64-v8a", "armeabi-v7a")).cpu_target is None
    assert parse_probe(text + "cpuinfo.x=junk\ncpuinfo.²=junk\n").cpu_target == f.cpu_target


def test_virtual_phone_probe_gives_the_host_target(lab, adb_env):
    from autlearn.profiler.device import Device
    from autlearn.profiler.probe import probe

    phone = next(p for p in lab if p.profile == "modern")
    facts = probe(Device(phone.serial))
    host = parse_cpuinfo("x86_64", Path("/proc/cpuinfo").read_text())
    t = facts.cpu_target
    assert t is not None and t.abi == "x86_64" and t.recognised and t.mcpu is not None
    assert (t.mcpu, t.mattr) == (host.mcpu, host.mattr)
    dynamic = Device(phone.serial).run_script("probe.sh", "dynamic").stdout
    assert "cpuinfo." not in dynamic
