"""Issue 33: what `pip install .` (not editable) installs. `./dev` installs in editable mode, which hid that the
wheel held only the top-level packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("cli", "pipelines", "reports", "engine", "workloads", "profiler", "device_scripts", "testbed")


def test_the_wheel_holds_every_package_and_its_data(tmp_path):
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
    (wheel,) = tmp_path.glob("autlearn-*.whl")
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
