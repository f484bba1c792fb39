"""Read and write lake tables by name, as real Delta tables, with or without the delta-spark jars.

This module is the lake's API (:class:`Lake`); the parts behind it live beside it:

* :mod:`cdp.lake.delta_spark`: the ``delta-spark`` backend, used when
  ``io.delta.sql.DeltaSparkSessionExtension`` is loaded in the session (a cluster, or a laptop started
  with ``--packages io.delta:...``): native ``format("delta")``.
* :mod:`cdp.lake.embedded`: the ``embedded`` backend otherwise: Spark writes Parquet files straight
  into a fresh sub-folder of the table (wide tables: pyarrow in the tasks, :mod:`cdp.lake.arrow`),
  and the driver commits them as one Delta transaction with the ``deltalake`` package (delta-rs),
  with per-file statistics read from the Parquet footers (:mod:`cdp.lake.stats`). Reads list the
  active files from the Delta log and hand them to Spark's Parquet reader, so reading stays distributed.
* :mod:`cdp.lake.backend`: what both backends implement and the schema rules they share.
* :mod:`cdp.lake.commits`: step commits (a step's tables become current together), commit metadata,
  the restore of what a dead step wrote, and the ``CDP_CRASH_AT`` hook.
* :mod:`cdp.lake.errors`: the errors, with one-line messages naming the table.
* :mod:`cdp.lake.paths`, :mod:`cdp.lake.storage`, :mod:`cdp.lake.inventory`: local vs remote paths,
  object-store settings, what the lake holds.

Both backends write the same open Delta protocol, so a table written by one is readable by the other,
by ``deltalake`` and by DuckDB. A failed write commits nothing: readers keep seeing the last version.
"""
from __future__ import annotations

import logging
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.lake.arrow import ArrowBatches, ArrowScan
from cdp.lake.backend import (
    ERASE_HIT,
    Backend,
    MergeResult,
    expire_log,
    flag_erased,
    replace_where_sql,
    vacuum_unreferenced,
)
from cdp.lake.commits import (
    ALWAYS_LATEST,
    BASELINE_STEP,
    COMMITS_SCHEMA,
    COMMITS_TABLE,
    CRASH_ENV,
    CommitLog,
    crash_point,
    step_scope,
)
from cdp.lake.delta_spark import DELTA_CONNECT_PLUGIN, DeltaSparkBackend, delta_spark_available
from cdp.lake.embedded import ARROW_WRITE_MIN_COLUMNS, MERGE_ON_DRIVER_MAX_ROWS, EmbeddedBackend
from cdp.lake.errors import (
    CorruptTable,
    DiskFull,
    LakeError,
    SchemaMismatch,
    TableNotFound,
    UnsupportedTable,
    about_table,
)
from cdp.lake.paths import delta_rs_uri, normalize_root
from cdp.lake.storage import ObjectStore, filesystem, is_object_store

__all__ = [
    "ALWAYS_LATEST", "ARROW_WRITE_MIN_COLUMNS", "BACKEND_SETTING", "BASELINE_STEP", "COMMITS_SCHEMA",
    "COMMITS_TABLE", "CRASH_ENV", "DELTA_CONNECT_PLUGIN", "MERGE_ON_DRIVER_MAX_ROWS", "ArrowBatches", "ArrowScan",
    "BackendName", "CorruptTable", "DiskFull", "Lake", "LakeError", "MergeResult", "SchemaMismatch", "TableNotFound",
    "UnsupportedTable", "WriteMode", "crash_point", "delta_spark_available", "replace_where_sql", "session_backend",
    "step_scope",
]

logger = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite"]
BackendName = Literal["auto", "delta-spark", "embedded"]

# Session setting that picks the backend for every Lake built with backend="auto" (profiles, tests).
BACKEND_SETTING = "spark.cdp.lake.backend"
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMIT_FILE = re.compile(r"^\d{20}\.json$")  # a Delta log entry: <version, 20 digits>.json


def session_backend(spark: SparkSession) -> str:
    """The backend this session asks for in ``spark.cdp.lake.backend`` (``auto`` when unset).

    A profile (or a test) sets it to keep the embedded backend in a session that has the delta-spark
    jars, or to insist on delta-spark; ``Lake(..., backend=...)`` given explicitly wins over it.
    """
    return spark.conf.get(BACKEND_SETTING, "auto") or "auto"


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
        self.root = normalize_root(root)
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
        self._impl: Backend = (DeltaSparkBackend(spark) if backend == "delta-spark"
                               else EmbeddedBackend(spark, self.storage_options, self.store))
        if self.root.startswith("/"):
            os.makedirs(self.root, exist_ok=True)
        self._log = CommitLog(spark, self.root, self._impl, self._physical_tables, self._log_head)
        logger.debug("lake at %s on the %s backend", self.root, self.backend)

    # -- naming -------------------------------------------------------------------------------
    def uri(self, name: str) -> str:
        if not _TABLE_NAME.match(name):
            raise LakeError(f"invalid table name {name!r}: use letters, digits and underscores")
        return f"{self.root}/{name}"

    @about_table
    def exists(self, name: str) -> bool:
        """True when the table exists and a committed step (or this process) wrote it."""
        return self._impl.exists(self.uri(name)) and self._log.visible(name)[0]

    def tables(self) -> list[str]:
        """Names of the Delta tables directly under the root (local folders and object stores), committed
        ones only."""
        return [name for name in self._physical_tables() if self._log.visible(name)[0]]

    def _log_head(self, name: str) -> int:
        """The newest commit number in table ``name``'s Delta log (-1: no log): one listing of its
        ``_delta_log`` folder, so readers notice commits that another process made."""
        from pyarrow import fs as pafs

        store, base = filesystem(f"{self.root}/{name}/_delta_log", self.store)
        names = [posixpath.basename(info.path)
                 for info in store.get_file_info(pafs.FileSelector(base, allow_not_found=True))]
        return max((int(entry[:-5]) for entry in names if _COMMIT_FILE.match(entry)), default=-1)

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
    @about_table
    def read(self, name: str, version: int | None = None) -> DataFrame:
        """The table as of ``version`` (default: the committed version). Raises :class:`TableNotFound`."""
        uri = self.uri(name)
        if not self._impl.exists(uri):
            raise TableNotFound(f"table {name!r} does not exist in the lake at {self.root}")
        if version is None:
            version = self._log.readable_version(name)
        return self._impl.read(uri, version)

    @about_table
    def version(self, name: str) -> int:
        """The committed version (this process's own latest write, if any)."""
        uri = self._existing(name)
        visible = self._log.readable_version(name)
        return visible if visible is not None else self._impl.version(uri)

    @about_table
    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits newest first, up to the committed version: version, timestamp, operation and the
        custom metadata of each."""
        uri = self._existing(name)
        visible = self._log.readable_version(name)
        if visible is None:
            return self._impl.history(uri, limit)
        entries = [e for e in self._impl.history(uri, None) if int(e["version"]) <= visible]
        return entries[:limit] if limit else entries

    @about_table
    def app_version(self, name: str, app_id: str) -> int | None:
        """The last ``app_version`` committed for ``app_id`` (Delta app transactions), if any."""
        uri = self.uri(name)
        if not self._impl.exists(uri):
            return None
        visible, version = self._log.visible(name)
        if not visible:
            return None
        from deltalake import DeltaTable

        return DeltaTable(delta_rs_uri(uri), version=version,
                          storage_options=self.storage_options or None).transaction_version(app_id)

    # -- step commits (cdp.lake.commits) ---------------------------------------------------------
    def committed(self) -> dict[str, int] | None:
        """Table -> version of the last step commit naming it; None while the lake has no commit log."""
        return self._log.committed()

    def ensure_commit_log(self, run_id: str) -> None:
        """Start the commit log if the lake has none: a baseline record of every table as it is."""
        self._log.ensure(run_id)

    def pending(self) -> dict[str, int]:
        """Tables this process wrote since its last commit (``_``-prefixed scratch tables left out)."""
        return self._log.pending()

    def commit(self, step: str, run_id: str) -> dict[str, int]:
        """Make this process's writes since its last commit current, as one step (one ``step_commits``
        record, written last). Returns the versions it committed."""
        return self._log.commit(step, run_id)

    def abandon(self) -> dict[str, int]:
        """Forget this process's uncommitted writes (a failed step); returns what was dropped."""
        return self._log.abandon()

    # -- writes -------------------------------------------------------------------------------
    @about_table
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
        if self._log.reconcile(name, replaces_all=mode == "overwrite" and not replace_where):
            mode, replace_where = "overwrite", None  # nothing of it was ever committed: replace it whole
        crash_point("before", name)
        version = self._impl.write(df, uri, mode, list(partition_by or []), dict(replace_where or {}),
                                   app_id, app_version, evolve_schema, dict(metadata or {}))
        self._log.wrote(name, version)
        return version

    @about_table
    def copy_overwrite(self, source: str, name: str, *, metadata: Mapping[str, Any] | None = None) -> int:
        """Replace table ``name`` with the current contents of table ``source``: one overwrite commit,
        the same as ``write(read(source), name, mode="overwrite")``.

        The embedded backend copies the data files into ``name`` (no decode and re-encode) when
        neither table is partitioned; otherwise, and on delta-spark, the rows are read and written.
        Used to publish a staged table once its gates pass. Returns the new version of ``name``.
        """
        source_uri = self._existing(source)
        self._log.reconcile(name, replaces_all=True)
        crash_point("before", name)
        version = self._impl.copy_overwrite(source_uri, self.uri(name), dict(metadata or {}))
        self._log.wrote(name, version)
        return version

    @about_table
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
        if self._log.reconcile(name, replaces_all=mode == "overwrite"):
            mode = "overwrite"
        crash_point("before", name)
        version = self._impl.write_arrow(source, self.uri(name), batches, schema, mode, dict(metadata or {}))
        self._log.wrote(name, version)
        return version

    @about_table
    def arrow_scan(self, name: str, columns: Sequence[str], version: int | None = None) -> ArrowScan:
        """The table's ``columns`` as Arrow record batches inside Spark tasks: see :class:`ArrowScan`."""
        uri = self._existing(name)
        return self._impl.arrow_scan(uri, tuple(columns), self._log.readable_version(name) if version is None else version)

    @about_table
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
        absent = self._log.reconcile(name, replaces_all=False)
        crash_point("before", name)
        if absent or not self._impl.exists(uri):
            version = self._impl.write(df, uri, "overwrite" if absent else "append", [], {}, None, None, False,
                                       dict(metadata or {}))
            self._log.wrote(name, version)
            inserted = df.count()
            return MergeResult(inserted=inserted, updated=0, deleted=0)
        result = self._impl.merge(df, uri, list(keys), delete_unmatched, dict(metadata or {}))
        self._log.wrote(name, self._impl.version(uri))
        return result

    @about_table
    def delete(self, name: str, condition: str, *, metadata: Mapping[str, Any] | None = None) -> int:
        """Delete the rows matching a SQL predicate over the table's columns; returns how many."""
        uri = self._existing(name)
        self._log.reconcile(name, replaces_all=False)
        crash_point("before", name)
        deleted = self._impl.delete(uri, condition, dict(metadata or {}))
        self._log.wrote(name, self._impl.version(uri))
        return deleted

    @about_table
    def vacuum(self, name: str, retention_hours: int = 0) -> list[str]:
        """Remove files no longer referenced by the last ``retention_hours`` of versions.

        With 0, older versions can no longer be read: use it to make erasure final.
        """
        return self._impl.vacuum(self._existing(name), retention_hours)

    @about_table
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
        uri = self._existing(name)
        # like every write: a dead step's versions are undone first, and the erasure is this process's
        # write, committed with its step (readers of the committed version must not see the person)
        self._log.reconcile(name, replaces_all=False)
        crash_point("before", name)
        deleted = self._impl.erase(uri, list(keys), dict(metadata or {}))
        self._log.wrote(name, self._impl.version(uri))
        return deleted

    @about_table
    def matching_files(self, name: str, keys: Sequence[DataFrame]) -> dict[str, int]:
        """The data files of the current version holding rows that :meth:`erase` with ``keys`` would
        delete, with how many each (paths as Spark reads them); nothing is written."""
        if not keys:
            return {}
        flagged = flag_erased(self.read(name).withColumn("_cdp_file", F.input_file_name()), keys)
        rows = flagged.filter(F.col(ERASE_HIT)).groupBy("_cdp_file").count().collect()
        return {row["_cdp_file"]: int(row["count"]) for row in rows}

    @about_table
    def expire_history(self, name: str) -> None:
        """Keep only the current version: vacuum every unreferenced data file, write a checkpoint and
        remove the log entries before it.

        Older commits can hold values the current version no longer has (a delete's predicate,
        per-file min/max statistics of removed files); after this neither old files nor old log
        entries remain, so time travel before now is gone. Both backends go through delta-rs for
        the vacuum, the checkpoint and the log clean-up (``create_checkpoint``, ``cleanup_metadata`` with a log
        retention of zero for that one call; the table's retention setting is restored after).
        """
        uri = self._existing(name)
        # vacuum keeps the latest version's files only: a dead step's newer version is undone first, so
        # the committed version readers are pinned to keeps its files
        self._log.reconcile(name, replaces_all=False)
        if self.backend == "embedded":
            self._impl.vacuum(uri, 0)  # the same delta-rs vacuum, and the write folders it left empty
        else:
            # delta-rs, as the log clean-up below: Spark's VACUUM took a minute or more per table, most
            # of `cdp forget` on delta-spark
            vacuum_unreferenced(uri, self.storage_options)
        expire_log(uri, self.storage_options)  # an object store's settings on either backend
        # The versions a step commit names before this are gone with their log entries: the caller's
        # step commit (`cdp forget` is one) must name the version readers can still read.
        self._log.wrote(name, self._impl.version(uri))

    def _existing(self, name: str) -> str:
        uri = self.uri(name)
        if not self._impl.exists(uri) or not self._log.visible(name)[0]:
            raise TableNotFound(f"table {name!r} does not exist in the lake at {self.root}")
        return uri
