"""The delta-spark backend: native ``format("delta")`` wherever the jars are on the session's classpath."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from cdp.connect import is_remote
from cdp.lake.backend import (
    Backend,
    MergeResult,
    check_schema_compatible,
    quoted,
    refuse_rows_outside,
    replace_where_sql,
)
from cdp.lake.commits import custom_metadata
from cdp.lake.errors import SchemaMismatch
from cdp.lake.paths import delta_rs_uri, spark_path

logger = logging.getLogger(__name__)

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


# characters delta-spark refuses in column names of tables without column mapping
_DELTA_SPARK_INVALID_NAME = re.compile(r"[ ,;{}()\n\t=]")
# the session setting Delta reads as userMetadata for commits made without a writer option (merge,
# delete): the same field the write option sets
_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


class DeltaSparkBackend(Backend):
    """Native delta-spark: used wherever the jars are on the classpath."""

    def __init__(self, spark: SparkSession) -> None:
        from delta.tables import DeltaTable

        self.spark = spark
        self.DeltaTable = DeltaTable

    @contextmanager
    def _user_metadata(self, metadata: Mapping[str, Any]) -> Iterator[None]:
        """Commits made inside carry ``metadata`` as their userMetadata JSON, as :meth:`write`'s do
        (``DeltaTable`` operations take no writer options; Delta reads the session setting instead)."""
        if not metadata:
            yield
            return
        previous = self.spark.conf.get(_USER_METADATA, None)
        self.spark.conf.set(_USER_METADATA, json.dumps(dict(metadata), default=str))
        try:
            yield
        finally:
            if previous is None:
                self.spark.conf.unset(_USER_METADATA)
            else:
                self.spark.conf.set(_USER_METADATA, previous)

    def exists(self, uri: str) -> bool:
        return bool(self.DeltaTable.isDeltaTable(self.spark, spark_path(uri)))

    def read(self, uri: str, version: int | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(spark_path(uri))

    def version(self, uri: str) -> int:
        return int(self.DeltaTable.forPath(self.spark, spark_path(uri)).history(1).collect()[0]["version"])

    def history(self, uri: str, limit: int | None) -> list[dict[str, Any]]:
        table = self.DeltaTable.forPath(self.spark, spark_path(uri))
        rows = (table.history(limit) if limit else table.history()).collect()
        # commits made by the embedded backend keep their metadata as commitInfo fields, which Spark's
        # history does not show: read them from the log with deltalake
        from deltalake import DeltaTable as LogTable

        try:
            custom = {info.get("version"): custom_metadata(info)
                      for info in LogTable(delta_rs_uri(uri)).history(limit)}
        except Exception:  # noqa: BLE001 - a store delta-rs cannot open here: Spark's userMetadata only
            logger.debug("%s: commit metadata from userMetadata only", uri)
            custom = {}
        entries = []
        for row in rows:
            entry = {"version": row["version"], "timestamp": row["timestamp"],
                     "operation": row["operation"],
                     "operationMetrics": dict(row["operationMetrics"] or {})}
            entry.update(custom_metadata({"userMetadata": row["userMetadata"]}))
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
            refuse_rows_outside(df, replace_where, uri)
        if self.exists(uri) and mode == "append":
            table_schema = self.read(uri, None).schema
            check_schema_compatible(table_schema, df.schema, uri, evolve_schema)
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
        writer.save(spark_path(uri))
        return self.version(uri)

    def _metrics_after(self, table, before: int) -> dict[str, str]:
        """The operation metrics of the commit an operation made after version ``before``; none when it
        made none (Delta commits nothing for a merge or delete that changes no file: the latest commit
        is then an earlier operation's, whose counts are not this one's)."""
        latest = table.history(1).collect()[0]
        if int(latest["version"]) <= before:
            return {}
        return dict(latest["operationMetrics"] or {})

    def merge(self, df, uri, keys, delete_unmatched, metadata):
        table = self.DeltaTable.forPath(self.spark, spark_path(uri))
        before = self.version(uri)
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        builder = (table.alias("t").merge(df.alias("s"), condition)
                   .whenMatchedUpdateAll().whenNotMatchedInsertAll())
        if delete_unmatched:
            builder = builder.whenNotMatchedBySourceDelete()
        with self._user_metadata(metadata):
            builder.execute()
        metrics = self._metrics_after(table, before)
        return MergeResult(inserted=int(metrics.get("numTargetRowsInserted", 0)),
                           updated=int(metrics.get("numTargetRowsUpdated", 0)),
                           deleted=int(metrics.get("numTargetRowsDeleted", 0)))

    def delete(self, uri, condition, metadata):
        table = self.DeltaTable.forPath(self.spark, spark_path(uri))
        before = self.version(uri)
        with self._user_metadata(metadata):
            table.delete(condition)
        metrics = self._metrics_after(table, before)
        return int(metrics.get("numDeletedRows", 0))

    def restore(self, uri, version):
        self.DeltaTable.forPath(self.spark, spark_path(uri)).restoreToVersion(version)
        return self.version(uri)

    def vacuum(self, uri, retention_hours):
        self.spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
        self.DeltaTable.forPath(self.spark, spark_path(uri)).vacuum(retention_hours)
        return []

    def erase(self, uri, keys, metadata):
        table = self.DeltaTable.forPath(self.spark, spark_path(uri))
        deleted = 0
        for key in keys:
            # the merge condition names columns only; the hashes are the merge's source rows
            condition = " AND ".join(f"sha2(CAST(t.{quoted(c)} AS STRING), 256) = lower(s.{quoted(c)})"
                                     for c in key.columns)
            before = self.version(uri)
            with self._user_metadata(metadata):
                table.alias("t").merge(key.distinct().alias("s"), condition).whenMatchedDelete().execute()
            metrics = self._metrics_after(table, before)
            deleted += int(metrics.get("numTargetRowsDeleted", 0))
        return deleted
