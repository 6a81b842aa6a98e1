"""MetaSchedule tuning of training programs, measured on the device that runs them.

Every fused kernel of a program's forward, backward and update (`relax_integration.extract_tasks` after our
`legalize_and_fuse`) is a task. Candidates are built in this process (`InProcessBuilder`: no worker pool, whose
per-batch import of tensor intrinsics made every trial time out) and measured by `DeviceRunner`: a batch of
candidates becomes one artifact (one call per candidate, plus the task's hand schedule), pushed and run through
the project's device seam (`autlearn.profiler.deploy`) exactly like a campaign's artifact; the per-call times the runner
prints are the measurements. Under emulation (an ABI the device does not run natively) candidates are run for
correctness only: no timing from there enters a database.

Databases (one directory per CPU target) are read and written through `autlearn.workloads.tuning_db`, which builds use
without importing this module.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import multiprocessing as mp
import platform
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from autlearn.profiler.deploy import deploy, runner_command
from autlearn.profiler.device import Device, command
from autlearn.profiler.errors import ConfigError, UserError
from autlearn.profiler.probe import probe
from autlearn.profiler.probe import target_id as device_target
from autlearn.profiler.steps import parse_run_output
from autlearn.workloads import compile as C
from autlearn.workloads import registry
from autlearn.workloads.artifact import write_artifact
from autlearn.workloads.models import make_config
from autlearn.workloads.program import Call, TrainingProgram
from autlearn.workloads.tuning_db import (
    DB_FILES,
    RUNS_FILE,
    TuningError,
    _check_lines,
    _seconds,
    database_digest,
    database_dir,
    open_database,
    read_hand,
    tuned_wins,
    workload_hash,
    write_hand,
)

if TYPE_CHECKING:
    from autlearn.profiler.probe import DeviceFacts
    from autlearn.profiler.steps import Step
    from autlearn.workloads.program import TrainingProgram

# ---------------------------------------------------------------------------------------------------- tasks


def program_tasks(model: str, variant: str, target_id: str, **config: Any) -> tuple[list[Any], Any]:
    """(MetaSchedule tasks of every fused kernel of a program, target)."""
    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it

    if variant == "unoptimized":
        raise ConfigError(
            "the unoptimized variant is never tuned (it stands for a plain op-by-op executor)", key="variant"
        )
    cfg = C.resolve_config(model, variant, C.base_abi(target_id), **config)
    mod, *_ = C.training_module(cfg, variant, registry.get(model).default_lr)
    target = C.target_for_abi(target_id)
    with target:
        mod = C.legalize_and_fuse()(mod)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    return tasks, target


def hand_schedule(func: Any, target: Any) -> Any:
    """The untuned schedule `workloads.compile.optimize` gives a kernel (tiled, dlight reduction or fallback)."""
    import tvm  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir import dlight  # tvm takes seconds to import; only this path needs it

    mod = tvm.IRModule({"main": func})
    with target:
        rules = [C._safe(C._tiled_rule()), C._safe(dlight.cpu.Reduction()), C._fallback_rule()]
        return dlight.ApplyDefaultSchedule(*rules)(mod)["main"]


def output_count(func: Any) -> int:
    """Number of trailing params an unscheduled kernel writes (its outputs, destination-passing style)."""
    from tvm import s_tir  # tvm takes seconds to import; only this path needs it

    sch = s_tir.Schedule(func)
    written = [r.source for b in sch.get_child_blocks(sch.get_sblock("root")) for r in sch.get(b).writes]
    params = list(func.params)  # buffers are the params themselves in this TIR

    def is_written(v: Any) -> bool:
        return any(v.same_as(w) for w in written)

    n = 0
    for v in reversed(params):
        if not is_written(v):
            break
        n += 1
    if n == 0 or any(is_written(v) for v in params[: len(params) - n]):
        raise TuningError("kernel outputs are not its trailing params")
    return n


# ---------------------------------------------------------------------------------------------------- builder


def _derived(cls: type) -> Any:
    from tvm.ir.utils import derived_object  # tvm takes seconds to import; only this path needs it

    return derived_object(cls)


def make_builder(store: dict[str, Any], deadline: float | None = None) -> Any:
    """An in-process builder: each candidate is checked to compile and kept in `store` under its artifact key."""
    import tvm  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir.transform import (
        RemoveWeightLayoutRewriteBlock,  # tvm takes seconds to import; only this path needs it
    )

    ids = itertools.count()

    @_derived
    class InProcessBuilder(ms.builder.PyBuilder):  # type: ignore[misc]  # tvm ships no types: its classes are Any
        def build(self, build_inputs: list[Any]) -> list[Any]:
            out = []
            for bi in build_inputs:
                if deadline is not None and time.monotonic() > deadline:
                    out.append(ms.builder.BuilderResult(None, "time budget reached"))
                    continue
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(bi.mod)
                    tvm.tirx.build(mod, target=bi.target)
                except Exception as e:  # noqa: BLE001 - a candidate that does not build is a failed trial
                    out.append(ms.builder.BuilderResult(None, str(e).strip().splitlines()[-1][:300]))
                    continue
                key = f"cand-{next(ids)}"
                store[key] = mod["main"]
                out.append(ms.builder.BuilderResult(key, None))
            return out

    return InProcessBuilder()


# ---------------------------------------------------------------------------------------------------- device runner


@dataclass
class RunLog:
    batches: int = 0
    candidates: int = 0
    seconds: float = 0.0
    hand_ms: dict[str, list[float]] = field(default_factory=dict)  # workload hash -> [ms, ...] of the hand schedule
    # workload hash -> min over batches of best candidate / hand
    best_ratio: dict[str, float] = field(default_factory=dict)


def _tensor(shape: Sequence[int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    shape = [int(s) for s in shape]
    if "float" in dtype:
        return rng.uniform(-1, 1, size=shape).astype(dtype)
    return np.zeros(shape, dtype)  # integer inputs are indices (labels): 0 is valid for every kernel


def batch_program(cands: list[tuple[str, Any]], n_out: int, target: Any, abi: str) -> TrainingProgram:
    """One runner program measuring candidate kernels: a Relax function per candidate calling it once, with
    shared random inputs per argument signature. `cands`: (phase name, scheduled PrimFunc) of one task, whose
    last `n_out` params are outputs."""
    import tvm  # tvm takes seconds to import; only this path needs it
    from tvm import relax  # tvm takes seconds to import; only this path needs it

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    tensors: dict[str, np.ndarray] = {}
    calls = []
    for phase, func in cands:
        bufs = list(func.params)
        sig = [(tuple(int(s) for s in b.shape), str(b.dtype)) for b in bufs]
        names = [f"arg{i}_{'x'.join(map(str, shape))}_{dtype}" for i, (shape, dtype) in enumerate(sig)]
        for name, (shape, dtype) in zip(names, sig):
            tensors.setdefault(name, _tensor(shape, dtype, rng))
        kname = f"{phase}_kernel"
        gv = bb.add_func(func.with_attr("global_symbol", kname).with_attr("tirx.is_scheduled", True), kname)
        params = [relax.Var(f"a{i}", relax.TensorType(s, d)) for i, (s, d) in enumerate(sig[:-n_out])]
        outs = [relax.TensorType(s, d) for s, d in sig[-n_out:]]
        with bb.function(phase, params):
            r = bb.emit(relax.call_tir(gv, relax.Tuple(params), outs if n_out > 1 else outs[0]))
            bb.emit_func_output(r)
        calls.append(Call(phase, phase, tuple(names[:-n_out]), tuple(names[-n_out:])))
    tensors["loss"] = np.zeros((), "float32")  # the runner reports a loss; a batch has none
    mod = bb.get()
    meta = {
        "model": "tuning-batch",
        "variant": "full",
        "abi": abi,
        "target": json.dumps(_target_dict(target)),
        "triple": str(target.attrs.get("mtriple", "")),
    }
    return TrainingProgram(mod=tvm.IRModule(dict(mod.functions)), tensors=tensors, calls=tuple(calls), meta=meta)


def _target_dict(target: Any) -> dict[str, str | int | list[str]]:
    d: dict[str, str | int | list[str]] = {"kind": "llvm"}
    for k in ("mtriple", "mcpu", "mattr", "num-cores"):
        v = target.attrs.get(k)
        if v is not None:
            d[k] = [str(x) for x in v] if k == "mattr" else (int(v) if k == "num-cores" else str(v))
    return d


class _Runner:
    """What `make_device_runner` returns: the MetaSchedule runner plus the task it is measuring now."""

    def __init__(self, ms_runner: Any, state: dict[str, Any], verify: Callable[[Any], float | None]) -> None:
        self.ms_runner, self.state, self.verify = ms_runner, state, verify

    def set_task(self, key: str, func: Any, target: Any) -> None:
        self.state.update(key=key, func=func, target=target)


def make_device_runner(
    device: Device,
    abi: str,
    store: dict[str, Any],
    log: RunLog,
    *,
    emulated: bool,
    workdir: Path,
    steps: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> _Runner:
    """A MetaSchedule runner that measures a batch of candidates on `device` through adb (see module doc).
    Batches hold candidates of the task set with `set_task`, plus that task's hand schedule."""
    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it

    R = ms.runner.RunnerResult
    state: dict[str, Any] = {}

    @_derived
    class _Done(ms.runner.PyRunnerFuture):  # type: ignore[misc]  # tvm ships no types: its classes are Any
        def __init__(self, result: Any) -> None:
            super().__init__()
            self.r = result

        def done(self) -> bool:
            return True

        def result(self) -> Any:
            return self.r

    def launch(cands: list[tuple[str, Any]], n_steps: int, runs: int = 1) -> list[tuple[Step, ...]]:
        """Run candidate kernels (plus the task's hand schedule, phase "hand") in one artifact on the device,
        `runs` launches of it; returns the timed steps of each launch (each step calls every kernel once)."""
        target = state["target"]
        program = batch_program(
            cands + [("hand", hand_schedule(state["func"], target))], output_count(state["func"]), target, abi
        )
        art = write_artifact(program, workdir / "batch", abi=abi)
        remote = deploy(device, art.hash, art.path, [p.name for p in art.files()])
        out = []
        try:
            for _ in range(runs):
                r = device.shell(runner_command(remote, warmup=warmup, steps=n_steps, threads=threads), timeout=900)
                if not r.ok:
                    raise TuningError(f"runner exit {r.exit_code}: {(r.stderr or '').strip()[-200:]}")
                out.append(parse_run_output(r.stdout).timed)
        finally:
            device.shell(command("rm", "-rf", remote))  # one batch per push: do not fill the phone
        return out

    def measure(runner_inputs: list[Any]) -> list[Any]:
        key = state["key"]
        timed: tuple[Step, ...] | list[float]  # the launch's steps, then the candidates' medians
        cands = [(f"c{i}", store.pop(ri.artifact_path)) for i, ri in enumerate(runner_inputs)]
        try:
            (timed,) = launch(cands, steps)
        except UserError as e:
            say(f"batch of {len(cands)} failed: {e}")
            return [R(None, f"batch failed: {e}") for _ in cands]
        per: dict[str, list[float]] = {}
        for s in timed:
            for ph, ns in s.phases_ns:
                per.setdefault(ph, []).append(ns / 1e9)
        log.batches += 1
        log.candidates += len(cands)
        if "hand" in per and not emulated:
            log.hand_ms.setdefault(key, []).append(float(np.median(per["hand"])) * 1e3)
        res = []
        for ph, _ in cands:
            if ph not in per:
                res.append(R(None, "no timing from the runner"))
            elif emulated:
                res.append(R(None, "emulated: checked to run; its timing is not a measurement"))
            else:
                res.append(R([float(np.median(per[ph]))], None))
        timed = [float(np.median(per[ph])) for ph, _ in cands if ph in per]
        if timed and "hand" in per and not emulated:  # paired: same launch, same host conditions
            ratio = min(timed) / float(np.median(per["hand"]))
            log.best_ratio[key] = min(log.best_ratio.get(key, float("inf")), ratio)
        return res

    @_derived
    class DeviceRunner(ms.runner.PyRunner):  # type: ignore[misc]  # tvm ships no types: its classes are Any
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            t0 = time.monotonic()
            try:
                return [_Done(r) for r in measure(runner_inputs)]
            finally:
                log.seconds += time.monotonic() - t0

    def verify(best_func: Any, n_steps: int = 15, runs: int = 3) -> float | None:
        """best / hand, both called in every step (a paired comparison): the median over `runs` launches of each
        launch's median over steps (one launch can be an outlier on a shared host: once 1.11 for a kernel that
        other tuning runs of the same task verified at 0.46-0.47)."""
        if emulated:
            return None
        per_launch = []
        for timed in launch([("best", best_func)], n_steps, runs=runs):
            ratios = [
                dict(s.phases_ns)["best"] / dict(s.phases_ns)["hand"] for s in timed if dict(s.phases_ns).get("hand")
            ]
            if ratios:
                per_launch.append(float(np.median(ratios)))
        return float(np.median(per_launch)) if per_launch else None

    return _Runner(DeviceRunner(), state, verify)


# ---------------------------------------------------------------------------------------------------- tuning


def _cpu_intrinsics_only(abi: str) -> None:
    """TuneContext imports `tvm.s_tir.tensor_intrin`, which registers every backend's intrinsics (~45 s here, 31 s
    of it CUDA's). CPU tuning needs its own ISA's only: register those (x86 for x86_64, Arm's for arm64; Arm's
    alone take ~23 s to parse beside torch), once per process and ISA."""

    name = "tvm.s_tir.tensor_intrin"
    pkg = sys.modules.get(name)
    if pkg is None:
        spec = importlib.util.find_spec(name)
        assert spec is not None  # tvm ships the package
        pkg = types.ModuleType(name, "CPU tensor intrinsics only (see autlearn.workloads.metaschedule)")
        pkg.__path__ = list(spec.submodule_search_locations or [])
        pkg.__spec__ = spec
        sys.modules[name] = pkg
    sub = "arm_cpu" if abi.startswith("arm") else "x86"
    if not hasattr(pkg, sub):
        setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))


def _quiet_logs(verbose: bool = False) -> None:
    """MetaSchedule logs every iteration's table to stdout: keep stdout for results, warnings to stderr."""

    log = logging.getLogger("tvm.s_tir.meta_schedule")
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    for h in log.handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stdout:
            h.setStream(sys.stderr)
        if not isinstance(h, logging.FileHandler):
            h.setLevel(log.level)


@dataclass(frozen=True)
class TuneSettings:
    """How a tune runs. `trials`: measured candidates per kernel (records already in the database count: an
    interrupted run resumes where it stopped); `minutes`: bound of the whole run (candidates after it are not
    built); the `top` heaviest kernels are tuned, else those carrying `share` of the FLOPs; `threads`: the runner's
    on the device (None: its own); `emulated`: the device emulates its CPU, so candidates are run for correctness
    only and no timing enters the database."""

    trials: int = 64
    minutes: float = 30.0
    top: int | None = None
    share: float = 0.9
    threads: int | None = None
    emulated: bool = False


@dataclass(frozen=True)
class TuneResult:
    database: Path
    digest: str
    target_key: str
    tasks: int
    tuned_tasks: int
    trials: int
    resumed_records: int
    seconds: float
    measured_on: str
    emulated: bool
    kernels: tuple[dict[str, Any], ...]  # per task: name, flops, hand_ms, tuned_ms, kept ("tuned" | "hand")
    device_batches: int = 0  # runner launches on the device (one per batch of candidates)
    device_candidates: int = 0
    device_seconds: float = 0.0  # of `seconds`, spent building batch artifacts and running them on the device

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": str(self.database),
            "digest": self.digest,
            "target_key": self.target_key,
            "tasks": self.tasks,
            "tuned_tasks": self.tuned_tasks,
            "trials": self.trials,
            "resumed_records": self.resumed_records,
            "seconds": round(self.seconds, 1),
            "measured_on": self.measured_on,
            "emulated": self.emulated,
            "kernels": list(self.kernels),
            "device_batches": self.device_batches,
            "device_candidates": self.device_candidates,
            "device_seconds": round(self.device_seconds, 1),
        }


def task_flops(task: Any) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops  # tvm takes seconds to import; only this path needs it

    try:
        return cast(float, float(estimate_tir_flops(task.dispatched[0])) * task.weight)
    except Exception:  # noqa: BLE001 - kernels the estimator does not understand count as free
        return 0.0


def select_tasks(tasks: list[Any], *, top: int | None = None, share: float = 0.9) -> list[Any]:
    """The heaviest tasks by FLOPs x calls: the `top` first, else those that cover `share` of the FLOPs."""
    ranked = sorted(tasks, key=task_flops, reverse=True)
    if top is not None:
        return ranked[: max(0, top)]
    total = sum(task_flops(t) for t in ranked) or 1.0
    out, acc = [], 0.0
    for t in ranked:
        if acc >= share * total:
            break
        out.append(t)
        acc += task_flops(t)
    return out


def tune(
    device: Device,
    target_id: str,
    model: str,
    variant: str = "full",
    settings: TuneSettings = TuneSettings(),
    *,
    root: Path | None = None,
    only: tuple[str, ...] | None = None,
    extracted: tuple[list[Any], Any] | None = None,
    say: Callable[[str], None] = lambda s: None,
    **config: Any,
) -> TuneResult:
    """Tune the heaviest kernels of a program on `device` (measured there) into the target's database under
    `root` (default: `tuning_db.user_root()`), as `settings` says (TuneSettings). `only`: of those kernels, these
    (a device's share of `tune_fleet`); `extracted`: the program's tasks and target, extracted already."""

    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it

    trials, emulated = settings.trials, settings.emulated
    t0 = time.monotonic()
    deadline = t0 + settings.minutes * 60
    key = C.target_key(target_id)
    path = database_dir(key, root)
    db = open_database(path)  # before minutes of compiling: a corrupt database fails first
    tasks, target = extracted or program_tasks(model, variant, target_id, **config)
    chosen = select_tasks(tasks, top=settings.top, share=settings.share)
    if only is not None:  # this device's share of a fleet run (`tune_fleet`)
        chosen = [t for t in chosen if t.task_name in only]
    if not chosen:
        raise TuningError(f"{model}/{variant}: nothing to tune")
    say(f"{len(tasks)} kernels, tuning the {len(chosen)} heaviest into {path}")
    store: dict[str, Any] = {}
    log = RunLog()
    hand = read_hand(path)
    kernels, resumed, total = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="autlearn-tune-") as tmp:
        runner = make_device_runner(
            device,
            C.base_abi(target_id),
            store,
            log,
            emulated=emulated,
            workdir=Path(tmp),
            threads=settings.threads,
            say=say,
        )
        builder = make_builder(store, deadline)
        for task in chosen:
            func = task.dispatched[0]["main"] if hasattr(task.dispatched[0], "functions") else task.dispatched[0]
            wkey = workload_hash(task.dispatched[0])
            done = _records_for(db, task.dispatched[0])
            resumed += done
            left = trials - done
            entry = {"name": task.task_name, "workload": wkey, "gflops": round(task_flops(task) / 1e9, 4)}
            runner.set_task(wkey, func, target)
            if left <= 0 or time.monotonic() > deadline:
                if "verified_ratio" not in hand.get(wkey, {}) and not emulated:
                    _verify(db, task, runner, hand, wkey, say)
                    write_hand(path, hand)
                kernels.append({**entry, "trials": 0, **_summary(db, task.dispatched[0], hand.get(wkey))})
                continue
            say(f"{task.task_name}: {left} trials ({done} in the database)")
            _cpu_intrinsics_only(C.base_abi(target_id))
            _quiet_logs()
            ctx = ms.relax_integration.extracted_tasks_to_tune_contexts([task], str(Path(tmp) / "logs"))[0][0]
            _quiet_logs()
            ms.tune_tasks(
                tasks=[ctx],
                task_weights=[1.0],
                work_dir=str(Path(tmp) / "logs"),
                max_trials_global=left,
                max_trials_per_task=left,
                num_trials_per_iter=min(32, left),
                builder=builder,
                runner=runner.ms_runner,
                database=db,
                cost_model="xgb",
                task_scheduler="round-robin",
                measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()],
            )
            total += left
            if log.hand_ms.get(wkey):
                old = hand.get(wkey, {})
                ratios = [r for r in (old.get("best_ratio"), log.best_ratio.get(wkey)) if r is not None]
                hand[wkey] = {
                    "name": task.task_name,
                    "ms": round(float(np.median(log.hand_ms[wkey])), 6),
                    "samples": len(log.hand_ms[wkey]) + int(old.get("samples", 0)),
                    "best_ratio": round(min(ratios), 4) if ratios else None,
                }
                _verify(db, task, runner, hand, wkey, say)
            write_hand(path, hand)  # per task: an interrupted run keeps what it measured
            kernels.append({**entry, "trials": left, **_summary(db, task.dispatched[0], hand.get(wkey))})
            say(f"{task.task_name}: hand {kernels[-1]['hand_ms']} ms, tuned {kernels[-1]['tuned_ms']} ms")
        write_hand(path, hand)
    result = TuneResult(
        path,
        database_digest(path),
        key,
        len(tasks),
        len(chosen),
        total,
        resumed,
        time.monotonic() - t0,
        getattr(device, "serial", str(device)),
        emulated,
        tuple(kernels),
        log.batches,
        log.candidates,
        log.seconds,
    )
    with open(path / RUNS_FILE, "a") as f:  # what tuning cost, for the record (not part of the digest)
        f.write(
            json.dumps(
                {
                    **result.to_dict(),
                    "model": model,
                    "variant": variant,
                    "config": config,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                sort_keys=True,
            )
            + "\n"
        )
    return result


def _verify(
    db: Any, task: Any, runner: _Runner, hand: dict[str, dict[str, Any]], wkey: str, say: Callable[[str], None]
) -> None:
    """Time the task's best record against its hand schedule, paired in every step of 3 launches; the ratio
    decides which one builds use (`tuned_wins`)."""
    from tvm import s_tir  # tvm takes seconds to import; only this path needs it

    mod = task.dispatched[0]
    if not db.has_workload(mod):
        return
    top = db.get_top_k(db.commit_workload(mod), 1)
    if not top or _seconds(top[0].run_secs) is None:
        return
    sch = s_tir.Schedule(mod)
    top[0].trace.apply_to_schedule(sch, remove_postproc=False)
    try:
        ratio = runner.verify(sch.mod["main"])
    except UserError as e:
        say(f"{task.task_name}: verification failed: {e}")
        return
    if ratio is not None:
        hand.setdefault(wkey, {"name": task.task_name})["verified_ratio"] = round(ratio, 4)
        say(f"{task.task_name}: best record / hand schedule = {ratio:.3f} (paired, median of 3 launches)")


def _records_for(db: Any, mod: Any) -> int:
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 10**6))


def _summary(db: Any, mod: Any, hand: dict[str, Any] | None) -> dict[str, Any]:
    tuned = None
    if db.has_workload(mod):
        top = db.get_top_k(db.commit_workload(mod), 1)
        t = _seconds(top[0].run_secs) if top else None
        tuned = None if t is None else round(t * 1e3, 6)
    h = None if hand is None else hand.get("ms")
    kept = "tuned" if tuned is not None and tuned_wins(hand, tuned / 1e3) else "hand"
    return {"hand_ms": h, "tuned_ms": tuned, "best_ratio": (hand or {}).get("best_ratio"), "kept": kept}


def _fleet_worker(
    serial: str,
    target_id: str,
    model: str,
    variant: str,
    only: tuple[str, ...],
    root: str,
    settings: TuneSettings,
    config: dict[str, Any],
    extracted: tuple[list[Any], Any],
) -> dict[str, Any]:
    """One device's share of `tune_fleet`, in its own process (MetaSchedule keeps process-wide state)."""

    def say(msg: str) -> None:
        print(f"[tune {serial}] {msg}", file=sys.stderr, flush=True)

    return tune(
        Device(serial),
        target_id,
        model,
        variant,
        settings,
        root=Path(root),
        only=only,
        extracted=extracted,
        say=say,
        **config,
    ).to_dict()


def merge_into(dst: Path, src: Path, skip: int = 0, skip_runs: int = 0) -> int:
    """Commit the records of database `src` after its first `skip` (copied from `dst`) into database `dst`, with
    hand entries and run logs. Returns how many records were added."""
    from tvm.s_tir import meta_schedule as ms  # tvm takes seconds to import; only this path needs it

    into = open_database(dst)
    _check_lines(src / DB_FILES[0])
    workloads = [ln for ln in (src / DB_FILES[0]).read_text().splitlines() if ln.strip()]
    lines = [ln for ln in (src / DB_FILES[1]).read_text().splitlines() if ln.strip()]
    cache: dict[int, Any] = {}
    for line in lines[skip:]:
        idx, rec = json.loads(line)
        if idx not in cache:
            cache[idx] = into.commit_workload(ms.database.Workload.from_json(json.loads(workloads[idx])).mod)
        into.commit_tuning_record(ms.database.TuningRecord.from_json(rec, cache[idx]))
    hand = read_hand(dst)
    hand.update(read_hand(src))
    write_hand(dst, hand)
    if (src / RUNS_FILE).is_file():
        with open(dst / RUNS_FILE, "a") as f:
            f.write((src / RUNS_FILE).read_text()[skip_runs:])
    return len(lines) - skip


def tune_fleet(
    serials: list[str],
    target_id: str,
    model: str,
    variant: str = "full",
    *,
    settings: TuneSettings = TuneSettings(),
    root: Path | None = None,
    say: Callable[[str], None] = lambda s: None,
    **config: Any,
) -> list[dict[str, Any]]:
    """Tune on several phones of one CPU target at once: the heaviest kernels are dealt out round-robin, each phone
    tunes its share in its own process into a private database, and the shares are merged into the target's
    (under `root`, default `tuning_db.user_root()`)."""

    key = C.target_key(target_id)
    path = database_dir(key, root)
    open_database(path)
    tasks, target = program_tasks(model, variant, target_id, **config)  # once: workers get them pickled
    chosen = [t.task_name for t in select_tasks(tasks, top=settings.top, share=settings.share)]
    shares = {s: tuple(chosen[i :: len(serials)]) for i, s in enumerate(serials)}
    say(f"{len(chosen)} kernels over {len(serials)} phones of target {target_id}")
    results = []
    rec_file = path / DB_FILES[1]
    base = sum(1 for ln in rec_file.read_text().splitlines() if ln.strip()) if rec_file.is_file() else 0
    runs = len((path / RUNS_FILE).read_text()) if (path / RUNS_FILE).is_file() else 0
    with tempfile.TemporaryDirectory(prefix="autlearn-fleet-") as tmp:
        subs = {s: Path(tmp) / f"d{i}" for i, s in enumerate(serials)}
        for d in subs.values():  # start from what the target's database holds (resume, cost model)
            if rec_file.is_file():
                shutil.copytree(path, d / key)
        with ProcessPoolExecutor(len(serials), mp_context=mp.get_context("spawn")) as pool:
            futs = {
                s: pool.submit(
                    _fleet_worker,
                    s,
                    target_id,
                    model,
                    variant,
                    shares[s],
                    str(subs[s]),
                    settings,
                    config,
                    (tasks, target),
                )
                for s in serials
                if shares[s]
            }
            for f in futs.values():
                results.append(f.result())
        for s in futs:
            say(f"{s}: merged {merge_into(path, subs[s] / key, skip=base, skip_runs=runs)} new records")
    digest = database_digest(path)  # each worker reported its private copy: name the merged database
    return [{**r, "database": str(path), "digest": digest} for r in results]


def tune_devices(
    serials: list[str],
    model: str,
    variant: str = "full",
    *,
    target_id: str | None = None,
    settings: TuneSettings = TuneSettings(),
    root: Path | None = None,
    say: Callable[[str], None] = lambda s: None,
    **config: Any,
) -> list[dict[str, Any]]:
    """`autlearn workloads tune`: probe the phones, choose the CPU target (theirs, or `target_id`), tune on one
    phone or share the kernels among several of that target (`tune_fleet`), into the databases under `root`
    (default `tuning_db.user_root()`). `settings.emulated` is the phones' (probed). One result dict per phone."""

    if variant not in ("full", "compressed", "cached"):
        raise ConfigError(f"variant {variant!r} is not tuned (choose from full, compressed, cached)", key="variant")
    make_config(model, **config)  # bad config fails before the device is touched
    facts_of = {s: probe(Device(s)) for s in serials}
    targets = {s: device_target(f) for s, f in facts_of.items()}
    if target_id is None and len(set(targets.values())) > 1:
        raise ConfigError(
            "the phones have different CPU targets ("
            + ", ".join(f"{s}: {t}" for s, t in targets.items())
            + "); tune each target on its own phones",
            key="device",
        )
    serial, facts = next(iter(facts_of.items()))
    ct = facts.cpu_target
    if target_id is None:
        target_id = targets[serial]
        if ct is None or not ct.recognised:
            say(f"CPU not recognised ({ct.note if ct else 'no cpuinfo'}): tuning for the generic {facts.abi} target")
    C.parse_target_id(target_id)
    for s, f in facts_of.items():
        if C.base_abi(target_id) != f.abi:
            raise ConfigError(f"target {target_id!r} is not for {s}'s ABI {f.abi}", key="target")
    settings = replace(settings, emulated=emulates(facts))
    if settings.emulated:
        say("the device emulates its CPU: candidates are run for correctness only and no timing is recorded")
    say(f"{', '.join(facts_of)} ({'virtual' if facts.virtual else facts.model}), target {target_id}")
    if len(facts_of) > 1:
        return tune_fleet(list(facts_of), target_id, model, variant, settings=settings, root=root, say=say, **config)
    return [tune(Device(serial), target_id, model, variant, settings, root=root, say=say, **config).to_dict()]


def emulates(facts: DeviceFacts) -> bool:
    """A virtual phone whose ABI is not this host's runs its code under emulation: its timing is no measurement."""

    host = {"x86_64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a"}.get(platform.machine())
    return bool(facts.virtual) and facts.abi != host
