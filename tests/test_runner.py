"""The static on-device runner: output format (and its parser), agreement with the host reference executor, error
handling, x86_64 on a virtual phone through adb, arm64 under qemu-user.

Runtime builds are cached in AUTLEARN_TEST_CACHE_DIR (default ~/.cache/autlearn-test), shared across sessions:
with a warm cache this module takes well under a minute. A cold cache first builds the TVM runtime for each ABI
(about 3 min x86_64, 4-8 min arm64 on 2 busy cores) plus zig's libc++ for each target (about 5 min each, in
zig's own cache, once per machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from autlearn.profiler.steps import parse_run_output
from autlearn.workloads.artifact import write_artifact
from autlearn.workloads.runner_build import RUNNER_VERSION

TRIPLES = {"x86_64": "x86_64-linux-musl", "arm64-v8a": "aarch64-linux-musl"}


def tiny_mod(B: int = 4, D: int = 8, C: int = 3, lr: float = 0.5):
    """Softmax regression: fwd_bwd(x, y, w, b) -> (loss, gw, gb); sgd(w, b, gw, gb) -> (w, b)."""
    from tvm import relax
    from tvm.relax import op

    bb = relax.BlockBuilder()
    f32 = lambda *shape: relax.TensorType(shape, "float32")  # noqa: E731
    x, y, w, b = (relax.Var(n, f32(*s)) for n, s in (("x", (B, D)), ("y", (B, C)), ("w", (D, C)), ("b", (C,))))
    inv_b = relax.const(1.0 / B, "float32")
    with bb.function("fwd_bwd", [x, y, w, b]):
        with bb.dataflow():
            logits = bb.emit(op.add(op.matmul(x, w), b))
            loss = bb.emit(op.multiply(op.negative(op.sum(op.multiply(y, op.nn.log_softmax(logits)))), inv_b))
            d = bb.emit(op.multiply(op.subtract(op.nn.softmax(logits), y), inv_b))
            out = bb.emit_output(relax.Tuple([loss, op.matmul(op.permute_dims(x), d), op.sum(d, axis=[0])]))
        bb.emit_func_output(out)
    gw, gb = relax.Var("gw", f32(D, C)), relax.Var("gb", f32(C))
    with bb.function("sgd", [w, b, gw, gb]):
        with bb.dataflow():
            lrc = relax.const(lr, "float32")
            out = bb.emit_output(
                relax.Tuple([op.subtract(w, op.multiply(lrc, gw)), op.subtract(b, op.multiply(lrc, gb))])
            )
        bb.emit_func_output(out)
    return bb.get()


def tiny_program(abi: str = "x86_64", seed: int = 0, B: int = 4, D: int = 8, C: int = 3):
    from autlearn.workloads.program import Call, TrainingProgram

    rng = np.random.default_rng(seed)
    tensors = {
        "x": rng.standard_normal((B, D)).astype("float32"),
        "y": np.eye(C, dtype="float32")[rng.integers(0, C, B)],
        "w": np.zeros((D, C), "float32"),
        "b": np.zeros(C, "float32"),
        "gw": np.zeros((D, C), "float32"),
        "gb": np.zeros(C, "float32"),
        "loss": np.zeros((), "float32"),
    }
    calls = (
        Call("forward_backward", "fwd_bwd", ("x", "y", "w", "b"), ("loss", "gw", "gb")),
        Call("update", "sgd", ("w", "b", "gw", "gb"), ("w", "b")),
    )
    meta = {
        "model": "tiny",
        "variant": "full",
        "abi": abi,
        "target": {"kind": "llvm", "mtriple": TRIPLES[abi]},
        "config": {"batch": B, "dim": D, "classes": C, "seed": seed},
    }
    return TrainingProgram(mod=tiny_mod(B, D, C), tensors=tensors, calls=calls, meta=meta)


_TINY: dict = {}  # abi -> Artifact; module-level so test_artifact.py (which imports this fixture) shares it


@pytest.fixture(scope="session")
def tiny_artifact(runner_cache, tmp_path_factory):
    """tiny_artifact(abi) -> Artifact of tiny_program(abi), built once per session."""

    def get(abi: str = "x86_64"):
        if abi not in _TINY:
            _TINY[abi] = write_artifact(tiny_program(abi), tmp_path_factory.mktemp("art") / f"tiny-{abi}")
        return _TINY[abi]

    return get


def run(art_dir, *args, runner=None, prefix=(), timeout=120) -> subprocess.CompletedProcess:
    runner = runner or Path(art_dir) / "runner"
    return subprocess.run(
        [*prefix, str(runner), str(art_dir), *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def host_losses(program, steps: int, target=None) -> list[float]:
    """Losses of the host reference executor (default target: generic host LLVM; tiny programs name musl)."""
    from autlearn.workloads.program import run_on_host

    return [r["loss"] for r in run_on_host(program, steps, target=target or {"kind": "llvm"})]


def check_clocks(out):
    """Version-2 clocks: step intervals in CLOCK_MONOTONIC, clock pairs before and after the run."""
    start, end = out.meta["clock_pair"], out.end["clock_pair"]
    for pair in (start, end):
        assert set(pair) == {"mono_ns", "real_ns", "gap_ns"} and 0 <= pair["gap_ns"] < 50_000_000
        assert abs(pair["real_ns"] / 1e9 - time.time()) < 3600  # CLOCK_REALTIME is wall time
    assert start["mono_ns"] <= out.steps[0].t_start_ns and out.steps[-1].t_end_ns <= end["mono_ns"]
    # both pairs describe the same offset (up to the pairing error, and any clock slew during the run)
    drift = (end["real_ns"] - end["mono_ns"]) - (start["real_ns"] - start["mono_ns"])
    assert abs(drift) < 1_000_000_000
    prev_end = start["mono_ns"]
    for s in out.steps:
        assert s.t_end_ns - s.t_start_ns == s.step_ns
        assert prev_end <= s.t_start_ns < s.t_end_ns  # monotonic, non-overlapping
        prev_end = s.t_end_ns


def strict_parse(text: str):
    """The campaign's parser in strict mode: nothing but runner output, steps as announced."""
    return parse_run_output(text, strict=True)


def check_output(out, *, abi: str, warmup: int, steps: int, threads: int, phases=("forward_backward", "update")):
    assert out.meta["runner_version"] == RUNNER_VERSION == "2"
    assert out.meta["abi"] == abi and out.meta["threads"] == threads
    assert out.meta["clock"] == "CLOCK_MONOTONIC" and len(out.meta["artifact_hash"]) == 64
    assert [s.step for s in out.steps] == list(range(warmup + steps))
    assert [s.warmup for s in out.steps] == [True] * warmup + [False] * steps
    for s in out.steps:
        assert tuple(name for name, _ in s.phases_ns) == phases
        assert 0 < sum(ns for _, ns in s.phases_ns) <= s.step_ns
        assert isinstance(s.loss, float) and np.isfinite(s.loss)
    assert out.end is not None and out.end["end"] is True
    check_clocks(out)


# ------------------------------------------------------------------------------------------------------- native


def test_native_runner_matches_host_reference(tiny_artifact):
    art = tiny_artifact("x86_64")
    r = run(art.path, "--warmup", 2, "--steps", 6, "--threads", 1)
    assert r.returncode == 0, r.stderr
    out = strict_parse(r.stdout)
    check_output(out, abi="x86_64", warmup=2, steps=6, threads=1)
    assert out.meta["artifact_hash"] == art.hash
    losses = [s.loss for s in out.steps]
    np.testing.assert_allclose(losses, host_losses(tiny_program("x86_64"), 8), rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]  # it trains


def test_threads_flag_sizes_the_pool(tiny_artifact):
    r = run(tiny_artifact("x86_64").path, "--warmup", 0, "--steps", 2, "--threads", 2)
    assert r.returncode == 0, r.stderr
    assert strict_parse(r.stdout).meta["threads"] == 2


def _copy(art, dst: Path) -> Path:
    shutil.copytree(art.path, dst)
    return dst


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("usage", 64, "unknown option --bogus"),
        ("bad-count", 64, "--steps needs an integer >= 1"),
        ("no-dir", 2, "cannot open"),
        ("not-json", 2, "not valid JSON"),
        ("truncated", 2, "beyond the end of"),
        ("nbytes", 2, "does not match its shape and dtype"),
        ("shape", 3, "fwd_bwd"),  # same byte count, wrong shape: the VM's signature check names the function
        ("no-func", 2, "has no function 'nope'"),
        ("unknown-arg", 2, "argument 'ghost'"),
    ],
)
def test_runner_errors_are_messages_with_nonzero_exit(tiny_artifact, tmp_path, case, code, words):
    art = tiny_artifact("x86_64")
    d = _copy(art, tmp_path / "a")
    args = ["--steps", 1]
    if case == "usage":
        args = ["--bogus"]
    elif case == "bad-count":
        args = ["--steps", "0"]
    elif case == "no-dir":
        d = tmp_path / "missing"
    elif case == "not-json":
        (d / "manifest.json").write_text("{not json")
    elif case == "truncated":
        data = (d / "tensors.bin").read_bytes()
        (d / "tensors.bin").write_bytes(data[: len(data) // 2])
    elif case == "nbytes":
        _edit_manifest(d, lambda m: m["tensors"][0].__setitem__("shape", [5, 8]))
    elif case == "shape":
        _edit_manifest(d, lambda m: next(t for t in m["tensors"] if t["name"] == "w").__setitem__("shape", [3, 8]))
    elif case == "no-func":
        _edit_manifest(d, lambda m: m["calls"][1].__setitem__("func", "nope"))
    elif case == "unknown-arg":
        _edit_manifest(d, lambda m: m["calls"][0]["args"].__setitem__(0, "ghost"))
    r = run(d, *args, runner=art.runner)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert words in r.stderr
    assert r.stderr.startswith("autlearn-runner:")


# ------------------------------------------------------------------------------------------ compat headers

# Exercises runner/compat (our stand-ins for TVM's support headers) beyond what loading a VM executable covers:
# tensors in TVM's base64 JSON form (as the host TVM writes them) decode and re-encode to the same text, and
# Serializer round trips with the expected byte counts.
COMPAT_CHECK = r"""
#include <tvm/runtime/tensor.h>
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>
#include <tvm/ffi/container/array.h>
#include "src/support/base64.h"  // -I runner/compat
#include "src/support/bytes_io.h"
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
using namespace tvm;
int fails = 0;
#define CHECK(c) do { if (!(c)) { std::printf("FAIL line %d: %s\n", __LINE__, #c); ++fails; } } while (0)
int main(int argc, char** argv) {
  std::ifstream in(argv[1]);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    // decode the host's (upstream) base64 tensor, re-encode with ours: identical text
    support::BytesInStream ms(line);
    support::Base64InStream bs(&ms);
    bs.InitPosition();
    runtime::Tensor t;
    CHECK(t.Load(&bs));
    std::string enc;
    {
      support::BytesOutStream os(&enc);
      support::Base64OutStream b(&os);
      runtime::SaveDLTensor(&b, t.operator->());
      b.Finish();
    }
    CHECK(enc == line);
    // whitespace-tolerant decode
    std::string spaced = "  \n" + line.substr(0, 5) + "\n" + line.substr(5) + "\n";
    support::BytesInStream ms2(spaced);
    support::Base64InStream bs2(&ms2);
    bs2.InitPosition();
    runtime::Tensor t2;
    CHECK(t2.Load(&bs2));
    CHECK(t2->ndim == t->ndim);
    ++n;
  }
  CHECK(n == 6);
  // serializer round trip
  std::string buf;
  support::BytesOutStream os(&buf);
  std::vector<std::string> vs{"a", "", "hello"};
  std::vector<int64_t> vi{1, -2, 1LL << 40};
  ffi::Array<DLDataType> ad{DLDataType{kDLFloat, 32, 1}, DLDataType{kDLInt, 8, 4}};
  ffi::Array<ffi::String> as{"x", "yz"};
  std::pair<int32_t, std::string> pr{7, "seven"};
  os.Write(vs); os.Write(vi); os.Write(ad); os.Write(as); os.Write(pr); os.Write(ffi::String("end"));
  os.WriteArray(vi.data(), vi.size());
  CHECK(buf.size() == 8 + (8 + 1) + 8 + (8 + 5) + 8 + 24 + 8 + 8 + 8 + 9 + 10 + 4 + 8 + 5 + 8 + 3 + 24);
  ffi::Bytes bytes(buf);
  support::BytesInStream is(bytes);
  std::vector<std::string> vs2; std::vector<int64_t> vi2; ffi::Array<DLDataType> ad2; ffi::Array<ffi::String> as2;
  std::pair<int32_t, std::string> pr2; ffi::String e2; int64_t arr[3];
  CHECK(is.Read(&vs2) && vs2 == vs);
  CHECK(is.Read(&vi2) && vi2 == vi);
  CHECK(is.Read(&ad2) && ad2.size() == 2 && ad2[1].lanes == 4 && ad2[0].bits == 32);
  CHECK(is.Read(&as2) && as2.size() == 2 && as2[1] == "yz");
  CHECK(is.Read(&pr2) && pr2 == pr);
  CHECK(is.Read(&e2) && e2 == "end");
  CHECK(is.ReadArray(arr, 3) && arr[2] == (1LL << 40));
  int32_t extra;
  CHECK(!is.Read(&extra));  // at the end
  std::string bad("\xff\xff\xff\xff\xff\xff\xff\x7f", 8);  // absurd length: fails, no huge allocation
  support::BytesInStream bis(bad);
  std::vector<std::string> vbad;
  CHECK(!bis.Read(&vbad));
  std::printf("checked %d tensors, %d failures\n", n, fails);
  return fails != 0;
}
"""


def test_compat_headers_match_host_tvm_encoding(runner_cache, tmp_path):
    import tvm

    from autlearn.workloads.runner_build import (
        _CXXFLAGS,
        _DEFINES,
        _LINK_FLAGS,
        COMPAT_DIR,
        _cxx,
        _run,
        runtime_library,
    )

    rng = np.random.default_rng(0)
    blobs = []
    for shape, dt in [
        ((7,), "float32"),
        ((3, 5), "int8"),
        ((), "float64"),
        ((4, 3, 2), "int64"),
        ((1,), "uint8"),
        ((2,), "uint8"),
    ]:
        t = tvm.runtime.tensor((rng.standard_normal(shape) * 50).astype(dt))
        blobs.append(json.loads(tvm.ir.save_json(t))["nodes"][0]["data"])  # host TVM's base64 tensor encoding
    (tmp_path / "b64.txt").write_text("\n".join(blobs) + "\n")
    (tmp_path / "check.cc").write_text(COMPAT_CHECK)
    rt = runtime_library("x86_64")
    _run(
        _cxx(
            "x86_64",
            *_CXXFLAGS,
            *_DEFINES,
            "-I",
            str(rt.include_dirs[0]),
            "-I",
            str(COMPAT_DIR),
            "-c",
            "check.cc",
            "-o",
            "check.o",
        ),
        "compiling the compat check",
        cwd=tmp_path,
    )
    # linked like the runner, so zig reuses the libc++ it built for the runner instead of building another
    _run(
        _cxx(
            "x86_64",
            *_LINK_FLAGS,
            "check.o",
            "-Wl,--whole-archive",
            str(rt.path),
            "-Wl,--no-whole-archive",
            "-lpthread",
            "-o",
            "check",
        ),
        "linking the compat check",
        cwd=tmp_path,
    )
    r = subprocess.run([str(tmp_path / "check"), str(tmp_path / "b64.txt")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "checked 6 tensors, 0 failures" in r.stdout, (r.stdout, r.stderr)


# --------------------------------------------------------------------------------------------- virtual phone


def test_x86_64_runner_on_virtual_phone(tiny_artifact, lab, adb_env):
    from autlearn.profiler.deploy import deploy, runner_command
    from autlearn.profiler.device import Device

    art = tiny_artifact("x86_64")
    dev = Device(lab[0].serial, client=adb_env.client())
    files = sorted(p.name for p in art.files())
    remote = deploy(dev, art.hash, art.path, files)
    dev.check(f"echo reused > {remote}/probe")
    assert deploy(dev, art.hash, art.path, files) == remote  # a complete copy is reused, not pushed again
    assert dev.shell(f"cat {remote}/probe").stdout.strip() == "reused"
    dev.check(f"rm {remote}/.complete")  # a push cut short: redone from scratch
    assert deploy(dev, art.hash, art.path, files) == remote
    assert not dev.shell(f"test -e {remote}/probe").ok and dev.shell(f"test -f {remote}/.complete").ok
    r = dev.shell(runner_command(remote, warmup=1, steps=3, threads=1), timeout=120)
    assert r.exit_code == 0, r.stderr
    out = strict_parse(r.stdout)
    check_output(out, abi="x86_64", warmup=1, steps=3, threads=1)
    np.testing.assert_allclose([s.loss for s in out.steps], host_losses(tiny_program("x86_64"), 4), rtol=1e-5)
    from autlearn.profiler.device import command

    bad = dev.shell(command(f"{remote}/runner", f"{remote}/nowhere", "--steps", 1))
    assert bad.exit_code == 2 and "cannot open" in bad.stderr


# ------------------------------------------------------------------------------------------------------- arm64

QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


@pytest.mark.skipif(QEMU is None, reason="qemu-aarch64(-static) not installed (Debian: qemu-user-static)")
def test_arm64_runner_under_qemu(tiny_artifact):
    art = tiny_artifact("arm64-v8a")
    assert (art.runner.read_bytes()[:20])[18] == 183  # ELF e_machine EM_AARCH64
    r = run(art.path, "--warmup", 1, "--steps", 3, "--threads", 2, prefix=(QEMU,))
    assert r.returncode == 0, r.stderr
    out = strict_parse(r.stdout)
    check_output(out, abi="arm64-v8a", warmup=1, steps=3, threads=2)
    # same program, other ISA: agreement up to float reassociation / FMA
    np.testing.assert_allclose(
        [s.loss for s in out.steps], host_losses(tiny_program("arm64-v8a"), 4), rtol=1e-4, atol=1e-6
    )


# ------------------------------------------------------------------------------------------------ real models

REAL = {"mobilenet": {"width": 0.25}, "lstm": {"vocab_size": 200, "hidden_size": 32, "embed_dim": 16, "batch": 4}}


@pytest.mark.slow
@pytest.mark.parametrize("abi, model", [("x86_64", "mobilenet"), ("arm64-v8a", "lstm")])  # both ABIs, both models
def test_compiled_model_runner_matches_host(runner_cache, tmp_path, abi, model):
    """autlearn.workloads.compile programs (android/gnu triples) linked into the musl runner agree with run_on_host."""
    from autlearn.workloads.compile import build_program

    if abi == "arm64-v8a" and QEMU is None:
        pytest.skip("qemu-aarch64(-static) not installed")
    program = build_program(model, "full", abi, **REAL[model])
    art = write_artifact(program, tmp_path / model)
    r = run(
        art.path, "--warmup", 1, "--steps", 3, "--threads", 2, timeout=300, prefix=(QEMU,) if abi == "arm64-v8a" else ()
    )
    assert r.returncode == 0, r.stderr
    out = strict_parse(r.stdout)
    check_output(out, abi=abi, warmup=1, steps=3, threads=2, phases=program.phases)
    host_target = program.meta["target"] if abi == "x86_64" else None  # arm64: generic host LLVM
    np.testing.assert_allclose([s.loss for s in out.steps], host_losses(program, 4, host_target), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- parallel prebuild


def test_prebuild_builds_a_plan_in_parallel_processes_once(runner_cache, tmp_path):
    """The campaign's provider builds every missing artifact of a plan in worker processes; the plan's cells are
    then served from its memo (no second build), and a cell of another device with the same ABI shares them."""
    from autlearn.engine.campaign_config import Cell
    from autlearn.pipelines.artifact_cache import ArtifactProvider

    config = (("embed_dim", 16), ("hidden_size", 32), ("seq_len", 4), ("vocab_size", 200))

    def cell(variant: str, serial: str = "a") -> Cell:
        return Cell(serial, "m", True, "lstm", config, variant, 2, "powersave", "nearest", "all", 0, 1, 1, "none")

    logs: list[str] = []
    provider = ArtifactProvider(tmp_path / "artifacts", log=logs.append, jobs=2)
    plan = [(cell("full"), "x86_64"), (cell("unoptimized"), "x86_64"), (cell("full", "b"), "x86_64")]
    provider.prebuild(plan)
    assert logs[0] == "building 2 artifacts, 2 at a time" and len([s for s in logs if s.startswith("built ")]) == 2
    refs = [provider(c, abi) for c, abi in plan]
    assert not [s for s in logs if s.startswith("building lstm")]  # nothing built again in this process
    assert refs[0] == refs[2] and refs[0].hash != refs[1].hash
    again = ArtifactProvider(tmp_path / "artifacts", log=logs.append, jobs=2)
    again.prebuild(plan)  # a new run: served from the cache
    assert len(logs) == 3 and again(*plan[1]) == refs[1]
