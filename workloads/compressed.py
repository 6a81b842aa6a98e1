"""Compressed models on disk: `compressed.json` + `model.pt` (state dict), for any family.

`compressed.json`: {"format": FORMAT, "model": family, "variant": "compressed", "config": the compressed config's
to_dict(), "build_program": {"model", "variant", "config": the base config, "compressed_config": the overrides
(`Family.compressed_keys`)}, "state_dict": "model.pt", ...the compressor's own fields (budget, predicted, ...)}.
Campaigns compile it as variant `compressed` with its weights (`compressed_build_args`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from autlearn.profiler.errors import UserError
from autlearn.workloads.models import build_model
from autlearn.workloads.registry import get

FORMAT = "autlearn.compressed/1"
STATE = "model.pt"


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON (indented, sorted keys)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def save_state(path: Path, model: Any) -> None:
    """A torch module's (or a state dict's) weights, written atomically."""
    import torch  # torch takes seconds to import; only this path needs it

    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict() if hasattr(model, "state_dict") else model, tmp)
    os.replace(tmp, path)


def load_model(config: Any, path: Path) -> Any:
    import torch  # torch takes seconds to import; only this path needs it

    m = build_model(config)
    m.load_state_dict(torch.load(path, weights_only=True))
    return m


def export(family: Any, base: Any, config: Any, out_dir: Path, state: Any, **fields: Any) -> Path:
    """Write `out_dir/compressed.json` + `model.pt`. `state`: a state-dict file to copy, or a torch module /
    state dict to save. `fields` are added to the document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(state, (str, Path)):
        shutil.copyfile(state, out_dir / STATE)
    else:
        save_state(out_dir / STATE, state)
    doc = {
        "format": FORMAT,
        "model": family.name,
        "variant": "compressed",
        "config": config.to_dict(),
        "build_program": {
            "model": family.name,
            "variant": "compressed",
            "config": family.base_config(base),
            "compressed_config": family.compressed_config(config),
        },
        "state_dict": STATE,
        **fields,
    }
    write_json(out_dir / "compressed.json", doc)
    return out_dir / "compressed.json"


def read_compressed(p: Path) -> dict[str, Any]:
    """The JSON of a `compressed.json`; UserError naming the file when it is unreadable or not one."""
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot read compressed model ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{p}: not an {FORMAT} file")
    return doc


def load_compressed(path: str | Path) -> tuple[Any, Any]:
    """(config, torch model with the compressed weights) from a `compressed.json`."""

    p = Path(path)
    doc = read_compressed(p)
    cfg = get(doc["model"]).make_config(**{k: v for k, v in doc["config"].items() if k != "model"})
    return cfg, load_model(cfg, p.parent / doc["state_dict"])


def compressed_build_args(path: str | Path, model: str | None) -> dict[str, Any]:
    """What `build_program` needs to compile a `compressed.json` (from `autlearn prune`): the `model` family, the
    base `config`, the `compressed_config` overrides, the absolute `state_dict` path and the `batch` it was
    searched at. UserError naming the file on bad input."""
    p = Path(path)
    doc = read_compressed(p)
    bp = doc.get("build_program") or {}
    if model is not None and doc.get("model") != model:
        raise UserError(f"{p}: a {doc.get('model')!r} model, not {model!r}")
    sd = p.parent / str(doc.get("state_dict", ""))
    if not sd.is_file():
        raise UserError(f"{p}: its weights {sd} are missing")
    if not isinstance(bp.get("config"), dict) or not isinstance(bp.get("compressed_config"), dict):
        raise UserError(f"{p}: lacks build_program.config / compressed_config")
    batch = bp["config"].get("batch", (doc.get("config") or {}).get("batch", 1))
    return {
        "model": doc.get("model"),
        "config": dict(bp["config"]),
        "compressed_config": dict(bp["compressed_config"]),
        "state_dict": str(sd.resolve()),
        "batch": int(batch),
    }
