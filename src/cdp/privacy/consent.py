"""Consent: the latest decision per customer and channel, the contacts a channel needs, and who may
be contacted (opt-in: no consent record means no consent).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.identity.records import with_customer_id

CONSENT_SCHEMA = T.StructType([
    T.StructField("customer_id", T.StringType()),
    T.StructField("channel", T.StringType()),
    T.StructField("granted", T.BooleanType()),
    T.StructField("event_time", T.TimestampType()),
    T.StructField("source", T.StringType()),
    T.StructField("record_id", T.StringType()),
])


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
