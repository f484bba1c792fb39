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
        ("orders", "o1", "email", "gone@example.com", " Gone@Example.com", SEEN, None),
        ("orders", "o2", "email", "kept@example.com", "kept@example.com", SEEN, None),
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


def test_land_filter_drops_records_carrying_a_forgotten_identifier_and_counts_them(spark, conf_dir):
    """cdp land's filter: identifiers normalised as identity does (a differently spelt e-mail and a
    local phone spelling), hashed, matched against the erasure list; the record goes whole."""
    from cdp.jobs.land import drop_forgotten
    from cdp.runtime.config import parse_file
    from cdp.sources import SourcesConfig

    crm = parse_file(conf_dir / "sources.yaml", SourcesConfig.from_dict).sources["crm_members"]
    fields = [f.name for f in crm.fields]
    email_field = next(i.field for i in crm.identifiers if i.type == "email")
    member_field = next(i.field for i in crm.identifiers if i.type == "member_id")

    def record(line, member, email, reason=None):
        values = {name: None for name in fields}
        values.update({member_field: member, email_field: email})
        return (*[values[n] for n in fields], "crm/a.csv", line, "text", reason)

    schema = ", ".join([*(f"`{n}` string" for n in fields), "_source_file string", "_line long",
                        "_text string", "_reason string"])
    parsed = spark.createDataFrame([
        record(1, "M1", "  Gone@Example.COM "),              # forgotten e-mail, another spelling
        record(2, "M2", "kept@example.com"),
        record(3, "M3", "gone@example.com", "birthday: bad date"),  # would be quarantined: dropped too
        record(4, "M4", None),
    ], schema)
    suppression = spark.createDataFrame(
        [("email", hashlib.sha256(b"gone@example.com").hexdigest(), "erasure", SEEN, "r1")],
        "id_type string, id_hash string, list string, added_at timestamp, request_id string")
    kept, dropped = drop_forgotten(parsed, crm, suppression, conf_dir / "identity.yaml")
    assert dropped == 2
    assertDataFrameEqual(kept, spark.createDataFrame([record(2, "M2", "kept@example.com"), record(4, "M4", None)],
                                                     schema))
