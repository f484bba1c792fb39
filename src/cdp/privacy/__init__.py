"""Consent, suppression and PII masking: pure transforms over Spark DataFrames.

Hashing convention (shared with ``cdp forget``, ``cdp standardize`` and ``cdp export``): an
identifier's hash is the lower-case hex SHA-256 of its *normalised* value's UTF-8 bytes (the
``id_value`` of ``silver_identifiers`` / ``identity_map``), with no salt and no type prefix, so it
equals Spark's ``sha2(id_value, 256)`` and what ad platforms expect for emails and phones.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.identity.records import with_customer_id

ERASURE_LIST = "erasure"

SUPPRESSION_SCHEMA = T.StructType([
    T.StructField("id_type", T.StringType()),
    T.StructField("id_hash", T.StringType()),
    T.StructField("list", T.StringType()),
    T.StructField("added_at", T.TimestampType()),
    T.StructField("request_id", T.StringType()),
])

CONSENT_SCHEMA = T.StructType([
    T.StructField("customer_id", T.StringType()),
    T.StructField("channel", T.StringType()),
    T.StructField("granted", T.BooleanType()),
    T.StructField("event_time", T.TimestampType()),
    T.StructField("source", T.StringType()),
    T.StructField("record_id", T.StringType()),
])

# Columns masked by mask_pii unless named otherwise.
DEFAULT_PII_COLUMNS: tuple[str, ...] = ("email", "phone", "name", "raw_value", "id_value",
                                        "wechat_openid", "device_id", "birth_date")


def sha256_hex(value: str) -> str:
    """Hex SHA-256 of a normalised identifier (equals Spark ``sha2(value, 256)``)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def consent_current(silver_consent: DataFrame, customer_records: DataFrame) -> DataFrame:
    """Latest consent per customer and channel; on a tie, a withdrawal wins over a grant.

    Args:
        silver_consent: source, record_id, channel, granted, event_time.
        customer_records: source, record_id, customer_id.

    Returns:
        customer_id, channel, granted, event_time, source, record_id (the deciding event).
        Consent events whose record maps to no customer are dropped.
    """
    joined = with_customer_id(
        silver_consent.filter(F.col("granted").isNotNull() & F.col("event_time").isNotNull()), customer_records)
    latest_first = Window.partitionBy("customer_id", "channel").orderBy(
        F.col("event_time").desc(), F.col("granted").asc(), F.col("source").asc(), F.col("record_id").asc())
    return (joined.withColumn("_rank", F.row_number().over(latest_first))
            .filter(F.col("_rank") == 1)
            .select("customer_id", "channel", "granted", "event_time", "source", "record_id"))


def hash_column(column: str | Column) -> Column:
    col = F.col(column) if isinstance(column, str) else column
    return F.sha2(col, 256)


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


def channel_contacts(profile: DataFrame, identity_map: DataFrame, channel: str, *,
                     wechat_appid: str | None = None) -> DataFrame:
    """The identifiers a channel needs, per customer; other channels' identifiers stay null.

    email: the profile email; sms: the profile phone; wechat: one open id (of ``wechat_appid``
    when given; open ids are ``<appid>:<openid>``); ads: email, phone and one device id. Shared
    identifiers (``is_shared``) are never used. When a customer has several open ids or devices
    the smallest value is taken, so the choice is stable across runs.

    Returns:
        customer_id, email, phone, wechat_openid, device_id, reachable (has what the channel needs).
    """
    def first_of(id_type: str, prefix: str | None = None) -> DataFrame:
        rows = identity_map.filter((F.col("id_type") == id_type) & ~F.coalesce(F.col("is_shared"), F.lit(False)))
        if prefix is not None:
            rows = rows.filter(F.col("id_value").startswith(prefix + ":"))
        return rows.groupBy("customer_id").agg(F.min("id_value").alias(id_type))

    null = F.lit(None).cast("string")
    base = profile.select("customer_id", F.col("email").cast("string").alias("email"),
                          F.col("phone").cast("string").alias("phone"))
    if channel == "email":
        out = base.select("customer_id", "email", null.alias("phone"), null.alias("wechat_openid"),
                          null.alias("device_id"))
        reachable = F.col("email").isNotNull()
    elif channel == "sms":
        out = base.select("customer_id", null.alias("email"), "phone", null.alias("wechat_openid"),
                          null.alias("device_id"))
        reachable = F.col("phone").isNotNull()
    elif channel == "wechat":
        out = (base.select("customer_id").join(first_of("wechat_openid", wechat_appid), on="customer_id", how="left")
               .select("customer_id", null.alias("email"), null.alias("phone"), "wechat_openid",
                       null.alias("device_id")))
        reachable = F.col("wechat_openid").isNotNull()
    elif channel == "ads":
        out = (base.join(first_of("device_id"), on="customer_id", how="left")
               .select("customer_id", "email", "phone", null.alias("wechat_openid"),
                       F.col("device_id").alias("device_id")))
        reachable = F.col("email").isNotNull() | F.col("phone").isNotNull() | F.col("device_id").isNotNull()
    else:
        raise ValueError(f"unknown channel {channel!r}")
    return out.withColumn("reachable", reachable)


def eligibility(contacts: DataFrame, consent: DataFrame, channel: str, *,
                suppressed: DataFrame | None = None) -> DataFrame:
    """Why each customer may or may not be contacted on ``channel``.

    Args:
        contacts: :func:`channel_contacts` output.
        consent: ``consent_current``. No consent record means no consent (opt-in).
        suppressed: customer_id of suppressed customers.

    Returns:
        the contacts columns plus has_consent, is_suppressed, eligible (all booleans, never null).
    """
    granted = consent.filter((F.col("channel") == channel) & F.col("granted")).select(
        "customer_id", F.lit(True).alias("has_consent"))
    frame = contacts.join(granted, on="customer_id", how="left")
    if suppressed is not None:
        frame = frame.join(suppressed.select("customer_id", F.lit(True).alias("is_suppressed")).distinct(),
                           on="customer_id", how="left")
    else:
        frame = frame.withColumn("is_suppressed", F.lit(False))
    frame = (frame.withColumn("has_consent", F.coalesce(F.col("has_consent"), F.lit(False)))
             .withColumn("is_suppressed", F.coalesce(F.col("is_suppressed"), F.lit(False))))
    return frame.withColumn("eligible", F.col("reachable") & F.col("has_consent") & ~F.col("is_suppressed"))


def mask_pii(df: DataFrame, columns: Iterable[str] | None = None, *, reveal: bool = False) -> DataFrame:
    """Mask PII columns for analyst use: ``a***@example.com``, ``***1234``, ``Z**``, hashes for ids.

    Args:
        df: any frame.
        columns: the columns to mask (default :data:`DEFAULT_PII_COLUMNS` present in ``df``).
        reveal: return ``df`` unchanged (for people entitled to see PII).

    Returns:
        ``df`` with the same columns in the same order, PII columns replaced by masked strings.
    """
    if reveal:
        return df
    targets = set(DEFAULT_PII_COLUMNS if columns is None else columns) & set(df.columns)
    out = []
    for name in df.columns:
        if name not in targets:
            out.append(F.col(f"`{name}`"))
            continue
        value = F.col(f"`{name}`").cast("string")
        if name == "email":
            masked = F.concat(F.substring(value, 1, 1), F.lit("***@"), F.substring_index(value, "@", -1))
        elif name == "phone":
            masked = F.concat(F.lit("***"), F.substring(value, -4, 4))
        elif name == "name":
            masked = F.concat(F.substring(value, 1, 1), F.lit("**"))
        else:
            masked = F.concat(F.lit("sha256:"), F.substring(F.sha2(value, 256), 1, 12))
        out.append(F.when(value.isNull(), F.lit(None).cast("string")).otherwise(masked).alias(name))
    return df.select(*out)


__all__ = [
    "CONSENT_SCHEMA", "DEFAULT_PII_COLUMNS", "ERASURE_LIST", "SUPPRESSION_SCHEMA", "channel_contacts",
    "consent_current", "drop_records", "drop_suppressed_records", "eligibility", "hash_column", "mask_pii", "sha256_hex",
    "suppress", "suppressed_customers", "suppressed_records",
]
