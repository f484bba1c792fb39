"""The failures a job reports through its exit code (README "Exit codes").

Here, not in :mod:`cdp.jobs.entry`, so that the runtime (lock, gates) can raise them without
importing the entry points above it.
"""
from __future__ import annotations


class JobFailed(RuntimeError):
    """A job ran but its outcome is a failure (a quality gate, a locked lake): exit non-zero."""
