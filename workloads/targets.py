"""Compile targets: an Android ABI, or a target id `ABI@MCPU[,+ATTR|,-ATTR...]` naming the device's CPU
(`profiler.probe.target_id` from the probed `profiler.cputarget.CpuTarget`), and the TVM target of each."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, cast

from autlearn.profiler.errors import ConfigError

# ABI -> TVM target (JSON dict form: 0.27 rejects "llvm -mtriple=..." strings). x86_64: mcpu=haswell (AVX2+FMA,
# x86-64-v3), a conservative floor for x86 hosts since 2013. arm64-v8a: NEON is mandatory on ARMv8-A.
# num-cores is a scheduling hint.
ABIS: dict[str, dict[str, Any]] = {
    "x86_64": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2},
    "arm64-v8a": {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"], "num-cores": 4},
}


def base_abi(target_id: str) -> str:
    """The Android ABI of a target id: `ABI` or `ABI@MCPU[,ATTR...]` (e.g. "arm64-v8a@cortex-a76,+dotprod")."""
    return str(target_id).partition("@")[0]


def parse_target_id(target_id: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(abi, mcpu or None, mattr) of a target id; the ABI alone means the ABI's generic floor (ABIS)."""
    abi, at, cpu = str(target_id).partition("@")
    _check_abi(abi)
    if not at:
        return abi, None, ()
    mcpu, *attrs = cpu.split(",")
    ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", mcpu) and all(
        re.fullmatch(r"[+-][A-Za-z0-9._]+", a) for a in attrs
    )
    if not ok:
        raise ConfigError(f"bad target id {target_id!r} (ABI@MCPU[,+ATTR|,-ATTR...])", key="target")
    return abi, mcpu, tuple(attrs)


def target_id_for(abi: str, mcpu: str | None, mattr: Iterable[str] = ()) -> str:
    """The target id of a probed CPU (`autlearn.profiler.cputarget.CpuTarget`): the ABI alone when it is generic."""
    return abi if not mcpu else ",".join([f"{abi}@{mcpu}", *mattr])


def _check_abi(abi: str) -> None:
    if abi not in ABIS:
        raise ConfigError(f"unknown ABI {abi!r}; valid: {', '.join(ABIS)}", key="abi")


def target_dict(target_id: str) -> dict[str, Any]:
    """TVM target (dict form) of a target id: the ABI's floor with the probed -mcpu and -mattr."""
    abi, mcpu, mattr = parse_target_id(target_id)
    d = dict(ABIS[abi])
    if mcpu:
        d["mcpu"] = mcpu
        d["mattr"] = sorted(set(d.get("mattr", [])) | set(mattr))
    return d


def target_for_abi(target_id: str) -> Any:
    """`tvm.target.Target` for an ABI name or target id (see ABIS, parse_target_id)."""
    import tvm  # tvm takes seconds to import; only this path needs it

    return tvm.target.Target(target_dict(target_id))


def triple_for_abi(abi: str) -> str:
    return cast(str, ABIS[parse_target_id(abi)[0]]["mtriple"])


def target_key(target_id: str) -> str:
    """Directory name of the tuning database for a target: ABI, -mcpu and -mattr (generic: the ABI's floor)."""
    abi, mcpu, mattr = parse_target_id(target_id)
    return f"{abi}-{mcpu or 'generic'}" + "".join(mattr)
