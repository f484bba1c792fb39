"""Suppression: identifiers on the suppression list (by hash of their canonical value) and the
records and customers that carry them; ``cdp forget`` adds to the list, ``cdp standardize`` and the
audiences read it.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.identity.normalize import identifier_hash_column as hash_column

ERASURE_LIST = "erasure"

SUPPRESSION_SCHEMA = T.StructType([
    T.StructField("id_type", T.StringType()),
    T.StructField("id_hash", T.StringType()),
    T.StructField("list", T.StringType()),
    T.StructField("added_at", T.TimestampType()),
    T.StructField("request_id", T.StringType()),
])


def suppress(df: DataFrame, suppression: DataFrame, *, id_type_col: str = "id_type",
             id_value_col: str = "id_value", lists: Sequence[str] | None = None) -> DataFrame:
    """Drop rows of ``df`` whose identifier is on the suppression list.

    Args:
        df: any frame with an identifier type column and a normalised identifier value column
            (e.g. ``silver_identifiers`` or ``identity_map``).
        suppression: the ``suppression_list`` table (id_type, id_hash, list, ...).
        lists: only these lists (default: all lists).

    Returns:
        ``df`` without the suppressed rows (same columns).
    """
    blocked = _lists(suppression, lists).select(F.col("id_type").alias("_s_type"),
                                                F.col("id_hash").alias("_s_hash")).distinct()
    condition = (F.col(id_type_col) == F.col("_s_type")) & (hash_column(id_value_col) == F.col("_s_hash"))
    return df.join(F.broadcast(blocked), on=condition, how="left_anti")


def suppressed_records(silver_identifiers: DataFrame, suppression: DataFrame,
                       lists: Sequence[str] | None = None) -> DataFrame:
    """(source, record_id) of every record carrying at least one suppressed identifier.

    ``cdp standardize`` anti-joins every silver table with ``source, record_id`` on this frame (and
    ``silver_order_lines`` / ``silver_returns`` on the order ids of the dropped orders) so a person
    who was forgotten is not re-created by a later load.
    """
    blocked = _lists(suppression, lists).select(F.col("id_type").alias("_s_type"),
                                                F.col("id_hash").alias("_s_hash")).distinct()
    condition = (F.col("id_type") == F.col("_s_type")) & (hash_column("id_value") == F.col("_s_hash"))
    return (silver_identifiers.join(F.broadcast(blocked), on=condition, how="left_semi")
            .select("source", "record_id").distinct())


def drop_suppressed_records(records: DataFrame, identifiers: DataFrame, suppression: DataFrame, *,
                            keys: Sequence[str], lists: Sequence[str] | None = None) -> tuple[DataFrame, int]:
    """Records that carry no suppressed identifier, and how many were dropped.

    ``cdp land`` calls it on the records it parsed, so a re-delivered export cannot bring a
    forgotten person back into bronze (nor into quarantine).

    Args:
        records: any frame of records, each identified by ``keys`` (land: ``_source_file, _line``).
        identifiers: ``keys`` + id_type, id_value: the records' identifiers, normalised with the
            normaliser identity uses for their type (hashes are compared, as for ``suppressed_records``).
        suppression: the ``suppression_list`` table.
        keys: the columns identifying a record in both frames.
        lists: only these lists (default: all).

    Returns:
        (``records`` without the suppressed ones, same columns; number of records dropped).
    """
    blocked = _lists(suppression, lists).select(F.col("id_type").alias("_s_type"),
                                                F.col("id_hash").alias("_s_hash")).distinct()
    condition = (F.col("id_type") == F.col("_s_type")) & (hash_column("id_value") == F.col("_s_hash"))
    carrying = (identifiers.filter(F.col("id_value").isNotNull())
                .join(F.broadcast(blocked), on=condition, how="left_semi").select(*keys).distinct())
    dropped = records.join(carrying, on=list(keys), how="left_semi").count()
    if not dropped:
        return records, 0
    kept = records.join(carrying, on=list(keys), how="left_anti")
    return kept.select(*[F.col(f"`{c}`") for c in records.columns]), dropped


def drop_records(df: DataFrame, records: DataFrame) -> DataFrame:
    """``df`` without the rows whose (source, record_id) is in ``records``."""
    return df.join(records.select("source", "record_id"), on=["source", "record_id"], how="left_anti")


def suppressed_customers(identity_map: DataFrame, suppression: DataFrame,
                         lists: Sequence[str] | None = None) -> DataFrame:
    """customer_id of every customer holding a suppressed identifier."""
    blocked = _lists(suppression, lists).select(F.col("id_type").alias("_s_type"),
                                                F.col("id_hash").alias("_s_hash")).distinct()
    condition = (F.col("id_type") == F.col("_s_type")) & (hash_column("id_value") == F.col("_s_hash"))
    return identity_map.join(F.broadcast(blocked), on=condition, how="left_semi").select("customer_id").distinct()


def _lists(suppression: DataFrame, lists: Sequence[str] | None) -> DataFrame:
    return suppression if lists is None else suppression.filter(F.col("list").isin(*lists))
