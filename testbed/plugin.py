"""The virtual lab as an autlearn plugin (entry point `autlearn.plugins`): registers its simulated instruments."""

from __future__ import annotations


def register() -> None:
    """Called once by the instrument registry the first time production code looks something up."""
