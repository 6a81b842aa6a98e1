"""Settings shared by every pipeline that measures through the campaign engine (run, tables, validation, prune)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MeasureSettings:
    """How generated campaigns are run and stored.

    results_root: campaigns write to <results_root>/<name>/; resume: skip finished cells; threads: runner threads
    (None: the runner's own); artifacts: artifact cache (None: profiler.paths.artifacts_dir()); rounds: campaign
    rounds pooled (control-gated where a pipeline has a control); repetitions, steps, warmup, energy: per cell, as
    in a campaign file; cluster: address of a Ray cluster whose agents hold the phones (None: this host's adb
    server, in-process)."""

    results_root: Path = Path("results")
    resume: bool = False
    threads: int | None = None
    artifacts: Path | None = None
    rounds: int = 1
    repetitions: int = 2
    steps: int = 10
    warmup: int = 2
    energy: str = "auto"
    cluster: str | None = None

    def __post_init__(self) -> None:  # accept str paths from callers; the object stays frozen
        object.__setattr__(self, "results_root", Path(self.results_root))
        if self.artifacts is not None:
            object.__setattr__(self, "artifacts", Path(self.artifacts))
