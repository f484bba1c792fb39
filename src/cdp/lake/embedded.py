"""The embedded backend: Spark (or, for wide tables, pyarrow in the tasks) writes Parquet files into a
fresh folder of the table, and the driver commits them as one Delta transaction with delta-rs, with
per-file statistics from the Parquet footers (:mod:`cdp.lake.stats`). No JVM jars needed."""
from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.connect import default_parallelism
from cdp.lake.arrow import (
    ARROW_PARTITION_TYPES,
    ArrowScan,
    parquet_file_writer,
    partition_string,
    same_batches,
)
from cdp.lake.backend import (
    ERASE_HIT,
    Backend,
    MergeResult,
    as_nullable,
    check_schema_compatible,
    flag_erased,
    quoted,
    refuse_rows_outside,
    vacuum_unreferenced,
)
from cdp.lake.commits import custom_metadata
from cdp.lake.errors import LakeError, SchemaMismatch, UnsupportedTable
from cdp.lake.paths import delta_rs_uri, spark_path
from cdp.lake.stats import file_stats
from cdp.lake.storage import ObjectStore, filesystem

logger = logging.getLogger(__name__)

# Source rows above this are merged by rewriting the table in Spark rather than shipping them to the
# driver as Arrow for delta-rs's merge (which holds its source in driver memory).
MERGE_ON_DRIVER_MAX_ROWS = 2_000_000
_UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping"}
# writes of at least this many columns go through Arrow on the embedded backend
ARROW_WRITE_MIN_COLUMNS = 200


def _hadoop_uri(uri: str) -> str:
    """A data file URI as Spark reads it: local paths as file://, delta-rs's s3:// as Hadoop's s3a://."""
    if uri.startswith("/"):
        return spark_path(uri)
    return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri


def _new_folder() -> str:
    """A fresh folder in a table for one commit's data files."""
    return f"w-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"


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


class EmbeddedBackend(Backend):
    """Spark writes the Parquet files; delta-rs commits them. No JVM jars needed."""

    def __init__(self, spark: SparkSession, storage_options: dict[str, str], store: ObjectStore) -> None:
        self.spark = spark
        self.storage_options = storage_options
        self.store = store  # for pyarrow on the driver, and shipped to the tasks that read or write files

    # -- helpers ------------------------------------------------------------------------------
    def _table(self, uri: str, version: int | None = None):
        from deltalake import DeltaTable

        table = DeltaTable(delta_rs_uri(uri), version=version, storage_options=self.storage_options or None)
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

        return DeltaTable.is_deltatable(delta_rs_uri(uri), storage_options=self.storage_options or None)

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
            parts.append(frame.select(*[F.col(quoted(name)) for name in schema.fieldNames()]))
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
            entry.update({k: v for k, v in custom_metadata(entry).items() if k not in entry})
        return entries

    def _commit_properties(self, app_id, app_version, metadata):
        from deltalake import CommitProperties, Transaction

        transactions = [Transaction(app_id, int(app_version))] if app_id is not None else None
        # The metadata goes into commitInfo.userMetadata as one JSON object, as delta-spark writes it:
        # delta-rs would otherwise make each key a commitInfo field, and a key Delta defines with
        # another type (`job` is a struct there) makes delta-spark's log parser fail on the table.
        text = json.dumps({k: str(v) for k, v in metadata.items()}) if metadata else None
        return CommitProperties(custom_metadata={"userMetadata": text} if text else None,
                                app_transactions=transactions)

    def write(self, df, uri, mode, partition_by, replace_where, app_id, app_version, evolve_schema,
              metadata):
        exists = self.exists(uri)
        table = self._table(uri) if exists else None
        df_schema = as_nullable(df.schema)
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
                new_fields = check_schema_compatible(table_schema, df_schema, uri, evolve_schema)
                if new_fields:
                    self._add_columns(table, new_fields, uri)
                    table = self._table(uri)
                    table_schema = self._spark_schema(table)
                # write files with the table's column types and order; missing columns stay null
                df = df.select(*[
                    (F.col(quoted(f.name)) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
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
        refuse_rows_outside(df, replace_where, uri)

        folder = _new_folder()
        target = f"{uri}/{folder}"
        files: set[str] | None = None  # Spark's writer: every file of the folder
        try:
            # mapInArrow resolves each input column by name: a dot or a backtick in one would not resolve
            if len(df.columns) >= ARROW_WRITE_MIN_COLUMNS and all(
                    isinstance(df.schema[c].dataType, ARROW_PARTITION_TYPES) for c in partition_by) and not any(
                    "." in c or "`" in c for c in df.columns):
                # a wide table: the tasks write Arrow batches with pyarrow; Spark's Parquet writer
                # shreds every row into hundreds of column writers (tags_wide, 1M customers and 664
                # columns: 70-81 s with Spark's writer, 51-56 s through Arrow)
                writer_fn = parquet_file_writer(same_batches, as_nullable(df.schema), spark_path(target),
                                                 partition_by, store=self.store)
                written = df.mapInArrow(writer_fn, "file string, rows long").collect()
                files = {row["file"] for row in written}
            else:
                # "error", not its alias "errorifexists", which the Spark Connect client refuses
                writer = df.write.mode("error").option("compression", "snappy")
                if partition_by:
                    writer = writer.partitionBy(*partition_by)
                writer.parquet(spark_path(target))
            filters = None
            if replace_where:
                filters = []
                for column, value in replace_where.items():
                    if isinstance(value, (list, tuple, set)):
                        filters.append((column, "in", [partition_string(v) for v in value]))
                    else:
                        filters.append((column, "=", partition_string(value)))
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
        files = [spark_path(u) if u.startswith("/") else u for u in table.file_uris()]
        # one slice per task, files dealt evenly (a round-robin repartition may put them all in one)
        tasks = max(1, min(len(files), default_parallelism(self.spark)))
        # spark.range deals its ids evenly over the tasks (as SparkContext.parallelize did, and unlike
        # a round-robin repartition); each id picks its file from a literal array. Works through Connect.
        source = (self.spark.range(0, len(files), 1, tasks)
                  .select(F.element_at(F.array(*[F.lit(f) for f in files]), (F.col("id") + 1).cast("int"))
                          .alias("file")))
        return ArrowScan(source, columns, T.StructType([by_name[c] for c in columns]).json(), store=self.store)

    def write_arrow(self, source, uri, batches, schema, mode, metadata):
        schema = as_nullable(schema)
        table = self._table(uri) if self.exists(uri) else None
        if table is not None:
            partitions = list(table.metadata().partition_columns)
            if partitions:
                raise SchemaMismatch(f"{uri}: table is partitioned by {partitions}; write_arrow writes "
                                     "unpartitioned tables only")
            if mode == "append":
                check_schema_compatible(self._spark_schema(table), schema, uri, evolve_schema=False)
        folder = _new_folder()
        target = f"{uri}/{folder}"
        try:
            written = source.mapInArrow(parquet_file_writer(batches, schema, spark_path(target), store=self.store),
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
                delta_rs_uri(uri), delta_schema, add_actions, mode="append",
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

        evolved = DeltaSchema.from_json(as_nullable(T.StructType(new_fields)).json())
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
                                     json.dumps(file_stats(footer))))
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
        check_schema_compatible(table_schema, as_nullable(df.schema), uri, evolve_schema=False)
        source = df.select(*[(F.col(quoted(f.name)) if f.name in df.columns else F.lit(None))
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
        key_columns = [F.col(quoted(k)) for k in keys]
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
        self._table(uri)  # refuses a table this backend cannot write
        removed = vacuum_unreferenced(uri, self.storage_options, retention_hours)
        self._remove_empty_write_folders(uri)
        return removed

    def erase(self, uri, keys, metadata):
        partitions = list(self._table(uri).metadata().partition_columns)
        flagged = flag_erased(self.read(uri, None), keys).persist()
        try:
            hits = flagged.filter(F.col(ERASE_HIT))
            deleted = hits.count()
            if not deleted:
                return 0
            metadata = {**metadata, "cdp_operation": "erase (rewrite)", "rows_erased": deleted}
            if not partitions:
                kept = flagged.filter(~F.col(ERASE_HIT)).drop(ERASE_HIT)
                self.write(kept, uri, "overwrite", [], {}, None, None, False, metadata)
                return deleted
            # only the partitions holding a hit are rewritten
            touched = [tuple(r) for r in hits.select(*[quoted(c) for c in partitions]).distinct().collect()]
            replace_where = {c: sorted({values[i] for values in touched}, key=str) for i, c in enumerate(partitions)}
            region = F.lit(True)
            for column, values in replace_where.items():
                region = region & F.col(quoted(column)).isin(values)
            kept = flagged.filter(region & ~F.col(ERASE_HIT)).drop(ERASE_HIT)
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
