"""Where autlearn keeps its state: the one place that reads AUTLEARN_HOME and the directory variables.

Every function reads the environment when called (tests and the lab point the variables at temp dirs)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def home() -> Path:
    """$AUTLEARN_HOME, else ~/.autlearn."""
    return Path(os.environ.get("AUTLEARN_HOME") or Path.home() / ".autlearn")


def home_override() -> Path | None:
    """$AUTLEARN_HOME when set, else None (callers that fall back to their own default, e.g. a lab's home)."""
    value = os.environ.get("AUTLEARN_HOME")
    return Path(value) if value else None


def cache_dir() -> Path:
    """Runner build cache: $AUTLEARN_CACHE_DIR if set (tests share one across temp homes), else home/cache."""
    explicit = os.environ.get("AUTLEARN_CACHE_DIR")
    return Path(explicit) if explicit else home() / "cache"


def artifacts_dir() -> Path:
    """Default artifact cache of campaigns: home/artifacts."""
    return home() / "artifacts"


def tuning_dir() -> Path:
    """Where `workloads tune` writes databases: $AUTLEARN_TUNING_DIR, else home/tuning."""
    explicit = os.environ.get("AUTLEARN_TUNING_DIR")
    return Path(explicit) if explicit else home() / "tuning"


def pending_dir() -> Path:
    """Unfinished captures of real Monsoon monitors: home/monsoon-pending."""
    return home() / "monsoon-pending"


def lab_dir() -> Path:
    """The virtual lab's state: home/lab."""
    return home() / "lab"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write `files` ({relative path: bytes}) under `root`, making directories as needed."""
    root = Path(root)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def replace_dir(dest: Path, files: dict[str, bytes]) -> Path:
    """Write `files` ({relative path: bytes}) as the directory `dest`, replacing what was there: written in a temp
    sibling, then renamed into place (a reader never sees half of it)."""

    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tree(tmp, files).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


@contextlib.contextmanager
def env_override(env: dict[str, str]) -> Iterator[None]:
    """This process's environment with `env` set, as it was afterwards (the functions here read it when
    called: a Ray task building with another tuning directory, a simulated host's adb port and home)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
