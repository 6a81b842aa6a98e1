"""Results directory as a database (asv-style), one campaign per directory:

    results/<campaign>/
      campaign.json          {"schema_version", "name", "spec" (Campaign.to_dict()), "plan": {cell_id: spec_key},
                             "order": {"kind", "seed", "devices": {serial: [cell_id, ...]}} (the order the cells
                             run in, per device: `set_order`; a --resume keeps it), ...}
      cells/<cell_id>.parquet    raw samples: one row per step per repetition (warm-up steps too, flagged), every
                                 row carrying the cell's metadata columns (device, governor, temps, artifact, ...)
      summary/<cell_id>.parquet  one row: metadata + autlearn.profiler.stats.summarize() of the timed steps
      status/<cell_id>.json      {"status": "ok" | "failed" | "skipped" | "interrupted", "reason", "spec_key",
                                 "files", "stop_reason" (a cell with a CI target: why it made no more launches),
                                 ...}; written last, it is the commit point: a cell without an "ok" status
                                 is not finished. "files" holds the sha256 and size of the cell's samples and summary.
      governor-pending/          snapshots of phones whose governors are changed right now (autlearn.profiler.governor)

Every file is written atomically (temp file in the same directory, fsync, os.replace, fsync of the directory), so a
crash leaves either the old file or the new one, never a partial one; leftover temp files are ignored and swept.

Results verify themselves: `store.verify(cell_id)` says why a finished cell's files cannot be trusted (missing,
truncated or changed since written: checksum; unreadable; another cell's data: the cell_id column), `finished` is
False for such a cell (so `--resume` redoes it), and the loaders leave it out and name it in `df.attrs["bad"]`.

Resume: `store.finished(cell_id)`. A rebuilt artifact gives a new cell id (autlearn.engine.campaign_config.cell_id), so
results of the old artifact are *stale*: `store.stale()` reports them and `load_results` leaves them out.

`load_results(path) -> DataFrame` of raw samples in one call; `load_summaries(path)`; `pooled_summary(df, by)` refuses
to pool rows whose fixed metadata (`FIXED_COLUMNS`) differ (pyperf-style), raising `IncompatibleRuns`.
`SCHEMA_VERSION` is checked on open; older directories go through `MIGRATIONS`, newer/unknown ones raise SchemaError.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from autlearn.engine.campaign_config import cell_label
from autlearn.profiler import stats
from autlearn.profiler.errors import UserError

# Cells written since issue 34 also carry frequency telemetry and the throttle verdict (`freq_<policy>_mhz`,
# telemetry_source, launch_max_temp_c, cooling_max, flagged, flag_reason, flag_detail, attempts, redo_reasons): columns
# added, none changed, so no new schema version; older cells simply lack them (loaders read them as missing: unknown,
# not "unflagged").
SCHEMA_VERSION = 1
# from_version -> function(root) upgrading a results directory in place to from_version + 1.
MIGRATIONS: dict[int, Callable[[Path], None]] = {}
MANIFEST = "campaign.json"
STATUSES = ("ok", "failed", "skipped", "interrupted")  # interrupted: stopped mid-cell, redone by --resume
LABELS = ("virtual", "modeled", "simulated", "measured")
# Metadata that must be equal for rows to be pooled into one summary.
FIXED_COLUMNS = (
    "device_model",
    "device_virtual",
    "workload",
    "config",
    "variant",
    "batch",
    "governor_applied",
    "pinned_khz",
    "affinity",
    "warmup_steps",
    "artifact_hash",
    "labels",
    "tool_versions",
)
TEMP_SWEEP_AGE_S = 60.0  # temp files older than this are leftovers of a crashed writer
_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class SchemaError(UserError):
    """The results directory is missing, corrupt, or written by a newer autlearn."""


class IncompatibleRuns(UserError):
    """Rows whose fixed metadata differ were asked to be pooled."""


class BadCell(UserError):
    """A finished cell's files cannot be trusted (missing, changed since written, unreadable, foreign)."""

    def __init__(self, cell_id: str, reason: str):
        super().__init__(f"cell {cell_id}: {reason}")
        self.cell_id, self.reason = cell_id, reason


# ---------------------------------------------------------------------------------------------------------- records
# CellMeta fields held as sorted tuples of pairs, written as JSON maps
_MAP_FIELDS = ("config", "pinned_khz", "freqs_start_khz", "freqs_end_khz", "tool_versions", "harness", "cooling_max")


@dataclass(frozen=True)
class CellMeta:
    """Everything known about a measured cell besides its samples; becomes columns of every row.

    Mappings are stored as sorted tuples of pairs (frozen) and written as JSON strings."""

    campaign: str
    cell_id: str
    spec_key: str
    device_serial: str
    device_model: str
    device_virtual: bool
    workload: str
    variant: str
    batch: int
    governor_requested: str
    governor_applied: str | None
    affinity: str
    artifact_hash: str
    labels: tuple[str, ...]  # subset of LABELS, e.g. ("virtual", "modeled")
    config: tuple[tuple[str, Any], ...] = ()
    governor_reason: str = ""
    pinned_khz: tuple[tuple[str, int], ...] = ()  # (policy, kHz) when a frequency was pinned
    warmup_steps: int = 0
    energy_source: str = "none"
    energy_note: str = ""  # why energy is missing, or how it was attributed (fuel-gauge resolution, alignment)
    freqs_start_khz: tuple[tuple[str, int], ...] = ()  # (policy, scaling_cur_freq)
    freqs_end_khz: tuple[tuple[str, int], ...] = ()
    temp_start_c: float | None = None
    temp_end_c: float | None = None
    throttled: bool | None = None
    battery_pct: float | None = None
    battery_temp_c: float | None = None
    tool_versions: tuple[tuple[str, str], ...] = ()  # (tool, version): autlearn, tvm, runner, android, ...
    started_at: float = 0.0
    finished_at: float = 0.0
    # the harness's own time in this cell beyond its training steps (autlearn.engine.campaign.HarnessClock), by part
    harness: tuple[tuple[str, float], ...] = ()
    harness_s: float | None = None
    # time the cell waited for the virtual lab's host CPUs (other phones' timed launches; profiler.hostcpu): the
    # lab's queueing, kept out of harness_s
    wait_s: float | None = None
    # per launch: the share of its threads' CPUs the runner held (CPU time / (wall x threads), from the shell's
    # `times`; None where the shell has none). On a virtual phone, the time scale its governor asked for
    cpu_share: tuple[float | None, ...] = ()
    # why the cell made no more launches when it had a CI target (`[samples] ci_width`): "ci-width 2.1 % <= 3 % ..."
    # or "cap 10 launches, width 7.0 % > 3 %"; "" for a fixed number of launches (`repetitions`)
    stop_reason: str = ""
    # frequency telemetry around the launches (autlearn.profiler.telemetry): the mean achieved frequency per cpufreq
    # policy in MHz (written as `freq_<policy>_mhz` columns), how it was measured ("time_in_state" | "sampled"), the
    # hottest thermal zone and each CPU cooling device's highest state over the reads
    freq_mhz: tuple[tuple[str, float], ...] = ()
    telemetry_source: str = ""
    launch_max_temp_c: float | None = None
    cooling_max: tuple[tuple[str, int], ...] = ()
    # the cell ran throttled or off its governor's frequency (kept so after [throttle] retries): why (the kinds of
    # evidence, stable: reports group cells by it) and by how much; attempts made (redone after a cooldown while
    # flagged) and why each earlier attempt was redone
    flagged: bool = False
    flag_reason: str = ""
    flag_detail: str = ""
    attempts: int = 1
    redo_reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.cell_id):
            raise ValueError(f"cell_id must be 16 hex digits, not {self.cell_id!r}")
        bad = set(self.labels) - set(LABELS)
        if bad:
            raise ValueError(f"unknown labels {sorted(bad)}; valid: {', '.join(LABELS)}")

    def columns(self) -> dict[str, Any]:
        """Flat column values (mappings as JSON, labels comma-joined and sorted)."""
        d = asdict(self)
        for k in _MAP_FIELDS:
            d[k] = json.dumps({a: list(b) if isinstance(b, tuple) else b for a, b in getattr(self, k)}, sort_keys=True)
        d["cpu_share"] = json.dumps(list(self.cpu_share))
        d["redo_reasons"] = json.dumps(list(self.redo_reasons))
        del d["freq_mhz"]
        d.update({freq_column(name): float(mhz) for name, mhz in self.freq_mhz})
        d["labels"] = ",".join(sorted(self.labels))
        return d


@dataclass(frozen=True)
class Sample:
    """One training step of one repetition, as stored (a autlearn.profiler.steps.Step plus where it belongs)."""

    repetition: int
    step: int
    warmup: bool
    step_ns: int
    loss: float | None = None
    phases_ns: tuple[tuple[str, int], ...] = ()
    energy_j: float | None = None  # energy attributed to this step, when an energy source is present
    t_start_ns: int | None = None  # device clock, when the runner reports it (energy alignment)
    t_end_ns: int | None = None

    @classmethod
    def from_step(cls, step: Any, repetition: int, energy_j: float | None = None) -> Sample:
        """From a `profiler.steps.Step` (duck-typed: step, warmup, step_ns, loss, phases_ns[, t_start_ns, t_end_ns])."""
        return cls(
            repetition=repetition,
            step=step.step,
            warmup=step.warmup,
            step_ns=step.step_ns,
            loss=step.loss,
            phases_ns=tuple(sorted(step.phases_ns)),
            energy_j=energy_j,
            t_start_ns=getattr(step, "t_start_ns", None),
            t_end_ns=getattr(step, "t_end_ns", None),
        )


@dataclass(frozen=True)
class CellStatus:
    cell_id: str
    status: str  # "ok" | "failed" | "skipped" | "interrupted"
    reason: str = ""
    spec_key: str = ""
    label: str = ""
    at: float = 0.0
    extra: tuple[tuple[str, Any], ...] = field(default=())


@dataclass(frozen=True)
class StaleCell:
    cell_id: str
    spec_key: str
    reason: str  # "artifact changed" | "not in the current plan"


# ---------------------------------------------------------------------------------------------------------- files
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write `path` via `write(binary_file)` into a temp file beside it, fsync, os.replace, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, doc: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(doc, indent=1, sort_keys=True, default=str).encode()))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_parquet(path: Path, df: pd.DataFrame) -> dict[str, Any]:
    """Write atomically; returns {"sha256", "bytes"} of what was written (the status records it)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"autlearn.schema_version": str(SCHEMA_VERSION).encode()}
    )
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    data = buf.getvalue().to_pybytes()
    atomic_write(path, lambda f: f.write(data))
    return {"sha256": _sha256(data), "bytes": len(data)}


# ---------------------------------------------------------------------------------------------------------- store
class Store:
    """One campaign's results directory. Thread-safe for distinct cells (one worker per device)."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self._manifest = manifest

    # -- opening
    @classmethod
    def open(cls, results_dir: str | os.PathLike[str], campaign: Any | None = None, name: str | None = None) -> Store:
        """Open (creating if needed) `<results_dir>/<campaign.name>/`. `campaign` is a autlearn.engine.campaign_config
        Campaign (its spec is recorded); `name` opens an existing directory without one. Migrates older schemas;
        SchemaError for newer/unknown ones."""
        if campaign is None and name is None:
            raise ValueError("Store.open needs a campaign or a name")
        root = Path(results_dir) / (campaign.name if campaign is not None else cast(str, name))  # one is given
        if (root / MANIFEST).exists():
            manifest = _read_manifest(root)
            if campaign is not None and manifest.get("spec") != campaign.to_dict():
                manifest["spec"], manifest["updated_at"] = campaign.to_dict(), time.time()
                _write_json(root / MANIFEST, manifest)
        elif campaign is None:
            raise SchemaError(f"no results for campaign {name!r} under {results_dir}")
        else:
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "name": campaign.name,
                "spec": campaign.to_dict(),
                "plan": {},
                "created_at": time.time(),
            }
            _write_json(root / MANIFEST, manifest)
        store = cls(root, manifest)
        store.sweep()
        return store

    @property
    def name(self) -> str:
        return cast(str, self._manifest["name"])

    def sweep(self, min_age_s: float = TEMP_SWEEP_AGE_S) -> int:
        """Delete temp files left by crashed writers (older than `min_age_s`). Returns how many."""
        n, now = 0, time.time()
        for sub in ("cells", "summary", "status", ""):
            d = self.root / sub
            if not d.is_dir():
                continue
            for p in d.glob(".*.tmp"):
                try:
                    if now - p.stat().st_mtime >= min_age_s:
                        p.unlink()
                        n += 1
                except FileNotFoundError:
                    pass
        return n

    def record_devices(self, facts: Mapping[str, Mapping[str, Any]]) -> None:
        """Record probed device facts by serial (model, soc, android, root, virtual, ...) in the manifest."""
        devices = dict(self._manifest.get("devices") or {})
        devices.update({serial: dict(f) for serial, f in facts.items()})
        self._manifest["devices"] = devices
        _write_json(self.root / MANIFEST, self._manifest)

    # -- plan and resume
    def set_plan(self, cells: Iterable[tuple[str, str]]) -> None:
        """Record the current plan as (cell_id, spec_key) pairs; cells on disk outside it become stale."""
        self._manifest["plan"] = {cid: key for cid, key in cells}
        self._manifest["updated_at"] = time.time()
        _write_json(self.root / MANIFEST, self._manifest)

    def set_order(
        self, kind: str, seed: int, devices: Mapping[str, Sequence[str]], resume: bool = False
    ) -> dict[str, list[str]]:
        """Record the order each device's cells run in (`devices`: serial -> cell ids in the plan's order, `kind` and
        `seed` the campaign's) and return it. On a --resume an order recorded before stands (it is continued, not
        reshuffled): its cells keep their places and kind and seed stay as recorded; cells it does not hold (a device
        or cells added, a rebuilt artifact's) follow it in the plan's order; cells no longer planned drop out (a
        device not in this run keeps its record)."""
        old = self._manifest.get("order") if resume else None
        old = old if isinstance(old, dict) else {}
        got = old.get("devices")
        recorded: dict[str, list[str]] = {
            s: [c for c in ids if isinstance(c, str)]
            for s, ids in (got.items() if isinstance(got, dict) else ())
            if isinstance(ids, list)
        }
        planned = {serial: list(ids) for serial, ids in devices.items()}
        if any(set(recorded.get(s, ())) & set(ids) for s, ids in planned.items()):
            for serial, ids in planned.items():
                wanted = set(ids)
                kept = [c for c in dict.fromkeys(recorded.get(serial, ())) if c in wanted]
                planned[serial] = kept + sorted(wanted - set(kept), key=ids.index)
            kind, seed = str(old.get("kind", kind)), int(old.get("seed", seed))
            others = {s: ids for s, ids in recorded.items() if s not in planned}  # a device not connected this time
        else:
            others = {}
        self._manifest["order"] = {"kind": kind, "seed": seed, "devices": {**others, **planned}}
        self._manifest["updated_at"] = time.time()
        _write_json(self.root / MANIFEST, self._manifest)
        return planned

    @property
    def order(self) -> dict[str, Any]:
        """The recorded order: {"kind", "seed", "devices": {serial: [cell_id, ...]}} ({} before `set_order`)."""
        return dict(self._manifest.get("order") or {})

    @property
    def plan(self) -> dict[str, str]:
        return dict(self._manifest.get("plan") or {})

    def status(self, cell_id: str) -> CellStatus | None:
        p = self.root / "status" / f"{cell_id}.json"
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise SchemaError(f"corrupt status file {p}: {exc}") from None
        why = _status_shape(doc, cell_id)
        if why:
            raise SchemaError(f"corrupt status file {p}: {why}")
        return CellStatus(
            cell_id=cell_id,
            status=doc["status"],
            reason=doc.get("reason", ""),
            spec_key=doc.get("spec_key", ""),
            label=doc.get("label", ""),
            at=float(doc.get("at", 0.0)),
            extra=tuple(sorted((doc.get("extra") or {}).items())),
        )

    def finished(self, cell_id: str) -> bool:
        """True when the cell has an "ok" status and its files verify (`--resume` skips it)."""
        try:
            st = self.status(cell_id)
        except SchemaError:  # a garbled status file: the cell is redone
            return False
        return st is not None and st.status == "ok" and self.verify(cell_id, st) is None

    def redo_reason(self, cell_id: str) -> str | None:
        """Why `--resume` redoes a cell that has a record: its status file is corrupt, its files cannot be trusted, or
        it was interrupted (None for a finished cell, one never run, or a failed or skipped one: those are redone
        as a matter of course)."""
        try:
            st = self.status(cell_id)
        except SchemaError as exc:
            return str(exc)
        if st is None or st.status in ("failed", "skipped"):
            return None
        if st.status == "interrupted":
            return "it was interrupted"
        why = self.verify(cell_id, st)
        return None if why is None else f"its files cannot be trusted: {why}"

    def verify(self, cell_id: str, status: CellStatus | None = None) -> str | None:
        """Why a finished cell's files cannot be trusted, or None when they can (see `check_file`). `status`: the
        cell's status when the caller already has it."""
        try:
            status = status or self._status_for(cell_id)
            for sub in ("cells", "summary"):
                self.check_file(cell_id, sub, status)
        except BadCell as e:
            return e.reason
        return None

    def _checked_bytes(self, cell_id: str, sub: str, st: CellStatus | None) -> tuple[bytes, bool]:
        """The file's bytes, checked against the checksum `st` recorded; also whether there was one to check."""
        path = self.root / sub / f"{cell_id}.parquet"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadCell(cell_id, f"{sub} file missing") from None
        want = dict(st.extra if st else ()).get("files", {}).get(sub) if st else None
        if want is not None and (len(data) != want.get("bytes") or _sha256(data) != want.get("sha256")):
            raise BadCell(
                cell_id,
                f"{sub} file changed since it was written ({len(data)} bytes, "
                f"{want.get('bytes')} written): truncated, garbled or replaced",
            )
        return data, want is not None

    def _status_for(self, cell_id: str) -> CellStatus | None:
        try:
            return self.status(cell_id)
        except SchemaError as e:
            raise BadCell(cell_id, str(e)) from None

    def check_file(self, cell_id: str, sub: str, status: CellStatus | None = None) -> None:
        """BadCell unless the cell's `sub` file is whole: its recorded checksum, or (older cells, none recorded)
        a full parse. `status`: the cell's status when the caller already has it."""
        data, checked = self._checked_bytes(cell_id, sub, status or self._status_for(cell_id))
        if not checked:
            self._frame(cell_id, sub, data)

    def read_verified(self, cell_id: str, sub: str, status: CellStatus | None = None) -> pd.DataFrame:
        """The cell's `cells` or `summary` frame, checked against the checksum its status recorded and against its
        own cell_id column; BadCell names what is wrong. `status`: the cell's status when the caller has it."""
        data, _ = self._checked_bytes(cell_id, sub, status or self._status_for(cell_id))
        return self._frame(cell_id, sub, data)

    @staticmethod
    def _frame(cell_id: str, sub: str, data: bytes) -> pd.DataFrame:
        """Parse a cell file's bytes; BadCell when they are unreadable or hold another cell's rows."""
        try:
            df = pd.read_parquet(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise BadCell(cell_id, f"{sub} file unreadable ({type(e).__name__})") from None
        ids = set(df["cell_id"].astype(str)) if "cell_id" in df else set()
        if ids != {cell_id}:
            raise BadCell(cell_id, f"{sub} file holds another cell's data ({', '.join(sorted(ids)[:2]) or 'none'})")
        return df

    def statuses(self) -> tuple[CellStatus, ...]:
        return _read_statuses(self)[0]

    def stale(self) -> tuple[StaleCell, ...]:
        """Cells on disk that the current plan (see `set_plan`) no longer contains. Empty when no plan is set."""
        plan = self.plan
        if not plan:
            return ()
        keys = set(plan.values())
        return tuple(
            StaleCell(s.cell_id, s.spec_key, "artifact changed" if s.spec_key in keys else "not in the current plan")
            for s in self.statuses()
            if s.cell_id not in plan
        )

    # -- writing
    def write_cell(self, meta: CellMeta, steps: Sequence[Sample]) -> Path:
        """Write a finished cell: raw samples, then its summary, then the "ok" status (the commit point)."""
        if not steps:
            raise ValueError("a finished cell has at least one step")
        raw = samples_frame(meta, steps)
        files = {}
        for sub, df in (("cells", raw), ("summary", summarize_cell(raw))):
            files[sub] = _write_parquet(self.root / sub / f"{meta.cell_id}.parquet", df)
        self.write_status(
            meta.cell_id,
            "ok",
            spec_key=meta.spec_key,
            label=cell_label(
                meta.device_serial, meta.workload, meta.variant, meta.batch, meta.governor_requested, meta.affinity
            ),
            extra={"files": files, **({"stop_reason": meta.stop_reason} if meta.stop_reason else {})},
        )
        return self.root / "cells" / f"{meta.cell_id}.parquet"

    def write_trace(self, cell_id: str, trace: Any) -> Path:
        """Keep a cell's power trace (profiler.energy.PowerTrace) beside its samples: traces/<cell_id>.parquet."""
        df = pd.DataFrame(
            {"t": np.asarray(trace.t), "current": np.asarray(trace.current), "voltage": np.asarray(trace.voltage)}
        )
        table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
            {
                "source": str(trace.source),
                "serial": str(trace.serial),
                "labels": ",".join(trace.labels),
                "sample_rate": str(trace.sample_rate),
                "dropped": str(trace.dropped),
            }
        )
        path = self.root / "traces" / f"{cell_id}.parquet"
        atomic_write(path, lambda f: pq.write_table(table, f))
        return path

    def write_status(
        self,
        cell_id: str,
        status: str,
        reason: str = "",
        *,
        spec_key: str = "",
        label: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a cell's outcome; every status but "ok" needs a reason (NotRooted, governor unavailable, ...)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        if status != "ok" and not reason:
            raise ValueError(f"a {status} cell needs a reason")
        if not _ID_RE.match(cell_id):
            raise ValueError(f"cell_id must be 16 hex digits, not {cell_id!r}")
        _write_json(
            self.root / "status" / f"{cell_id}.json",
            {
                "cell_id": cell_id,
                "status": status,
                "reason": reason,
                "spec_key": spec_key,
                "label": label,
                "at": time.time(),
                "extra": dict(extra or {}),
            },
        )


_STATUS_TYPES: dict[str, type | tuple[type, ...]] = {
    "cell_id": str,
    "status": str,
    "reason": str,
    "spec_key": str,
    "label": str,
    "at": (int, float),
    "extra": dict,
}


def _status_shape(doc: Any, cell_id: str) -> str:
    """Why `doc` is not a status file as `write_status` writes it ("" when it is): valid JSON of another shape
    ({}, [], null, a number, a string) is as corrupt as a truncated file."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    if doc.get("status") not in STATUSES:
        return f"status {doc.get('status')!r} is not one of {', '.join(STATUSES)}"
    bad = [
        k
        for k, t in _STATUS_TYPES.items()
        if k in doc and (not isinstance(doc[k], t) or doc[k] is True or doc[k] is False)
    ]
    if bad:
        return f"mistyped {', '.join(bad)}"
    if doc.get("cell_id", cell_id) != cell_id:
        return f"it belongs to cell {doc['cell_id']}"
    return ""


def _read_manifest(root: Path) -> dict[str, Any]:
    p = root / MANIFEST
    try:
        manifest = json.loads(p.read_text())
    except FileNotFoundError:
        raise SchemaError(f"not an autlearn results directory (no {MANIFEST}): {root}") from None
    except (OSError, ValueError) as exc:
        raise SchemaError(f"unreadable {p}: {exc}") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaError(f"{p}: unknown schema version {version!r}")
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{root} was written by a newer autlearn (results schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}): upgrade autlearn"
        )
    while version < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(version)
        if migrate is None:
            raise SchemaError(f"{root}: no migration from results schema {version} to {SCHEMA_VERSION}")
        migrate(root)
        manifest = json.loads(p.read_text())
        version += 1
        manifest["schema_version"] = version
        _write_json(p, manifest)
    return cast(dict[str, Any], manifest)  # a dict: its schema_version was read above


# ---------------------------------------------------------------------------------------------------------- frames
def samples_frame(meta: CellMeta, steps: Sequence[Sample]) -> pd.DataFrame:
    """Raw rows: metadata columns + repetition, step, warmup, step_ns, loss, energy_j, t_start_ns, t_end_ns,
    phase_<name>_ns."""
    cols = meta.columns()
    phases = sorted({name for s in steps for name, _ in s.phases_ns})
    rows = []
    for s in steps:
        row = dict(
            cols,
            repetition=s.repetition,
            step=s.step,
            warmup=s.warmup,
            step_ns=s.step_ns,
            loss=s.loss,
            energy_j=s.energy_j,
            t_start_ns=s.t_start_ns,
            t_end_ns=s.t_end_ns,
        )
        p = dict(s.phases_ns)
        row.update({f"phase_{n}_ns": p.get(n) for n in phases})
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("temp_start_c", "temp_end_c", "battery_pct", "battery_temp_c", "loss", "energy_j", "harness_s", "wait_s"):
        df[c] = df[c].astype("float64")
    for c in ["launch_max_temp_c", *(c for c in df.columns if _FREQ_RE.match(str(c)))]:
        df[c] = df[c].astype("float64")
    for c in ("t_start_ns", "t_end_ns"):
        df[c] = df[c].astype("Int64")
    for c in ("throttled",):
        df[c] = df[c].astype("boolean")
    df["governor_applied"] = df["governor_applied"].astype("string")
    return df


_META_COLUMNS = tuple(CellMeta.__dataclass_fields__)
_FREQ_RE = re.compile(r"^freq_\w+_mhz$")


def freq_column(policy: str) -> str:
    """The column of a policy's mean achieved frequency (MHz): `freq_<policy>_mhz` (reports read `freq_*`)."""
    return f"freq_{re.sub(r'[^A-Za-z0-9]+', '_', policy).strip('_') or 'cpu'}_mhz"


def summarize_cell(raw: pd.DataFrame) -> pd.DataFrame:
    """One row: the cell's metadata plus stats.summarize() of its timed step_ns (ordered by step index)."""
    timed = raw[~raw["warmup"].astype(bool)]
    s = stats.summarize(timed["step_ns"].to_numpy(float), order=timed["step"].to_numpy(float))
    row = {c: raw[c].iloc[0] for c in _META_COLUMNS if c in raw}
    row.update({c: raw[c].iloc[0] for c in raw.columns if _FREQ_RE.match(str(c))})  # freq_<policy>_mhz
    row.update(_summary_columns(s))
    if "energy_j" in timed and timed["energy_j"].notna().any():
        row["energy_j_median"] = float(timed["energy_j"].median())
    return pd.DataFrame([row])


def _summary_columns(s: stats.Summary) -> dict[str, Any]:
    return {
        "n": s.n,
        "median_ns": s.median,
        "mean_ns": s.mean,
        "std_ns": s.std,
        "cv": s.cv,
        "ci_low_ns": s.ci_low,
        "ci_high_ns": s.ci_high,
        "confidence": s.confidence,
        "n_resamples": s.n_resamples,
        "warmup_trend": s.warmup.trend,
        "warmup_ratio": s.warmup.ratio,
        "warnings": "; ".join(s.warnings),
    }


def _campaign_dirs(path: Path) -> list[Path]:
    if (path / MANIFEST).exists():
        return [path]
    dirs = sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))
    if not dirs:
        raise SchemaError(f"no autlearn results under {path}")
    return dirs


def _read_statuses(store: Store) -> tuple[tuple[CellStatus, ...], list[tuple[str, str, str]]]:
    """(every readable status, bad cells as (cell_id, label, reason): garbled status files, never raised)."""
    d = store.root / "status"
    out, bad = [], []
    for p in sorted(d.glob("*.json")) if d.is_dir() else ():
        if not _ID_RE.match(p.stem):
            continue
        try:
            st = store.status(p.stem)
        except SchemaError as e:
            bad.append((p.stem, "", str(e)))
            continue
        if st is not None:
            out.append(st)
    return tuple(out), bad


def _load(path: str | os.PathLike[str], sub: str, include_stale: bool) -> pd.DataFrame:
    frames, stale_all, bad_all = [], [], []
    for root in _campaign_dirs(Path(path)):
        store = Store(root, _read_manifest(root))
        statuses, bad = _read_statuses(store)
        stale = {s.cell_id for s in store.stale()}
        ok = [st for st in statuses if st.status == "ok" and (include_stale or st.cell_id not in stale)]
        stale_all += sorted(stale)
        bad_all += bad
        other = "summary" if sub == "cells" else "cells"
        for st in ok:
            try:  # a cell is trusted whole or not at all
                frame = store.read_verified(st.cell_id, sub, st)
                store.check_file(st.cell_id, other, st)  # the other file: its checksum, not a second parse
            except BadCell as e:  # never shown as data: named instead
                bad_all.append((st.cell_id, st.label, e.reason))
                continue
            frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["stale"] = stale_all
    df.attrs["bad"] = bad_all
    df.attrs["schema_version"] = SCHEMA_VERSION
    return df


def one_line(text: str, limit: int = 200) -> str:
    """A reason or warning for a table or a log line: whitespace (a multi-line shell command, device output) collapsed,
    cut at `limit` characters (the stored reason keeps all of it: `results show --json`)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def energy_reason(note: str, limit: int = 80) -> str:
    """Why a cell has no energy, in a few words ("" when its note does not say it is missing): its note's first
    clause, e.g. "not measured: the phone is charging (USB): ..." or "lost: Monsoon 123: ..."."""
    note = str(note or "")
    if note.startswith(("energy not measured: ", "energy lost: ")):
        return one_line(note.removeprefix("energy ").split("; ")[0], limit)
    return ""


def bad_cell_lines(df: pd.DataFrame) -> list[str]:
    """One line per cell a loader left out because its files cannot be trusted (for show, compare, report)."""
    return [
        f"bad cell {cid} {label}: {reason}; left out (rerun with --resume to redo it)".replace("  ", " ")
        for cid, label, reason in df.attrs.get("bad", [])
    ]


def load_results(path: str | os.PathLike[str], include_stale: bool = False) -> pd.DataFrame:
    """All raw samples (one row per step per repetition) of the finished cells under `path` (a campaign directory
    or a results root holding several). Stale cells are left out unless `include_stale`; their ids are in
    `df.attrs["stale"]`. Failed/skipped cells are in `load_status`."""
    return _load(path, "cells", include_stale)


def load_summaries(path: str | os.PathLike[str], include_stale: bool = False) -> pd.DataFrame:
    """One row per finished cell: metadata + summary statistics of its timed steps."""
    return _load(path, "summary", include_stale)


SUMMARY_ORDER = (
    "device_model",
    "device_serial",
    "workload",
    "config",
    "variant",
    "batch",
    "governor_requested",
    "affinity",
)


def sorted_summaries(df: pd.DataFrame) -> pd.DataFrame:
    """Summaries in reading order: by device, workload, config, variant, batch, governor (stable for the rest)."""
    by = [c for c in SUMMARY_ORDER if c in df.columns]
    return df.sort_values(by, kind="stable").reset_index(drop=True) if by and len(df) else df


def load_devices(path: str | os.PathLike[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """The device facts each campaign under `path` recorded (`Store.record_devices`): campaign -> serial -> facts."""
    out = {}
    for root in _campaign_dirs(Path(path)):
        manifest = _read_manifest(root)
        out[str(manifest.get("name", root.name))] = dict(manifest.get("devices") or {})
    return out


def load_status(path: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per cell with a recorded outcome: cell_id, status, reason, spec_key, label, at, stale."""
    rows = []
    for root in _campaign_dirs(Path(path)):
        store = Store(root, _read_manifest(root))
        statuses, bad = _read_statuses(store)
        stale = {s.cell_id for s in store.stale()}
        rows += [
            dict(
                campaign=store.name,
                cell_id=cid,
                status="failed",
                reason=f"status unreadable: {reason}",
                spec_key="",
                label=label,
                at=0.0,
                stale=False,
            )
            for cid, label, reason in bad
        ]
        for s in statuses:
            reason = store.verify(s.cell_id, s) if s.status == "ok" else None
            rows.append(
                dict(
                    campaign=store.name,
                    cell_id=s.cell_id,
                    status="failed" if reason else s.status,
                    reason=f"files cannot be trusted: {reason}" if reason else s.reason,
                    spec_key=s.spec_key,
                    label=s.label,
                    at=s.at,
                    stale=s.cell_id in stale,
                )
            )
    return pd.DataFrame(rows, columns=["campaign", "cell_id", "status", "reason", "spec_key", "label", "at", "stale"])


# ---------------------------------------------------------------------------------------------------------- pooling
def check_poolable(df: pd.DataFrame, by: Sequence[str] = ()) -> None:
    """Raise IncompatibleRuns if, within a group of `by`, any FIXED_COLUMNS column (not itself in `by`) differs."""
    fixed = [c for c in FIXED_COLUMNS if c in df.columns and c not in by]
    groups = df.groupby(list(by), dropna=False, sort=False) if by else [((), df)]
    for key, g in groups:
        for c in fixed:
            values = g[c].astype("object").where(g[c].notna(), None).unique()
            if len(values) > 1:
                where = f" in group {dict(zip(by, key if isinstance(key, tuple) else (key,)))}" if by else ""
                shown = ", ".join(repr(v) for v in values[:4])
                raise IncompatibleRuns(
                    f"refusing to pool runs whose {c} differ{where}: {shown}; group by {c} or select one"
                )


def pooled_summary(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Summaries of raw samples pooled per group of `by` (timed steps only), after `check_poolable`."""
    if df.empty:
        return pd.DataFrame()
    check_poolable(df, by)
    timed = df[~df["warmup"].astype(bool)]
    rows = []
    for key, g in timed.groupby(list(by), dropna=False, sort=True):
        s = stats.summarize(g["step_ns"].to_numpy(float), order=g["step"].to_numpy(float))
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["cells"] = g["cell_id"].nunique()
        row.update(_summary_columns(s))
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "BadCell",
    "CellMeta",
    "CellStatus",
    "bad_cell_lines",
    "FIXED_COLUMNS",
    "freq_column",
    "IncompatibleRuns",
    "LABELS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Sample",
    "SchemaError",
    "StaleCell",
    "Store",
    "atomic_write",
    "check_poolable",
    "load_devices",
    "load_results",
    "load_status",
    "load_summaries",
    "pooled_summary",
    "samples_frame",
    "summarize_cell",
]
