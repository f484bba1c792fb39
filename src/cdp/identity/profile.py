"""The golden record: one row per customer, each attribute chosen by its survivorship rule.

Rules (``survivorship.attributes`` in conf/identity.yaml):

* ``most_recent``: the latest observation wins (ties: source priority, then smallest value);
* ``most_frequent``: the value seen in most records wins (ties: most recent, source priority, value);
* ``source_priority``: the first source in ``survivorship.source_priority`` wins (unlisted sources rank
  after listed ones; ties: most recent, value);
* ``first_non_null``: the earliest observation with a value wins (ties: source priority, value).

The winning row's source is written to ``<attribute>_source``.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from cdp.identity.config import IDENTIFIER_ATTRIBUTES, PROFILE_ATTRIBUTES, IdentityConfig
from cdp.identity.graph import VALID
from cdp.identity.records import with_customer_id

_ATTRIBUTE_TYPES = {"birth_date": "date", "member_since": "date", "city_tier": "int"}
_FAR = 2 ** 62


def _source_rank(sources: tuple[str, ...]) -> Column:
    if not sources:
        return F.lit(0)
    position = F.array_position(F.array(*[F.lit(s) for s in sources]), F.col("source"))
    return F.when(position == 0, F.lit(len(sources) + 1)).otherwise(position)


def _observations_long(attributes: DataFrame, identifier_rows: DataFrame, customer_records: DataFrame,
                       identity_map: DataFrame) -> DataFrame:
    """customer_id, attribute, value string, source, observed_at: every non-null candidate value."""
    attribute_columns = [a for a in PROFILE_ATTRIBUTES if a not in IDENTIFIER_ATTRIBUTES]
    stacked = F.explode(F.array(*[
        F.struct(F.lit(a).alias("attribute"), F.col(a).cast("string").alias("value")) for a in attribute_columns]))
    from_records = (with_customer_id(attributes, customer_records)
                    .select("customer_id", "source", "observed_at", stacked.alias("kv"))
                    .select("customer_id", F.col("kv.attribute").alias("attribute"), F.col("kv.value").alias("value"),
                            "source", "observed_at"))
    # Emails and phones come from the identifiers the customer owns (shared ones are not theirs alone).
    owned = identity_map.filter(~F.col("is_shared")).select("id_type", "id_value", "customer_id")
    from_identifiers = (identifier_rows.filter((F.col("status") == VALID)
                                               & F.col("id_type").isin(list(IDENTIFIER_ATTRIBUTES)))
                        .join(owned, on=["id_type", "id_value"], how="inner")
                        .select("customer_id", F.col("id_type").alias("attribute"), F.col("id_value").alias("value"),
                                "source", "observed_at"))
    return from_records.unionByName(from_identifiers).filter(F.col("value").isNotNull() & (F.trim("value") != ""))


def build_profile(attributes: DataFrame, identifier_rows: DataFrame, customer_records: DataFrame,
                  identity_map: DataFrame, config: IdentityConfig) -> DataFrame:
    """Build ``customer_profile`` by the configured survivorship rules.

    Args:
        attributes: ``silver_customer_attributes`` (source, record_id, observed_at, name, gender,
            birth_date, city, province, city_tier, member_level, member_since).
        identifier_rows: classified observations (source, id_type, id_value, observed_at, status).
        customer_records: source, record_id, customer_id.
        identity_map: id_type, id_value, customer_id, is_shared.

    Returns:
        customer_id, the attributes of :data:`cdp.identity.config.PROFILE_ATTRIBUTES` (typed as in silver),
        then ``<attribute>_source`` for each. One row per customer in ``customer_records``.
    """
    survivorship = config.survivorship
    candidates = _observations_long(attributes, identifier_rows, customer_records, identity_map)
    micros = F.unix_micros("observed_at")
    rank = _source_rank(survivorship.source_priority)
    frequency = F.count(F.lit(1)).over(Window.partitionBy("customer_id", "attribute", "value"))
    rule = F.create_map(*[x for a in PROFILE_ATTRIBUTES for x in (F.lit(a), F.lit(survivorship.rule(a)))])[
        F.col("attribute")]
    newest_first = -F.coalesce(micros, F.lit(-_FAR))
    oldest_first = F.coalesce(micros, F.lit(_FAR))
    key1 = (F.when(rule == "most_recent", newest_first)
            .when(rule == "most_frequent", -F.col("frequency"))
            .when(rule == "source_priority", rank.cast("long"))
            .otherwise(oldest_first))
    key2 = (F.when(rule == "most_recent", rank.cast("long"))
            .when(rule == "most_frequent", newest_first)
            .when(rule == "source_priority", newest_first)
            .otherwise(rank.cast("long")))
    key3 = F.when(rule == "most_frequent", rank.cast("long")).otherwise(F.lit(0))
    winners = (candidates.withColumn("frequency", frequency)
               .groupBy("customer_id", "attribute")
               .agg(F.min(F.struct(key1.alias("k1"), key2.alias("k2"), key3.alias("k3"), F.col("value"),
                                   F.col("source"))).alias("winner")))
    pivoted = winners.groupBy("customer_id").agg(
        *[F.max(F.when(F.col("attribute") == a, F.col("winner.value"))).alias(a) for a in PROFILE_ATTRIBUTES],
        *[F.max(F.when(F.col("attribute") == a, F.col("winner.source"))).alias(f"{a}_source")
          for a in PROFILE_ATTRIBUTES])
    customers = customer_records.select("customer_id").distinct()
    return (customers.join(pivoted, on="customer_id", how="left")
            .select("customer_id",
                    *[F.col(a).cast(_ATTRIBUTE_TYPES.get(a, "string")).alias(a) for a in PROFILE_ATTRIBUTES],
                    *[F.col(f"{a}_source") for a in PROFILE_ATTRIBUTES]))
