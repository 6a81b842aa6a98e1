"""`autlearn run --tune`: tune what a campaign compiles, on one connected phone per CPU target, under its lease."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autlearn.engine.campaign_config import Campaign
from autlearn.profiler.device import Device
from autlearn.profiler.fleet import discover
from autlearn.profiler.lease import PhoneLease
from autlearn.profiler.probe import target_id
from autlearn.workloads.metaschedule import TuneSettings, emulates, tune


def tune_for_campaign(
    campaign: Campaign,
    *,
    trials: int,
    minutes: float,
    threads: int | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """`autlearn run --tune`: before a campaign builds its artifacts, tune every program it compiles on one
    connected phone per CPU target (databases resume, so a rerun only tunes what is missing). Programs that are
    never tuned (unoptimized, `tuning = "none"`, layer suites, pruned models from files) are skipped."""
    devices = campaign.select([e.facts for e in discover() if e.facts is not None])
    by_target: dict[str, Any] = {}
    for d in devices:
        by_target.setdefault(target_id(d), d)
    out = []
    for tid, d in by_target.items():
        settings = TuneSettings(trials=trials, minutes=minutes, threads=threads, emulated=emulates(d))
        for w in campaign.workloads:
            config = dict(w.config)
            if w.model == "layers" or config.get("tuning") == "none" or "compressed" in config:
                say(f"{w.model}: not tuned (layer suite, tuning = 'none' or a pruned model)")
                continue
            for variant in (v for v in w.variants if v != "unoptimized"):
                for batch in w.batch:
                    say(f"tuning {w.model}/{variant} batch {batch} for {tid} on {d.serial}")
                    # the phone's lease, as a run takes it: two tunes (or a run) never time each other
                    with PhoneLease(Device(d.serial), f"tune {w.model}", "tuning", say=say):
                        r = tune(
                            Device(d.serial),
                            tid,
                            w.model,
                            variant,
                            settings,
                            say=say,
                            **{**config, "batch": batch},
                        )
                    out.append(r.to_dict())
    return out
