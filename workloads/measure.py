"""Measure whole models on a device through the campaign engine (resource-model validation, pruned models).

`models_campaign` writes the campaign (a dict for `parse_campaign`); `measure_models` runs it and returns, per
model name, the median step latency (ms) and energy (mJ) parsed from the results (`resource.measured_from_results`).
A model is a config (compiled as variant `full`) or a `compressed.json` path (variant `compressed`, its weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from profiler.errors import UserError


def _workload(model: Any) -> tuple[str, str, int, dict[str, Any]]:
    """(family, variant, batch, campaign config) of a model config or a compressed.json path."""
    if isinstance(model, (str, Path)):
        import json

        p = Path(model).resolve()
        from workloads.pruning.search import compressed_build_args

        doc = json.loads(p.read_text()) if p.is_file() else {}
        args = compressed_build_args(p, doc.get("model"))
        return doc["model"], "compressed", int(args["config"].get("batch", doc["config"].get("batch", 1))), \
            {"compressed": str(p)}
    d = model.to_dict()
    family = d.pop("model")
    batch = d.pop("batch")
    return family, "full", int(batch), d


def named(prefix: str, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` named `<prefix>-<digest of everything else>`: different settings never share a results directory."""
    import hashlib
    import json

    body = {k: v for k, v in spec.items() if k != "name"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:10]
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in prefix)[:52]
    return {**spec, "name": f"{safe}-{digest}"}


def models_campaign(name: str, models: Mapping[str, Any], serial: str, governor: str, *, reps: int = 2,
                    steps: int = 10, warmup: int = 2, energy: str = "auto") -> dict[str, Any]:
    workloads = []
    for label, m in models.items():
        family, variant, batch, cfg = _workload(m)
        workloads.append({"model": family, "variants": [variant], "batch": [batch], "config": cfg})
    return named(name, {"description": f"{len(models)} whole models", "warmup": warmup, "steps": steps,
            "repetitions": reps, "energy": energy, "devices": {"serials": [serial]}, "governors": [governor],
            "workload": workloads})


def measure_models(name: str, models: Mapping[str, Any], serial: str, governor: str, *, results_root: Path,
                   resume: bool = False, threads: int | None = 1, artifact_cache: str | Path | None = None,
                   **kw: Any) -> tuple[pd.DataFrame, Path]:
    """Run the models' campaign -> (DataFrame: model, ms, mj, n, variant; results dir). Failed cells are absent
    from the frame (the campaign's status says why)."""
    from profiler.campaign_cli import execute
    from profiler.campaign_config import parse_campaign
    from profiler.store import load_results
    from workloads.resource import canonical_config, measured_from_results

    spec = models_campaign(name, models, serial, governor, **kw)
    outcome = execute(parse_campaign(spec, source="generated"), results_root, resume=resume, threads=threads,
                      artifact_cache=artifact_cache)
    if outcome.ok + outcome.resumed == 0:
        raise UserError(f"no model was measured ({outcome.failed} failed, {outcome.skipped} skipped); see "
                        f"`autlearn results show {outcome.results_dir}`")
    m = measured_from_results(load_results(outcome.results_dir))
    want = {}
    for label, w in zip(models, spec["workload"]):
        want[(w["model"], w["variants"][0], canonical_config(w["config"]), w["batch"][0])] = label
    m["model"] = [want.get((r.workload, r.variant, r.config, r.batch)) for r in m.itertuples()]
    return m[m["model"].notna()].reset_index(drop=True), outcome.results_dir
