"""Step commits: a pipeline step's writes become current together, or not at all.

Delta commits one table at a time; a step writes several. The lake keeps a commit log one level up,
``step_commits``, itself a Delta table written through the backend: a step (``cdp run``'s steps, or a
job run on its own) writes its tables, then :meth:`CommitLog.commit` appends one record naming the
version it wrote of each table; that record is written last. Once the lake has a commit log, readers
see each table at the version of the last record that names it (plus this process's own writes since
its last commit), never a newer version that a dead or failed step left; the first write to such a
table in a later step first restores it to its committed version (:meth:`CommitLog.reconcile`), or,
for a table no record names, replaces it. See docs/ARCHITECTURE.md "Step commits".

Also here: the commit metadata both backends read back (:func:`custom_metadata`), and the crash hook
``CDP_CRASH_AT=<step>:<before|after>:<table>`` (unset: inert), which kills the process with SIGKILL
just before or after the lake commits a write of ``<table>`` during ``<step>``: the crash tests use it
to kill runs at exact points.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from cdp.lake.errors import TableNotFound

if TYPE_CHECKING:
    from cdp.lake.backend import Backend

logger = logging.getLogger(__name__)

COMMITS_TABLE = "step_commits"
BASELINE_STEP = "baseline"  # the first record: every table that existed before the lake had a commit log
# Logs of attempts (the runner's ``runs``, the commit log itself) are always read at their latest
# version: a dead run's rows there are a record of what happened, not a result.
ALWAYS_LATEST = frozenset({COMMITS_TABLE, "runs"})
COMMITS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType()),
    T.StructField("step", T.StringType()),
    T.StructField("versions", T.MapType(T.StringType(), T.LongType())),
    T.StructField("committed_at", T.TimestampType()),
])
CRASH_ENV = "CDP_CRASH_AT"
# Per process and lake root: the tables written since the last commit (readable by this process,
# invisible to others until committed), and a counter that invalidates cached commit logs. Per
# process, not per Lake object: a job may build its own Lake on the root the runner commits.
_PENDING: dict[str, dict[str, int]] = {}
_GENERATION: dict[str, int] = {}
_STEP: list[str] = []  # the step being run in this process (innermost last), for CDP_CRASH_AT


@contextmanager
def step_scope(step: str) -> Iterator[None]:
    """Name the step this process is running (``CDP_CRASH_AT`` matches on it)."""
    _STEP.append(step)
    try:
        yield
    finally:
        _STEP.pop()


def crash_point(when: str, table: str) -> None:
    """Kill this process (and its JVM, when it leads its process group) at ``CDP_CRASH_AT``.

    Inert unless ``CDP_CRASH_AT=<step>:<before|after>:<table>`` names the current step, ``when`` and
    ``table``. SIGKILL, as a preempted node or the OOM killer would: no ``finally``, no cleanup.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    step = _STEP[-1] if _STEP else None
    if spec != f"{step}:{when}:{table}":
        return
    logger.warning("%s=%s: killing process %d", CRASH_ENV, spec, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# commitInfo fields Delta writers set themselves; any other top-level field is a commit's custom metadata
_COMMIT_INFO_FIELDS = {"timestamp", "operation", "operationParameters", "readVersion", "isolationLevel",
                       "isBlindAppend", "operationMetrics", "engineInfo", "txnId", "clientVersion", "version",
                       "userMetadata", "inCommitTimestamp", "tags", "userId", "userName", "notebook",
                       "clusterId"}


def custom_metadata(info: Mapping[str, Any]) -> dict[str, Any]:
    """A commit's custom metadata, whichever backend wrote it: delta-rs keeps it as top-level commitInfo
    fields, delta-spark as the JSON object in ``userMetadata``."""
    custom = {k: v for k, v in info.items() if k not in _COMMIT_INFO_FIELDS}
    text = info.get("userMetadata")
    if isinstance(text, str) and text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            custom.update(parsed)
    return custom


class CommitLog:
    """The step commits of the lake at ``root``: which version of each table readers see, the record a
    step's commit appends, and the undoing of what uncommitted writers left.

    Args:
        spark: the session (builds the commit records).
        root: the lake root; tables are ``<root>/<name>``.
        backend: the lake's backend (reads, writes and restores the tables).
        physical_tables: every table folder under the root, committed or not (for the baseline record).
    """

    def __init__(self, spark: SparkSession, root: str, backend: Backend,
                 physical_tables: Callable[[], list[str]], log_head: Callable[[str], int]) -> None:
        self.spark = spark
        self.root = root
        self._backend = backend
        self._physical_tables = physical_tables
        self._log_head = log_head
        self._cache: tuple[tuple[int, int], dict[str, int] | None] | None = None

    def _uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def committed(self) -> dict[str, int] | None:
        """Table -> version of the last step commit naming it; None while the lake has no commit log.

        Cached until this process commits or another process's commit lands in the log (a notebook's
        or test's Lake kept open while `cdp run` commits in another process sees the new versions)."""
        generation = (_GENERATION.get(self.root, 0), self._log_head(COMMITS_TABLE))
        if self._cache is not None and self._cache[0] == generation:
            return self._cache[1]
        uri = self._uri(COMMITS_TABLE)
        versions: dict[str, int] | None = None
        if self._backend.exists(uri):
            versions = {}
            rows = self._backend.read(uri, None).select("versions", "committed_at").collect()
            for row in sorted(rows, key=lambda r: r["committed_at"]):
                versions.update({name: int(v) for name, v in (row["versions"] or {}).items()})
        self._cache = (generation, versions)
        return versions

    def ensure(self, run_id: str) -> None:
        """Start the commit log if the lake has none: a baseline record of every table as it is."""
        if self._backend.exists(self._uri(COMMITS_TABLE)):
            return
        existing = {entry: self._backend.version(self._uri(entry)) for entry in self._physical_tables()
                    if not entry.startswith("_") and entry not in ALWAYS_LATEST}
        self._append(run_id, BASELINE_STEP, existing)
        logger.info("lake %s: commit log started (%d tables as they are)", self.root, len(existing))

    def pending(self) -> dict[str, int]:
        """Tables this process wrote since its last commit (``_``-prefixed scratch tables left out)."""
        return {name: v for name, v in _PENDING.get(self.root, {}).items() if not name.startswith("_")}

    def commit(self, step: str, run_id: str) -> dict[str, int]:
        """Make this process's writes since its last commit current, as one step: append one record
        to ``step_commits`` (written last). Returns the versions it committed (nothing to commit:
        no record)."""
        versions = self.pending()
        if versions:
            self.ensure(run_id)
            self._append(run_id, step, versions)
        _PENDING.pop(self.root, None)
        _GENERATION[self.root] = _GENERATION.get(self.root, 0) + 1
        return versions

    def abandon(self) -> dict[str, int]:
        """Forget this process's uncommitted writes (a failed step): readers stay on the committed
        versions, and the next write to those tables restores them first."""
        dropped = self.pending()
        _PENDING.pop(self.root, None)
        _GENERATION[self.root] = _GENERATION.get(self.root, 0) + 1
        if dropped:
            logger.info("lake %s: uncommitted writes abandoned: %s", self.root,
                        ", ".join(f"{n}@v{v}" for n, v in sorted(dropped.items())))
        return dropped

    def _append(self, run_id: str, step: str, versions: Mapping[str, int]) -> None:
        record = self.spark.createDataFrame(
            [(run_id, step, dict(versions), datetime.now(UTC).replace(tzinfo=None))], COMMITS_SCHEMA)
        uri = self._uri(COMMITS_TABLE)
        crash_point("before", COMMITS_TABLE)
        self._backend.write(record, uri, "append", [], {}, None, None, False, {"run_id": run_id, "step": step})
        crash_point("after", COMMITS_TABLE)
        _GENERATION[self.root] = _GENERATION.get(self.root, 0) + 1

    def visible(self, name: str) -> tuple[bool, int | None]:
        """(readable at all, version to read: None for the latest)."""
        if name.startswith("_") or name in ALWAYS_LATEST or name in _PENDING.get(self.root, {}):
            return True, None
        committed = self.committed()
        if committed is None:  # no commit log: every version is current
            return True, None
        if name in committed:
            return True, committed[name]
        return False, None

    def readable_version(self, name: str) -> int | None:
        """The version readers of ``name`` see (None: the latest); :class:`TableNotFound` when only a
        step that never committed wrote it."""
        visible, version = self.visible(name)
        if not visible:
            raise TableNotFound(f"table {name!r} in the lake at {self.root} was written only by a step that "
                                "never committed (it died or failed); the next run rewrites it")
        return version

    def reconcile(self, name: str, *, replaces_all: bool) -> bool:
        """Before this process's first write to ``name``: undo what uncommitted writers left.

        A table whose latest version is newer than its committed one is restored to the committed
        version (unless this write replaces every row anyway). Returns True when the table exists
        but no commit names it: the write must then replace it, as if it did not exist.
        """
        if name.startswith("_") or name in ALWAYS_LATEST or name in _PENDING.get(self.root, {}):
            return False
        committed = self.committed()
        uri = self._uri(name)
        if committed is None or not self._backend.exists(uri):
            return False
        if name not in committed:
            logger.warning("%s: written only by steps that never committed; replacing it", name)
            return True
        latest = self._backend.version(uri)
        if latest > committed[name] and not replaces_all:
            logger.warning("%s: versions %d-%d were written by a step that never committed; restoring "
                           "version %d", name, committed[name] + 1, latest, committed[name])
            crash_point("before", name)
            _PENDING.setdefault(self.root, {})[name] = self._backend.restore(uri, committed[name])
        return False

    def wrote(self, name: str, version: int | None) -> None:
        """Record this process's write of ``name`` (readable by it, pending until the next commit)."""
        if version is not None and name not in ALWAYS_LATEST:
            _PENDING.setdefault(self.root, {})[name] = version
        crash_point("after", name)
