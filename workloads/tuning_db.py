"""Tuning databases on disk: one directory per CPU target (`workloads.targets.target_key`) holding MetaSchedule's
JSON pair, `hand.json` (the hand schedule's time per workload, measured on the device) and `runs.jsonl` (what each
tuning run cost). Written under `$AUTLEARN_TUNING_DIR` (default `$AUTLEARN_HOME/tuning/`), committed under
`workloads/tuning/`. `database_digest` is their content hash, recorded in every artifact built with them; at compile
time a tuned record is applied only where it beat the hand schedule on the device (`applicable_records`). Reading
them needs no tuning code: `workloads.compile` imports this module, `workloads.metaschedule` writes through it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from autlearn.profiler import paths
from autlearn.profiler.errors import UserError
from autlearn.workloads.targets import target_key

DB_FILES = ("database_workload.json", "database_tuning_record.json")
HAND_FILE = "hand.json"
RUNS_FILE = "runs.jsonl"
COMMITTED = Path(__file__).resolve().parent / "tuning"


class TuningError(UserError):
    """Tuning could not run (bad database, device that cannot measure, nothing to tune)."""


# ---------------------------------------------------------------------------------------------------- databases


def user_root() -> Path:
    """Where `workloads tune` writes: $AUTLEARN_TUNING_DIR, else $AUTLEARN_HOME/tuning."""

    return paths.tuning_dir()


def database_dir(target_key: str, root: Path | None = None) -> Path:
    """Where `workloads tune` writes a target's database: under `root`, default `user_root()`."""
    return (root or user_root()) / target_key


def find_database(target_key: str, root: Path | None = None) -> Path | None:
    """The database a build uses for a target: the user's (written by `workloads tune` under `root`, default
    `user_root()`), else the committed one."""
    for base in (root or user_root(), COMMITTED):
        d = base / target_key
        if (d / DB_FILES[1]).is_file():
            return d
    return None


def database_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name in (*DB_FILES, HAND_FILE):
        p = path / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"") + b"\0")
    return h.hexdigest()


def _check_lines(path: Path) -> int:
    """Count the records of a JSON-lines file; a line that is not JSON is a corrupt database (one-line error)."""
    if not path.is_file():
        return 0
    n = 0
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            raise TuningError(
                f"corrupt tuning database {path} (line {i} is not JSON); delete or restore it and tune again"
            ) from None
        n += 1
    return n


FAILED_SECS = 1e9  # MetaSchedule records a failed or unmeasured candidate with run time 1e10 s


def _seconds(run_secs: Iterable[float] | None) -> float | None:
    """Median run time of a record, None for a candidate that failed or was not measured."""
    vals = [float(x) for x in (run_secs or [])]
    t = float(np.median(vals)) if vals else None
    return None if t is None or not np.isfinite(t) or t >= FAILED_SECS else t


def open_database(path: Path) -> Any:
    """MetaSchedule's JSONDatabase in `path` (created when absent), checked first so corruption is one line."""
    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it

    path.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:
        _check_lines(path / name)
    try:
        return ms.database.JSONDatabase(str(path / DB_FILES[0]), str(path / DB_FILES[1]), allow_missing=True)
    except Exception as e:  # noqa: BLE001 - TVM raises its own error types for malformed records
        raise TuningError(f"corrupt tuning database {path}: {str(e).strip().splitlines()[-1][:200]}") from None


def read_hand(path: Path) -> dict[str, dict[str, Any]]:
    p = path / HAND_FILE
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise TuningError(f"corrupt tuning database {p}: not JSON") from None
    if not isinstance(data, dict):
        raise TuningError(f"corrupt tuning database {p}: expected an object")
    return data


def write_hand(path: Path, hand: dict[str, dict[str, Any]]) -> None:
    tmp = path / (HAND_FILE + ".tmp")
    tmp.write_text(json.dumps(hand, indent=1, sort_keys=True) + "\n")
    tmp.replace(path / HAND_FILE)


def workload_hash(mod: Any) -> str:
    import tvm_ffi  # tvm takes seconds to import; only this path needs it

    return f"{tvm_ffi.structural_hash(mod):016x}"


def applicable_records(path: Path, keep_hand: bool = True) -> tuple[Any, dict[str, int]]:
    """(in-memory database holding the best record of each workload that beat its hand schedule on the device,
    summary). Workloads whose hand schedule was as fast keep the hand schedule (`keep_hand=False`: every
    workload's best record, as tests of the tuned code paths want). Reads the JSON lines directly and
    deserializes only the winners (MetaSchedule's JSONDatabase parses every record: seconds per build)."""
    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it

    wl_path, rec_path = path / DB_FILES[0], path / DB_FILES[1]
    n_wl, n_rec = _check_lines(wl_path), _check_lines(rec_path)
    if n_rec and not n_wl:
        raise TuningError(f"corrupt tuning database {path}: records without workloads")
    hand = read_hand(path)
    workloads = [ln for ln in wl_path.read_text().splitlines() if ln.strip()] if n_wl else []
    best: dict[int, tuple[float, Any]] = {}
    for line in rec_path.read_text().splitlines() if n_rec else []:
        if not line.strip():
            continue
        try:
            idx, rec = json.loads(line)
            secs = rec[1]
        except (ValueError, TypeError, IndexError):
            raise TuningError(f"corrupt tuning database {rec_path}: malformed record") from None
        t = _seconds(secs)
        if t is None:
            continue
        if not isinstance(idx, int) or not 0 <= idx < len(workloads):
            raise TuningError(f"corrupt tuning database {rec_path}: record of unknown workload {idx!r}")
        if idx not in best or t < best[idx][0]:
            best[idx] = (t, rec)
    mem = ms.database.MemoryDatabase()
    kept = lost = 0
    for idx, (t, rec) in sorted(best.items()):
        try:
            wl = ms.database.Workload.from_json(json.loads(workloads[idx]))
            ms.database.TuningRecord.from_json(rec, wl)  # a malformed trace fails here, as one line
        except Exception as e:  # noqa: BLE001 - TVM raises its own types for malformed traces
            raise TuningError(f"corrupt tuning database {path}: {str(e).strip().splitlines()[-1][:200]}") from None
        if keep_hand and not tuned_wins(hand.get(workload_hash(wl.mod)), t):
            lost += 1
            continue
        # the in-memory database matches records to queries by its own workload object
        mem.commit_tuning_record(ms.database.TuningRecord.from_json(rec, mem.commit_workload(wl.mod)))
        kept += 1
    return mem, {"tuned_workloads": kept, "hand_kept": lost}


def tuned_wins(hand: dict[str, Any] | None, tuned_s: float) -> bool:
    """Does a workload's best record beat its hand schedule on the device? Judged on the paired ratio (best
    candidate / hand schedule in the same launch, the minimum over launches), so a slow spell of the host during
    one batch cannot decide it: `verified_ratio` (the best record against the hand schedule, both called in every
    step of 3 launches, the median), else `best_ratio`; entries without either compare the two medians."""
    if not hand:
        return True
    for k in ("verified_ratio", "best_ratio"):
        if hand.get(k) is not None:
            return float(hand[k]) < 1.0
    return hand.get("ms") is None or tuned_s < float(hand["ms"]) / 1e3


def tuning_database(target_id: str, root: Path | None = None) -> dict[str, str] | None:
    """The database a build uses for a target ({"path", "digest", "key"}), None when untuned; `root`: where the
    user's databases are (default `user_root()`)."""

    key = target_key(target_id)
    path = find_database(key, root)
    return None if path is None else {"path": str(path), "digest": database_digest(path), "key": key}
