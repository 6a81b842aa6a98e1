"""Workload artifacts: everything a phone needs to run one training program, in one directory.

Layout (format 1):
  manifest.json  model/variant/ABI/target, calls, tensor index, file digests, tool versions, content hash
  tensors.bin    every initial tensor (params, optimizer state, batch, labels, loss), raw little-endian C-order
                 bytes, each at a 64-byte-aligned `offset` with `nbytes` (index: manifest["tensors"], in program
                 order: {name, dtype, shape, offset, nbytes})
  runner         the static runner executable for the ABI (model + TVM runtime linked in; see runner_build)

Content hash (`manifest["hash"]`): sha256 over the canonical JSON (sorted keys, no whitespace) of the manifest
without `hash` and without `build` (wall-clock facts: timestamps, build and compile seconds). The manifest carries
the sha256 and size of every file, so the hash covers the tensor bytes and the runner bytes too. Builds are
bit-reproducible (see runner_build), so identical inputs (program, ABI, tool versions) give an identical hash and
any change to a tensor, the compiled model, the runner source or a tool version gives a new one. Results record
this hash; a result whose hash differs from its artifact's is stale.

`load_artifact(path)` re-verifies all of it and raises `ArtifactError` naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from autlearn.profiler.errors import ArtifactError, ConfigError
from autlearn.profiler.versions import tool_versions as packages
from autlearn.workloads.compile import build_program
from autlearn.workloads.compressed import compressed_build_args
from autlearn.workloads.data import with_data
from autlearn.workloads.layer_suite import suite_program
from autlearn.workloads.models import make_config
from autlearn.workloads.registry import LAYER_SUITE
from autlearn.workloads.runner_build import ABIS, RUNNER_VERSION, build_runner, check_abi, zig_version

FORMAT = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.bin"
RUNNER = "runner"
ALIGN = 64
# meta keys holding wall-clock facts: kept in manifest["build"], outside the hash
_VOLATILE_SUFFIXES = ("_s", "_seconds", "_time", "_at")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, eq=False)
class Artifact:
    path: Path
    manifest: Mapping[str, Any]

    @property
    def hash(self) -> str:
        return cast(str, self.manifest["hash"])

    @property
    def abi(self) -> str:
        return cast(str, self.manifest["abi"])

    @property
    def model(self) -> str | None:
        return self.manifest.get("model")

    @property
    def variant(self) -> str | None:
        return self.manifest.get("variant")

    @property
    def runner(self) -> Path:
        return self.path / RUNNER

    @property
    def calls(self) -> list[dict[str, Any]]:
        return list(self.manifest["calls"])

    @property
    def tensor_index(self) -> tuple[TensorEntry, ...]:
        return tuple(
            TensorEntry(t["name"], t["dtype"], tuple(t["shape"]), t["offset"], t["nbytes"])
            for t in self.manifest["tensors"]
        )

    def read_tensors(self) -> dict[str, np.ndarray]:
        data = (self.path / TENSORS).read_bytes()
        return {
            e.name: np.frombuffer(
                data, dtype=np.dtype(e.dtype).newbyteorder("<"), count=int(np.prod(e.shape)), offset=e.offset
            )
            .reshape(e.shape)
            .copy()
            for e in self.tensor_index
        }

    def files(self) -> list[Path]:
        """Files to push to a device (all of them; the runner takes the directory)."""
        return [self.path / MANIFEST, self.path / TENSORS, self.path / RUNNER]


# ------------------------------------------------------------------------------------------------------- hashing


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def content_hash(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k not in ("hash", "build")}
    return hashlib.sha256(b"autlearn-artifact\0" + _canonical(body)).hexdigest()


def _file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def _jsonable(value: Any) -> Any:
    """Plain JSON types (tuples -> lists, numpy scalars -> Python); anything else -> its str()."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def tool_versions() -> dict[str, str]:
    """The build toolchain (zig, runner, artifact format) and profiler.versions' packages (same missing word)."""

    return {"zig": zig_version(), "runner": RUNNER_VERSION, "artifact_format": str(FORMAT), **packages()}


# -------------------------------------------------------------------------------------------------------- writing


def write_tensors(tensors: Mapping[str, np.ndarray], path: Path) -> list[dict[str, Any]]:
    """Write `tensors` to `path` (64-byte aligned, little-endian, C order); return the manifest index."""
    index = []
    offset = 0
    with open(path, "wb") as fh:
        for name, value in tensors.items():
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiub" or arr.dtype.byteorder == ">":
                if arr.dtype.kind not in "fiub":
                    raise ConfigError(f"tensor {name!r} has unsupported dtype {arr.dtype}", key="tensors")
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            if not arr.flags.c_contiguous:
                arr = arr.copy(order="C")  # (not ascontiguousarray: it turns 0-d scalars into shape (1,))
            pad = -offset % ALIGN
            fh.write(b"\0" * pad)
            offset += pad
            raw = arr.tobytes(order="C")
            fh.write(raw)
            dtype = "bool" if arr.dtype == np.bool_ else arr.dtype.name
            index.append(
                {
                    "name": str(name),
                    "dtype": dtype,
                    "shape": [int(d) for d in arr.shape],
                    "offset": offset,
                    "nbytes": len(raw),
                }
            )
            offset += len(raw)
    return index


def _split_meta(meta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    stable: dict[str, Any] = {}
    volatile: dict[str, Any] = {}
    for k, v in _jsonable(dict(meta)).items():
        (volatile if k.endswith(_VOLATILE_SUFFIXES) else stable)[k] = v
    return stable, volatile


def write_artifact(
    program: Any, out: str | Path, *, abi: str | None = None, log: Callable[[str], None] | None = None
) -> Artifact:
    """Compile `program` for `abi` (default `program.meta["abi"]`), link its runner and write the artifact to
    `out` (replaced atomically). Returns the verified artifact."""

    t0 = time.monotonic()
    meta = dict(getattr(program, "meta", {}) or {})
    abi = abi or meta.get("abi")
    if not abi:
        raise ConfigError("no ABI given and the program's meta has none", key="abi")
    abi = abi.partition("@")[0]  # a target id's CPU is in meta["target"]; the runner is the ABI's
    check_abi(abi)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stable_meta, volatile_meta = _split_meta(meta)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        stage = Path(tmp) / "artifact"
        stage.mkdir()
        index = write_tensors(program.tensors, stage / TENSORS)
        runner = build_runner(program, abi, stage / RUNNER, log=log)
        calls = [
            c.to_dict()
            if hasattr(c, "to_dict")
            else {"phase": c.phase, "func": c.func, "args": list(c.args), "outs": list(c.outs)}
            for c in program.calls
        ]
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "model": stable_meta.get("model"),
            "variant": stable_meta.get("variant"),
            "abi": abi,
            "target": stable_meta.get("target"),
            "triple": stable_meta.get("triple"),
            "config": stable_meta.get("config"),
            "meta": stable_meta,
            "runner": {
                "file": RUNNER,
                "version": RUNNER_VERSION,
                "zig_target": ABIS[abi][0],
                "runtime_key": runner.runtime.key,
            },
            "tensors_file": TENSORS,
            "tensors": index,
            "calls": calls,
            "files": {name: _file_digest(stage / name) for name in (TENSORS, RUNNER)},
            "tools": tool_versions(),
            "build": {
                **volatile_meta,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_s": round(time.monotonic() - t0, 3),
                "runtime_build_s": runner.runtime.build_seconds,
                "runtime_cached": runner.runtime.cached,
            },
        }
        manifest["hash"] = content_hash(manifest)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = Path(tmp) / "old"
            os.replace(out, old)
        os.replace(stage, out)
    if log:
        log(f"artifact {out} ({manifest['hash'][:12]}) in {time.monotonic() - t0:.1f} s")
    return load_artifact(out)


def build_artifact(
    model: str,
    variant: str,
    abi: str,
    out: str | Path | None = None,
    *,
    log: Callable[[str], None] | None = None,
    **config: Any,
) -> Artifact:
    """`autlearn.workloads.compile.build_program(model, variant, abi, **config)` -> artifact at `out`
    (default `artifacts/<model>-<variant>-<abi>` under the current directory)."""
    program = build_any_program(model, variant, abi, **config)
    out = Path(out) if out is not None else default_artifact_dir(model, variant, abi, config)
    return write_artifact(program, out, abi=abi, log=log)


def build_to(
    model: str,
    variant: str,
    abi: str,
    out: Path | None,
    config: dict[str, Any],
    data_path: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Artifact:
    """`autlearn workloads build`: check the config, compile, optionally take the first batch from a data set,
    write and verify the artifact (default directory: `default_artifact_dir`)."""

    if data_path is not None and not Path(data_path).exists():
        raise ConfigError(f"{data_path}: no such file or directory", key="data")
    make_config(model, **config)  # unknown keys / bad values fail here, before minutes of compiling
    out = out or default_artifact_dir(model, variant, abi, config)
    log(f"compiling {model}/{variant} for {abi}...")
    program = build_program(model, variant, abi, **config)
    if data_path is not None:
        program = with_data(program, model, variant, Path(data_path))
    return write_artifact(program, out, abi=abi, log=log)


def build_any_program(model: str, variant: str, abi: str, **config: Any) -> Any:
    """What a campaign workload compiles: `model = "layers"` -> a layer suite (autlearn.workloads.layer_suite); a
    `compressed = "path/compressed.json"` argument (from `autlearn prune`) -> that pruned model with its weights;
    otherwise `autlearn.workloads.compile.build_program`."""

    tuning = config.pop("tuning", "default")
    if tuning not in ("default", "none"):
        raise ConfigError(f"tuning must be 'default' (the target's database) or 'none', not {tuning!r}", key="tuning")
    if tuning == "none":
        config["database"] = None
    if model == LAYER_SUITE:
        if variant != "full":
            raise ConfigError(f"layer suites have one variant, 'full' (got {variant!r})", key="variant")
        return suite_program(abi, **config)
    compressed = config.pop("compressed", None)
    if compressed is not None:
        if variant != "compressed":
            raise ConfigError(f"a compressed model file needs variant 'compressed', not {variant!r}", key="variant")
        args = compressed_build_args(compressed, model)
        base = {**args["config"], **{k: v for k, v in config.items() if k == "batch"}}
        return build_program(
            model,
            variant,
            abi,
            compressed_config=args["compressed_config"],
            state_dict=args["state_dict"],
            database=config.get("database", "default"),
            **base,
        )
    return build_program(model, variant, abi, **config)


def input_files(config: Mapping[str, Any]) -> list[Path]:
    """Files a workload config points at (a compressed model and its weights): their bytes belong in cache keys."""
    c = config.get("compressed")
    if not c:
        return []

    args = compressed_build_args(c, None)
    return [Path(c), Path(args["state_dict"])]


def default_artifact_dir(model: str, variant: str, abi: str, config: Mapping[str, Any] | None = None) -> Path:
    tail = "".join(f"-{k}{v}" for k, v in sorted((config or {}).items()) if v is not None)
    return Path("artifacts") / f"{model}-{variant}-{abi}{tail}"


# -------------------------------------------------------------------------------------------------------- loading

_REQUIRED = {
    "format": int,
    "hash": str,
    "abi": str,
    "tensors_file": str,
    "tensors": list,
    "calls": list,
    "files": dict,
    "runner": dict,
    "tools": dict,
}


def load_artifact(path: str | Path, *, verify_files: bool = True) -> Artifact:
    """Read and verify an artifact directory; `ArtifactError` names what is missing, corrupt or inconsistent."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such artifact directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{path}: missing {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: manifest is not a JSON object")
    for key, typ in _REQUIRED.items():
        if not isinstance(manifest.get(key), typ):
            raise ArtifactError(f"{mpath}: bad manifest: '{key}' missing or not a {typ.__name__}")
    if manifest["format"] != FORMAT:
        raise ArtifactError(f"{mpath}: artifact format {manifest['format']} (this autlearn reads {FORMAT}); rebuild")
    expected = content_hash(manifest)
    if manifest["hash"] != expected:
        raise ArtifactError(
            f"{mpath}: hash mismatch (manifest says {manifest['hash'][:12]}, content is "
            f"{expected[:12]}): the manifest was edited after the build"
        )
    for name in (manifest["tensors_file"], manifest["runner"].get("file", RUNNER)):
        if name not in manifest["files"]:
            raise ArtifactError(f"{mpath}: bad manifest: no digest for {name}")
    if verify_files:
        for name, want in sorted(manifest["files"].items()):
            f = path / name
            if not f.is_file():
                raise ArtifactError(f"{path}: missing {name}")
            got = _file_digest(f)
            if got != want:
                what = "size" if got["bytes"] != want.get("bytes") else "sha256"
                raise ArtifactError(f"{f}: {what} mismatch with the manifest (corrupt or changed after the build)")
    _check_index(manifest, mpath)
    return Artifact(path, manifest)


def _check_index(manifest: Mapping[str, Any], mpath: Path) -> None:
    size = manifest["files"][manifest["tensors_file"]].get("bytes", 0)
    names = set()
    try:
        for t in manifest["tensors"]:
            n = int(np.prod(t["shape"], dtype=np.int64)) * np.dtype(t["dtype"]).itemsize
            if n != t["nbytes"] or t["offset"] < 0 or t["offset"] + t["nbytes"] > size:
                raise ArtifactError(f"{mpath}: tensor {t['name']!r}: index does not match shape/dtype/file size")
            names.add(t["name"])
        for c in manifest["calls"]:
            c["phase"], c["func"], list(c["args"]), list(c["outs"])  # noqa: B018  (presence check)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{mpath}: bad manifest: malformed tensor index or calls ({exc!r})") from None
    if "loss" not in names and not any("loss" in c["outs"] for c in manifest["calls"]):
        raise ArtifactError(f"{mpath}: bad manifest: no tensor named 'loss'")


def list_artifacts(root: str | Path) -> list[Artifact | tuple[Path, str]]:
    """Every artifact directory directly under `root` (or `root` itself): verified Artifacts, or (path, error)."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such directory")
    dirs = [root] if (root / MANIFEST).is_file() else sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())
    out: list[Artifact | tuple[Path, str]] = []
    for d in dirs:
        try:
            out.append(load_artifact(d))
        except ArtifactError as exc:
            out.append((d, str(exc)))
    return out
