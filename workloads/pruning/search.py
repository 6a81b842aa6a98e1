"""NetAdapt-style budget-constrained pruning (AutLearn's pruner) of any family through its pruning strategy
(`Family.strategy`, autlearn.workloads.pruning.strategy: which layers shrink, how, and how a result is exported).

maximise accuracy(model) s.t. resource(model) <= budget, resource from a per-layer table (latency/energy) or exact
(FLOPs/memory). One trajectory per resource kind, run down to the smallest budget of that kind:

  iteration i:  target_i = max(current - init_reduction * R0 * decay**(i-1), next unmet budget)
                (R0 = the unpruned model's resource: init_reduction is a fraction of it, NetAdapt's 0.025 / 0.96)
                for every prunable layer (the strategy's `layers`): remove its lowest-importance channels in
                steps of `channel_step` until the predicted resource meets target_i; fine-tune that proposal
                `short_steps` (every proposal of an iteration on the same batches); evaluate on held-out data (val).
                Keep the most accurate proposal (ties: lower resource, lower layer index). When no single
                layer can meet target_i, the proposals that reduce the resource at all compete instead.
  snapshots:    the first iteration meeting each budget gets a long fine-tune (`long_steps`).
  Pareto set:   `select="first"` (default, NetAdapt's output): each budget's own snapshot, the largest model of
                the chain under it. `select="best-val"`: the most accurate (val) long-fine-tuned snapshot under
                the budget, possibly a smaller budget's (val accuracy then non-decreasing in the budget; one
                fine-tune on a small val split is a noisy judge, and the model no longer sits at its budget).
                `test_accuracy` (a split never used for any choice) is what to report.

The unpruned model is first trained `pretrain_steps` (weights come from a seed: there is no pretrained backbone).
State is written per iteration (`<out>/<kind>/iter_NNNN.json` + `.pt`, JSON last = complete); rerunning with the
same model/table/settings resumes after the last complete iteration, with others it refuses. Budgets may change
between runs (the closed loop adds corrected targets): the stored chain is kept up to the first iteration whose
target the new budgets would have set differently, and continued from there.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.compressed import (
    FORMAT,
    compressed_build_args,
    load_compressed,
    load_model,
    read_compressed,
    save_state,
    write_json,
)
from autlearn.workloads.models import build_model
from autlearn.workloads.pruning.budget import Budget, UnreachableBudget, format_value
from autlearn.workloads.pruning.importance import get_importance
from autlearn.workloads.pruning.strategy import Compressor, Strategy, channels, min_channels
from autlearn.workloads.pruning.train import INIT_VERSION, evaluate, fine_tune, split_dataset, trainable_init
from autlearn.workloads.registry import of_config
from autlearn.workloads.resource import RESOURCE_KINDS, model_resource, predict

if TYPE_CHECKING:
    from autlearn.workloads.pruning.train import Split

SELECTIONS = ("first", "best-val")


@dataclass(frozen=True)
class SearchSettings:
    init_reduction: float = 0.025  # fraction of the initial resource removed in iteration 1
    decay: float = 0.96
    channel_step: int = 8
    short_steps: int = 20  # fine-tune steps per proposal
    long_steps: int = 200  # final fine-tune per budget point
    pretrain_steps: int = 200  # training of the seed-initialised model before pruning
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    importance: str = "l2"
    trainable: str = "head"  # phases of the on-device step the resource is predicted for
    holdout: float = 0.2
    per_class: int | None = None  # synthetic glyphs per class (None: the default embedded data set)
    reinit: bool = True  # He fan-in init before pretraining, see pruning.train.trainable_init
    max_iterations: int = 500
    threads: int = 1  # torch intra-op threads while searching (results depend on it)
    select: str = "first"  # Pareto point per budget: first | best-val (module docstring); not in the
    # search fingerprint: it only picks among the stored snapshots

    def __post_init__(self) -> None:
        if not 0 < self.init_reduction < 1:
            raise ConfigError(f"must be in (0, 1), got {self.init_reduction}", key="init_reduction")
        if not 0 < self.decay <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.decay}", key="decay")
        for k in ("channel_step", "batch_size", "max_iterations", "threads"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, k)}", key=k)
        for k in ("short_steps", "long_steps", "pretrain_steps"):
            if int(getattr(self, k)) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, k)}", key=k)
        get_importance(self.importance)
        if self.select not in SELECTIONS:
            raise ConfigError(f"must be one of {', '.join(SELECTIONS)}, got {self.select!r}", key="select")


@dataclass(frozen=True)
class Iteration:
    index: int
    channels: tuple[int, ...]
    value: float  # resource of the search's kind (base unit)
    target: float | None
    layer: int | None  # pruned layer (None for the unpruned model)
    removed: int
    accuracy: float  # val, after the short fine-tune
    loss: float
    proposals: int  # proposals evaluated this iteration

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Iteration:
        kw: dict[str, Any] = {**{f.name: d.get(f.name) for f in fields(cls)}, "channels": tuple(d["channels"])}
        return cls(**kw)


@dataclass(frozen=True)
class ParetoPoint:
    budget: Budget
    iteration: int
    channels: tuple[int, ...]
    value: float
    resource: dict[str, Any]
    accuracy: float  # val (select=best-val chooses by it)
    test_accuracy: float  # test (never used for a choice)
    export: str  # path of compressed.json


@dataclass(frozen=True)
class SearchResult:
    kind: str
    points: tuple[ParetoPoint, ...]  # ascending budget
    iterations: tuple[Iteration, ...]
    unmet: tuple[Budget, ...]
    out_dir: str


_write_json, _save_state, _load_model = write_json, save_state, load_model


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:7], "big")


def table_digest(table: Any) -> str:
    if table is None:
        return "none"

    h = pd.util.hash_pandas_object(table.df, index=False).to_numpy().tobytes()
    return hashlib.sha256(h + table.meta.to_json().encode()).hexdigest()[:16]


def strategy_of(config: Any) -> Strategy:
    """The pruning strategy of the config's family; ConfigError when it has none."""
    fam = of_config(config)
    if fam.strategy is None:
        raise ConfigError(f"the {fam.name} family has no pruning strategy (Family.strategy)", key="model")
    return fam.strategy


def smallest_reachable(config: Any, kind: str, table: Any = None, settings: SearchSettings = SearchSettings()) -> float:
    st = strategy_of(config)
    smallest = st.with_channels(config, min_channels(st, config, settings.channel_step))
    return predict(smallest, kind, table, settings.trainable)


def check_budgets(
    config: Any, table: Any, budgets: Sequence[Budget], settings: SearchSettings = SearchSettings()
) -> None:
    """ConfigError for resources the table cannot predict; UnreachableBudget naming the smallest reachable value."""
    for b in budgets:
        if b.kind not in RESOURCE_KINDS:
            raise ConfigError(f"unknown resource {b.kind!r}", key="budget")
        small = smallest_reachable(config, b.kind, table, settings)
        if b.value < small:
            raise UnreachableBudget(b, small)


def search(
    config: Any,
    table: Any,
    budgets: Iterable[Budget],
    out: str | Path,
    settings: SearchSettings = SearchSettings(),
    *,
    on_event: Callable[[str], object] | None = None,  # its return value is ignored
    on_iteration: Callable[[Iteration], None] | None = None,
) -> tuple[SearchResult, ...]:
    """Run (or resume) the search for every resource kind among `budgets`; see the module docstring."""
    strategy_of(config)  # ConfigError before anything is written
    budgets = tuple(sorted(set(budgets)))
    if not budgets:
        raise ConfigError("give at least one budget", key="budget")
    check_budgets(config, table, budgets, settings)
    out = Path(out)
    results = []
    for kind in sorted({b.kind for b in budgets}):
        results.append(
            _search_kind(
                config,
                table,
                tuple(b for b in budgets if b.kind == kind),
                out / kind,
                settings,
                on_event or (lambda m: None),
                on_iteration,
            )
        )
    _write_json(out / "pareto.json", [_point_json(p) for r in results for p in r.points])
    return tuple(results)


def _point_json(p: ParetoPoint) -> dict[str, Any]:
    return {
        "budget": str(p.budget),
        "kind": p.budget.kind,
        "budget_value": p.budget.value,
        "iteration": p.iteration,
        "channels": list(p.channels),
        "value": p.value,
        "resource": p.resource,
        "accuracy": p.accuracy,
        "test_accuracy": p.test_accuracy,
        "export": p.export,
    }


def _search_kind(
    config: Any,
    table: Any,
    budgets: Sequence[Budget],
    kdir: Path,
    s: SearchSettings,
    emit: Callable[[str], object],
    on_iteration: Callable[[Iteration], None] | None,
) -> SearchResult:
    import torch  # torch takes seconds to import; only this path needs it

    kind = budgets[0].kind
    st = strategy_of(config)
    kdir.mkdir(parents=True, exist_ok=True)
    ident = {
        "settings": {k: v for k, v in asdict(s).items() if k != "select"},
        "config": config.to_dict(),
        "kind": kind,
        "table": table_digest(table) if kind in ("latency", "energy") else "none",
        "init": INIT_VERSION if s.reinit else "build_model",
    }
    fp = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    sj = kdir / "search.json"
    if sj.exists():
        prev = json.loads(sj.read_text())
        if prev.get("fingerprint") != fp:
            raise ConfigError(
                f"{kdir} holds a search with other arguments (model/table/settings); "
                f"use a new --out directory or delete it",
                key="out",
            )
    else:
        _write_json(
            sj,
            {**ident, "fingerprint": fp, "table_meta": json.loads(table.meta.to_json()) if table is not None else None},
        )
    budget_values = [b.value for b in budgets]

    cache: dict[tuple[int, ...], float] = {}

    def value(ch: tuple[int, ...]) -> float:
        if ch not in cache:
            cache[ch] = predict(st.with_channels(config, ch), kind, table, s.trainable)
        return cache[ch]

    importance = get_importance(s.importance)
    split = split_dataset(config, s.holdout, s.seed, s.per_class)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        iters: list[Iteration] = []
        while True:  # resume: contiguous complete iterations
            j = kdir / f"iter_{len(iters):04d}.json"
            if not (j.exists() and j.with_suffix(".pt").exists()):
                break
            iters.append(Iteration.from_dict(json.loads(j.read_text())))
        if iters:
            iters = _valid_prefix(kdir, iters, budget_values, s, emit)
            emit(f"{kind}: resuming after iteration {iters[-1].index}")
            cur = iters[-1]
            cfg = st.with_channels(config, cur.channels)
            model = _load_model(cfg, kdir / f"iter_{cur.index:04d}.pt")
        else:
            ch0 = channels(st, config)
            cfg = st.with_channels(config, ch0)
            model = build_model(cfg)
            if s.reinit:
                trainable_init(model, split.train_x, _seed(s.seed, "init"))
            emit(f"{kind}: pretraining the unpruned model ({s.pretrain_steps} steps)")
            loss = fine_tune(model, split, s.pretrain_steps, s.lr, s.batch_size, _seed(s.seed, "pretrain"))
            cur = Iteration(0, ch0, value(ch0), None, None, 0, evaluate(model, split), loss, 0)
            _commit(kdir, cur, model, iters, on_iteration)
        r0 = iters[0].value
        final = min(b.value for b in budgets)
        while cur.value > final and cur.index < s.max_iterations:
            i = cur.index + 1
            target = _target(cur.value, i, r0, budget_values, s)
            props = []
            for layer, opts in enumerate(st.layers(cfg, s.channel_step).values()):
                c = opts[-1]
                best = None
                for c_new in reversed(opts[:-1]):
                    ch = list(cur.channels)
                    ch[layer] = c_new
                    best = (layer, c - c_new, value(tuple(ch)))
                    if best[2] <= target:
                        break
                if best is not None:
                    props.append(best)
            pool = [p for p in props if p[2] <= target] or [p for p in props if p[2] < cur.value]
            if not pool:
                emit(f"{kind}: no layer can reduce the resource further; stopping at iteration {cur.index}")
                break
            emit(f"{kind}: iteration {i}: target {format_value(kind, target)}, {len(pool)} proposals")
            best_p = None
            for layer, k, v in pool:
                pcfg, pm = st.prune(model, cfg, layer, k, importance)
                # one batch order for every proposal of an iteration (common random numbers): the proposals
                # differ only in the layer pruned, so the ranking is not decided by which batches each drew
                loss = fine_tune(pm, split, s.short_steps, s.lr, s.batch_size, _seed(s.seed, i))
                acc = evaluate(pm, split)
                rank = (acc, -v, -layer)
                if best_p is None or rank > best_p[0]:
                    best_p = (rank, pcfg, pm, layer, k, v, loss)
            assert best_p is not None  # the pool is not empty
            _, cfg, model, layer, k, v, loss = best_p
            cur = Iteration(i, channels(st, cfg), v, target, layer, k, best_p[0][0], loss, len(pool))
            emit(f"{kind}: iteration {i}: layer {layer} -{k} ch -> {format_value(kind, v)}, acc {cur.accuracy:.3f}")
            _commit(kdir, cur, model, iters, on_iteration)
        return _finalize(config, table, budgets, kdir, s, iters, split, fp, emit)
    finally:
        torch.set_num_threads(old_threads)


def _target(value: float, i: int, r0: float, budget_values: Sequence[float], s: SearchSettings) -> float:
    """Iteration i's target: the schedule's step from `value`, but not below the next budget under `value`."""
    step = value - s.init_reduction * r0 * s.decay ** (i - 1)
    below = [v for v in budget_values if v < value]
    return max(step, max(below)) if below else step


def _valid_prefix(
    kdir: Path, iters: list[Iteration], budget_values: Sequence[float], s: SearchSettings, emit: Callable[[str], object]
) -> list[Iteration]:
    """The stored iterations these budgets would also have produced (same target at every step); the files of
    later iterations (and their long fine-tunes) are removed so the chain continues from the prefix."""
    keep = 1
    while keep < len(iters) and math.isclose(
        cast(float, iters[keep].target),  # every iteration after the first has a target
        _target(iters[keep - 1].value, keep, iters[0].value, budget_values, s),
        rel_tol=1e-12,
        abs_tol=0.0,
    ):
        keep += 1
    if keep < len(iters):
        emit(f"{kdir.name}: budgets changed the target of iteration {keep}; continuing from iteration {keep - 1}")
        for it in reversed(iters[keep:]):  # last first: an interrupted removal leaves a prefix
            for d in (kdir / "final", kdir):
                for suffix in (".json", ".pt"):
                    (d / f"iter_{it.index:04d}{suffix}").unlink(missing_ok=True)
    return iters[:keep]


def _commit(
    kdir: Path, it: Iteration, model: Any, iters: list[Iteration], on_iteration: Callable[[Iteration], None] | None
) -> None:
    _save_state(kdir / f"iter_{it.index:04d}.pt", model)
    _write_json(kdir / f"iter_{it.index:04d}.json", {**asdict(it), "channels": list(it.channels)})
    iters.append(it)
    if on_iteration is not None:
        on_iteration(it)


def _finalize(
    config: Any,
    table: Any,
    budgets: Sequence[Budget],
    kdir: Path,
    s: SearchSettings,
    iters: list[Iteration],
    split: Split,
    fp: str,
    emit: Callable[[str], object],
) -> SearchResult:

    kind = budgets[0].kind
    snaps: dict[int, dict[str, Any]] = {}
    unmet = []
    for b in budgets:
        j = next((it.index for it in iters if it.value <= b.value), None)
        if j is None:
            unmet.append(b)
            emit(f"{kind}: budget {b} not met after {len(iters) - 1} iterations (raise max_iterations)")
            continue
        if j in snaps:
            continue
        fdir = kdir / "final"
        fdir.mkdir(exist_ok=True)
        fj, fpt = fdir / f"iter_{j:04d}.json", fdir / f"iter_{j:04d}.pt"
        it = iters[j]
        cfg = strategy_of(config).with_channels(config, it.channels)
        if fj.exists() and fpt.exists():
            snaps[j] = json.loads(fj.read_text())
            continue
        emit(f"{kind}: long fine-tune of iteration {j} ({s.long_steps} steps)")
        m = _load_model(cfg, kdir / f"iter_{j:04d}.pt")
        loss = fine_tune(m, split, s.long_steps, s.lr, s.batch_size, _seed(s.seed, "final", j))
        rec = {
            "iteration": j,
            "channels": list(it.channels),
            "value": it.value,
            "accuracy": evaluate(m, split),
            "test_accuracy": evaluate(m, split, "test"),
            "loss": loss,
            "resource": model_resource(cfg, table, s.trainable).to_dict(),
        }
        _save_state(fpt, m)
        _write_json(fj, rec)
        snaps[j] = rec
    points = []
    for b in budgets:
        best = pick_snapshot(snaps.values(), b.value, s.select)
        if best is None:
            continue
        export = export_point(
            config,
            kdir / "points" / b.slug,
            b,
            best,
            kdir / "final" / f"iter_{best['iteration']:04d}.pt",
            table,
            split,
            s,
        )
        points.append(
            ParetoPoint(
                b,
                best["iteration"],
                tuple(best["channels"]),
                best["value"],
                best["resource"],
                best["accuracy"],
                best["test_accuracy"],
                str(export),
            )
        )
    _write_json(kdir / "pareto.json", [_point_json(p) for p in points])
    return SearchResult(kind, tuple(points), tuple(iters), tuple(unmet), str(kdir))


def pick_snapshot(records: Iterable[dict[str, Any]], limit: float, select: str) -> dict[str, Any] | None:
    """The long-fine-tuned snapshot record (`final/iter_*.json`) a budget of `limit` exports under `select` (module
    docstring); None when no snapshot is under it."""
    cands = [r for r in records if r["value"] <= limit]
    if not cands:
        return None
    if select == "first":  # the largest snapshot under the limit: the budget's own
        return max(cands, key=lambda r: (r["value"], -r["iteration"]))
    return max(cands, key=lambda r: (r["accuracy"], -r["value"]))


def export_point(
    config: Any, pdir: Path, budget: Budget, rec: dict[str, Any], state: Path, table: Any, split: Any, s: SearchSettings
) -> Path:
    """Write `compressed.json` + `model.pt` (state dict) for the `compressed` variant (the strategy's export)."""
    st = strategy_of(config)
    return st.export(
        config,
        st.with_channels(config, rec["channels"]),
        pdir,
        state,
        budget=str(budget),
        kind=budget.kind,
        budget_value=budget.value,
        predicted=rec["resource"],
        value=rec["value"],
        val_accuracy=rec["accuracy"],
        test_accuracy=rec["test_accuracy"],
        accuracy_data={
            "source": split.source,
            "synthetic": split.synthetic,
            "val": len(split.val_y),
            "test": len(split.test_y),
        },
        iteration=rec["iteration"],
        settings=asdict(s),
        table=(json.loads(table.meta.to_json()) if table is not None else None),
    )


def netadapt(config: Any, table: Any, out: Path, options: Mapping[str, Any], console: Any) -> Compressor:
    """`autlearn prune` through this search (a strategy's `compressor`); `options` are SearchSettings fields."""
    settings = SearchSettings(**options)
    return Compressor(
        lambda targets: _propose(config, table, targets, Path(out), settings, console),
        lambda kind: smallest_reachable(config, kind, table, settings),
    )


def _propose(
    config: Any, table: Any, targets: Iterable[Budget], out: Path, settings: SearchSettings, console: Any
) -> dict[str, str]:
    with console.status("searching") as status:
        results = search(
            config,
            table,
            targets,
            out,
            settings,
            on_event=lambda m: (status.update(m), console.log(m) if "iteration" in m and "->" in m else None),
        )
    view = RichTable(title=f"Pareto set ({of_config(config).name}, accuracy on held-out data)")
    for col in ("budget", "predicted", "accuracy", "channels", "export"):
        view.add_column(col)
    for r in results:
        for p in r.points:
            view.add_row(
                str(p.budget),
                format_value(p.budget.kind, p.value),
                f"{p.accuracy:.3f}",
                ",".join(map(str, p.channels)),
                p.export,
            )
        for b in r.unmet:
            view.add_row(str(b), "not met", "", "", "")
    Console().print(view)
    return {str(p.budget): p.export for r in results for p in r.points}


_read_compressed = read_compressed  # compressed.json reading lives in autlearn.workloads.compressed
__all__ = [
    "FORMAT",
    "SELECTIONS",
    "Iteration",
    "ParetoPoint",
    "SearchResult",
    "SearchSettings",
    "check_budgets",
    "compressed_build_args",
    "export_point",
    "load_compressed",
    "netadapt",
    "pick_snapshot",
    "search",
    "smallest_reachable",
    "strategy_of",
    "table_digest",
]
