"""Artifacts: reproducible content hash, verification on load, runner-output parsing, `autlearn workloads` CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_runner import tiny_artifact, tiny_program  # noqa: F401  (fixtures)

from autlearn.cli.main import main
from autlearn.profiler.errors import ArtifactError
from autlearn.workloads.artifact import content_hash, load_artifact, write_artifact


def test_hash_is_reproducible_and_tracks_tensor_bytes(tiny_artifact, tmp_path):
    first = tiny_artifact("x86_64")
    again = write_artifact(tiny_program("x86_64"), tmp_path / "again")
    assert again.hash == first.hash
    assert again.runner.read_bytes() == first.runner.read_bytes()  # bit-reproducible build
    assert again.manifest["build"]["created_at"]  # volatile facts exist but are outside the hash
    program = tiny_program("x86_64")
    tensors = dict(program.tensors)
    tensors["w"] = tensors["w"].copy()
    tensors["w"][0, 0] = 1e-3
    changed = write_artifact(replace(program, tensors=tensors), tmp_path / "changed")
    assert changed.hash != first.hash
    assert changed.manifest["files"]["runner"] == first.manifest["files"]["runner"]
    np.testing.assert_array_equal(changed.read_tensors()["w"], tensors["w"])


def test_manifest_contents(tiny_artifact):
    art = tiny_artifact("x86_64")
    m = art.manifest
    assert (m["abi"], m["model"], m["variant"], m["runner"]["zig_target"]) == (
        "x86_64",
        "tiny",
        "full",
        "x86_64-linux-musl",
    )
    assert set(m["tools"]) >= {"tvm", "torch", "zig", "autlearn", "runner"}
    assert [c["func"] for c in art.calls] == ["fwd_bwd", "sgd"]
    assert all(t["offset"] % 64 == 0 for t in m["tensors"])
    stored = art.read_tensors()
    for name, value in tiny_program("x86_64").tensors.items():
        assert stored[name].shape == value.shape and stored[name].dtype == value.dtype  # incl. 0-d "loss"
        np.testing.assert_array_equal(stored[name], value)


def _corrupt(art, tmp_path, case: str) -> Path:
    import shutil

    d = tmp_path / case
    shutil.copytree(art.path, d)
    if case == "missing-runner":
        (d / "runner").unlink()
    elif case == "missing-manifest":
        (d / "manifest.json").unlink()
    elif case == "flipped-byte":
        data = bytearray((d / "tensors.bin").read_bytes())
        data[70] ^= 0xFF
        (d / "tensors.bin").write_bytes(bytes(data))
    elif case == "truncated":
        data = (d / "tensors.bin").read_bytes()
        (d / "tensors.bin").write_bytes(data[:-4])
    elif case == "edited-manifest":
        m = json.loads((d / "manifest.json").read_text())
        m["calls"][1]["phase"] = "other"
        (d / "manifest.json").write_text(json.dumps(m))
    elif case == "not-json":
        (d / "manifest.json").write_text("{")
    elif case == "no-hash":
        m = json.loads((d / "manifest.json").read_text())
        del m["hash"]
        (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing-runner", "missing runner"),
        ("missing-manifest", "missing manifest.json"),
        ("flipped-byte", "tensors.bin: sha256 mismatch"),
        ("truncated", "tensors.bin: size mismatch"),
        ("edited-manifest", "hash mismatch"),
        ("not-json", "unreadable manifest"),
        ("no-hash", "'hash' missing"),
    ],
)
def test_corrupt_artifact_raises_artifact_error(tiny_artifact, tmp_path, case, words):
    d = _corrupt(tiny_artifact("x86_64"), tmp_path, case)
    with pytest.raises(ArtifactError, match=words):
        load_artifact(d)


def test_load_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        load_artifact(tmp_path / "nope")


def test_content_hash_ignores_build_section_only():
    m = {"format": 1, "calls": [], "build": {"created_at": "x"}}
    assert content_hash(m) == content_hash({**m, "build": {"created_at": "y"}, "hash": "z"})
    assert content_hash(m) != content_hash({**m, "calls": [1]})


# ----------------------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--model", "resnet", "--abi", "x86_64"], "unknown model 'resnet'"),
        (["--model", "lstm", "--variant", "tiny", "--abi", "x86_64"], "unknown variant 'tiny'"),
        (["--model", "lstm", "--abi", "mips"], "unknown abi 'mips'"),
        (["--model", "lstm", "--abi", "x86_64", "--data", "/nonexistent/data.json"], "no such file"),
        (["--model", "lstm", "--abi", "x86_64", "--set", "oops"], "expected KEY=VALUE"),
        (["--model", "lstm", "--abi", "x86_64", "--set", "bogus=1"], "unknown lstm config keys ['bogus']"),
        (["--model", "lstm", "--abi", "x86_64", "--batch", "0"], "--batch"),
        (["--abi", "x86_64"], "Missing option '--model'"),
    ],
)
def test_cli_build_bad_input_is_one_line_exit_1(capsys, argv, words):
    assert main(["workloads", "build", *argv]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("autlearn: error:")


def test_cli_list(tiny_artifact, tmp_path, capsys):
    art = tiny_artifact("x86_64")
    assert main(["workloads", "list", str(art.path.parent)]) == 0
    out = capsys.readouterr().out
    assert art.path.name in out and art.hash[:16] in out
    bad = _corrupt(art, tmp_path, "flipped-byte")
    assert main(["workloads", "list", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt" in err and "sha256 mismatch" in err
    assert main(["workloads", "list", str(tmp_path / "nowhere")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert bad.exists()


@pytest.mark.slow
def test_cli_build_real_model(runner_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "workloads",
                "build",
                "--model",
                "mobilenet",
                "--variant",
                "compressed",
                "--abi",
                "x86_64",
                "--batch",
                "2",
                "--set",
                "width=0.25",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    art = load_artifact(tmp_path / "artifacts" / "mobilenet-compressed-x86_64-batch2-width0.25")
    assert art.hash[:16] in out and art.manifest["config"]["batch"] == 2


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("AUTLEARN_COLD_BUILD_TESTS"),
    reason="a cold TVM runtime build takes 3-6 min; set AUTLEARN_COLD_BUILD_TESTS=1 to run it",
)
def test_runtime_build_is_reproducible_in_a_fresh_cache(runner_cache, tmp_path, monkeypatch):
    """Cold build (about 3 min on 2 cores) into an empty cache gives the cached library bit for bit."""
    from autlearn.workloads.runner_build import runtime_library

    warm = runtime_library("x86_64")
    monkeypatch.setenv("AUTLEARN_CACHE_DIR", str(tmp_path))
    cold = runtime_library("x86_64")
    assert not cold.cached and cold.key == warm.key
    assert cold.path.read_bytes() == warm.path.read_bytes()
    print(f"cold x86_64 runtime build: {cold.build_seconds:.0f} s")
    assert os.environ["AUTLEARN_CACHE_DIR"] == str(tmp_path)
