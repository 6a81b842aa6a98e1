"""Training data: LEAF-format loaders and small embedded defaults that need no download.

What is real and what is synthetic:
  * Word prediction default: REAL text, a public-domain Shakespeare excerpt shipped as
    `workloads/data/shakespeare_excerpt.txt` (~1,600 words); vocabulary built from it by frequency.
  * Handwriting default: SYNTHETIC. `synthetic_femnist` draws class-conditional glyphs (each class = a fixed set
    of random strokes; samples jitter strokes, shift, thickness and add noise). Learnable, but not handwriting.
  * `load_shakespeare` / `load_femnist` read real LEAF JSON from a path the user gives.

LEAF JSON: `{"users": [...], "user_data": {user: {"x": [...], "y": [...]}}}`; a path may be one .json file or a
directory of them. Shakespeare x = 80-character strings (sliding windows), y = next character; FEMNIST
x = flattened 28x28 floats, y = class ids (0..61).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np

from autlearn.profiler.errors import ConfigError, UserError
from autlearn.workloads import registry
from autlearn.workloads.models import make_config
from autlearn.workloads.registry import of_config

DATA_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED_TEXT = DATA_DIR / "shakespeare_excerpt.txt"
UNK = "<unk>"
FEMNIST_CLASSES = 62
FEMNIST_SIZE = 28


class DataError(UserError):
    """A data set is missing or malformed; `path` names it."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples `x` (N, ...) and labels `y` (N,) int64. `synthetic` says whether the data is generated."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    source: str
    synthetic: bool
    vocab: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(self, index: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Batch `index` of a fixed seeded permutation (cycled, so any index and size work)."""
        if len(self) == 0:
            raise DataError("data set is empty", self.source)
        order = np.random.default_rng(seed).permutation(len(self))
        idx = order[(np.arange(size) + index * size) % len(self)]
        return self.x[idx], self.y[idx]

    def batches(self, size: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        i = 0
        while True:
            yield self.batch(i, size, seed)
            i += 1


# ---------------------------------------------------------------------------------------------- LEAF JSON


def _leaf_files(path: str | Path) -> list[Path]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("no such file or directory", p)
    files = sorted(p.glob("*.json")) if p.is_dir() else [p]
    if not files:
        raise DataError("directory holds no .json files", p)
    return files


def _leaf_users(path: str | Path) -> Iterator[tuple[Path, str, list[Any], list[Any]]]:
    for f in _leaf_files(path):
        try:
            doc = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"not LEAF JSON ({e})", f) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("user_data"), dict):
            raise DataError('not LEAF JSON: expected {"users": [...], "user_data": {...}}', f)
        users = doc.get("users") or list(doc["user_data"])
        for u in users:
            d = doc["user_data"].get(u)
            if not isinstance(d, dict) or not isinstance(d.get("x"), list) or not isinstance(d.get("y"), list):
                raise DataError(f"user {u!r} has no x/y lists", f)
            if len(d["x"]) != len(d["y"]):
                raise DataError(f"user {u!r}: {len(d['x'])} x vs {len(d['y'])} y", f)
            yield f, u, d["x"], d["y"]


# ---------------------------------------------------------------------------------------------- words


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def build_vocab(words: list[str], size: int) -> tuple[str, ...]:
    """`<unk>` then the most frequent words (ties alphabetical), at most `size` entries."""
    counts = Counter(words)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return (UNK, *ranked[: max(0, size - 1)])


def word_dataset(
    words: list[str],
    vocab_size: int,
    seq_len: int,
    source: str,
    synthetic: bool = False,
    vocab: tuple[str, ...] | None = None,
) -> Dataset:
    """Sliding windows: x = `seq_len` word ids, y = the id of the next word."""
    vocab = vocab or build_vocab(words, vocab_size)
    index = {w: i for i, w in enumerate(vocab)}
    ids = np.array([index.get(w, 0) for w in words], dtype=np.int64)
    n = len(ids) - seq_len
    if n <= 0:
        raise DataError(f"{len(ids)} words is too short for seq_len {seq_len}", source)
    win = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)
    return Dataset(
        np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, -1]), vocab_size, source, synthetic, vocab
    )


def embedded_text_dataset(vocab_size: int = 10_000, seq_len: int = 10) -> Dataset:
    """Word prediction on the shipped public-domain Shakespeare excerpt (real text, not synthetic)."""
    return word_dataset(tokenize(EMBEDDED_TEXT.read_text()), vocab_size, seq_len, str(EMBEDDED_TEXT))


def load_shakespeare(path: str | Path, vocab_size: int = 10_000, seq_len: int = 10) -> Dataset:
    """Word prediction from LEAF Shakespeare JSON. Each user's text is rebuilt from its sliding windows
    (x[0] + all y when consecutive windows overlap, else the x/y strings joined); x items that are token lists
    (LEAF word formats) are used as tokens."""
    words: list[str] = []
    for f, u, xs, ys in _leaf_users(path):
        if not xs:
            continue
        if all(isinstance(x, list) for x in xs):
            for x, y in zip(xs, ys):
                words += [str(t).lower() for t in x] + ([str(y).lower()] if isinstance(y, str) else [])
            continue
        if not all(isinstance(x, str) for x in xs) or not all(isinstance(y, str) for y in ys):
            raise DataError(f"user {u!r}: Shakespeare x/y must be strings", f)
        sliding = len(xs) > 1 and all(xs[i + 1][:-1] == xs[i][1:] for i in range(min(len(xs) - 1, 5)))
        text = xs[0] + "".join(ys) if sliding else " ".join(x + y for x, y in zip(xs, ys))
        words += tokenize(text)
    if not words:
        raise DataError("no text found", path)
    return word_dataset(words, vocab_size, seq_len, str(path))


# ---------------------------------------------------------------------------------------------- images


def _segments_to_image(segs: np.ndarray, thickness: float, size: int) -> np.ndarray:
    """Render line segments (k, 4) as soft strokes on a size x size canvas in [0, 1] (ink = 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    p = np.stack([xx.ravel(), yy.ravel()], 1)[:, None, :]  # (P, 1, 2)
    a, b = segs[None, :, :2], segs[None, :, 2:]  # (1, k, 2)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-6), 0, 1)
    d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(1)  # (P,)
    return cast(np.ndarray, np.clip(1.5 - d / thickness, 0, 1).reshape(size, size))


def synthetic_femnist(num_classes: int = FEMNIST_CLASSES, per_class: int = 16, seed: int = 0) -> Dataset:
    """SYNTHETIC FEMNIST stand-in: 28x28 glyphs, class c = 3 random strokes fixed by (seed, c); each sample
    jitters the stroke ends (+-1.5 px), shifts (+-2 px), varies thickness and adds noise. Deterministic."""
    size = FEMNIST_SIZE
    xs, ys = [], []
    for c in range(num_classes):
        rng = np.random.default_rng([seed, c])
        template = rng.uniform(5, size - 6, size=(3, 4)).astype(np.float32)
        for _ in range(per_class):
            segs = template + rng.uniform(-1.5, 1.5, template.shape).astype(np.float32)
            segs += np.tile(rng.uniform(-2, 2, 2), 2).astype(np.float32)
            img = _segments_to_image(segs, float(rng.uniform(0.8, 1.4)), size)
            img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
            xs.append(img.astype(np.float32))
            ys.append(c)
    x = np.stack(xs)[:, None]
    return Dataset(x, np.array(ys, np.int64), num_classes, f"synthetic_femnist(seed={seed})", True)


def load_femnist(path: str | Path) -> Dataset:
    """FEMNIST from LEAF JSON: x = 784 floats per sample, y = class id in [0, 62)."""
    xs, ys = [], []
    x: list[Any] | np.ndarray  # a user's samples, then all of them
    for f, u, x, y in _leaf_users(path):
        try:
            arr = np.asarray(x, dtype=np.float32)
            lab = np.asarray(y, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"user {u!r}: x must be numbers, y integers", f) from None
        if arr.size and (arr.ndim != 2 or arr.shape[1] != FEMNIST_SIZE * FEMNIST_SIZE):
            raise DataError(f"user {u!r}: x rows must hold {FEMNIST_SIZE * FEMNIST_SIZE} values", f)
        if lab.size and (lab.min() < 0 or lab.max() >= FEMNIST_CLASSES):
            raise DataError(f"user {u!r}: labels outside [0, {FEMNIST_CLASSES})", f)
        xs.append(arr.reshape(-1, 1, FEMNIST_SIZE, FEMNIST_SIZE))
        ys.append(lab)
    x = np.concatenate(xs) if xs else np.zeros((0, 1, FEMNIST_SIZE, FEMNIST_SIZE), np.float32)
    if len(x) == 0:
        raise DataError("no samples found", path)
    return Dataset(x, np.concatenate(ys), FEMNIST_CLASSES, str(path), False)


def resize_images(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, C, H, W) to size x size and channel repeat (e.g. 28x28x1 -> 224x224x3)."""
    n, c, h, w = x.shape
    if (h, w) != (size, size):
        x = x[:, :, (np.arange(size) * h // size)[:, None], (np.arange(size) * w // size)[None, :]]
    if c != channels:
        x = np.repeat(x[:, :1], channels, axis=1)
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- defaults


@lru_cache(maxsize=8)
def default_images(num_classes: int, seed: int) -> Dataset:
    """The default synthetic image set (cached)."""
    return synthetic_femnist(num_classes=num_classes, seed=seed)


@lru_cache(maxsize=8)
def default_words(vocab_size: int, seq_len: int) -> Dataset:
    """The default word set from the embedded text (cached)."""
    return embedded_text_dataset(vocab_size, seq_len)


def default_dataset(cfg: Any) -> Dataset:
    """The embedded data set matching a model config (its family's `dataset`)."""

    data: Dataset = of_config(cfg).dataset(cfg, None)
    return data


def default_batch(cfg: Any, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batch `index` (shape cfg.input_shape) of the embedded data for a model config (its family's `batch`)."""

    return of_config(cfg).batch(cfg, index)


def with_data(program: Any, model: str, variant: str, path: Path) -> Any:
    """`program` (a TrainingProgram of `model`/`variant`) with its first batch (x, y) replaced by batch 0 of the
    data set at `path` (`workloads build --data`)."""

    if variant == "cached":
        raise ConfigError(
            "--data is not supported with variant 'cached' (its batch holds backbone features)", key="data"
        )

    cfg = make_config(model, **{k: v for k, v in program.meta["config"].items() if k != "model"})
    family = registry.get(model)
    if family.load_data is None:
        raise ConfigError(f"--data is not supported for the {model} family", key="data")
    x, y = family.load_data(cfg, path)
    tensors = dict(program.tensors)
    for name, new in (("x", x), ("y", y)):
        old = tensors[name]
        if tuple(new.shape) != tuple(old.shape):
            raise ConfigError(
                f"batch from {path} has {name} shape {new.shape}, the program needs {old.shape}", key="data"
            )
        tensors[name] = np.ascontiguousarray(new.astype(old.dtype))
    return replace(program, tensors=tensors, meta={**program.meta, "data": str(path)})
