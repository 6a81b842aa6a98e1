"""Where autlearn keeps its state: the one place that reads AUTLEARN_HOME and the directory variables.

Every function reads the environment when called (tests and the lab point the variables at temp dirs)."""

from __future__ import annotations

import os
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


def replace_dir(dest: Path, files: dict[str, bytes]) -> Path:
    """Write `files` ({name: bytes}) as the directory `dest`, replacing what was there: written in a temp sibling,
    then renamed into place (a reader never sees half of it)."""
    import shutil

    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
