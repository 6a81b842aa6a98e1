"""Helpers for tests that start autlearn (or a child) and signal it."""

from __future__ import annotations

import signal


def default_signals() -> None:
    """preexec_fn: the child starts with the default SIGINT/SIGTERM dispositions a test relies on, whatever the suite
    inherited (a job started with SIGINT ignored passes that on, and Python then installs no KeyboardInterrupt
    handler)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
