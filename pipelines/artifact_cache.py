"""The artifact cache of campaigns: (cell, target id) -> a verified artifact, built once per distinct build and
reused while the tools, the code on the build path (`BUILD_SOURCES`), the inputs and the tuning database are the
same. Parallel builds run in spawned worker processes (`build_jobs`)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autlearn import workloads
from autlearn.engine.worker import ArtifactRef
from autlearn.profiler import paths
from autlearn.profiler.errors import ArtifactError, UserError
from autlearn.workloads.artifact import build_artifact, input_files, load_artifact, tool_versions
from autlearn.workloads.compile import target_key, tuning_database
from autlearn.workloads.registry import plain_config

if TYPE_CHECKING:
    from autlearn.engine.campaign_config import Cell
    from autlearn.engine.worker import ArtifactRef
    from autlearn.workloads.artifact import Artifact

# A build not yet cached: (workload, variant, abi (a target id), directory name, config)
BuildArgs = tuple[str, str, str, str, dict[str, Any]]

# What `build_artifact` reaches (globs under workloads/): a change to any of it must not reuse cached artifacts.
# Patterns that match nothing are skipped, so modules may be split or added (targets, tuning_db, families/) freely;
# a new module on the build path must be listed here.
BUILD_SOURCES: tuple[str, ...] = (
    "artifact.py",
    "compile.py",
    "targets.py",
    "tuning_db.py",
    "program.py",
    "runner_build.py",
    "metaschedule.py",
    "models.py",
    "layers.py",
    "layer_suite.py",
    "tables.py",
    "tables/*.py",
    "data.py",
    "resource.py",
    "registry.py",
    "compressed.py",
    "families/*.py",
    "pruning/__init__.py",
    "pruning/search.py",
    "pruning/strategy.py",
    "pruning/budget.py",
    "pruning/importance.py",
    "pruning/train.py",
    "pruning/svd.py",
    "runner/**/*.cc",
    "runner/**/*.h",
    "tuning/**/*.json",
)


def code_fingerprint(patterns: tuple[str, ...] = BUILD_SOURCES) -> str:
    """Hash of the files matching `patterns` (paths and contents) under workloads/."""
    root = Path(workloads.__file__).parent
    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_jobs() -> int:
    """Parallel artifact builds: $AUTLEARN_BUILD_JOBS, else one per core, at most 4 (a TVM build of a 224x224 model
    holds ~1-2 GB)."""
    explicit = os.environ.get("AUTLEARN_BUILD_JOBS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise UserError(f"AUTLEARN_BUILD_JOBS: expected a positive integer, got {explicit!r}")
        return int(explicit)
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 4))
    except AttributeError:  # not Linux
        return max(1, min(os.cpu_count() or 1, 4))


def _build_in_worker(workload: str, variant: str, abi: str, out: str, config: dict[str, Any]) -> str:

    return str(build_artifact(workload, variant, abi, Path(out), **config).path)


def tuning_label(tuning: Any, variant: str | None = None) -> str:
    """What tuned an artifact's code, for results and reports: the database and how many kernels it scheduled."""
    if variant == "unoptimized":
        return "not optimized"
    if isinstance(tuning, dict):
        return (
            f"tuned: database {tuning.get('database')} {str(tuning.get('digest'))[:12]} "
            f"({tuning.get('tuned_kernels', '?')} of {tuning.get('kernels', '?')} kernels)"
        )
    return "untuned (hand schedules)"


_BUILD_LOCK = threading.Lock()  # in-process builds one at a time, across providers (torch.export is not thread-safe)


class ArtifactProvider:
    """(cell, abi) -> ArtifactRef, building each distinct (model, variant, batch, config, abi) once and caching it
    under `cache`; a cached artifact is reused only when it verifies (hash and files) and was built by the same
    tools. `prebuild` builds what a campaign will need in parallel processes (TVM builds are single-threaded)."""

    def __init__(self, cache: Path, log: Callable[[str], None] = lambda s: None, jobs: int | None = None) -> None:
        self.cache, self.log = Path(cache), log
        self.jobs = build_jobs() if jobs is None else jobs
        self._lock = threading.Lock()
        self._memo: dict[str, ArtifactRef] = {}
        self._code: str | None = None

    def _key(self, cell: Cell, abi: str) -> tuple[str, dict[str, Any]]:

        config = plain_config(dict(cell.config))
        config["batch"] = cell.batch
        self._code = self._code or code_fingerprint()
        inputs = [hashlib.sha256(p.read_bytes()).hexdigest() for p in input_files(config)]
        untuned = cell.variant == "unoptimized" or config.get("tuning") == "none"
        tuning = None if untuned else tuning_database(abi)  # abi: a target id
        key = hashlib.sha256(
            json.dumps(
                [
                    cell.workload,
                    cell.variant,
                    abi,
                    config,
                    tool_versions(),
                    self._code,
                    inputs,
                    tuning and tuning["digest"],
                ],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
        return key, config

    def _dir(self, cell: Cell, abi: str, key: str) -> Path:

        return self.cache / f"{cell.workload}-{cell.variant}-{target_key(abi)}-{key}"

    def _ref(self, art: Artifact) -> ArtifactRef:

        meta = art.manifest.get("meta") or {}
        tools = {k: str(v) for k, v in art.manifest.get("tools", {}).items()}
        tools["target"] = str(meta.get("target_id") or art.abi)
        tools["tuning"] = tuning_label(meta.get("tuning"), art.variant)
        return ArtifactRef(art.path, art.hash, tuple(sorted(p.name for p in art.files())), tuple(sorted(tools.items())))

    def __call__(self, cell: Cell, abi: str) -> ArtifactRef:

        key, config = self._key(cell, abi)
        with self._lock:
            if key not in self._memo:
                out = self._dir(cell, abi, key)
                try:
                    art = load_artifact(out)
                except ArtifactError:
                    with _BUILD_LOCK:  # another provider's thread may have built it meanwhile
                        try:
                            art = load_artifact(out)
                        except ArtifactError:
                            self.log(f"building {cell.workload}/{cell.variant} for {abi} (batch {cell.batch})")
                            art = build_artifact(cell.workload, cell.variant, abi, out, **config)
                self._memo[key] = self._ref(art)
            return self._memo[key]

    def missing(self, requests: Iterable[tuple[Cell, str]]) -> dict[str, BuildArgs]:
        """Of (cell, abi) `requests`, the builds neither memoized nor cached: {key: (workload, variant, abi,
        directory name, config)} (cached ones are memoized on the way)."""

        todo: dict[str, BuildArgs] = {}
        for cell, abi in requests:
            key, config = self._key(cell, abi)
            if key in self._memo or key in todo:
                continue
            out = self._dir(cell, abi, key)
            try:
                self._memo[key] = self._ref(load_artifact(out))
            except ArtifactError:
                todo[key] = (cell.workload, cell.variant, abi, out.name, config)
        return todo

    def adopt(self, key: str, args: BuildArgs, files: dict[str, bytes], tuning_digest: str | None = None) -> None:
        """Take an artifact built elsewhere (a cluster node) into this cache: written atomically and kept only
        when it verifies like a local build and was compiled with the tuning database this cache's key names
        (`tuning_digest`; else `__call__` builds it here)."""

        out = paths.replace_dir(self.cache / args[3], files)
        try:
            art = load_artifact(out)
            used = (art.manifest.get("meta") or {}).get("tuning") or {}
            if (used.get("digest") if isinstance(used, dict) else None) != tuning_digest:
                raise ArtifactError(f"compiled with tuning database {used or 'none'}, expected {tuning_digest}")
            self._memo[key] = self._ref(art)
            self.log(f"built {args[0]}/{args[1]} for {args[2]} (batch {args[4]['batch']}) on the cluster")
        except ArtifactError as exc:
            shutil.rmtree(out, ignore_errors=True)
            self.log(f"{out.name}: the cluster's build does not verify ({exc}); building here")

    def prebuild(self, requests: Iterable[tuple[Cell, str]]) -> None:
        """Build the artifacts of (cell, abi) `requests` that are not cached, up to `jobs` at a time. A build that
        fails here is left to `__call__`, which builds it again in this process and raises its error there."""

        todo = self.missing(requests)
        if len(todo) < 2 or self.jobs < 2:
            return  # nothing to overlap: __call__ builds in this process
        self.log(f"building {len(todo)} artifacts, {min(self.jobs, len(todo))} at a time")
        # spawn, not fork: the campaign has threads (progress, adb) that a forked child must not inherit
        with ProcessPoolExecutor(min(self.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = {
                ex.submit(_build_in_worker, w, v, abi, str(self.cache / d), config): key
                for key, (w, v, abi, d, config) in todo.items()
            }
            for f in as_completed(futures):
                workload, variant, abi, _, config = todo[futures[f]]
                try:
                    self._memo[futures[f]] = self._ref(load_artifact(f.result()))
                    self.log(f"built {workload}/{variant} for {abi} (batch {config['batch']})")
                except Exception:  # noqa: BLE001  (reported when __call__ builds it again)
                    pass


def artifact_provider(
    cache: Path | str | None = None, log: Callable[[str], None] = lambda s: None, jobs: int | None = None
) -> ArtifactProvider:
    """The campaign's artifact provider; `cache` defaults to autlearn.profiler.paths.artifacts_dir()."""

    return ArtifactProvider(Path(cache) if cache else paths.artifacts_dir(), log, jobs)
