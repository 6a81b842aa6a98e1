"""Campaigns the pipelines generate (whole models, layer suites), typed from the device serial to the engine's
`Campaign`: a `GeneratedCampaign` holds the serial, the governors and the workloads as they are, and builds each
round's Campaign from them. Its name carries a digest of its settings (different settings never share a results
directory); nothing is ever read back from a name."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autlearn.engine.campaign_config import (
    Campaign,
    DeviceSelection,
    Workload,
    check_campaign,
    energy_source,
    governor_intents,
    make_workload,
)
from autlearn.engine.settings import MeasureSettings
from autlearn.workloads.compressed import compressed_build_args
from autlearn.workloads.registry import LAYER_SUITE

NAME_PREFIX_MAX = 52  # a name is <prefix>-<10 hex>; a round adds -r<i> (a table's governor before it)


def safe_name(text: str, limit: int = 64) -> str:
    """`text` with every character outside [A-Za-z0-9._-] replaced by '_' (file and campaign names)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)[:limit]


def workload_of(model: Any) -> Workload:
    """The campaign workload of a model config (variant full) or a compressed.json path (variant compressed,
    compiled with its weights)."""
    if isinstance(model, (str, Path)):
        p = Path(model).resolve()
        args = compressed_build_args(p, None)
        return make_workload(args["model"], ("compressed",), (args["batch"],), {"compressed": str(p)})
    d = model.to_dict()
    family = d.pop("model")
    batch = d.pop("batch")
    return make_workload(family, ("full",), (int(batch),), d)


def workload_dict(w: Workload) -> dict[str, Any]:
    """`w` as a `[[workload]]` table (JSON-able; as `Campaign.to_dict` writes it)."""
    return {"model": w.model, "variants": list(w.variants), "batch": list(w.batch), "config": w.kwargs}


@dataclass(frozen=True)
class GeneratedCampaign:
    """A campaign on one device: `device` is its adb serial (`HOST/SERIAL` on a cluster) as given, `governors`
    the intents as written. `campaign(suffix)` is the engine's Campaign `<name><suffix>`."""

    name: str
    device: str
    governors: tuple[str, ...]
    workloads: tuple[Workload, ...]
    warmup: int
    steps: int
    repetitions: int
    energy: str
    description: str = ""

    def campaign(self, suffix: str = "") -> Campaign:
        """The Campaign `<name><suffix>`, checked as a campaign file's would be (ConfigError before anything runs)."""
        return check_campaign(
            Campaign(
                name=self.name + suffix,
                workloads=self.workloads,
                devices=DeviceSelection(serials=(self.device,)),
                governors=governor_intents(self.governors),
                warmup=self.warmup,
                steps=self.steps,
                repetitions=self.repetitions,
                energy=energy_source(self.energy),
                description=self.description,
                source="generated",
            )
        )

    def with_control(self, control: Workload | None) -> GeneratedCampaign:
        """The same campaign measuring `control` first (the name stays: the control is every round's)."""
        if control is None or control in self.workloads:
            return self
        return replace(self, workloads=(control, *self.workloads))

    def for_governor(self, governor: str) -> GeneratedCampaign:
        """The part under one governor, named `<name>-<governor>`."""
        return replace(self, name=f"{self.name}-{safe_name(governor)}", governors=(governor,))


def generated(
    prefix: str,
    device: str,
    governors: Iterable[str],
    workloads: Iterable[Workload],
    settings: MeasureSettings,
    description: str,
) -> GeneratedCampaign:
    """A GeneratedCampaign named `<prefix>-<digest of everything else>`, with the per-cell settings of `settings`
    (repetitions, steps, warmup, energy); equal workloads are measured once."""
    unique: list[Workload] = []
    for w in workloads:
        if w not in unique:
            unique.append(w)
    plan = GeneratedCampaign(
        "",
        device,
        tuple(governors),
        tuple(unique),
        settings.warmup,
        settings.steps,
        settings.repetitions,
        settings.energy,
        description,
    )
    return replace(plan, name=f"{safe_name(prefix, NAME_PREFIX_MAX)}-{_digest(plan)}")


def _digest(plan: GeneratedCampaign) -> str:
    """10 hex of the settings, in the form generated names were always made from (a layer suite lists no variant:
    it has one), so results directories keep their names."""
    body = {
        "description": plan.description,
        "warmup": plan.warmup,
        "steps": plan.steps,
        "repetitions": plan.repetitions,
        "energy": plan.energy,
        "devices": {"serials": [plan.device]},
        "governors": list(plan.governors),
        "workload": [
            {k: v for k, v in workload_dict(w).items() if k != "variants" or w.model != LAYER_SUITE}
            for w in plan.workloads
        ],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:10]
