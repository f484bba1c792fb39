"""A forgotten person's records are kept out of silver by cdp standardize."""
from __future__ import annotations

import hashlib
from datetime import datetime

from pyspark.testing import assertDataFrameEqual

from cdp.jobs.standardize import SILVER_SCHEMAS, apply_suppression

SEEN = datetime(2025, 1, 1)


def _empty_tables(spark):
    return {name: spark.createDataFrame([], schema) for name, schema in SILVER_SCHEMAS.items()}


def test_suppressed_identifier_drops_its_records_and_their_order_lines(spark):
    tables = _empty_tables(spark)
    tables["silver_identifiers"] = spark.createDataFrame([
        ("orders", "o1", "email", "gone@example.com", " Gone@Example.com", SEEN),
        ("orders", "o2", "email", "kept@example.com", "kept@example.com", SEEN),
    ], SILVER_SCHEMAS["silver_identifiers"])
    tables["silver_orders"] = spark.createDataFrame([
        ("o1", "orders", "o1", SEEN, "online", None, "paid", 10.0, 0.0, None, "alipay", "CNY"),
        ("o2", "orders", "o2", SEEN, "online", None, "paid", 20.0, 0.0, None, "alipay", "CNY"),
    ], SILVER_SCHEMAS["silver_orders"])
    tables["silver_order_lines"] = spark.createDataFrame([
        ("o1", 1, "p1", "shoes", 1, 10.0, 10.0), ("o2", 1, "p2", "bags", 1, 20.0, 20.0),
    ], SILVER_SCHEMAS["silver_order_lines"])
    suppression = spark.createDataFrame(
        [("email", hashlib.sha256(b"gone@example.com").hexdigest(), "forgotten")],
        "id_type string, id_hash string, list string")

    kept = apply_suppression(tables, suppression)

    assertDataFrameEqual(kept["silver_identifiers"], tables["silver_identifiers"].filter("record_id = 'o2'"))
    assertDataFrameEqual(kept["silver_orders"], tables["silver_orders"].filter("order_id = 'o2'"))
    assertDataFrameEqual(kept["silver_order_lines"], tables["silver_order_lines"].filter("order_id = 'o2'"))
