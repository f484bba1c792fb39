"""What both backends implement (:class:`Backend`), and the rules they share: nullable schemas,
schema compatibility on append, ``replace_where`` as SQL and its check, hashed erasure matching and
the expiry of a table's log."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.lake.arrow import ArrowBatches, ArrowScan
from cdp.lake.errors import LakeError, SchemaMismatch
from cdp.lake.paths import delta_rs_uri

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeResult:
    inserted: int
    updated: int
    deleted: int


class Backend:
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
        return ArrowScan(frame.select(*[F.col(quoted(c)) for c in columns]), columns)

    def copy_overwrite(self, source_uri: str, uri: str, metadata: dict[str, Any]) -> int:
        """Read the source's rows and overwrite the table with them (backends may do better)."""
        version = self.write(self.read(source_uri, None), uri, "overwrite", [], {}, None, None, False, metadata)
        assert version is not None  # only a write with an app id is ever skipped
        return version


def quoted(name: str) -> str:
    """A column name as a SQL identifier (backticks doubled inside)."""
    return "`" + name.replace("`", "``") + "`"


def as_nullable(schema: T.StructType) -> T.StructType:
    """Delta tables written from DataFrames are nullable, as delta-spark makes them."""
    return T.StructType([T.StructField(f.name, nullable_type(f.dataType), True, f.metadata)
                         for f in schema.fields])


def nullable_type(data_type: T.DataType) -> T.DataType:
    if isinstance(data_type, T.StructType):
        return as_nullable(data_type)
    if isinstance(data_type, T.ArrayType):
        return T.ArrayType(nullable_type(data_type.elementType), True)
    if isinstance(data_type, T.MapType):
        return T.MapType(data_type.keyType, nullable_type(data_type.valueType), True)
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


def refuse_rows_outside(df: DataFrame, replace_where: Mapping[str, Any], uri: str) -> None:
    """Raise when ``df`` holds a row outside the partitions ``replace_where`` names (nothing is written)."""
    for column, value in replace_where.items():
        allowed = list(value) if isinstance(value, (list, tuple, set)) else [value]
        stray = df.filter(~F.col(quoted(column)).isin(allowed) | F.col(quoted(column)).isNull()) \
            if None not in allowed else df.filter(~F.col(quoted(column)).isin(allowed))
        if stray.limit(1).count():
            raise LakeError(f"{uri}: data holds rows outside replace_where {column}={value!r}")


def check_schema_compatible(table_schema: T.StructType, df_schema: T.StructType, uri: str,
                             evolve_schema: bool) -> list[T.StructField]:
    """Return the new columns ``df`` brings; refuse type changes, and new columns unless evolving."""
    table_fields = {f.name.lower(): f for f in table_schema.fields}
    new_fields: list[T.StructField] = []
    for field in df_schema.fields:
        existing = table_fields.get(field.name.lower())
        if existing is None:
            new_fields.append(field)
        elif nullable_type(existing.dataType) != nullable_type(field.dataType):
            raise SchemaMismatch(
                f"{uri}: column {field.name!r} is {existing.dataType.simpleString()} in the table but "
                f"{field.dataType.simpleString()} in the data; cast it, or overwrite the table")
    if new_fields and not evolve_schema:
        names = [f.name for f in new_fields]
        raise SchemaMismatch(
            f"{uri}: the data has columns {names} that the table does not; pass evolve_schema=True "
            "to add them, or select only the table's columns")
    return new_fields


ERASE_HIT = "_cdp_erase_hit"
# Delta's default log retention, set back after a one-off expiry when the table had no setting
_DEFAULT_LOG_RETENTION = "interval 30 days"


def flag_erased(frame: DataFrame, keys: Sequence[DataFrame]) -> DataFrame:
    """``frame`` plus a boolean ``_cdp_erase_hit``: the row's hashed columns equal a row of some key frame."""
    hit = F.lit(False)
    for index, key in enumerate(keys):
        names = {column: f"_cdp_k{index}_{position}" for position, column in enumerate(key.columns)}
        marker = f"_cdp_m{index}"
        hashed = (key.select(*[F.lower(F.col(quoted(c))).alias(alias) for c, alias in names.items()])
                  .distinct().withColumn(marker, F.lit(True)))
        condition = None
        for column, alias in names.items():
            equal = F.sha2(frame[quoted(column)].cast("string"), 256) == hashed[alias]
            condition = equal if condition is None else condition & equal
        frame = frame.join(F.broadcast(hashed), on=condition, how="left").drop(*names.values())
        hit = hit | F.coalesce(F.col(marker), F.lit(False))
    markers = [f"_cdp_m{index}" for index in range(len(keys))]
    return frame.withColumn(ERASE_HIT, hit).drop(*markers)


def vacuum_unreferenced(uri: str, storage_options: dict[str, str], retention_hours: int = 0) -> list[str]:
    """Delete every data file the table's current version does not reference and older than
    ``retention_hours`` (delta-rs, on either backend's tables). ``full``: also files no log entry names
    any more (delta-rs's default looks at the log's remove entries only, and left a file of a
    delta-spark table that a delete had replaced), as Spark's VACUUM does; the lake lock keeps other
    writers out meanwhile. Spark's ``VACUUM ... RETAIN 0 HOURS`` took 135 s for a 4-version table of
    1,000 rows on 2 busy cores, this 0.03 s."""
    from deltalake import DeltaTable

    table = DeltaTable(delta_rs_uri(uri), storage_options=storage_options or None)
    return table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False,
                        full=True)


def expire_log(uri: str, storage_options: dict[str, str]) -> None:
    """Checkpoint the table and delete every log entry before the checkpoint (delta-rs)."""
    from deltalake import DeltaTable

    table = DeltaTable(delta_rs_uri(uri), storage_options=storage_options or None)
    before = (table.metadata().configuration or {}).get("delta.logRetentionDuration")
    table.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    table = DeltaTable(delta_rs_uri(uri), storage_options=storage_options or None)
    table.create_checkpoint()
    table.cleanup_metadata()
    table.alter.set_table_properties({"delta.logRetentionDuration": before or _DEFAULT_LOG_RETENTION})
    logger.info("%s: log expired up to version %d", uri, table.version())
