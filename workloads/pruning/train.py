"""Fine-tuning and held-out evaluation for the pruner (cloud side, PyTorch eager, CPU).

The pruner fine-tunes ALL parameters (backbone and head) with Adam; the on-device step the tables describe trains
the head only. Batches come from a seeded permutation so a run (and a resumed run) is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.registry import of_config


@dataclass(frozen=True, eq=False)
class Split:
    """train (fine-tuning), val (proposal and Pareto selection) and test (reported accuracy only)."""

    train_x: Any
    train_y: Any
    val_x: Any
    val_y: Any
    test_x: Any
    test_y: Any
    source: str
    synthetic: bool


def split_dataset(config: Any, holdout: float = 0.2, seed: int = 0, per_class: int | None = None) -> Split:
    """The embedded data set of `config` (autlearn.workloads.data.default_dataset) split into train / val / test
    (`holdout` of the samples each for val and test).
    `per_class` (image models): generate that many SYNTHETIC glyphs per class instead of the default 16."""
    import torch  # torch takes seconds to import; only this path needs it

    if not 0 < holdout < 0.5:
        raise ConfigError(f"must be in (0, 0.5), got {holdout}", key="holdout")
    ds = of_config(config).dataset(config, per_class)
    order = np.random.default_rng([seed, 7]).permutation(len(ds))
    n_test = max(1, int(round(len(ds) * holdout)))
    te, va, tr = order[:n_test], order[n_test : 2 * n_test], order[2 * n_test :]
    if len(tr) == 0:
        raise ConfigError(f"{len(ds)} samples leave nothing to train on with holdout {holdout}", key="holdout")
    # a read-only array (the cached word windows) is copied: torch warns on non-writable memory
    x, y = (torch.from_numpy(a if a.flags.writeable else a.copy()) for a in map(np.ascontiguousarray, (ds.x, ds.y)))
    return Split(x[tr], y[tr], x[va], y[va], x[te], y[te], ds.source, ds.synthetic)


def fine_tune(model: Any, split: Split, steps: int, lr: float = 2e-3, batch: int = 32, seed: int = 0) -> float:
    """Train all parameters for `steps` Adam steps in place; returns the mean loss of the last 10 steps.
    requires_grad flags are restored afterwards (build_model's head-only contract)."""
    import torch  # torch takes seconds to import; only this path needs it

    if steps <= 0:
        return float("nan")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    n = len(split.train_y)
    perm, pos, losses = torch.randperm(n, generator=g), 0, []
    try:
        for _ in range(steps):
            if pos + batch > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx = perm[pos : pos + batch]
            pos += batch
            loss = torch.nn.functional.cross_entropy(model(split.train_x[idx]), split.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
    return float(np.mean(losses[-10:]))


def evaluate(model: Any, split: Split, part: str = "val", batch: int = 256) -> float:
    """Top-1 accuracy on `part` ("val": used for selection, "test": reported only)."""
    import torch  # torch takes seconds to import; only this path needs it

    if part not in ("val", "test"):
        raise ConfigError(f"part must be val or test, got {part!r}", key="part")
    xs, ys = getattr(split, f"{part}_x"), getattr(split, f"{part}_y")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(ys), batch):
            correct += int((model(xs[i : i + batch]).argmax(1) == ys[i : i + batch]).sum())
    return correct / max(1, len(ys))


INIT_VERSION = (
    "he-fan-in-in-bounds-taps"  # in search fingerprints: a stored search made with another init is not resumed
)


def trainable_init(model: Any, example: Any, seed: int = 0) -> Any:
    """Re-initialise conv weights with Kaiming (He) fan-in, zero biases, in place; `example` is one input batch.

    The fan-in counts the kernel taps that fall inside the input, averaged over output positions. At 28x28 the last
    MobileNet blocks run at 2x2 and 1x1, where a 3x3 depthwise filter meets padding in 5 (8) of its 9 taps;
    counting all 9 shrinks the signal ~3x per such block and a narrow network starts with near-constant features
    (RMS 0.4 -> 0.002 over the body at width 0.25). `build_model`'s Kaiming fan-out is worse still for depthwise
    convs (C x too small a variance). The pruner pretrains the unpruned model from this initialisation."""
    import torch  # torch takes seconds to import; only this path needs it
    from torch import nn  # torch takes seconds to import; only this path needs it

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(mod: Any, args: Any, out: Any) -> None:  # a hook that returned a value would replace `out`
        sizes.setdefault(mod, tuple(args[0].shape[-2:]))

    hooks = [c.register_forward_hook(record) for c in convs]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    with torch.no_grad():
        for mod in convs:
            taps = torch.nn.functional.conv2d(
                torch.ones(1, 1, *sizes[mod]),
                torch.ones(1, 1, *mod.kernel_size),
                stride=mod.stride,
                padding=mod.padding,
                dilation=mod.dilation,
            )
            fan_in = mod.weight.shape[1] * float(taps.mean())
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if mod.bias is not None:
                mod.bias.zero_()
    return model
