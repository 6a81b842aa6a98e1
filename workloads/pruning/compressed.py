"""`compressed.json`: a pruned model as campaigns compile it (variant `compressed`), for every model family.

`write_compressed` is the one writer (MobileNet's search and the LSTM's SVD head); `search.compressed_build_args`
and `search.load_compressed` read it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

FORMAT = "autlearn.compressed/1"


def write_compressed(pdir: Path, *, model: str, config: Any, base: Mapping[str, Any],
                     compressed_config: Mapping[str, Any], budget: Any, predicted: Any, value: float | None,
                     table: Any = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write `pdir/compressed.json` (atomically) for the pruned `config` whose weights are `pdir/model.pt`:
    `build_program` compiles family `model` with the `base` config updated by `compressed_config`. `budget` is the
    pruning.budget.Budget it was made for, `predicted` the table's resource prediction (a dict) and `value` its value
    of the budget's kind; `extra` adds family-specific fields (accuracy, iteration, ...)."""
    pdir.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT, "model": model, "variant": "compressed", "config": config.to_dict(),
        "build_program": {"model": model, "variant": "compressed", "config": dict(base),
                          "compressed_config": dict(compressed_config)},
        "state_dict": "model.pt", "budget": str(budget), "kind": budget.kind, "budget_value": budget.value,
        "predicted": predicted, "value": value,
        **(extra or {}),
        "table": (json.loads(table.meta.to_json()) if table is not None else None),
    }
    path = pdir / "compressed.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path
