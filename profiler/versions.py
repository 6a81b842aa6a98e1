"""Versions of the Python packages that shape a measurement, with one word for a package that is not installed.
autlearn.workloads.artifact adds the build toolchain (zig, runner, artifact format) for artifact manifests and results.

    tool_versions()  # {"tvm": "0.21.0", "tvm_ffi": ..., "torch": ..., "numpy": ..., "autlearn": ...}"""

from __future__ import annotations

from importlib import metadata

MISSING = "absent"  # a package not installed
LEGACY_MISSING = ("unknown",)  # what layer tables (autlearn.workloads.tables) wrote for it before
PACKAGES = (
    ("tvm", "apache-tvm"),
    ("tvm_ffi", "apache-tvm-ffi"),
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("autlearn", "autlearn"),
)  # (key, distribution), in the order artifact manifests list them


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return MISSING


def tool_versions() -> dict[str, str]:
    """Versions of PACKAGES in the running process (MISSING for one not installed)."""
    return {name: package_version(dist) for name, dist in PACKAGES}


def stored_version(value: str) -> str:
    """A version read from stored data, with the missing-package word of older data mapped to MISSING."""
    return MISSING if value in LEGACY_MISSING else value


__all__ = ["LEGACY_MISSING", "MISSING", "PACKAGES", "package_version", "stored_version", "tool_versions"]
