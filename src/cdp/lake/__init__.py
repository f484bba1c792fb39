"""Read and write lake tables by name, as real Delta tables, with or without the delta-spark jars.

Two backends, chosen when the :class:`Lake` is built:

* ``delta-spark`` when ``io.delta.sql.DeltaSparkSessionExtension`` is loaded in the session (a
  cluster, or a laptop started with ``--packages io.delta:...``): native ``format("delta")``.
* ``embedded`` otherwise: Spark writes Parquet files straight into a fresh sub-folder of the table,
  and the driver commits them as one Delta transaction with the ``deltalake`` package (delta-rs),
  with per-file statistics read from the Parquet footers. Reads list the active files from the Delta
  log and hand them to Spark's Parquet reader, so reading stays distributed.

Both write the same open Delta protocol, so a table written by one is readable by the other, by
``deltalake`` and by DuckDB. A failed write commits nothing: readers keep seeing the last version.

Delta has no multi-table transactions, so the lake adds one level above the tables: **step commits**.
A step (``cdp run``'s steps, or a job run on its own) writes its tables, then :meth:`Lake.commit`
appends one record to ``step_commits`` naming the version it wrote of each table; that record is
written last. Once the lake has a commit log, readers see each table at the version of the last
record that names it (plus this process's own writes since its last commit), never a newer version
that a dead or failed step left; the first write to such a table in a later step first restores it
to its committed version (or, for a table no record names, replaces it). See docs/ARCHITECTURE.md.

``CDP_CRASH_AT=<step>:<before|after>:<table>`` (unset: inert) kills the process with SIGKILL just
before or after the lake commits a write of ``<table>`` during ``<step>``: the crash tests use it to
kill runs at exact points.
"""
from __future__ import annotations

import errno
import functools
import inspect
import json
import logging
import os
import posixpath
import re
import signal
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.connect import default_parallelism, is_remote
from cdp.lake.paths import delta_rs_uri, normalize_root, spark_path
from cdp.lake.storage import ObjectStore, filesystem, is_object_store

logger = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite"]
# a function from an iterator of Arrow record batches to another (as for DataFrame.mapInArrow)
ArrowBatches = Callable[[Iterator[Any]], Iterator[Any]]
BackendName = Literal["auto", "delta-spark", "embedded"]

# Session setting that picks the backend for every Lake built with backend="auto" (profiles, tests).
BACKEND_SETTING = "spark.cdp.lake.backend"
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Source rows above this are merged by rewriting the table in Spark rather than shipping them to the
# driver as Arrow for delta-rs's merge (which holds its source in driver memory).
MERGE_ON_DRIVER_MAX_ROWS = 2_000_000
# Strings longer than this get no min/max statistics (Delta readers expect them to be exact here).
_MAX_STATS_STRING = 32
_UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping"}

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
# invisible to others until committed), and a counter that invalidates cached commit logs.
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


class LakeError(RuntimeError):
    """Base class for lake errors."""


class TableNotFound(LakeError):
    """The table does not exist in the lake."""


class SchemaMismatch(LakeError):
    """The data does not fit the table's schema and schema evolution was not asked for."""


class UnsupportedTable(LakeError):
    """The table uses Delta features the embedded backend cannot read (deletion vectors, column mapping)."""


class DiskFull(LakeError):
    """The lake's storage ran out of space while writing a table."""


class CorruptTable(LakeError):
    """The table's Delta log cannot be read (a truncated or damaged commit or checkpoint file)."""


_NO_SPACE = "No space left on device"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _translate(exc: Exception, name: str, uri: str) -> LakeError | None:
    """A one-line error naming the table, for failures a person can act on; None for the others."""
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or _NO_SPACE in str(exc):
        return DiskFull(f"table {name}: disk full while writing {uri} ({_NO_SPACE}); free space or move "
                        "the lake, then run again (the table keeps its last committed version)")
    try:
        from deltalake.exceptions import DeltaError
    except ImportError:  # pragma: no cover - deltalake is a dependency
        DeltaError = ()  # noqa: N806
    if isinstance(exc, (DeltaError, json.JSONDecodeError)) or "DELTA_LOG_FILE_NOT_FOUND" in str(exc) \
            or "DELTA_STATE_RECOVER_ERROR" in str(exc):
        return CorruptTable(f"table {name}: its Delta log at {uri}/_delta_log cannot be read "
                            f"({_first_line(exc)}); restore the damaged log file (or the table) from a backup")
    return None


def _about_table(method: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise disk-full and unreadable-log failures of a Lake method as one-line errors naming the table."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self: Lake, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except LakeError:
            raise
        except Exception as exc:
            name = str(signature.bind(self, *args, **kwargs).arguments.get("name", "?"))
            translated = _translate(exc, name, f"{self.root}/{name}")
            if translated is None:
                raise
            raise translated from exc
    return call


@dataclass(frozen=True)
class MergeResult:
    inserted: int
    updated: int
    deleted: int


DELTA_CONNECT_PLUGIN = "org.apache.spark.sql.connect.delta.DeltaRelationPlugin"


def delta_spark_available(spark: SparkSession) -> bool:
    """True when the delta-spark extension is configured and its JVM classes are loadable.

    Through Spark Connect the client cannot probe the server's classpath: there the server must be
    configured with the extension and Delta's Connect plugin (``spark.connect.extensions.relation.classes``
    holding ``DeltaRelationPlugin``), which delta-spark's Python ``DeltaTable`` needs over Connect.
    """
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "io.delta.sql.DeltaSparkSessionExtension" not in extensions:
        return False
    if is_remote(spark):
        plugins = spark.conf.get("spark.connect.extensions.relation.classes", "") or ""
        if DELTA_CONNECT_PLUGIN not in plugins:
            logger.warning("Spark Connect server has the Delta extension but not %s; using the embedded backend",
                           DELTA_CONNECT_PLUGIN)
            return False
        return True
    try:
        jvm = spark.sparkContext._jvm  # noqa: SLF001 - only to probe the classpath, never to log
        # jars on spark.jars are loaded by the context class loader, not by py4j's own
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable", False, loader)
        return True
    except Exception:  # noqa: BLE001 - any failure means the classes are not usable
        return False


# the local-or-remote rules live in cdp.lake.paths; these names are what this module has always used
_to_local_or_uri = normalize_root
_spark_path = spark_path
_delta_rs_uri = delta_rs_uri


def session_backend(spark: SparkSession) -> str:
    """The backend this session asks for in ``spark.cdp.lake.backend`` (``auto`` when unset).

    A profile (or a test) sets it to keep the embedded backend in a session that has the delta-spark
    jars, or to insist on delta-spark; ``Lake(..., backend=...)`` given explicitly wins over it.
    """
    return spark.conf.get(BACKEND_SETTING, "auto") or "auto"


def _hadoop_uri(uri: str) -> str:
    """A data file URI as Spark reads it: local paths as file://, delta-rs's s3:// as Hadoop's s3a://."""
    if uri.startswith("/"):
        return _spark_path(uri)
    return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri


def _as_nullable(schema: T.StructType) -> T.StructType:
    """Delta tables written from DataFrames are nullable, as delta-spark makes them."""
    return T.StructType([T.StructField(f.name, _nullable_type(f.dataType), True, f.metadata)
                         for f in schema.fields])


def _nullable_type(data_type: T.DataType) -> T.DataType:
    if isinstance(data_type, T.StructType):
        return _as_nullable(data_type)
    if isinstance(data_type, T.ArrayType):
        return T.ArrayType(_nullable_type(data_type.elementType), True)
    if isinstance(data_type, T.MapType):
        return T.MapType(data_type.keyType, _nullable_type(data_type.valueType), True)
    return data_type


def _sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


def replace_where_sql(replace_where: Mapping[str, Any]) -> str:
    """``{"as_of": "2024-01-01", "source": ["a", "b"]}`` -> a SQL predicate."""
    clauses = []
    for column, value in replace_where.items():
        if isinstance(value, (list, tuple, set)):
            values = ", ".join(_sql_literal(v) for v in value)
            clauses.append(f"`{column}` IN ({values})")
        elif value is None:
            clauses.append(f"`{column}` IS NULL")
        else:
            clauses.append(f"`{column}` = {_sql_literal(value)}")
    return " AND ".join(clauses)


class Lake:
    """Tables by name under one root, on the best Delta backend this session has.

    Args:
        spark: the active session.
        root: lake root (local path or URI); each table is the folder ``<root>/<name>``.
        backend: ``auto`` (default) follows the session's ``spark.cdp.lake.backend`` when set, else
            picks delta-spark when its classes are loaded, else embedded; ``delta-spark`` or
            ``embedded`` choose explicitly (embedded works in any session, also one with the jars).
        storage_options: passed to delta-rs for object stores (the embedded backend only).
        store: object-store settings (default: the session's ``spark.hadoop.fs.s3a.*`` and the
            AWS environment, see :mod:`cdp.lake.storage`); ``storage_options`` default to its mapping.
    """

    def __init__(self, spark: SparkSession, root: str, backend: BackendName = "auto",
                 storage_options: dict[str, str] | None = None, store: ObjectStore | None = None) -> None:
        self.spark = spark
        self.root = _to_local_or_uri(root)
        self.store = store if store is not None else (
            ObjectStore.for_session(spark) if is_object_store(self.root) else ObjectStore())
        if storage_options is None and is_object_store(self.root):
            storage_options = self.store.delta_rs()
        self.storage_options = dict(storage_options or {})
        if backend == "auto":
            backend = session_backend(spark)
        if backend not in ("auto", "delta-spark", "embedded"):
            raise LakeError(f"unknown lake backend {backend!r}: use auto, delta-spark or embedded")
        if backend == "auto":
            backend = "delta-spark" if delta_spark_available(spark) else "embedded"
        if backend == "delta-spark" and not delta_spark_available(spark):
            raise LakeError("backend 'delta-spark' asked for, but io.delta.sql.DeltaSparkSessionExtension "
                            "is not loaded in this session (fetch the jars with `cdp jars fetch`, or start "
                            "Spark with --jars/--packages io.delta:delta-spark_2.13:<version>)")
        self.backend: str = backend
        self._impl: _Backend = (_DeltaSparkBackend(spark) if backend == "delta-spark"
                                else _EmbeddedBackend(spark, self.storage_options, self.store))
        if self.root.startswith("/"):
            os.makedirs(self.root, exist_ok=True)
        logger.debug("lake at %s on the %s backend", self.root, self.backend)

    # -- naming -------------------------------------------------------------------------------
    def uri(self, name: str) -> str:
        if not _TABLE_NAME.match(name):
            raise LakeError(f"invalid table name {name!r}: use letters, digits and underscores")
        return f"{self.root}/{name}"

    @_about_table
    def exists(self, name: str) -> bool:
        """True when the table exists and a committed step (or this process) wrote it."""
        return self._impl.exists(self.uri(name)) and self._visible(name)[0]

    def tables(self) -> list[str]:
        """Names of the Delta tables directly under the root (local folders and object stores), committed
        ones only."""
        return [name for name in self._physical_tables() if self._visible(name)[0]]

    def _physical_tables(self) -> list[str]:
        """Every folder under the root that holds a Delta log, committed or not."""
        if self.root.startswith("/"):
            if not os.path.isdir(self.root):
                return []
            return sorted(entry for entry in os.listdir(self.root)
                          if os.path.isdir(os.path.join(self.root, entry, "_delta_log")))
        from pyarrow import fs as pafs

        store, base = filesystem(self.root, self.store)
        children = store.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        names = [posixpath.basename(info.path) for info in children if info.type == pafs.FileType.Directory]
        return sorted(name for name in names if _TABLE_NAME.match(name)
                      and store.get_file_info(f"{base}/{name}/_delta_log").type == pafs.FileType.Directory)

    # -- reads --------------------------------------------------------------------------------
    @_about_table
    def read(self, name: str, version: int | None = None) -> DataFrame:
        """The table as of ``version`` (default: the committed version). Raises :class:`TableNotFound`."""
        uri = self.uri(name)
        if not self._impl.exists(uri):
            raise TableNotFound(f"table {name!r} does not exist in the lake at {self.root}")
        if version is None:
            version = self._readable_version(name)
        return self._impl.read(uri, version)

    @_about_table
    def version(self, name: str) -> int:
        """The committed version (this process's own latest write, if any)."""
        uri = self._existing(name)
        visible = self._readable_version(name)
        return visible if visible is not None else self._impl.version(uri)

    @_about_table
    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits newest first, up to the committed version: version, timestamp, operation and the
        custom metadata of each."""
        uri = self._existing(name)
        visible = self._readable_version(name)
        if visible is None:
            return self._impl.history(uri, limit)
        entries = [e for e in self._impl.history(uri, None) if int(e["version"]) <= visible]
        return entries[:limit] if limit else entries

    @_about_table
    def app_version(self, name: str, app_id: str) -> int | None:
        """The last ``app_version`` committed for ``app_id`` (Delta app transactions), if any."""
        uri = self.uri(name)
        if not self._impl.exists(uri):
            return None
        visible, version = self._visible(name)
        if not visible:
            return None
        from deltalake import DeltaTable

        return DeltaTable(_delta_rs_uri(uri), version=version,
                          storage_options=self.storage_options or None).transaction_version(app_id)

    # -- step commits -------------------------------------------------------------------------
    def committed(self) -> dict[str, int] | None:
        """Table -> version of the last step commit naming it; None while the lake has no commit log."""
        generation = _GENERATION.get(self.root, 0)
        if getattr(self, "_committed_cache", None) is not None and self._committed_cache[0] == generation:
            return self._committed_cache[1]
        uri = self.uri(COMMITS_TABLE)
        versions: dict[str, int] | None = None
        if self._impl.exists(uri):
            versions = {}
            rows = self._impl.read(uri, None).select("versions", "committed_at").collect()
            for row in sorted(rows, key=lambda r: r["committed_at"]):
                versions.update({name: int(v) for name, v in (row["versions"] or {}).items()})
        self._committed_cache = (generation, versions)
        return versions

    def ensure_commit_log(self, run_id: str) -> None:
        """Start the commit log if the lake has none: a baseline record of every table as it is."""
        if self._impl.exists(self.uri(COMMITS_TABLE)):
            return
        existing = {entry: self._impl.version(self.uri(entry)) for entry in self._physical_tables()
                    if not entry.startswith("_") and entry not in ALWAYS_LATEST}
        self._append_commit(run_id, BASELINE_STEP, existing)
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
            self.ensure_commit_log(run_id)
            self._append_commit(run_id, step, versions)
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

    def _append_commit(self, run_id: str, step: str, versions: Mapping[str, int]) -> None:
        record = self.spark.createDataFrame(
            [(run_id, step, dict(versions), datetime.now(UTC).replace(tzinfo=None))], COMMITS_SCHEMA)
        uri = self.uri(COMMITS_TABLE)
        crash_point("before", COMMITS_TABLE)
        self._impl.write(record, uri, "append", [], {}, None, None, False, {"run_id": run_id, "step": step})
        crash_point("after", COMMITS_TABLE)
        _GENERATION[self.root] = _GENERATION.get(self.root, 0) + 1

    def _visible(self, name: str) -> tuple[bool, int | None]:
        """(readable at all, version to read: None for the latest)."""
        if name.startswith("_") or name in ALWAYS_LATEST or name in _PENDING.get(self.root, {}):
            return True, None
        committed = self.committed()
        if committed is None:  # no commit log: every version is current
            return True, None
        if name in committed:
            return True, committed[name]
        return False, None

    def _readable_version(self, name: str) -> int | None:
        visible, version = self._visible(name)
        if not visible:
            raise TableNotFound(f"table {name!r} in the lake at {self.root} was written only by a step that "
                                "never committed (it died or failed); the next run rewrites it")
        return version

    def _reconcile(self, name: str, *, replaces_all: bool) -> bool:
        """Before this process's first write to ``name``: undo what uncommitted writers left.

        A table whose latest version is newer than its committed one is restored to the committed
        version (unless this write replaces every row anyway). Returns True when the table exists
        but no commit names it: the write must then replace it, as if it did not exist.
        """
        if name.startswith("_") or name in ALWAYS_LATEST or name in _PENDING.get(self.root, {}):
            return False
        committed = self.committed()
        uri = self.uri(name)
        if committed is None or not self._impl.exists(uri):
            return False
        if name not in committed:
            logger.warning("%s: written only by steps that never committed; replacing it", name)
            return True
        latest = self._impl.version(uri)
        if latest > committed[name] and not replaces_all:
            logger.warning("%s: versions %d-%d were written by a step that never committed; restoring "
                           "version %d", name, committed[name] + 1, latest, committed[name])
            crash_point("before", name)
            _PENDING.setdefault(self.root, {})[name] = self._impl.restore(uri, committed[name])
        return False

    def _wrote(self, name: str, version: int | None) -> None:
        if version is not None and name not in ALWAYS_LATEST:
            _PENDING.setdefault(self.root, {})[name] = version
        crash_point("after", name)

    # -- writes -------------------------------------------------------------------------------
    @_about_table
    def write(self, df: DataFrame, name: str, mode: WriteMode = "append", *,
              partition_by: Sequence[str] | None = None,
              replace_where: Mapping[str, Any] | None = None,
              app_id: str | None = None, app_version: int | None = None,
              evolve_schema: bool = False,
              metadata: Mapping[str, Any] | None = None) -> int | None:
        """Write ``df`` as one commit. Returns the new version, or None when skipped as a re-run.

        Args:
            mode: ``append`` or ``overwrite``.
            partition_by: partition columns when the table is created (must match later).
            replace_where: with ``overwrite``, replace only the partitions with these values.
            app_id, app_version: idempotency key; when the table already holds a commit for
                ``app_id`` at ``app_version`` or later, nothing is written.
            evolve_schema: on append, add new columns to the table instead of refusing.
            metadata: custom commit metadata (run id, job, row counts) kept in the history.

        On the embedded backend, a DataFrame of ``ARROW_WRITE_MIN_COLUMNS`` columns or more (the
        feature snapshot, the tags) has its tasks write Parquet with pyarrow from Arrow batches, in
        Spark's ``column=value`` folders when partitioned (by strings, dates, integers or booleans);
        the files and the commit are those Spark's writer would make.
        """
        if mode not in ("append", "overwrite"):
            raise LakeError(f"unknown write mode {mode!r}: use 'append' or 'overwrite'")
        if replace_where and mode != "overwrite":
            raise LakeError("replace_where is only meaningful with mode='overwrite'")
        if (app_id is None) != (app_version is None):
            raise LakeError("app_id and app_version go together")
        uri = self.uri(name)
        if app_id is not None:
            done = self.app_version(name, app_id)
            if done is not None and done >= int(app_version):  # type: ignore[arg-type]
                logger.info("%s: %s@%s already committed, skipping write", name, app_id, app_version)
                return None
        if self._reconcile(name, replaces_all=mode == "overwrite" and not replace_where):
            mode, replace_where = "overwrite", None  # nothing of it was ever committed: replace it whole
        crash_point("before", name)
        version = self._impl.write(df, uri, mode, list(partition_by or []), dict(replace_where or {}),
                                   app_id, app_version, evolve_schema, dict(metadata or {}))
        self._wrote(name, version)
        return version

    @_about_table
    def copy_overwrite(self, source: str, name: str, *, metadata: Mapping[str, Any] | None = None) -> int:
        """Replace table ``name`` with the current contents of table ``source``: one overwrite commit,
        the same as ``write(read(source), name, mode="overwrite")``.

        The embedded backend copies the data files into ``name`` (no decode and re-encode) when
        neither table is partitioned; otherwise, and on delta-spark, the rows are read and written.
        Used to publish a staged table once its gates pass. Returns the new version of ``name``.
        """
        source_uri = self._existing(source)
        self._reconcile(name, replaces_all=True)
        crash_point("before", name)
        version = self._impl.copy_overwrite(source_uri, self.uri(name), dict(metadata or {}))
        self._wrote(name, version)
        return version

    @_about_table
    def write_arrow(self, source: DataFrame, name: str, batches: ArrowBatches, schema: T.StructType,
                    mode: WriteMode = "append", *, metadata: Mapping[str, Any] | None = None) -> int:
        """Write the rows of ``source.mapInArrow(batches, schema)`` as one commit of the unpartitioned
        table ``name``; returns the new version.

        The embedded backend has each task write the Arrow batches it makes straight to a Parquet file
        with pyarrow, and commits exactly the files that the tasks report (a failed or retried
        attempt's file is never committed). That skips turning every row into a Spark row and back:
        for a function that makes many rows of few (tags_long, 108M rows of 1.4M), a fifth of the
        time of Spark's writer. delta-spark writes ``source.mapInArrow(batches, schema)`` itself.
        """
        if mode not in ("append", "overwrite"):
            raise LakeError(f"unknown write mode {mode!r}: use 'append' or 'overwrite'")
        if self._reconcile(name, replaces_all=mode == "overwrite"):
            mode = "overwrite"
        crash_point("before", name)
        version = self._impl.write_arrow(source, self.uri(name), batches, schema, mode, dict(metadata or {}))
        self._wrote(name, version)
        return version

    @_about_table
    def arrow_scan(self, name: str, columns: Sequence[str], version: int | None = None) -> ArrowScan:
        """The table's ``columns`` as Arrow record batches inside Spark tasks: see :class:`ArrowScan`."""
        uri = self._existing(name)
        return self._impl.arrow_scan(uri, tuple(columns), self._readable_version(name) if version is None else version)

    @_about_table
    def merge(self, df: DataFrame, name: str, keys: Sequence[str], *, delete_unmatched: bool = False,
              metadata: Mapping[str, Any] | None = None) -> MergeResult:
        """Upsert ``df`` into the table on ``keys``; creates the table when it does not exist.

        With ``delete_unmatched``, target rows whose keys are not in ``df`` are deleted too.
        """
        if not keys:
            raise LakeError("merge needs at least one key column")
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise LakeError(f"merge into {name!r}: key columns {missing} are not in the source")
        uri = self.uri(name)
        absent = self._reconcile(name, replaces_all=False)
        crash_point("before", name)
        if absent or not self._impl.exists(uri):
            version = self._impl.write(df, uri, "overwrite" if absent else "append", [], {}, None, None, False,
                                       dict(metadata or {}))
            self._wrote(name, version)
            inserted = df.count()
            return MergeResult(inserted=inserted, updated=0, deleted=0)
        result = self._impl.merge(df, uri, list(keys), delete_unmatched, dict(metadata or {}))
        self._wrote(name, self._impl.version(uri))
        return result

    @_about_table
    def delete(self, name: str, condition: str, *, metadata: Mapping[str, Any] | None = None) -> int:
        """Delete the rows matching a SQL predicate over the table's columns; returns how many."""
        uri = self._existing(name)
        self._reconcile(name, replaces_all=False)
        crash_point("before", name)
        deleted = self._impl.delete(uri, condition, dict(metadata or {}))
        self._wrote(name, self._impl.version(uri))
        return deleted

    @_about_table
    def vacuum(self, name: str, retention_hours: int = 0) -> list[str]:
        """Remove files no longer referenced by the last ``retention_hours`` of versions.

        With 0, older versions can no longer be read: use it to make erasure final.
        """
        return self._impl.vacuum(self._existing(name), retention_hours)

    @_about_table
    def erase(self, name: str, keys: Sequence[DataFrame], *, metadata: Mapping[str, Any] | None = None) -> int:
        """Delete the rows that match any of ``keys``, matched on hashes so no value reaches the log.

        Each frame of ``keys`` names table columns and holds, per row, the lower-case hex SHA-256 of
        those columns' values cast to string (Spark's ``sha2(CAST(col AS STRING), 256)``): a table row
        is deleted when every column's hash equals one row of one frame (nulls never match). The keys
        travel as data, never as a predicate: the commit records column names and the operation,
        and statistics of the rewritten files only describe the rows that stay. The embedded backend
        rewrites the affected partitions (the whole table when unpartitioned); delta-spark merges
        (``whenMatchedDelete``), rewriting the affected files. Returns the number of rows deleted.

        What the table's older commits and files still hold is removed by :meth:`expire_history`.
        """
        for frame in keys:
            missing = [c for c in frame.columns if c not in self.read(name).columns]
            if missing or not frame.columns:
                raise LakeError(f"erase from {name!r}: key columns {missing or '(none)'} are not table columns")
        if not keys:
            return 0
        return self._impl.erase(self._existing(name), list(keys), dict(metadata or {}))

    @_about_table
    def matching_files(self, name: str, keys: Sequence[DataFrame]) -> dict[str, int]:
        """The data files of the current version holding rows that :meth:`erase` with ``keys`` would
        delete, with how many each (paths as Spark reads them); nothing is written."""
        if not keys:
            return {}
        flagged = _flag_erased(self.read(name).withColumn("_cdp_file", F.input_file_name()), keys)
        rows = flagged.filter(F.col(_ERASE_HIT)).groupBy("_cdp_file").count().collect()
        return {row["_cdp_file"]: int(row["count"]) for row in rows}

    @_about_table
    def expire_history(self, name: str) -> None:
        """Keep only the current version: vacuum every unreferenced data file, write a checkpoint and
        remove the log entries before it.

        Older commits can hold values the current version no longer has (a delete's predicate,
        per-file min/max statistics of removed files); after this neither old files nor old log
        entries remain, so time travel before now is gone. Both backends go through delta-rs for
        the checkpoint and the log clean-up (``create_checkpoint``, ``cleanup_metadata`` with a log
        retention of zero for that one call; the table's retention setting is restored after).
        """
        uri = self._existing(name)
        self._impl.vacuum(uri, 0)
        _expire_log(uri, self.storage_options)  # an object store's settings on either backend
        # The versions a step commit names before this are gone with their log entries: the caller's
        # step commit (`cdp forget` is one) must name the version readers can still read.
        self._wrote(name, self._impl.version(uri))

    def _existing(self, name: str) -> str:
        uri = self.uri(name)
        if not self._impl.exists(uri) or not self._visible(name)[0]:
            raise TableNotFound(f"table {name!r} does not exist in the lake at {self.root}")
        return uri


class _Backend:
    def exists(self, uri: str) -> bool: ...
    def read(self, uri: str, version: int | None) -> DataFrame: ...
    def version(self, uri: str) -> int: ...
    def history(self, uri: str, limit: int | None) -> list[dict[str, Any]]: ...
    def write(self, df: DataFrame, uri: str, mode: str, partition_by: list[str],
              replace_where: dict[str, Any], app_id: str | None, app_version: int | None,
              evolve_schema: bool, metadata: dict[str, Any]) -> int | None: ...
    def merge(self, df: DataFrame, uri: str, keys: list[str], delete_unmatched: bool,
              metadata: dict[str, Any]) -> MergeResult: ...
    def delete(self, uri: str, condition: str, metadata: dict[str, Any]) -> int: ...
    def vacuum(self, uri: str, retention_hours: int) -> list[str]: ...
    def restore(self, uri: str, version: int) -> int: ...
    def erase(self, uri: str, keys: list[DataFrame], metadata: dict[str, Any]) -> int: ...

    def write_arrow(self, source: DataFrame, uri: str, batches: ArrowBatches, schema: T.StructType, mode: str,
                    metadata: dict[str, Any]) -> int:
        """Write the rows of ``source.mapInArrow`` through :meth:`write` (backends may do better)."""
        version = self.write(source.mapInArrow(batches, schema), uri, mode, [], {}, None, None, False, metadata)
        assert version is not None  # only a write with an app id is ever skipped
        return version

    def arrow_scan(self, uri: str, columns: tuple[str, ...], version: int | None) -> ArrowScan:
        """Spark reads the table (backends may do better)."""
        frame = self.read(uri, version)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise SchemaMismatch(f"{uri}: no columns {missing} in the table")
        return ArrowScan(frame.select(*[F.col(_quoted(c)) for c in columns]), columns)

    def copy_overwrite(self, source_uri: str, uri: str, metadata: dict[str, Any]) -> int:
        """Read the source's rows and overwrite the table with them (backends may do better)."""
        version = self.write(self.read(source_uri, None), uri, "overwrite", [], {}, None, None, False, metadata)
        assert version is not None  # only a write with an app id is ever skipped
        return version


# commitInfo fields Delta writers set themselves; any other top-level field is a commit's custom metadata
_COMMIT_INFO_FIELDS = {"timestamp", "operation", "operationParameters", "readVersion", "isolationLevel",
                       "isBlindAppend", "operationMetrics", "engineInfo", "txnId", "clientVersion", "version",
                       "userMetadata", "inCommitTimestamp", "tags", "userId", "userName", "notebook",
                       "clusterId"}


def _custom_metadata(info: Mapping[str, Any]) -> dict[str, Any]:
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


def _refuse_rows_outside(df: DataFrame, replace_where: Mapping[str, Any], uri: str) -> None:
    """Raise when ``df`` holds a row outside the partitions ``replace_where`` names (nothing is written)."""
    for column, value in replace_where.items():
        allowed = list(value) if isinstance(value, (list, tuple, set)) else [value]
        stray = df.filter(~F.col(_quoted(column)).isin(allowed) | F.col(_quoted(column)).isNull()) \
            if None not in allowed else df.filter(~F.col(_quoted(column)).isin(allowed))
        if stray.limit(1).count():
            raise LakeError(f"{uri}: data holds rows outside replace_where {column}={value!r}")


# characters delta-spark refuses in column names of tables without column mapping
_DELTA_SPARK_INVALID_NAME = re.compile(r"[ ,;{}()\n\t=]")


def _check_schema_compatible(table_schema: T.StructType, df_schema: T.StructType, uri: str,
                             evolve_schema: bool) -> list[T.StructField]:
    """Return the new columns ``df`` brings; refuse type changes, and new columns unless evolving."""
    table_fields = {f.name.lower(): f for f in table_schema.fields}
    new_fields: list[T.StructField] = []
    for field in df_schema.fields:
        existing = table_fields.get(field.name.lower())
        if existing is None:
            new_fields.append(field)
        elif _nullable_type(existing.dataType) != _nullable_type(field.dataType):
            raise SchemaMismatch(
                f"{uri}: column {field.name!r} is {existing.dataType.simpleString()} in the table but "
                f"{field.dataType.simpleString()} in the data; cast it, or overwrite the table")
    if new_fields and not evolve_schema:
        names = [f.name for f in new_fields]
        raise SchemaMismatch(
            f"{uri}: the data has columns {names} that the table does not; pass evolve_schema=True "
            "to add them, or select only the table's columns")
    return new_fields


_ERASE_HIT = "_cdp_erase_hit"
# Delta's default log retention, set back after a one-off expiry when the table had no setting
_DEFAULT_LOG_RETENTION = "interval 30 days"


def _flag_erased(frame: DataFrame, keys: Sequence[DataFrame]) -> DataFrame:
    """``frame`` plus a boolean ``_cdp_erase_hit``: the row's hashed columns equal a row of some key frame."""
    hit = F.lit(False)
    for index, key in enumerate(keys):
        names = {column: f"_cdp_k{index}_{position}" for position, column in enumerate(key.columns)}
        marker = f"_cdp_m{index}"
        hashed = (key.select(*[F.lower(F.col(_quoted(c))).alias(alias) for c, alias in names.items()])
                  .distinct().withColumn(marker, F.lit(True)))
        condition = None
        for column, alias in names.items():
            equal = F.sha2(frame[_quoted(column)].cast("string"), 256) == hashed[alias]
            condition = equal if condition is None else condition & equal
        frame = frame.join(F.broadcast(hashed), on=condition, how="left").drop(*names.values())
        hit = hit | F.coalesce(F.col(marker), F.lit(False))
    markers = [f"_cdp_m{index}" for index in range(len(keys))]
    return frame.withColumn(_ERASE_HIT, hit).drop(*markers)


def _expire_log(uri: str, storage_options: dict[str, str]) -> None:
    """Checkpoint the table and delete every log entry before the checkpoint (delta-rs)."""
    from deltalake import DeltaTable

    table = DeltaTable(_delta_rs_uri(uri), storage_options=storage_options or None)
    before = (table.metadata().configuration or {}).get("delta.logRetentionDuration")
    table.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    table = DeltaTable(_delta_rs_uri(uri), storage_options=storage_options or None)
    table.create_checkpoint()
    table.cleanup_metadata()
    table.alter.set_table_properties({"delta.logRetentionDuration": before or _DEFAULT_LOG_RETENTION})
    logger.info("%s: log expired up to version %d", uri, table.version())


class _DeltaSparkBackend(_Backend):
    """Native delta-spark: used wherever the jars are on the classpath."""

    def __init__(self, spark: SparkSession) -> None:
        from delta.tables import DeltaTable

        self.spark = spark
        self.DeltaTable = DeltaTable

    def exists(self, uri: str) -> bool:
        return bool(self.DeltaTable.isDeltaTable(self.spark, _spark_path(uri)))

    def read(self, uri: str, version: int | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(_spark_path(uri))

    def version(self, uri: str) -> int:
        return int(self.DeltaTable.forPath(self.spark, _spark_path(uri)).history(1).collect()[0]["version"])

    def history(self, uri: str, limit: int | None) -> list[dict[str, Any]]:
        table = self.DeltaTable.forPath(self.spark, _spark_path(uri))
        rows = (table.history(limit) if limit else table.history()).collect()
        # commits made by the embedded backend keep their metadata as commitInfo fields, which Spark's
        # history does not show: read them from the log with deltalake
        from deltalake import DeltaTable as LogTable

        try:
            custom = {info.get("version"): _custom_metadata(info)
                      for info in LogTable(_delta_rs_uri(uri)).history(limit)}
        except Exception:  # noqa: BLE001 - a store delta-rs cannot open here: Spark's userMetadata only
            logger.debug("%s: commit metadata from userMetadata only", uri)
            custom = {}
        entries = []
        for row in rows:
            entry = {"version": row["version"], "timestamp": row["timestamp"],
                     "operation": row["operation"],
                     "operationMetrics": dict(row["operationMetrics"] or {})}
            entry.update(_custom_metadata({"userMetadata": row["userMetadata"]}))
            entry.update({k: v for k, v in custom.get(row["version"], {}).items() if k not in entry})
            entries.append(entry)
        return entries

    def write(self, df, uri, mode, partition_by, replace_where, app_id, app_version, evolve_schema,
              metadata):
        invalid = [c for c in df.columns if _DELTA_SPARK_INVALID_NAME.search(c)]
        if invalid:
            raise SchemaMismatch(f"{uri}: column names {invalid} hold characters that delta-spark refuses "
                                 "without column mapping (space , ; {{ }} ( ) newline tab =); rename them")
        if replace_where:
            # the same message as the embedded backend, before Spark starts writing
            _refuse_rows_outside(df, replace_where, uri)
        if self.exists(uri) and mode == "append":
            table_schema = self.read(uri, None).schema
            _check_schema_compatible(table_schema, df.schema, uri, evolve_schema)
        writer = df.write.format("delta").mode(mode)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace_where:
            writer = writer.option("replaceWhere", replace_where_sql(replace_where))
        elif mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if evolve_schema:
            writer = writer.option("mergeSchema", "true")
        if app_id is not None:
            writer = writer.option("txnAppId", app_id).option("txnVersion", str(app_version))
        if metadata:
            writer = writer.option("userMetadata", json.dumps(metadata, default=str))
        writer.save(_spark_path(uri))
        return self.version(uri)

    def merge(self, df, uri, keys, delete_unmatched, metadata):
        table = self.DeltaTable.forPath(self.spark, _spark_path(uri))
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        builder = (table.alias("t").merge(df.alias("s"), condition)
                   .whenMatchedUpdateAll().whenNotMatchedInsertAll())
        if delete_unmatched:
            builder = builder.whenNotMatchedBySourceDelete()
        builder.execute()
        metrics = table.history(1).collect()[0]["operationMetrics"] or {}
        return MergeResult(inserted=int(metrics.get("numTargetRowsInserted", 0)),
                           updated=int(metrics.get("numTargetRowsUpdated", 0)),
                           deleted=int(metrics.get("numTargetRowsDeleted", 0)))

    def delete(self, uri, condition, metadata):
        table = self.DeltaTable.forPath(self.spark, _spark_path(uri))
        table.delete(condition)
        metrics = table.history(1).collect()[0]["operationMetrics"] or {}
        return int(metrics.get("numDeletedRows", 0))

    def restore(self, uri, version):
        self.DeltaTable.forPath(self.spark, _spark_path(uri)).restoreToVersion(version)
        return self.version(uri)

    def vacuum(self, uri, retention_hours):
        self.spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        self.DeltaTable.forPath(self.spark, _spark_path(uri)).vacuum(retention_hours)
        return []

    def erase(self, uri, keys, metadata):
        table = self.DeltaTable.forPath(self.spark, _spark_path(uri))
        deleted = 0
        for key in keys:
            # the merge condition names columns only; the hashes are the merge's source rows
            condition = " AND ".join(f"sha2(CAST(t.{_quoted(c)} AS STRING), 256) = lower(s.{_quoted(c)})"
                                     for c in key.columns)
            table.alias("t").merge(key.distinct().alias("s"), condition).whenMatchedDelete().execute()
            metrics = table.history(1).collect()[0]["operationMetrics"] or {}
            deleted += int(metrics.get("numTargetRowsDeleted", 0))
        return deleted


class _EmbeddedBackend(_Backend):
    """Spark writes the Parquet files; delta-rs commits them. No JVM jars needed."""

    def __init__(self, spark: SparkSession, storage_options: dict[str, str], store: ObjectStore) -> None:
        self.spark = spark
        self.storage_options = storage_options
        self.store = store  # for pyarrow on the driver, and shipped to the tasks that read or write files

    # -- helpers ------------------------------------------------------------------------------
    def _table(self, uri: str, version: int | None = None):
        from deltalake import DeltaTable

        table = DeltaTable(_delta_rs_uri(uri), version=version, storage_options=self.storage_options or None)
        self._refuse_unsupported(table, uri)
        return table

    @staticmethod
    def _refuse_unsupported(table, uri: str) -> None:
        protocol = table.protocol()
        features = set(protocol.reader_features or [])
        config = table.metadata().configuration or {}
        mapping = config.get("delta.columnMapping.mode", "none")
        if features & _UNSUPPORTED_READER_FEATURES or (mapping and mapping != "none"):
            raise UnsupportedTable(
                f"{uri}: table uses Delta reader features {sorted(features) or [f'columnMapping={mapping}']} "
                "that the embedded backend cannot read; read it with delta-spark (start Spark with "
                "--packages io.delta:delta-spark_2.13:<version>) or rewrite it without deletion vectors "
                "and column mapping")

    @staticmethod
    def _spark_schema(table) -> T.StructType:
        return T.StructType.fromJson(json.loads(table.schema().to_json()))

    def exists(self, uri: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(_delta_rs_uri(uri), storage_options=self.storage_options or None)

    def read(self, uri: str, version: int | None) -> DataFrame:
        table = self._table(uri, version)
        schema = self._spark_schema(table)
        partition_columns = list(table.metadata().partition_columns)
        files = table.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        if not partition_columns:
            return self._read_files(files, schema)
        return self._read_partitioned(table, uri, schema, partition_columns)

    def _read_files(self, files: list[str], data_schema: T.StructType) -> DataFrame:
        # recursiveFileLookup switches off Spark's partition discovery from folder names: partition
        # values come from the Delta log, which is the only authority on them.
        paths = [_hadoop_uri(f) for f in files]
        return (self.spark.read.schema(data_schema).option("recursiveFileLookup", "true")
                .parquet(*paths))

    def _read_partitioned(self, table, uri: str, schema: T.StructType,
                          partition_columns: list[str]) -> DataFrame:
        """Data files carry no partition columns: add them from each file's Delta log entry."""
        data_schema = T.StructType([f for f in schema.fields if f.name not in partition_columns])
        partition_types = {f.name: f.dataType for f in schema.fields if f.name in partition_columns}
        import pyarrow as pa

        adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        base = uri.rstrip("/")
        files_by_partition: dict[tuple, list[str]] = {}
        for add in adds:
            key = tuple(add.get(f"partition.{c}") for c in partition_columns)
            path = add["path"]
            full = path if "://" in path or path.startswith("/") else f"{base}/{unquote(path)}"
            files_by_partition.setdefault(key, []).append(full)
        parts = []
        for key, files in files_by_partition.items():
            frame = self._read_files(files, data_schema)
            for column, value in zip(partition_columns, key, strict=True):
                frame = frame.withColumn(column, F.lit(value).cast(partition_types[column]))
            parts.append(frame.select(*[F.col(_quoted(name)) for name in schema.fieldNames()]))
        result = parts[0]
        for part in parts[1:]:
            result = result.unionByName(part)
        return result

    def version(self, uri: str) -> int:
        return int(self._table(uri).version())

    def history(self, uri: str, limit: int | None) -> list[dict[str, Any]]:
        entries = self._table(uri).history(limit)
        for entry in entries:
            if isinstance(entry.get("timestamp"), int):
                entry["timestamp"] = datetime.fromtimestamp(entry["timestamp"] / 1000, tz=UTC)
            # commits made by delta-spark keep their metadata as userMetadata JSON
            entry.update({k: v for k, v in _custom_metadata(entry).items() if k not in entry})
        return entries

    def _commit_properties(self, app_id, app_version, metadata):
        from deltalake import CommitProperties, Transaction

        transactions = [Transaction(app_id, int(app_version))] if app_id is not None else None
        return CommitProperties(custom_metadata={k: str(v) for k, v in metadata.items()} or None,
                                app_transactions=transactions)

    def write(self, df, uri, mode, partition_by, replace_where, app_id, app_version, evolve_schema,
              metadata):
        exists = self.exists(uri)
        table = self._table(uri) if exists else None
        df_schema = _as_nullable(df.schema)
        if table is not None:
            table_schema = self._spark_schema(table)
            table_partitions = list(table.metadata().partition_columns)
            if partition_by and partition_by != table_partitions:
                if mode == "overwrite" and not replace_where:
                    pass  # a full overwrite may re-partition the table
                else:
                    raise SchemaMismatch(f"{uri}: table is partitioned by {table_partitions}, "
                                         f"not {partition_by}")
            elif not partition_by:
                partition_by = table_partitions
            full_overwrite = mode == "overwrite" and not replace_where
            if not full_overwrite:
                new_fields = _check_schema_compatible(table_schema, df_schema, uri, evolve_schema)
                if new_fields:
                    self._add_columns(table, new_fields, uri)
                    table = self._table(uri)
                    table_schema = self._spark_schema(table)
                # write files with the table's column types and order; missing columns stay null
                df = df.select(*[
                    (F.col(_quoted(f.name)) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                    for f in table_schema.fields
                    if f.name in df.columns or f.name not in partition_by
                ])
                commit_schema = table_schema
            else:
                commit_schema = df_schema
        else:
            commit_schema = df_schema
        if replace_where:
            unknown = [c for c in replace_where if c not in partition_by]
            if unknown:
                raise LakeError(f"{uri}: replace_where columns {unknown} are not partition columns "
                                f"{partition_by}; the embedded backend replaces whole partitions only")
        missing_partitions = [c for c in partition_by if c not in df.columns]
        if missing_partitions:
            raise SchemaMismatch(f"{uri}: partition columns {missing_partitions} are not in the data")
        _refuse_rows_outside(df, replace_where, uri)

        folder = _new_folder()
        target = f"{uri}/{folder}"
        files: set[str] | None = None  # Spark's writer: every file of the folder
        try:
            # mapInArrow resolves each input column by name: a dot or a backtick in one would not resolve
            if len(df.columns) >= ARROW_WRITE_MIN_COLUMNS and all(
                    isinstance(df.schema[c].dataType, _ARROW_PARTITION_TYPES) for c in partition_by) and not any(
                    "." in c or "`" in c for c in df.columns):
                # a wide table: the tasks write Arrow batches with pyarrow; Spark's Parquet writer
                # shreds every row into hundreds of column writers (tags_wide, 1M customers and 664
                # columns: 70-81 s with Spark's writer, 51-56 s through Arrow)
                writer_fn = _parquet_file_writer(_same_batches, _as_nullable(df.schema), _spark_path(target),
                                                 partition_by, store=self.store)
                written = df.mapInArrow(writer_fn, "file string, rows long").collect()
                files = {row["file"] for row in written}
            else:
                # "error", not its alias "errorifexists", which the Spark Connect client refuses
                writer = df.write.mode("error").option("compression", "snappy")
                if partition_by:
                    writer = writer.partitionBy(*partition_by)
                writer.parquet(_spark_path(target))
            filters = None
            if replace_where:
                filters = []
                for column, value in replace_where.items():
                    if isinstance(value, (list, tuple, set)):
                        filters.append((column, "in", [_partition_string(v) for v in value]))
                    else:
                        filters.append((column, "=", _partition_string(value)))
            return self._commit_folder(uri, table, folder, mode, commit_schema, partition_by, filters,
                                       self._commit_properties(app_id, app_version, metadata), files=files)
        except Exception:
            self._remove_folder(target)
            raise

    def arrow_scan(self, uri, columns, version):
        table = self._table(uri, version)
        self._refuse_unsupported(table, uri)
        schema = self._spark_schema(table)
        if table.metadata().partition_columns:
            return super().arrow_scan(uri, columns, version)  # partition values are in the log, not the files
        by_name = {f.name: f for f in schema.fields}
        missing = [c for c in columns if c not in by_name]
        if missing:
            raise SchemaMismatch(f"{uri}: no columns {missing} in the table")
        files = [_spark_path(u) if u.startswith("/") else u for u in table.file_uris()]
        # one slice per task, files dealt evenly (a round-robin repartition may put them all in one)
        tasks = max(1, min(len(files), default_parallelism(self.spark)))
        # spark.range deals its ids evenly over the tasks (as SparkContext.parallelize did, and unlike
        # a round-robin repartition); each id picks its file from a literal array. Works through Connect.
        source = (self.spark.range(0, len(files), 1, tasks)
                  .select(F.element_at(F.array(*[F.lit(f) for f in files]), (F.col("id") + 1).cast("int"))
                          .alias("file")))
        return ArrowScan(source, columns, T.StructType([by_name[c] for c in columns]).json(), store=self.store)

    def write_arrow(self, source, uri, batches, schema, mode, metadata):
        schema = _as_nullable(schema)
        table = self._table(uri) if self.exists(uri) else None
        if table is not None:
            partitions = list(table.metadata().partition_columns)
            if partitions:
                raise SchemaMismatch(f"{uri}: table is partitioned by {partitions}; write_arrow writes "
                                     "unpartitioned tables only")
            if mode == "append":
                _check_schema_compatible(self._spark_schema(table), schema, uri, evolve_schema=False)
        folder = _new_folder()
        target = f"{uri}/{folder}"
        try:
            written = source.mapInArrow(_parquet_file_writer(batches, schema, _spark_path(target), store=self.store),
                                        "file string, rows long").collect()
            return self._commit_folder(uri, table, folder, mode, schema, [], None,
                                       self._commit_properties(None, None, metadata),
                                       files={row["file"] for row in written})
        except Exception:
            self._remove_folder(target)
            raise

    def _commit_folder(self, uri, table, folder, mode, schema: T.StructType, partition_by, filters,
                       properties, files: set[str] | None = None) -> int:
        """Commit the Parquet files under ``<uri>/<folder>`` (every one, or those named in ``files``,
        relative to the folder) as one version of the table."""
        from deltalake import Schema as DeltaSchema
        from deltalake.transaction import create_table_with_add_actions

        add_actions = self._add_actions(uri, folder, partition_by, files)
        delta_schema = DeltaSchema.from_json(schema.json())
        if table is None:
            create_table_with_add_actions(
                _delta_rs_uri(uri), delta_schema, add_actions, mode="append",
                partition_by=partition_by or None, storage_options=self.storage_options or None,
                commit_properties=properties)
        else:
            table.create_write_transaction(
                add_actions, mode=mode, schema=delta_schema, partition_by=partition_by or None,
                partition_filters=filters, commit_properties=properties)
        version = self.version(uri)
        logger.debug("%s: committed version %d (%d files, %s)", uri, version, len(add_actions), mode)
        return version

    def copy_overwrite(self, source_uri, uri, metadata):
        from pyarrow import fs as pafs

        source = self._table(source_uri)
        table = self._table(uri) if self.exists(uri) else None
        if source.metadata().partition_columns or (table is not None and table.metadata().partition_columns):
            # partition values live in the log, not in the files: read and write the rows
            return super().copy_overwrite(source_uri, uri, metadata)
        folder = _new_folder()
        target = f"{uri}/{folder}"
        destination, base = filesystem(target, self.store)
        try:
            destination.create_dir(base, recursive=True)
            for position, file_uri in enumerate(source.file_uris()):
                origin, path = filesystem(file_uri, self.store)
                # a position prefix: files of several source folders may share a name
                pafs.copy_files(path, f"{base}/{position:05d}-{posixpath.basename(path)}",
                                source_filesystem=origin, destination_filesystem=destination)
            return self._commit_folder(uri, table, folder, "overwrite", self._spark_schema(source), [], None,
                                       self._commit_properties(None, None, metadata))
        except Exception:
            self._remove_folder(target)
            raise

    def _add_columns(self, table, new_fields: list[T.StructField], uri: str) -> None:
        from deltalake import Schema as DeltaSchema

        evolved = DeltaSchema.from_json(_as_nullable(T.StructType(new_fields)).json())
        table.alter.add_columns(list(evolved.fields))
        logger.info("%s: added columns %s", uri, [f.name for f in new_fields])

    def _add_actions(self, uri: str, folder: str, partition_by: list[str], files: set[str] | None = None):
        import pyarrow.parquet as pq
        from deltalake.transaction import AddAction
        from pyarrow import fs as pafs

        files_fs, base = filesystem(uri, self.store)
        selector = pafs.FileSelector(f"{base}/{folder}", recursive=True, allow_not_found=True)
        actions = []
        for info in files_fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
                continue
            relative = info.path[len(base) + 1:]
            if any(part.startswith(("_", ".")) for part in relative.split("/")[1:]):
                continue
            if files is not None and relative[len(folder) + 1:] not in files:
                continue  # left by a failed or retried task attempt: never part of the table
            partition_values = _partition_values_from_path(relative, partition_by)
            with files_fs.open_input_file(info.path) as handle:
                footer = pq.ParquetFile(handle).metadata
            mtime = int(info.mtime.timestamp() * 1000) if info.mtime else int(datetime.now(UTC).timestamp() * 1000)
            actions.append(AddAction(relative, int(info.size), partition_values, mtime, True,
                                     json.dumps(_file_stats(footer))))
        return actions

    def _remove_folder(self, target: str) -> None:
        try:
            target_fs, path = filesystem(target, self.store)
            target_fs.delete_dir(path)
        except Exception:  # noqa: BLE001 - best effort: uncommitted files are invisible anyway
            logger.debug("could not remove uncommitted folder %s", target)

    def merge(self, df, uri, keys, delete_unmatched, metadata):
        table = self._table(uri)
        table_schema = self._spark_schema(table)
        _check_schema_compatible(table_schema, _as_nullable(df.schema), uri, evolve_schema=False)
        source = df.select(*[(F.col(_quoted(f.name)) if f.name in df.columns else F.lit(None))
                             .cast(f.dataType).alias(f.name) for f in table_schema.fields])
        rows = source.count()
        if rows <= MERGE_ON_DRIVER_MAX_ROWS:
            arrow_source = source.toArrow()
            predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
            merger = (table.merge(arrow_source, predicate, source_alias="s", target_alias="t",
                                  commit_properties=self._commit_properties(None, None, metadata))
                      .when_matched_update_all().when_not_matched_insert_all())
            if delete_unmatched:
                merger = merger.when_not_matched_by_source_delete()
            metrics = merger.execute()
            return MergeResult(inserted=int(metrics.get("num_target_rows_inserted", 0)),
                               updated=int(metrics.get("num_target_rows_updated", 0)),
                               deleted=int(metrics.get("num_target_rows_deleted", 0)))
        # Large sources: rewrite in Spark. Safe while reading the table, since the new files go to a
        # fresh folder and the old ones stay until vacuum.
        target = self.read(uri, None)
        key_columns = [F.col(_quoted(k)) for k in keys]
        # rows the source does not touch survive, unless unmatched rows are to be deleted
        kept = target.limit(0) if delete_unmatched else target.join(source.select(*key_columns), on=keys,
                                                                     how="left_anti")
        updated = target.join(source.select(*key_columns), on=keys, how="left_semi").count()
        deleted = 0 if not delete_unmatched else target.join(source.select(*key_columns), on=keys,
                                                             how="left_anti").count()
        self.write(kept.unionByName(source), uri, "overwrite", list(table.metadata().partition_columns),
                   {}, None, None, False, {**metadata, "cdp_operation": "merge (rewrite)"})
        return MergeResult(inserted=rows - updated, updated=updated, deleted=deleted)

    def delete(self, uri, condition, metadata):
        table = self._table(uri)
        metrics = table.delete(condition, commit_properties=self._commit_properties(None, None, metadata))
        return int(metrics.get("num_deleted_rows", 0))

    def restore(self, uri, version):
        self._table(uri).restore(version)
        return self.version(uri)

    def vacuum(self, uri, retention_hours):
        table = self._table(uri)
        removed = table.vacuum(retention_hours=retention_hours, dry_run=False,
                               enforce_retention_duration=False)
        self._remove_empty_write_folders(uri)
        return removed

    def erase(self, uri, keys, metadata):
        partitions = list(self._table(uri).metadata().partition_columns)
        flagged = _flag_erased(self.read(uri, None), keys).persist()
        try:
            hits = flagged.filter(F.col(_ERASE_HIT))
            deleted = hits.count()
            if not deleted:
                return 0
            metadata = {**metadata, "cdp_operation": "erase (rewrite)", "rows_erased": deleted}
            if not partitions:
                kept = flagged.filter(~F.col(_ERASE_HIT)).drop(_ERASE_HIT)
                self.write(kept, uri, "overwrite", [], {}, None, None, False, metadata)
                return deleted
            # only the partitions holding a hit are rewritten
            touched = [tuple(r) for r in hits.select(*[_quoted(c) for c in partitions]).distinct().collect()]
            replace_where = {c: sorted({values[i] for values in touched}, key=str) for i, c in enumerate(partitions)}
            region = F.lit(True)
            for column, values in replace_where.items():
                region = region & F.col(_quoted(column)).isin(values)
            kept = flagged.filter(region & ~F.col(_ERASE_HIT)).drop(_ERASE_HIT)
            self.write(kept, uri, "overwrite", partitions, replace_where, None, None, False, metadata)
            return deleted
        finally:
            flagged.unpersist()

    def _remove_empty_write_folders(self, uri: str) -> None:
        if not uri.startswith("/"):
            return
        for entry in os.listdir(uri):
            path = os.path.join(uri, entry)
            if entry.startswith("w-") and os.path.isdir(path):
                for dirpath, _dirnames, filenames in os.walk(path, topdown=False):
                    if all(name.startswith(("_", ".")) for name in filenames):
                        for name in filenames:
                            os.remove(os.path.join(dirpath, name))
                        if not os.listdir(dirpath):
                            os.rmdir(dirpath)


@dataclass(frozen=True)
class ArrowScan:
    """A table's columns as Arrow record batches inside Spark tasks, for ``mapInArrow`` functions.

    ``feeding(fn)`` turns a function over the table's batches (``columns``, in that order) into one
    over the partitions of ``source``; ``map(fn, schema)`` is ``source.mapInArrow(feeding(fn), schema)``
    and ``Lake.write_arrow(source, name, feeding(fn), schema)`` writes its rows.

    On the embedded backend ``source`` holds the URIs of the table's data files and each task reads
    its files with pyarrow. For a wide table that is far cheaper than Spark's reader, which builds a
    row of every column and converts it back to Arrow: tags_wide at 1.4M customers and 660 columns,
    3 s in one Python process against 46 s of a two-task Spark stage. Columns that a file lacks
    (added to the table later) read as nulls. On delta-spark (and for partitioned tables) ``source``
    is the table read by Spark. On an object store, the executors' pyarrow finds its credentials as
    the driver's does (environment, instance profile), as for the files ``write_arrow`` writes.
    """

    source: DataFrame
    columns: tuple[str, ...]
    files_schema: str | None = None  # the columns' Spark schema (JSON) when ``source`` holds file URIs
    batch_rows: int = 10_000
    store: ObjectStore = ObjectStore()  # object-store settings the tasks open the files with

    def feeding(self, batches: ArrowBatches) -> ArrowBatches:
        if self.files_schema is None:
            return batches
        return _read_files_then(batches, self.files_schema, self.batch_rows, self.store)

    def map(self, batches: ArrowBatches, schema: T.StructType | str) -> DataFrame:
        return self.source.mapInArrow(self.feeding(batches), schema)


def _read_files_then(batches: ArrowBatches, schema_json: str, batch_rows: int,
                     store: ObjectStore | None = None) -> ArrowBatches:
    """mapInArrow function over batches of file URIs: read each Parquet file's columns of the schema,
    batch by batch, and hand those batches to ``batches``."""
    def run(partition: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import to_arrow_schema

        from cdp.lake.storage import filesystem as open_filesystem

        target = to_arrow_schema(T.StructType.fromJson(json.loads(schema_json)), timezone="UTC")

        def table_batches() -> Iterator[Any]:
            for files in partition:
                for uri in files.column(0).to_pylist():
                    files_fs, path = open_filesystem(uri, store or ObjectStore.from_settings())
                    with files_fs.open_input_file(path) as handle:
                        parquet = pq.ParquetFile(handle)
                        present = set(parquet.schema_arrow.names)
                        wanted = [f.name for f in target if f.name in present]  # none: batches of rows only
                        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
                            arrays = []
                            for field in target:
                                if field.name not in present:
                                    arrays.append(pa.nulls(batch.num_rows, field.type))
                                    continue
                                column = batch.column(field.name)
                                arrays.append(column if column.type == field.type else column.cast(field.type))
                            yield pa.RecordBatch.from_arrays(arrays, schema=target)

        yield from batches(table_batches())
    return run


# rows buffered per Parquet row group by write_arrow (pyarrow writes each table it is given as its own
# row groups, so small batches are gathered first)
_ARROW_ROW_GROUP_ROWS = 1_000_000
_ARROW_ROW_GROUP_BYTES = 128 * 2**20  # a task holds at most one row group per file it writes
# writes of at least this many columns go through Arrow on the embedded backend
ARROW_WRITE_MIN_COLUMNS = 200


def _same_batches(batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow function that passes a partition's Arrow batches on unchanged."""
    yield from batches


def _quoted(name: str) -> str:
    """A column name as a SQL identifier (backticks doubled inside)."""
    return "`" + name.replace("`", "``") + "`"


def _parquet_file_writer(batches: ArrowBatches, schema: T.StructType, folder_uri: str,
                         partition_by: Sequence[str] = (), *, store: ObjectStore | None = None) -> ArrowBatches:
    """mapInArrow function: write the batches that ``batches`` makes of a partition to new Parquet files
    in ``folder_uri`` (one per task, created on the first row; none for no rows) and yield each file's
    path relative to the folder and its rows. With ``partition_by``, one file per partition value in
    Spark's ``column=value`` folders, the partition columns left out of the files as Spark does."""
    schema_json = schema.json()
    partition_columns = list(partition_by)

    def write(partition: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import to_arrow_schema

        from cdp.lake.storage import filesystem as open_filesystem

        # timestamps as UTC instants: sessions run in UTC (cdp.runtime.session), and Spark reads them back as such
        arrow_schema = to_arrow_schema(T.StructType.fromJson(json.loads(schema_json)), timezone="UTC")
        data_columns = [name for name in arrow_schema.names if name not in partition_columns]
        file_schema = pa.schema([arrow_schema.field(name) for name in data_columns])
        files_fs, base = open_filesystem(folder_uri, store or ObjectStore.from_settings())
        name = f"part-{uuid.uuid4().hex}.snappy.parquet"  # a new name per task attempt

        class File:
            def __init__(self, values: tuple[Any, ...]) -> None:
                folders = [_hive_partition_folder(c, v) for c, v in zip(partition_columns, values, strict=True)]
                self.relative = "/".join([*folders, name])
                self.writer: Any = None
                self.buffered: list[Any] = []
                self.pending = self.pending_bytes = self.rows = 0

            def add(self, batch: Any) -> None:
                self.buffered.append(batch)
                self.rows += batch.num_rows
                self.pending += batch.num_rows
                self.pending_bytes += batch.nbytes
                if self.pending >= _ARROW_ROW_GROUP_ROWS or self.pending_bytes >= _ARROW_ROW_GROUP_BYTES:
                    self.flush()

            def flush(self) -> None:
                if not self.buffered:
                    return
                path = f"{base}/{self.relative}"
                if self.writer is None:
                    files_fs.create_dir(posixpath.dirname(path), recursive=True)
                    self.writer = pq.ParquetWriter(path, file_schema, filesystem=files_fs, compression="snappy")
                self.writer.write_table(pa.Table.from_batches(self.buffered, file_schema),
                                        row_group_size=_ARROW_ROW_GROUP_ROWS)
                self.buffered.clear()
                self.pending = self.pending_bytes = 0

        files: dict[tuple[Any, ...], File] = {}

        def file_for(values: tuple[Any, ...]) -> File:
            if values not in files:
                files[values] = File(values)
            return files[values]

        try:
            for batch in batches(partition):
                if batch.num_rows == 0:
                    continue
                batch = batch if batch.schema.equals(arrow_schema) else batch.cast(arrow_schema)
                if not partition_columns:
                    file_for(()).add(batch)
                    continue
                keys = pa.Table.from_batches([batch]).select(partition_columns).group_by(
                    partition_columns, use_threads=False).aggregate([]).to_pylist()
                for key in keys:
                    values = tuple(key[c] for c in partition_columns)
                    rows = batch
                    if len(keys) > 1:
                        mask = None
                        for column, value in zip(partition_columns, values, strict=True):
                            match = pc.is_null(batch.column(column)) if value is None else \
                                pc.fill_null(pc.equal(batch.column(column), value), False)
                            mask = match if mask is None else pc.and_(mask, match)
                        rows = batch.filter(mask)
                    file_for(values).add(rows.select(data_columns))
            for file in files.values():
                file.flush()
        finally:
            for file in files.values():
                if file.writer is not None:
                    file.writer.close()
        written = [file for file in files.values() if file.rows]
        if written:
            yield pa.RecordBatch.from_pydict({"file": [f.relative for f in written], "rows": [f.rows for f in written]})
    return write


# the characters Spark escapes in partition folder names (ExternalCatalogUtils.escapePathName)
_HIVE_ESCAPED = set('"#%\'*/:=?\\\x7f{[]^') | {chr(c) for c in range(1, 32)}
# partition column types whose values the Arrow writer names as Spark does
_ARROW_PARTITION_TYPES = (T.StringType, T.DateType, T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.BooleanType)


def _hive_partition_folder(column: str, value: Any) -> str:
    """``column=value`` as Spark names a partition folder (nulls and empty strings as Hive's default)."""
    def escape(text: str) -> str:
        return "".join(f"%{ord(c):02X}" if c in _HIVE_ESCAPED else c for c in text)

    text = _partition_string(value)
    return f"{escape(column)}={'__HIVE_DEFAULT_PARTITION__' if text in (None, '') else escape(text)}"


def _new_folder() -> str:
    """A fresh folder in a table for one commit's data files."""
    return f"w-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"


def _partition_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return str(value)


def _partition_values_from_path(relative: str, partition_by: list[str]) -> dict[str, str | None]:
    """Partition values from Spark's ``col=value`` folders (escaped like Hive, nulls as a marker)."""
    values: dict[str, str | None] = {}
    for part in relative.split("/")[1:-1]:
        if "=" not in part:
            continue
        column, raw = part.split("=", 1)
        column = unquote(column)
        if column in partition_by:
            value = unquote(raw)
            values[column] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
    missing = [c for c in partition_by if c not in values]
    if missing:
        raise LakeError(f"file {relative} lacks partition folders for {missing}")
    return values


def _format_stat(value: Any, *, upper: bool) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # Delta keeps millisecond stats: round outward so the range still covers every value.
        floored = value.replace(microsecond=value.microsecond // 1000 * 1000)
        if upper and floored != value:
            floored += timedelta(milliseconds=1)
        return floored.strftime("%Y-%m-%dT%H:%M:%S.") + f"{floored.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    if isinstance(value, float) and value != value:  # NaN says nothing usable
        return None
    return value


def _file_stats(footer) -> dict[str, Any]:
    """Delta per-file statistics (numRecords, minValues, maxValues, nullCount) from a Parquet footer.

    Only top-level primitive columns; strings only when short enough to keep exactly.
    """
    stats: dict[str, Any] = {"numRecords": footer.num_rows, "minValues": {}, "maxValues": {},
                             "nullCount": {}}
    schema = footer.schema
    top_level = {}
    for index in range(footer.num_columns):
        path = schema.column(index).path
        if "." in path:
            continue
        top_level[path] = index
    for name, index in top_level.items():
        nulls, lows, highs, exact = 0, [], [], True
        for group in range(footer.num_row_groups):
            column = footer.row_group(group).column(index)
            statistics = column.statistics
            if statistics is None or not statistics.has_null_count:
                exact = False
                break
            nulls += statistics.null_count
            if statistics.has_min_max:
                lows.append(statistics.min)
                highs.append(statistics.max)
            elif statistics.null_count < footer.row_group(group).num_rows:
                exact = False  # values without min/max: no range can be claimed for the file
        if not exact:
            continue
        stats["nullCount"][name] = nulls
        if not lows:
            continue
        low, high = min(lows), max(highs)
        if isinstance(low, bool) or (isinstance(low, str) and max(len(low), len(high)) > _MAX_STATS_STRING):
            continue
        low_value, high_value = _format_stat(low, upper=False), _format_stat(high, upper=True)
        if low_value is not None and high_value is not None:
            stats["minValues"][name] = low_value
            stats["maxValues"][name] = high_value
    return stats
