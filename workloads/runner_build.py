"""Build the static on-device runner: TVM runtime (from the wheel's sources) + compiled model + `runner/runner.cc`.

Toolchain: `python -m ziglang c++ -target <arch>-linux-musl`, fully static, so one binary runs on any arm64 Android
(or x86_64 virtual phone) with nothing but a shell. Three stages, each cached under `cache_root()`:

1. `runtime_library(abi)`: the minimal TVM runtime for the Relax VM on CPU (tvm-ffi core + module/system-lib,
   device/tensor/thread pool, memory manager, VM). Sources are staged from the installed wheel plus six support
   headers the wheel does not ship (our own API stand-ins under `runner/compat/`), compiled as two unity
   translation units. Cached as `runtime/<abi>-<key>/libtvmrt.a`, key = sha256(staged sources, flags, zig
   version). Cold: about a minute; warm: hashing the sources (~1 s).
2. `runner_object(abi)`: `runner.cc` compiled once per (source, runtime key).
3. `link_runner(...)`: model objects (system-lib, exported by `relax.build` + `export_library`) + runner object +
   whole-archive runtime (its registrations are static initialisers) -> one static executable.

Builds are reproducible: no debug info, `-ffile-prefix-map` strips build paths from `__FILE__`, archives are
deterministic and inputs are passed in a fixed order, so identical inputs give identical bytes (the artifact hash
relies on this; `tests/test_artifact.py` checks it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from autlearn.profiler import paths
from autlearn.profiler.errors import ConfigError, ToolMissing, UserError
from autlearn.workloads.program import build_executable
from autlearn.workloads.targets import target_for_abi

RUNNER_VERSION = "2"
RUNNER_DIR = Path(__file__).resolve().parent / "runner"

# Android ABI -> (zig target, LLVM arch prefix accepted in the model's target triple).
ABIS: dict[str, tuple[str, str]] = {
    "x86_64": ("x86_64-linux-musl", "x86_64"),
    "arm64-v8a": ("aarch64-linux-musl", "aarch64"),
}

# Relative to site-packages. Only what the Relax VM needs on CPU; every object is linked whole (static registration).
_FFI_SOURCES = (
    "backtrace.cc",
    "container.cc",
    "custom_allocator.cc",
    "dtype.cc",
    "error.cc",
    "function.cc",
    "init_once.cc",
    "object.cc",
    "tensor.cc",
    "extra/env_c_api.cc",
    "extra/env_context.cc",
    "extra/json_parser.cc",
    "extra/json_writer.cc",
    "extra/library_module.cc",
    "extra/library_module_system_lib.cc",
    "extra/module.cc",
)
_RT_SOURCES = (
    "cpu_device_api.cc",
    "device_api.cc",
    "file_utils.cc",
    "logging.cc",
    "module.cc",
    "tensor.cc",
    "thread_pool.cc",
    "threading_backend.cc",
    "workspace_pool.cc",
    "memory/memory_manager.cc",
    "vm/builtin.cc",
    "vm/bytecode.cc",
    "vm/executable.cc",
    "vm/vm.cc",
)
# Our own stand-ins for the six support headers the runtime sources include but the wheel does not ship, laid out
# under runner/compat/ at their staged paths (include/tvm/support/..., src/support/...).
COMPAT_DIR = RUNNER_DIR / "compat"
_COMPAT_HEADERS = (
    "include/tvm/support/io.h",
    "include/tvm/support/serializer.h",
    "include/tvm/support/cuda/nvtx.h",
    "src/support/base64.h",
    "src/support/bytes_io.h",
    "src/support/utils.h",
)
_DEFINES = (
    "-DNDEBUG",
    "-DTVM_FFI_USE_LIBBACKTRACE=0",
    "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=0",
    "-DTVM_LOG_STACK_TRACE=0",
    "-DTVM_USE_LIBBACKTRACE=0",
    "-DTVM_FFI_CMAKE_LITTLE_ENDIAN=1",
    "-DTVM_NVTX_ENABLED=0",
)
_CXXFLAGS = ("-std=c++17", "-O2", "-g0", "-ffunction-sections", "-fdata-sections", "-fno-omit-frame-pointer")
# Every static link uses exactly these: zig builds libc++/libc for each distinct (target, link flags) and caches it
# per zig installation, at about two minutes per build on 2 cores.
_LINK_FLAGS = ("-static", "-O2", "-s", "-Wl,--gc-sections", "-Wl,--build-id=none")


class RunnerBuildError(UserError):
    """Compiling or linking the runner failed: one-line message (first error), full tail in `output`."""

    def __init__(self, message: str, output: str = ""):
        self.output = output
        super().__init__(message)


@dataclass(frozen=True)
class RuntimeLib:
    abi: str
    path: Path  # libtvmrt.a
    key: str  # cache key (sha256 prefix)
    include_dirs: tuple[Path, ...]
    build_seconds: float  # wall time of the (possibly earlier, cached) build
    cached: bool


@dataclass(frozen=True)
class RunnerBinary:
    abi: str
    path: Path
    runtime: RuntimeLib
    seconds: float  # wall time of this call (module compile + link, plus any runtime build)


# ----------------------------------------------------------------------------------------------------------- tools


def check_abi(abi: str) -> tuple[str, str]:
    abi = abi.partition("@")[0]  # a target id (ABI@MCPU...) links the ABI's runner
    if abi not in ABIS:
        raise ConfigError(f"unknown ABI {abi!r} (choose from {', '.join(ABIS)})", key="abi")
    return ABIS[abi]


def zig_command() -> list[str]:
    try:
        import ziglang  # noqa: F401  (the PyPI package; `python -m ziglang` is the zig binary)
    except ImportError as exc:
        raise ToolMissing("the `ziglang` package is not installed (pip install ziglang)") from exc
    return [sys.executable, "-m", "ziglang"]


@lru_cache(maxsize=1)
def zig_version() -> str:
    out = subprocess.run([*zig_command(), "version"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ToolMissing(f"zig does not run: {out.stderr.strip()[-200:]}")
    return out.stdout.strip()


def cache_root() -> Path:
    """`$AUTLEARN_CACHE_DIR` if set (tests share one across temp homes), else `$AUTLEARN_HOME/cache`."""

    return paths.cache_dir()


def _site_packages() -> tuple[Path, Path]:
    import tvm  # tvm takes seconds to import; only this path needs it
    import tvm_ffi  # tvm takes seconds to import; only this path needs it

    return Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        first_error = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
        raise RunnerBuildError(
            f"{what} failed (exit {proc.returncode}): {first_error.strip()[:300]}", output="\n".join(lines[-40:])
        )


def _nice() -> list[str]:
    return ["nice", "-n", "10"] if shutil.which("nice") else []


def _cxx(abi: str, *extra: str) -> list[str]:
    triple, _ = check_abi(abi)
    return [*_nice(), *zig_command(), "c++", "-target", triple, *extra]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Inter-process lock, so concurrent builds (tests, other engineers) of the same key build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------------- runtime


def _staging_plan() -> list[tuple[Path, str]]:
    """(source file, path inside the stage) for every runtime source and header, laid out as their relative
    includes expect (the wheel lacks `src/support` and `tvm/support`; `runner/compat/` has our stand-ins)."""
    tvm_dir, ffi_dir = _site_packages()
    plan: list[tuple[Path, str]] = []

    def headers(src: Path, dst: str) -> None:
        plan.extend((p, f"{dst}/{p.relative_to(src).as_posix()}") for p in sorted(src.rglob("*.h")))

    headers(tvm_dir / "include", "include")
    headers(ffi_dir / "include", "include")
    headers(ffi_dir / "3rdparty" / "dlpack" / "include", "include")
    for sub in ("", "/memory", "/vm"):
        plan.extend((p, f"src/runtime{sub}/{p.name}") for p in sorted((tvm_dir / f"src/runtime{sub}").glob("*.h")))
    headers(ffi_dir / "src" / "ffi", "ffi")
    plan += [(tvm_dir / "src" / "runtime" / s, f"src/runtime/{s}") for s in _RT_SOURCES]
    plan += [(ffi_dir / "src" / "ffi" / s, f"ffi/{s}") for s in _FFI_SOURCES]
    plan += [(COMPAT_DIR / h, h) for h in _COMPAT_HEADERS]
    for src, _ in plan:
        if not src.is_file():
            where = "autlearn's runner/compat" if COMPAT_DIR in src.parents else "the installed wheel"
            raise ToolMissing(f"TVM runtime source {src} is missing from {where}")
    return plan


def _plan_digest(plan: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256()
    for src, dst in sorted(plan, key=lambda x: x[1]):
        h.update(dst.encode() + b"\0" + hashlib.sha256(src.read_bytes()).digest())
    return h.hexdigest()


def _stage(plan: list[tuple[Path, str]], stage: Path) -> None:
    for src, dst in plan:
        (stage / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stage / dst)


# The runtime compiles as unity translation units (unit -> staged sources): every source parses the same heavy
# headers, so one unit per group takes ~40 % of the CPU time of 30 separate compiles.
_UNITS: dict[str, tuple[str, ...]] = {
    "unit_ffi.cc": tuple(f"ffi/{s}" for s in _FFI_SOURCES),
    "unit_runtime.cc": tuple(f"src/runtime/{s}" for s in _RT_SOURCES),
}


def _unity_units(stage: Path) -> list[Path]:
    """Write the `_UNITS` into the stage (each includes its sources); returns their paths."""
    for name, members in _UNITS.items():
        (stage / name).write_text("".join(f'#include "{m}"\n' for m in members))
    return [stage / name for name in _UNITS]


def _compile_flags(stage: Path) -> list[str]:
    return [*_CXXFLAGS, *_DEFINES, f"-ffile-prefix-map={stage}=tvm", "-I", str(stage / "include")]


def runtime_library(
    abi: str, *, jobs: int = 2, log: Callable[[str], None] | None = None, cache: Path | None = None
) -> RuntimeLib:
    """The cached static TVM runtime for `abi`, building it (minutes, `nice`d, `jobs` parallel) when absent."""
    triple, _ = check_abi(abi)
    root = (cache or cache_root()) / "runtime"
    root.mkdir(parents=True, exist_ok=True)
    plan = _staging_plan()
    key_src = "\n".join([_plan_digest(plan), triple, zig_version(), *_CXXFLAGS, *_DEFINES, "unity:" + ",".join(_UNITS)])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    final = root / f"{abi}-{key}"
    lib = final / "libtvmrt.a"
    stamp = final / "build_seconds"
    if lib.is_file() and stamp.is_file():  # complete entries are renamed into place, never modified
        return RuntimeLib(abi, lib, key, (final / "include",), float(stamp.read_text()), True)
    with _locked(root / f".{abi}-{key}.lock"), tempfile.TemporaryDirectory(dir=root, prefix=".stage-") as tmp:
        if lib.is_file() and stamp.is_file():  # built by someone else while we waited
            return RuntimeLib(abi, lib, key, (final / "include",), float(stamp.read_text()), True)
        stage = Path(tmp) / "stage"
        _stage(plan, stage)
        if log:
            n = sum(map(len, _UNITS.values()))
            log(f"building TVM runtime for {abi} ({n} sources in {len(_UNITS)} units, {jobs} jobs)...")
        t0 = time.monotonic()
        build = Path(tmp) / "build"
        flags = _compile_flags(stage)
        srcs = _unity_units(stage)

        def one(i_src: tuple[int, Path]) -> Path:
            i, src = i_src
            obj = build / f"{i:02d}_{src.stem}.o"
            obj.parent.mkdir(parents=True, exist_ok=True)
            _run(_cxx(abi, *flags, "-c", str(src), "-o", str(obj)), f"compiling {src.relative_to(stage)}")
            return obj

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            objs = list(pool.map(one, enumerate(srcs)))
        archive = build / "libtvmrt.a"
        _run([*zig_command(), "ar", "rcsD", str(archive), *map(str, objs)], "archiving the TVM runtime")
        secs = time.monotonic() - t0
        tmp_final = Path(tmp) / "final"
        tmp_final.mkdir()
        shutil.move(str(archive), tmp_final / "libtvmrt.a")
        shutil.move(str(stage / "include"), tmp_final / "include")
        (tmp_final / "build_seconds").write_text(f"{secs:.1f}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_final, final)
        if log:
            log(f"TVM runtime for {abi} built in {secs:.0f} s -> {final}")
        return RuntimeLib(abi, lib, key, (final / "include",), secs, False)


def prepare(abi: str, *, cache: Path | None = None) -> RuntimeLib:
    """Build ahead what any runner link for `abi` needs: the TVM runtime library, and zig's libc/libc++ for this
    target and link flags (by linking a trivial program with _LINK_FLAGS). Cold: minutes; cached: about a second."""
    rt = runtime_library(abi, cache=cache)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "probe.cc").write_text(
            "#include <string>\nint main(int argc, char**) { return int(std::string(argc, 'x').size()) - argc; }\n"
        )
        _run(_cxx(abi, *_CXXFLAGS, "-c", "probe.cc", "-o", "probe.o"), "compiling the toolchain probe", cwd=Path(tmp))
        _run(
            _cxx(abi, *_LINK_FLAGS, "probe.o", "-lpthread", "-o", "probe"),
            f"linking the {abi} toolchain probe",
            cwd=Path(tmp),
        )
    return rt


# ---------------------------------------------------------------------------------------------------------- runner


def runner_object(abi: str, runtime: RuntimeLib) -> Path:
    """`runner.cc` compiled for `abi` against `runtime`'s headers (cached by source + runtime key)."""
    src = RUNNER_DIR / "runner.cc"
    check_abi(abi)
    flags = [
        *_CXXFLAGS,
        *_DEFINES,
        f'-DAUTLEARN_RUNNER_VERSION="{RUNNER_VERSION}"',
        f'-DAUTLEARN_ABI="{abi}"',
        f'-DAUTLEARN_TVM_VERSION="{version("apache-tvm")}"',
    ]
    key = hashlib.sha256(b"\n".join([src.read_bytes(), runtime.key.encode(), " ".join(flags).encode()])).hexdigest()
    out = cache_root() / "runner-obj" / f"{abi}-{key[:16]}.o"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.with_suffix(".lock")):
        if out.is_file():
            return out
        tmp = out.with_suffix(f".{os.getpid()}.tmp.o")
        inc = runtime.include_dirs[0]
        _run(
            _cxx(
                abi,
                *flags,
                f"-ffile-prefix-map={RUNNER_DIR}=runner",
                f"-ffile-prefix-map={inc}=tvm/include",
                "-I",
                str(inc),
                "-c",
                str(src),
                "-o",
                str(tmp),
            ),
            "compiling runner.cc",
        )
        os.replace(tmp, out)
    return out


def link_runner(abi: str, model_objects: Sequence[Path], out: Path, runtime: RuntimeLib | None = None) -> Path:
    """Link model objects + runner + whole runtime archive into one static executable at `out`."""
    runtime = runtime or runtime_library(abi)
    robj = runner_object(abi, runtime)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # copy to fixed names so no temp path can reach the binary
        local = []
        for i, o in enumerate([robj, *model_objects]):
            dst = Path(tmp) / f"in{i}.o"
            shutil.copyfile(o, dst)
            local.append(dst.name)
        shutil.copyfile(runtime.path, Path(tmp) / "libtvmrt.a")
        _run(
            _cxx(
                abi,
                *_LINK_FLAGS,
                *local,
                "-Wl,--whole-archive",
                "libtvmrt.a",
                "-Wl,--no-whole-archive",
                "-lpthread",
                "-o",
                "runner",
            ),
            f"linking the {abi} runner",
            cwd=Path(tmp),
        )
        shutil.copyfile(Path(tmp) / "runner", out)
    out.chmod(0o755)
    return out


# ----------------------------------------------------------------------------------------------------------- model


def model_target(program: Any, abi: str) -> Any:
    """The program's target (from `meta["target"]`, else `workloads.compile.target_for_abi`), checked against abi."""
    import tvm  # tvm takes seconds to import; only this path needs it

    _, arch = check_abi(abi)
    target = (getattr(program, "meta", {}) or {}).get("target")
    if target is None:
        target = target_for_abi(abi)
    if isinstance(target, str) and target.lstrip().startswith("{"):
        target = json.loads(target)
    if isinstance(target, (str, dict)):
        target = tvm.target.Target(target)
    host = target.host or target
    triple = str(host.attrs.get("mtriple", ""))
    if not triple.startswith(arch):
        raise ConfigError(f"target triple {triple!r} does not match ABI {abi} ({arch}-*)", key="target")
    return target


def compile_model(program: Any, abi: str, workdir: Path) -> list[Path]:
    """Build the program's module as a system-lib for `abi`; return its object files (in link order)."""

    target = model_target(program, abi)
    ex = build_executable(program, target, system_lib=True)
    collected: list[Path] = []

    def fcompile(file_name: str, files: list[str], **_: Any) -> None:
        for i, f in enumerate(files):
            dst = workdir / f"model{i}.o"
            shutil.copyfile(f, dst)
            collected.append(dst)

    fcompile.object_format = "o"  # type: ignore[attr-defined]
    workdir.mkdir(parents=True, exist_ok=True)
    ex.export_library(str(workdir / "model.bundle"), fcompile=fcompile)
    if not collected:
        raise RunnerBuildError("export_library produced no object files")
    return collected


def build_runner(program: Any, abi: str, out: Path, *, log: Callable[[str], None] | None = None) -> RunnerBinary:
    """Compile `program` for `abi` and link the static runner executable at `out`."""
    t0 = time.monotonic()
    runtime = runtime_library(abi, log=log)
    with tempfile.TemporaryDirectory() as tmp:
        objs = compile_model(program, abi, Path(tmp))
        link_runner(abi, objs, out, runtime)
    return RunnerBinary(abi, out, runtime, time.monotonic() - t0)
