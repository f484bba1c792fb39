"""The failures a job reports through its exit code (README "Exit codes").

Here, not in :mod:`cdp.jobs.entry`, so that the runtime (lock, gates) can raise them without
importing the entry points above it.
"""
from __future__ import annotations


class JobFailed(RuntimeError):
    """A job ran but its outcome is a failure (a quality gate, a locked lake): exit non-zero."""


class GateFailed(JobFailed):
    """A quality gate blocked a publish: the last good version stays current (exit 1, "a step failed")."""


# Process exit codes of every `cdp` command (README "Exit codes"). 75 is sysexits' EX_TEMPFAIL: a
# scheduler may retry later.
EXIT_OK = 0
EXIT_FAILED = 1  # a step (or a quality gate) failed
EXIT_USAGE = 2  # bad configuration or usage
EXIT_LOCKED = 75  # the lake is locked by another run
