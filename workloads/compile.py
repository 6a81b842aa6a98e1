"""Compile a PyTorch workload into a `TrainingProgram` (forward/loss/backward network + update network).

Pipeline: `torch.export` -> `relax.frontend.torch.from_exported_program` (params kept as inputs) -> frozen backbone
params bound as constants (never differentiated) -> `relax.training.SetupTrainer` (cross-entropy via AppendLoss,
`Gradient` w.r.t. the trainable head only, `SGD` update) -> flat wrapper functions (private trainer functions
inlined) -> an optimization pipeline chosen by the variant.

Functions in the module (plain Relax functions, system-lib compatible, flat tuple results):
  train_forward_backward(x, y, *params) -> (loss, *grads)       phase "forward_backward"
  train_update(*params, *grads, num_steps) -> (*params, num_steps)  phase "update"
  forward(x, *params) -> logits   (only with include_forward=True; inference, not part of a step; for `cached`
                                   it returns (logits, features): inference fills the feature cache)

Variants (see VARIANTS):
  full         the optimized pipeline (`optimize`): LegalizeOps, constant folding, FuseOps/FuseTIR, then
               schedules: MetaSchedule records tuned on a device of the target's CPU (`autlearn.workloads.metaschedule`,
               `autlearn workloads tune`) where they beat the hand schedule there, else the hand schedules:
               `tiled_schedule` for conv/matmul kernels (register tiling, vectorization, parallel outer loops),
               dlight's CPU reduction rule, and a parallel/vectorize fallback.
  compressed   the same pipeline on a smaller config (`compress`: width x0.5 / LSTM hidden x0.5 unless given).
  unoptimized  the same training module with TVM's optimizations off: every Relax op is lowered on its own to
               TOPI's unscheduled compute definition (no operator fusion, no constant folding, no tuned or
               default schedule, so no multithreading and no explicit vectorization). LLVM still compiles the
               loops at its default -O level. Stands in for a plain op-by-op library executor.
  cached       online learning with inference-result reuse: the frozen backbone's features are cached at
               inference, so a step only runs the head's forward/backward/update; the batch tensor `x` holds
               cached features (batch, feature_dim). Optimized like `full`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autlearn.profiler.errors import ConfigError
from autlearn.workloads import data, registry
from autlearn.workloads.models import build_model, make_config
from autlearn.workloads.program import Call, TrainingProgram

# `X as X`: re-exported, autlearn.workloads.metaschedule, layer_suite and artifact_cache import them from this module
from autlearn.workloads.targets import base_abi as base_abi
from autlearn.workloads.targets import parse_target_id as parse_target_id
from autlearn.workloads.targets import target_dict as target_dict
from autlearn.workloads.targets import target_for_abi as target_for_abi
from autlearn.workloads.targets import target_key as target_key
from autlearn.workloads.targets import triple_for_abi as triple_for_abi
from autlearn.workloads.tuning_db import applicable_records, database_digest
from autlearn.workloads.tuning_db import tuning_database as tuning_database

if TYPE_CHECKING:
    import torch

VARIANTS = ("full", "compressed", "unoptimized", "cached")
PARALLEL_MIN_WORK = 1 << 16  # fallback schedule: loop-nest iterations below which a kernel stays serial
PARALLEL_MIN_ROWS = 64  # tiled schedule: fewer parallel row tiles than this also split the columns
WEIGHT_BLOCK_BYTES = 256 << 10  # tiled schedule: weights of the column blocks a row tile visits in turn (L2)
VECTOR_LANES = 8  # fallback schedule: float32 lanes of the narrowest vector unit targeted (AVX2, 2x NEON)
LABEL_DTYPE = "int64"


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_LR":  # family -> default SGD learning rate (Family.default_lr), computed when asked
        return {n: registry.get(n).default_lr for n in registry.names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compress(config: Any) -> Any:
    """Default compressed config (the family's `compress`: half width (MobileNet) / half hidden units (LSTM))."""
    fam = registry.of_config(config)
    if fam.compress is None:
        raise ConfigError(
            f"the {fam.name} family has no default compressed config; give compressed_config", key="compressed_config"
        )
    return fam.compress(config)


# ---------------------------------------------------------------------------------------------- construction


class _Part:
    """Wrap a callable part of a model as an nn.Module for torch.export (built lazily: no torch at import)."""

    @staticmethod
    def make(fn: Callable[[Any, torch.Tensor], torch.Tensor], owner: Any) -> torch.nn.Module:
        import torch  # torch takes seconds to import; only this path needs it

        class Part(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = owner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return fn(self.m, x)

        return Part().eval()


def _import(
    module: torch.nn.Module, example: torch.Tensor, trainable: Sequence[str] = ()
) -> tuple[Any, list[np.ndarray]]:
    """torch.export + Relax import of `module(example)`; every param not in `trainable` is bound as a constant.
    Returns (relax function (x, *trainable params in order), trainable values as numpy)."""
    import torch  # torch takes seconds to import; only this path needs it
    from tvm import relax  # tvm takes seconds to import; only this path needs it
    from tvm.relax.frontend import detach_params  # tvm takes seconds to import; only this path needs it
    from tvm.relax.frontend.torch import from_exported_program  # tvm takes seconds to import; only this path needs it

    with torch.no_grad(), warnings.catch_warnings():
        # torch's own, not ours to fix: nn.LSTM re-lists its weights (`_flat_weights`) whenever export swaps a
        # parameter, and export's decompositions deep-copy a pytree spec type torch deprecated itself.
        warnings.filterwarnings("ignore", r"The tensor attributes .*_flat_weights", UserWarning)
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)
        ep = torch.export.export(module, (example,))
        mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod = _bounded_takes(mod)
    mod, params = detach_params(mod)
    func = mod["main"]
    names = [p.name for p in func.params][1:]
    # Relax param vars are named after the export's placeholders; map them to parameter FQNs by signature.
    to_fqn = dict(ep.graph_signature.inputs_to_parameters)
    if len(names) != len(params.get("main", [])) or any(n not in to_fqn for n in names):
        raise ConfigError(f"cannot map imported params {names[:4]}... to torch parameters", key="model")
    values = {to_fqn[n]: v for n, v in zip(names, params["main"])}
    by_var = {to_fqn[n]: n for n in names}
    missing = [n for n in trainable if n not in values]
    if missing:
        raise ConfigError(f"trainable params {missing} not found in the export", key="model")
    bind = {by_var[n]: v for n, v in values.items() if n not in trainable}
    if bind:
        func = relax.transform.BindParams("main", bind)(mod)["main"]
    if func.attrs and "num_input" in func.attrs:
        func = func.without_attr("num_input")
    order = [to_fqn[p.name] for p in func.params[1:]]  # the function's remaining (trainable) params
    return func.without_attr("global_symbol"), [values[n].numpy() for n in order]


def _bounded_takes(mod: Any) -> Any:
    """Gathers (embedding lookups, the loss's label pick) with mode "clip": the importer emits "fast", which reads
    out of bounds on a bad index (and TVM warns so at every build); clipping costs a compare per index."""
    from tvm import relax  # tvm takes seconds to import; only this path needs it
    from tvm.relax.expr_functor import PyExprMutator, mutator  # tvm takes seconds to import; only this path needs it

    take = relax.op.take(
        relax.Var("x", relax.TensorType((1,), "float32")), relax.Var("i", relax.TensorType((1,), "int64"))
    ).op

    @mutator
    class Clip(PyExprMutator):  # type: ignore[misc]  # tvm ships no types: its classes are Any
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if call.op.same_as(take) and call.attrs.mode == "fast":
                axis = None if call.attrs.axis is None else int(call.attrs.axis)
                return relax.op.take(call.args[0], call.args[1], axis, mode="clip")
            return call

    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = Clip().visit_expr(func)
    return mod


def _trainer_module(head: Any, features: Any, cfg: Any, lr: float, forward: bool) -> Any:
    """SetupTrainer on `head(f, *params)`; `features(x)` (frozen, params bound; None for `cached`) runs before
    the differentiated region, so the backbone is never differentiated. Returns a module with the flat
    train_forward_backward / train_update (and `forward` when asked)."""
    import tvm  # tvm takes seconds to import; only this path needs it
    from tvm import relax  # tvm takes seconds to import; only this path needs it
    from tvm.relax.training import SetupTrainer  # tvm takes seconds to import; only this path needs it
    from tvm.relax.training.loss import CrossEntropyLoss  # tvm takes seconds to import; only this path needs it
    from tvm.relax.training.optimizer import SGD  # tvm takes seconds to import; only this path needs it

    n_params = len(head.params) - 1
    trainer = tvm.IRModule({"backbone": head.with_attr("global_symbol", "backbone")})
    trainer = trainer.with_attrs({"param_num": n_params, "state_num": 0})
    logits_ty = relax.TensorType((cfg.batch, cfg.num_classes), "float32")
    labels_ty = relax.TensorType((cfg.batch,), LABEL_DTYPE)
    trainer = SetupTrainer(CrossEntropyLoss(reduction="mean"), SGD(lr), [logits_ty, labels_ty], legalize=False)(trainer)

    # Fresh builder (SetupTrainer leaves the optimizer's GlobalVar untyped); parts are private (no
    # global_symbol) so InlinePrivateFunctions folds them into the flat public wrappers.
    bb = relax.BlockBuilder()
    adj = bb.add_func(trainer["backbone_loss_adjoint"].without_attr("global_symbol"), "head_loss_adjoint")
    opt = bb.add_func(trainer["optimizer"].without_attr("global_symbol"), "sgd")
    hd = bb.add_func(head, "head")
    feat = bb.add_func(features, "features") if features is not None else None
    ptys = [p.ty for p in head.params[1:]]
    x = relax.Var("x", (features.params[0] if features is not None else head.params[0]).ty)
    y = relax.Var("y", labels_ty)
    ps = [relax.Var(f"p{i}", t) for i, t in enumerate(ptys)]
    with bb.function("train_forward_backward", [x, y, *ps]):
        with bb.dataflow():
            f = bb.emit(relax.Call(feat, [x])) if feat is not None else x
            r = bb.emit(relax.Call(adj, [f, *ps, y]))
            loss = bb.emit(relax.TupleGetItem(r, 0))
            grads = bb.emit(relax.TupleGetItem(r, 1))
            gs = [bb.emit(relax.TupleGetItem(grads, i)) for i in range(n_params)]
            out = bb.emit_output(relax.Tuple([loss, *gs]))
        bb.emit_func_output(out)
    ps = [relax.Var(f"p{i}", t) for i, t in enumerate(ptys)]
    gs = [relax.Var(f"g{i}", t) for i, t in enumerate(ptys)]
    steps = relax.Var("num_steps", relax.TensorType((), "int64"))
    with bb.function("train_update", [*ps, *gs, steps]):
        with bb.dataflow():
            r = bb.emit(relax.Call(opt, [relax.Tuple(ps), relax.Tuple(gs), relax.Tuple([steps])]))
            newp = bb.emit(relax.TupleGetItem(r, 0))
            news = bb.emit(relax.TupleGetItem(r, 1))
            outs = [bb.emit(relax.TupleGetItem(newp, i)) for i in range(n_params)]
            outs.append(bb.emit(relax.TupleGetItem(news, 0)))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    if forward:
        # Inference: logits; with a feature extractor also the features, which is what `cached` stores.
        x = relax.Var("x", x.ty)
        ps = [relax.Var(f"p{i}", t) for i, t in enumerate(ptys)]
        with bb.function("forward", [x, *ps]):
            with bb.dataflow():
                f = bb.emit(relax.Call(feat, [x])) if feat is not None else x
                logits = bb.emit(relax.Call(hd, [f, *ps]))
                out = bb.emit_output(relax.Tuple([logits, f]) if feat is not None else logits)
            bb.emit_func_output(out)
    mod = relax.transform.InlinePrivateFunctions()(bb.get())
    keep = ["train_forward_backward", "train_update"] + (["forward"] if forward else [])
    return tvm.IRModule({g: fn for g, fn in mod.functions.items() if g.name_hint in keep})


# ---------------------------------------------------------------------------------------------- optimization


def _fallback_rule() -> Any:
    """Default CPU schedule for kernels with no tuning record and no dlight rule: inline injective producers,
    parallelize the fused leading spatial loops of every remaining block and vectorize an innermost spatial
    loop when the block has no reduction. A kernel too small for the thread pool (an LSTM's gate arithmetic) is
    still vectorized when it is injective. Cheap, no search."""
    from tvm import tirx  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir.dlight.base import ScheduleRule  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir.dlight.base.common_schedules import (
        try_inline_contiguous_spatial,  # tvm takes seconds to import; only this path needs it
    )

    def apply(func: Any, target: Any, _tunable: bool) -> Any:
        normalized = _normalized(func)
        if normalized is None:
            return None
        sch, infos = normalized
        infos = try_inline_contiguous_spatial(sch, infos)
        changed = False
        for bi in infos:
            dk = bi.dom_kind()
            n_s = len(dk) - len(dk.lstrip("S"))
            loops = sch.get_loops(bi.block_rv)
            extents = [sch.get(lp).extent for lp in loops]
            if n_s == 0 or not all(isinstance(e, tirx.IntImm) for e in extents):
                continue
            if int(np.prod([int(e) for e in extents])) < PARALLEL_MIN_WORK:
                # thread-pool wake-up costs more than it saves on tiny kernels: serial, but vectorized
                if bi.is_injective() and n_s == len(loops) and int(extents[-1]) % VECTOR_LANES == 0:
                    _, vec = sch.split(loops[-1], factors=[None, VECTOR_LANES])
                    sch.vectorize(vec)
                    changed = True
                continue
            changed = True
            if bi.is_injective() and n_s == len(loops) and n_s >= 2:
                outer = sch.fuse(*loops[:-1])
                sch.parallel(outer)
                _, vec = sch.split(loops[-1], factors=[None, 8])
                sch.vectorize(vec)
            else:
                outer = sch.fuse(*loops[:n_s]) if n_s > 1 else loops[0]
                sch.parallel(outer)
        return sch if changed else None

    return ScheduleRule.from_callable("autlearn_fallback")(apply)


def _pick(extent: int, options: tuple[int, ...], whole_up_to: int = 0) -> int:
    for f in options:
        if extent % f == 0 and extent > f:
            return f
    return extent if 1 < extent <= whole_up_to else 1


def kernel_key(func: Any) -> str:
    """Key of a fused kernel in the tuning database: structural hash of the unscheduled PrimFunc."""
    import tvm_ffi  # tvm takes seconds to import; only this path needs it

    return f"{tvm_ffi.structural_hash(func):016x}"


def tiled_candidates(func: Any) -> list[dict[str, int]]:
    """Parameter choices of the tiled schedule for a kernel (empty if the rule does not apply)."""
    shape = _tiled_shape(func)
    if shape is None:
        return []
    dom, n_s = shape
    k, t = n_s - 1, (1 if n_s >= 3 else 0)
    vs = sorted(
        {f for f in (64, 32, 16, 8, 7, 6, 5, 4, 3, 2) if dom[k] % f == 0 and dom[k] > f}
        | {1}
        | ({dom[k]} if dom[k] <= 32 else set())
    )
    us = sorted({f for f in (8, 7, 6, 5, 4, 3, 2) if dom[t] % f == 0 and dom[t] >= f} | {1}) if n_s > 1 else [1]
    return [{"v": v, "u": u} for v in vs for u in us]


def _normalized(func: Any) -> tuple[Any, list[Any]] | None:
    """(schedule, block infos) of a PrimFunc that dlight can normalize; None for anything else."""
    from tvm import s_tir, tirx  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir.dlight.analysis import normalize_prim_func  # tvm takes seconds to import; only this path needs it

    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    return None if infos is None else (sch, infos)


def _tiled_shape(func: Any) -> tuple[list[int], int] | None:
    normalized = _normalized(func)
    if normalized is None:
        return None
    sch, infos = normalized
    reds = [bi for bi in infos if not bi.is_injective()]
    if len(reds) != 1:
        return None
    dk = reds[0].dom_kind()
    n_s = len(dk) - len(dk.lstrip("S"))
    if n_s < 1 or "S" in dk[n_s:] or n_s == len(dk):
        return None
    if n_s == 1 and not _reads_along(sch.get(reds[0].block_rv), 0):
        return None  # a row reduction (softmax's max, a GEMV over rows): dlight's Reduction rule
    try:
        dom = [int(d) for d in reds[0].dom()]
    except TypeError:
        return None
    if int(np.prod(dom)) < PARALLEL_MIN_WORK:
        return None
    return dom, n_s


def vector_unit(target: Any = None) -> tuple[int, int]:
    """(float32 lanes, vector registers) of the widest vector unit `target` (default: the current one) has."""
    from tvm.target import Target  # tvm takes seconds to import; only this path needs it
    from tvm.target.codegen import target_has_features  # tvm takes seconds to import; only this path needs it

    target = target or Target.current(allow_none=True)
    if target is None or str(target.kind) != "llvm":
        return 8, 16
    if target_has_features("avx512f", target):
        return 16, 32
    if target_has_features("avx", target):
        return 8, 16
    return 4, (32 if target_has_features("neon", target) else 16)


def _reads_along(block: Any, axis: int) -> bool:
    """Whether some buffer `block` reads is contiguous along its iterator `axis` (the vector loads of a tile).
    One spatial axis over a reduction is a matrix-vector product: tiled only when the matrix is read along the
    output (a 1x1 convolution of one pixel, HWIO weights), not along the reduction."""
    var = block.iter_vars[axis].var
    return any(len(r.region) and r.region[-1].min.same_as(var) for r in block.reads)


def _layout_free(func: Any) -> list[Any]:
    """The buffers of `func` bound to constants (`AttachAttrLayoutFreeBuffers`): their layout is ours to choose."""
    idx = (func.attrs or {}).get("layout_free_buffers", [])
    return [func.params[int(i)] for i in idx]


def _weight_read(block: Any, k: int, n_s: int, candidates: list[Any]) -> int | None:
    """Index of the read that is a constant weight of the tile: one of `candidates`, contiguous along output axis
    `k` and indexed otherwise by reduction axes only (not by rows or pixels). None if there is none."""
    from tvm.tirx.analysis import undefined_vars  # tvm takes seconds to import; only this path needs it

    ivars = [iv.var for iv in block.iter_vars]
    rows = {ivars[i] for i in range(n_s) if i != k}
    for i, r in enumerate(block.reads):
        if not any(r.source.same_as(c) for c in candidates):
            continue
        if not (len(r.region) and r.region[-1].min.same_as(ivars[k])):
            continue
        used = [u for rg in r.region[:-1] for u in undefined_vars(rg.min)]
        if not any(any(u.same_as(v) for v in rows) for u in used):
            return i
    return None


def _heuristic_choice(dom: list[int], n_s: int, target: Any = None) -> dict[str, int]:
    # The innermost output axis (NHWC: channels; matmul: columns) in two vectors of the target's own width; odd
    # widths such as <14 x float> measured 3-4x slower than <7 x float>. Then as many rows (H) as registers allow:
    # one accumulator per row and vector, plus the row's weight vectors and a broadcast input.
    lanes, regs = vector_unit(target)
    k, t = n_s - 1, (1 if n_s >= 3 else 0)
    whole = next((w for w in (2 * lanes, lanes) if dom[k] % w == 0), None)
    if n_s == 1:  # no row axis: the tile is one row
        return {"v": whole or 1, "u": 1}
    v = whole or _pick(dom[k], (16, 8, 7, 6, 5, 4, 3, 2), whole_up_to=8)
    per_row = -(-v // lanes)
    rows = tuple(u for u in (8, 7, 6, 5, 4, 3, 2) if u * per_row + per_row + 1 <= regs)
    return {"v": v, "u": _pick(dom[t], rows, whole_up_to=rows[0] if rows else 0)}


def tiled_heuristic(func: Any, target: Any = None) -> dict[str, int] | None:
    """The built-in (untuned) tiled-schedule choice for a kernel, or None if the rule does not apply."""
    shape = _tiled_shape(func)
    return _heuristic_choice(*shape, target) if shape else None


def tiled_schedule(func: Any, choice: dict[str, int] | None = None, target: Any = None) -> Any:
    """Hand-written CPU schedule for conv2d/matmul-like kernels (one reduction block, spatial axes then
    reduction axes): register-tile the output (innermost spatial axis split by `v` and vectorized, the
    channel/row axis split by `u` and unrolled), accumulate the tile in a local buffer with the reductions
    outside it, compute the epilogue (bias/ReLU) per tile, parallelize the fused outer spatial loops.
    `choice` ({"v", "u"}) comes from the tuning database; None = built-in heuristic. Returns a Schedule or
    None when the kernel does not have that shape."""
    from tvm import s_tir  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir.dlight.analysis import normalize_prim_func  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir.dlight.base.common_schedules import (
        try_inline_contiguous_spatial,  # tvm takes seconds to import; only this path needs it
    )

    shape = _tiled_shape(func)
    if shape is None:
        return None
    dom, n_s = shape
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    r = next(i for i, bi in enumerate(infos) if not bi.is_injective())
    main = infos[r]
    post = try_inline_contiguous_spatial(sch, infos[r + 1 :])
    loops = sch.get_loops(main.block_rv)
    if len(loops) != len(dom):
        return None
    choice = choice or _heuristic_choice(dom, n_s, target)
    k, t = n_s - 1, (1 if n_s >= 3 else 0)
    v, u = int(choice["v"]), int(choice["u"]) if n_s > 1 else 1
    sk_o, sk_i = sch.split(loops[k], factors=[None, v])
    rows: list[Any] = []
    if n_s > 1:
        st_o, st_i = sch.split(loops[t], factors=[None, u])
        rows = [st_i]
    outer = [st_o if i == t else loops[i] for i in range(k)]
    red = list(loops[n_s:])
    sch.reorder(*outer, sk_o, *red, *rows, sk_i)
    # Column blocks in groups whose weights fit in a core's L2 (WEIGHT_BLOCK_BYTES), outermost: a group's weights
    # are then read from memory once per group, not once per row tile (1024->1024 @7x7: 4 MB per tile).
    n_blocks, red_n = dom[k] // v, int(np.prod(dom[n_s:]))
    group = max(
        (g for g in range(1, n_blocks + 1) if n_blocks % g == 0 and g * v * red_n * 4 <= WEIGHT_BLOCK_BYTES), default=1
    )
    if outer and group < n_blocks:
        sk_oo, sk_o = sch.split(sk_o, factors=[None, group])
        sch.reorder(sk_oo, *outer)
        outer = [sk_oo, *outer]
    widx = _weight_read(sch.get(main.block_rv), k, n_s, _layout_free(func))
    if widx is not None and n_blocks > 1:
        # A constant weight packed per column block, (..., C) -> (C // v, ..., v): a block's weights are one
        # contiguous run. Unpacked, they are v floats every C * 4 bytes, which maps a block onto a few cache sets
        # when C is a power of two (1024->1024 @7x7: 120 GFLOP/s unpacked, 245 packed). The packing is split
        # out of the kernel and folded at compile time (`optimize`).
        pack = sch.cache_read(main.block_rv, widx, "global")
        sch.transform_layout(main.block_rv, ("read", widx), lambda *ix: (ix[-1] // v, *ix[:-1], ix[-1] % v))
        sch.annotate(pack, "meta_schedule.layout_rewrite_preproc", True)
        lp = sch.get_loops(pack)
        sch.parallel(lp[0])
    cw = sch.cache_write(main.block_rv, 0, "local")  # the tile's accumulators (registers after SROA)
    sch.reverse_compute_at(cw, sk_o, preserve_unit_loops=True)
    for bi in post:
        sch.reverse_compute_at(bi.block_rv, sk_o, preserve_unit_loops=True)
    if post:
        # The epilogue (bias, ReLU, an update W - lr * grad) reads the tile's accumulators directly: no
        # intermediate of the whole output is written and read back. Its rows are vector stores too.
        sch.compute_inline(cw)
        if v > 1:
            for bi in post:
                sch.vectorize(sch.get_loops(bi.block_rv)[-1])
    # A late layer of a small batch has few rows and pixels: then the tile's column blocks are parallel too.
    rows_par = int(np.prod([dom[i] // (u if i == t else 1) for i in range(k)])) * (n_blocks // group)
    par = [*outer, sk_o] if rows_par < PARALLEL_MIN_ROWS else outer
    sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])
    if v > 1:
        sch.vectorize(sk_i)
    if u > 1:
        sch.unroll(rows[0])
    sch.decompose_reduction(main.block_rv, red[0])
    for bi in infos[:r]:  # producers (padding): parallel outer loops
        lp = sch.get_loops(bi.block_rv)
        if len(lp) >= 2:
            sch.parallel(sch.fuse(*lp[:2]))
    return sch


def _tiled_rule() -> Any:
    from tvm.s_tir.dlight.base import ScheduleRule  # tvm takes seconds to import; only this path needs it

    def apply(func: Any, target: Any, _tunable: bool) -> Any:
        return tiled_schedule(func, None, target)

    return ScheduleRule.from_callable("autlearn_tiled")(apply)


def _safe(rule: Any, raised: Counter[str] | None = None) -> Any:
    """dlight rules assert on shapes they do not handle (e.g. reductions to a scalar): the next rule schedules that
    kernel. Each raise is counted in `raised` ({"Rule: ErrorType": kernels}), which `optimize` reports."""
    from tvm.s_tir.dlight.base import ScheduleRule  # tvm takes seconds to import; only this path needs it

    name = getattr(rule, "name", None) or type(rule).__name__

    def apply(func: Any, target: Any, tunable: bool) -> Any:
        try:
            return rule.apply(func, target, tunable)
        except Exception as exc:  # noqa: BLE001 - counted and reported; the next rule schedules the kernel
            if raised is not None:
                raised[f"{name}: {type(exc).__name__}"] += 1
            return None

    return ScheduleRule.from_callable(name)(apply)


def legalize_and_fuse() -> Any:
    from tvm import relax, transform  # tvm takes seconds to import; only this path needs it

    from autlearn.workloads.fold import FoldConstants  # imports tvm, which this module loads at first use

    return transform.Sequential(
        [
            # exp, tanh and erf as TOPI's vectorizable approximations, not one libm call per lane (LSTM gates: 0.67 ->
            # 0.36 ms a step here; musl's libm, which the static runner links, is slower still)
            relax.transform.FastMathTransform(),
            # Channels innermost (NHWC activations, HWIO weights): the output channels are the vector axis of every
            # convolution. In NCHW it is the width, 7 or 14 in MobileNet's late layers. The weights' transposes are
            # constants, folded next; the input's and output's are one kernel each.
            relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
            relax.transform.Normalize(),
            # a frozen weight's transpose becomes a transposed constant (a plain matmul), not a strided NT one
            FoldConstants(),
            relax.transform.FuseTransposeMatmul(),  # x @ W.T as one kernel: no per-step transpose of a weight
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            FoldConstants(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ]
    )


def optimize(mod: Any, target: Any, database: dict[str, Any] | None = None, stats: dict[str, Any] | None = None) -> Any:
    """The `full` pipeline: fusion, then schedules: MetaSchedule records from `database` (see
    `tuning_database`) where they beat the hand schedule on the device, else the hand schedules (tiled
    conv/matmul, dlight's CPU reduction rule, the parallel fallback)."""
    from tvm import relax, transform  # tvm takes seconds to import; only this path needs it
    from tvm.s_tir import dlight  # tvm takes seconds to import; only this path needs it

    from autlearn.workloads.fold import FoldConstants  # imports tvm, which this module loads at first use

    with target:
        mod = legalize_and_fuse()(mod)
        if stats is not None:
            stats["kernels"] = sum(_is_tir(f) for f in mod.functions.values())
        if database is not None:
            records, summary = applicable_records(Path(database["path"]), database.get("keep_hand", True))
            with records:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            if stats is not None:
                stats["tuned_kernels"] = sum(
                    1 for f in mod.functions.values() if _is_tir(f) and f.attrs and "tirx.is_scheduled" in f.attrs
                )
                stats["database"] = {**database, **summary}
        # Kernels learn which of their buffers are constants, so a hand schedule may pack them. After the database:
        # tuning tasks and records stay as they were (MetaSchedule's own RewriteLayout is not wired to the device
        # runner yet).
        mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        # dlight.cpu.GEMV is left out: its schedules sent LLVM codegen into a >3 min stall here.
        raised: Counter[str] = Counter()
        rules = [_safe(_tiled_rule(), raised), _safe(dlight.cpu.Reduction(), raised), _fallback_rule()]
        mod = dlight.ApplyDefaultSchedule(*rules)(mod)
        # Weight packing (the hand schedules', MetaSchedule's RewriteLayout) becomes a kernel of its own, run on
        # the constant weight at compile time: no step repacks a weight.
        mod = transform.Sequential([relax.transform.SplitLayoutRewritePreproc(), FoldConstants()])(mod)
    if stats is not None:  # the program's meta (and the artifact's manifest) carries it
        stats["rules_raised"] = dict(sorted(raised.items()))
    return mod


# ---------------------------------------------------------------------------------------------- programs


def _example_input(cfg: Any) -> Any:
    return registry.of_config(cfg).example_input(cfg)


def _initial_batch(cfg: Any, cached: bool, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic first batch from the embedded data (features of it for `cached`)."""

    x, y = data.default_batch(cfg)
    if cached:
        import torch  # torch takes seconds to import; only this path needs it

        with torch.no_grad():
            x = model.features(torch.from_numpy(x)).numpy()
    return np.ascontiguousarray(x), np.ascontiguousarray(y.astype(LABEL_DTYPE))


def resolve_config(model: str, variant: str, abi: str, compressed_config: Any = None, **config: Any) -> Any:
    """Validate model/variant/ABI names and return the model config the variant compiles."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}", key="variant")
    parse_target_id(abi)
    cfg = make_config(model, **config)
    if variant == "compressed":
        if compressed_config is None:
            return compress(cfg)
        if isinstance(compressed_config, dict):
            return replace(cfg, **compressed_config)
        return compressed_config
    if compressed_config is not None:
        raise ConfigError("compressed_config is only valid with variant 'compressed'", key="compressed_config")
    return cfg


def training_module(
    cfg: Any, variant: str, lr: float, include_forward: bool = False, state_dict: Any = None
) -> tuple[Any, Any, list[str], list[np.ndarray]]:
    """The unoptimized training IRModule (high-level Relax ops) for a config; also returns the torch model,
    trainable names and their initial values. `state_dict` (a path or mapping) replaces the seeded weights."""
    import torch  # torch takes seconds to import; only this path needs it

    net = build_model(cfg)
    if state_dict is not None:
        sd = torch.load(state_dict, weights_only=True) if isinstance(state_dict, (str, Path)) else state_dict
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:
            raise ConfigError(
                f"state_dict does not fit the {type(net).__name__} config: {str(e).splitlines()[0]}", key="state_dict"
            ) from None
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    cached = variant == "cached"
    head, values = _import(
        _Part.make(lambda m, f: m.head(f), net),
        torch.zeros((cfg.batch, cfg.feature_dim), dtype=torch.float32),
        [f"m.{n}" for n in trainable],
    )
    features = None
    if not cached or include_forward:
        features, _ = _import(_Part.make(lambda m, x: m.features(x), net), _example_input(cfg))
    if cached and include_forward:
        # The cache is filled by `forward`; the training step itself takes features.
        mod = _trainer_module(head, None, cfg, lr, forward=False)
        mod["forward"] = _trainer_module(head, features, cfg, lr, forward=True)["forward"]
    else:
        mod = _trainer_module(head, None if cached else features, cfg, lr, forward=include_forward)
    return mod, net, trainable, values


def build_program(
    model: str,
    variant: str,
    abi: str,
    *,
    lr: float | None = None,
    include_forward: bool = False,
    database: Any = "default",
    compressed_config: Any = None,
    state_dict: Any = None,
    **config: Any,
) -> TrainingProgram:
    """Compile `model` (one of MODELS) as `variant` (one of VARIANTS) for `abi` (one of ABIS).

    `config` overrides the model config (e.g. width=0.25, vocab_size=200); for `compressed`,
    `compressed_config` (a config object or dict of overrides) replaces the default `compress(config)`.
    `state_dict`: weights (path or mapping) for the compiled config, e.g. a pruned model's.
    `lr`: SGD learning rate (default: the family's `default_lr`). `database`: "default" = the target's tuning
    database if there is one (`tuning_database`), None = hand schedules only, or a path to a database directory.
    """

    t0 = time.perf_counter()
    cfg = resolve_config(model, variant, abi, compressed_config, **config)
    lr = registry.get(model).default_lr if lr is None else float(lr)
    target = target_for_abi(abi)
    cached = variant == "cached"
    mod, net, trainable, values = training_module(cfg, variant, lr, include_forward, state_dict)
    stats: dict[str, Any] = {}
    db: dict[str, Any] | None
    if variant == "unoptimized":
        db = None
    else:
        if database == "default":
            db = tuning_database(abi)
        elif database is None:
            db = None
        else:  # a database directory, or {"path", "keep_hand"}
            spec = database if isinstance(database, dict) else {"path": str(database)}
            path = Path(spec["path"])
            db = {**spec, "path": str(path), "digest": database_digest(path), "key": path.name}
        mod = optimize(mod, target, db, stats)

    x, y = _initial_batch(cfg, cached, net)
    pnames = list(trainable)
    gnames = [f"grad.{n}" for n in trainable]
    tensors: dict[str, np.ndarray] = {"x": x, "y": y}
    tensors.update({n: np.require(v, requirements="C") for n, v in zip(pnames, values)})
    tensors.update({n: np.zeros_like(v) for n, v in zip(gnames, values)})
    tensors["sgd.num_steps"] = np.zeros((), "int64")
    tensors["loss"] = np.zeros((), "float32")
    calls = (
        Call("forward_backward", "train_forward_backward", ("x", "y", *pnames), ("loss", *gnames)),
        Call("update", "train_update", (*pnames, *gnames, "sgd.num_steps"), (*pnames, "sgd.num_steps")),
    )
    meta = {
        "model": model,
        "variant": variant,
        "abi": base_abi(abi),
        "target_id": abi,
        "target": json.dumps(target_dict(abi), sort_keys=True),
        "triple": triple_for_abi(abi),
        "target_key": target_key(abi),
        "config": cfg.to_dict(),
        "config_key": cfg.key(),
        "lr": lr,
        "loss": "cross_entropy(mean)",
        "optimizer": "sgd",
        "trainable": pnames,
        "batch_tensor": "features" if cached else "input",
        "functions": sorted(g.name_hint for g in mod.get_global_vars() if not _is_tir(mod[g])),
        "state_dict": Path(state_dict).name
        if isinstance(state_dict, (str, Path))
        else ("mapping" if state_dict is not None else None),
        "tuning": (
            {
                "database": db["key"],
                "digest": db["digest"],
                "tuned_kernels": stats.get("tuned_kernels", 0),
                "kernels": stats.get("kernels", 0),
                **{k: stats["database"][k] for k in ("tuned_workloads", "hand_kept")},
            }
            if db is not None
            else "untuned"
        ),
        "rules_raised": stats.get("rules_raised", {}),  # schedule rules that raised, and on how many kernels
        "compile_s": round(time.perf_counter() - t0, 3),
        "inference_func": "forward" if include_forward else None,
        "forward_returns": "(logits, features)" if include_forward else None,
    }
    return TrainingProgram(mod=mod, tensors=tensors, calls=calls, meta=meta)


def _is_tir(func: Any) -> bool:
    from tvm import tirx  # tvm takes seconds to import; only this path needs it

    return isinstance(func, tirx.PrimFunc)
