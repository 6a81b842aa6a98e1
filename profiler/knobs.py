"""Every setting the suite changes on a phone is a knob (governor and frequency limits, the charging switch, adbd
as root; the Monsoon's USB passthrough keeps its own marker beside the monitor): its prior state is persisted here
BEFORE the first change, put back on exit and on signals by the code that changed it, and, after a kill, put back
by the next run (`restore_pending`, called under the phone's lease).

One pending store for all of them: `<root>/<knob>-pending/<serial>.json` = {"serial", "knob", "saved_at", "state"}
(governor files of older runs hold the snapshot at the top level; `profiler.governor.restore_knob` reads both). The
root is
`$AUTLEARN_HOME/pending` for campaigns (`default_root`), so any later run on this host restores what a killed one
left. Each knob registers how to restore its state (`register`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from autlearn.profiler import paths

# knob -> restore(device, document), as "module:function" resolved when needed (no registration at import time)
_RESTORERS: dict[str, Any] = {
    "governor": "autlearn.profiler.governor:restore_knob",
    "charging": "autlearn.profiler.energy.session:restore_charging",
    "adb_root": "autlearn.profiler.device:restore_adb_root",
}


def default_root() -> Path:

    return paths.home() / "pending"


def register(knob: str, restore: Callable[[Any, dict[str, Any]], None]) -> None:
    """`restore(device, state)` puts a knob back from its persisted state (raises when it cannot)."""
    _RESTORERS[knob] = restore


def _restorer(knob: str) -> Callable[[Any, dict[str, Any]], None] | None:

    r = _RESTORERS.get(knob)
    if isinstance(r, str):
        module, _, attr = r.partition(":")
        r = getattr(importlib.import_module(module), attr)
    return r


def _safe(serial: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", serial) or "device"


def path(root: str | os.PathLike[str], serial: str, knob: str) -> Path:
    return Path(root) / f"{knob}-pending" / f"{_safe(serial)}.json"


def persist(root: str | os.PathLike[str] | None, serial: str, knob: str, state: dict[str, Any], **extra: Any) -> None:
    """Write the prior state durably (temp file, fsync, rename) before the knob is turned."""
    if root is None:
        return
    p = path(root, serial, knob)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"serial": serial, "knob": knob, "saved_at": time.time(), "state": state, **extra}
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def forget(root: str | os.PathLike[str] | None, serial: str, knob: str) -> None:
    if root is not None:
        path(root, serial, knob).unlink(missing_ok=True)


def entries(root: str | os.PathLike[str], serial: str | None = None) -> list[tuple[str, str, dict[str, Any], Path]]:
    """(knob, serial, document, path) of every pending state (of one serial when given); unreadable files too
    (document {} then)."""
    out = []
    for p in sorted(Path(root).glob("*-pending/*.json")):
        knob = p.parent.name[: -len("-pending")]
        try:
            doc = json.loads(p.read_text())
            s = str(doc["serial"])
        except (OSError, ValueError, KeyError, TypeError):
            doc, s = {}, p.stem
        if serial is None or s == serial:
            out.append((knob, s, doc, p))
    return out


def restore_pending(
    root: str | os.PathLike[str],
    connect: Callable[[str], Any],
    serials: set[str] | None = None,
    only: set[str] | None = None,
    but: AbstractSet[str] = frozenset(),
) -> dict[str, str]:
    """Put back every knob a killed run left changed (of `serials` only, when given: the phones this run holds;
    of the knobs in `only`, when given; none of those in `but`). adbd root goes last: putting back the others may
    need it. Returns {"serial knob": "restored" | why not}; what could not be restored stays pending for the next
    try."""
    report: dict[str, str] = {}
    devices: dict[str, Any] = {}
    for knob, serial, doc, p in sorted(entries(root), key=lambda e: e[0] == "adb_root"):
        if (serials is not None and serial not in serials) or (only is not None and knob not in only) or knob in but:
            continue
        key = f"{serial} {knob}"
        if not doc:
            report[key] = f"unreadable pending state {p}"
            continue
        restore = _restorer(knob)
        if restore is None:
            report[key] = f"no restorer registered for knob {knob!r}"
            continue
        try:
            if serial not in devices:
                devices[serial] = connect(serial)
            restore(devices[serial], doc)
        except Exception as exc:  # noqa: BLE001 - keep the file, say why
            report[key] = f"{type(exc).__name__}: {exc}"
            continue
        p.unlink(missing_ok=True)
        report[key] = "restored"
    return report
