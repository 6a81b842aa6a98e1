"""Issue 33: what `pip install .` (not editable) installs, and that it runs. `./dev` installs in editable mode, which
hid that the wheel held only the top-level packages."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from autlearn.engine.store import load_results
from autlearn.testbed.lab import find_adb

ROOT = Path(__file__).resolve().parents[1]
TOP = ("cli", "pipelines", "reports", "engine", "workloads", "profiler", "device_scripts", "testbed")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"  # a copy: setuptools reuses an in-tree build/ and would hide a broken config
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "results", ".pytest_cache"
        ),
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (built,) = tmp_path.glob("autlearn-*.whl")
    return built


def test_the_wheel_holds_every_package_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # one top-level import package (plus the wheel's metadata), holding every folder as a real copy
    assert {n.split("/")[0] for n in names} == {"autlearn", "autlearn-0.1.0.dist-info"}
    assert not any(zipfile.ZipFile(wheel).getinfo(n).external_attr >> 28 == 0o12 for n in names)  # no symlink
    modules = [f"autlearn/{p.relative_to(ROOT)}" for top in TOP for p in (ROOT / top).rglob("*.py")]
    modules += ["autlearn/__init__.py", "autlearn/__main__.py"]
    assert not [m for m in modules if m not in names]
    # data the code opens at run time: device scripts, lab profiles, the runner's sources, the text sample
    for pattern in ("device_scripts/*.sh", "testbed/profiles/*.toml", "workloads/runner/runner.cc", "workloads/data/*"):
        assert [n for n in names if Path(n).match(f"autlearn/{pattern}")], pattern
    entry_points = zipfile.ZipFile(wheel).read("autlearn-0.1.0.dist-info/entry_points.txt").decode()
    assert "autlearn = autlearn.cli.main:main" in entry_points


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_installed_autlearn_runs_a_campaign_outside_the_repository(wheel, tmp_path, runner_cache):
    """A fresh venv gets the wheel (the dependencies come from this venv through a .pth file, the editable install
    does not: its finder is not loaded from there); from a directory outside the repository its `autlearn` starts
    a lab of its own and runs a one-cell campaign to the end."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip()
    )
    before = set(os.listdir(site))
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=600)
    added = set(os.listdir(site)) - before
    assert {n for n in added if not n.endswith(".dist-info")} == {"autlearn"}, added  # one import package
    assert (venv / "bin" / "autlearn").is_file()
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"AUTLEARN_HOME": str(tmp_path / "home"), "ANDROID_ADB_SERVER_PORT": str(_free_port())}
    env["AUTLEARN_CACHE_DIR"] = str(runner_cache)  # the TVM runtime and zig's libc, built once per machine

    def autlearn(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        cmd = [str(venv / "bin" / "autlearn"), *args]
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    where = subprocess.run(
        [py, "-c", "import autlearn; print(autlearn.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(site)), where
    (work / "one.toml").write_text(
        textwrap.dedent("""
        name = "installed"
        warmup = 1
        steps = 3
        repetitions = 1
        energy = "none"
        [[workload]]
        model = "lstm"
        variants = ["full"]
        batch = [4]
        config = {vocab_size = 200, hidden_size = 32, embed_dim = 16, seq_len = 4}
        [governors]
        intents = ["schedutil"]
        fallback = "nearest"
        """)
    )
    try:
        up = autlearn("lab", "up", "--profile", "legacy", "--no-keep-warm", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        run = autlearn("run", "one.toml", "--results", "results")
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        autlearn("lab", "down", timeout=300)
        subprocess.run([find_adb(), "kill-server"], env=env, capture_output=True, timeout=60)
    (status,) = (work / "results" / "installed" / "status").glob("*.json")
    assert json.loads(status.read_text())["status"] == "ok"
    df = load_results(work / "results" / "installed")
    assert df["cell_id"].nunique() == 1 and (~df["warmup"]).sum() == 3  # one cell of three timed steps
