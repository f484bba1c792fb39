"""cdp stitch through the real lake: tables written, golden record, a second run keeps every id."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import date, datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.identity import IdentityConfig
from cdp.jobs import stitch
from cdp.jobs.entry import JobFailed
from cdp.runtime.config import JobContext, Profile, parse_file

SILVER = ("source string, record_id string, id_type string, id_value string, raw_value string, "
          "observed_at timestamp")
T1, T2 = datetime(2026, 3, 1), datetime(2026, 3, 2)


def context(conf_dir, lake, run_id: str) -> JobContext:
    return JobContext(conf_dir=conf_dir, profile=Profile(name="test", lake=lake.root), lake_root=lake.root,
                      run_id=run_id)


def cid(key: str) -> str:
    return "c" + hashlib.sha256(f"{key}#0".encode()).hexdigest()[:20]


def test_stitch_job_publishes_identity_tables_and_keeps_ids(spark, lake, conf_dir):
    with pytest.raises(JobFailed, match="run cdp standardize first"):
        stitch.run(spark, context(conf_dir, lake, "s0"))
    identifiers = spark.createDataFrame([
        ("crm_members", "c1", "member_id", "M100", "m100", T1), ("crm_members", "c1", "phone", "+8613912300001", "13912300001", T1),
        ("orders", "o1", "phone", "+8613912300001", "139 1230 0001", T2), ("orders", "o1", "order_id", "SO1", "so1", T2),
        ("web", "w1", "email", "z@x.com", "Z@x.com", T2),
    ], SILVER)
    attributes = spark.createDataFrame([
        ("crm_members", "c1", T1, "Li Lei", "M", date(1991, 1, 2), "Hangzhou", "Zhejiang", 2, "gold", date(2019, 4, 5)),
        ("orders", "o1", T2, "Lei", None, None, "Ningbo", "Zhejiang", 2, None, None),
    ], stitch.ATTRIBUTES_SCHEMA)
    lake.write(identifiers, "silver_identifiers", mode="overwrite")
    lake.write(attributes, "silver_customer_attributes", mode="overwrite")

    first = stitch.run(spark, context(conf_dir, lake, "s1"))
    m100, z = cid("member_id:M100"), cid("email:z@x.com")
    assert (first.mode, first.customers, first.new_customers, first.merges, first.splits) == ("full", 2, 2, 0, 0)
    assertDataFrameEqual(lake.read("customer_records"), spark.createDataFrame(
        [("crm_members", "c1", m100), ("orders", "o1", m100), ("web", "w1", z)], "source string, record_id string, "
                                                                        "customer_id string"))
    profile = lake.read("customer_profile").filter(F.col("customer_id") == m100)
    assertDataFrameEqual(profile.select("name", "name_source", "city", "city_source", "phone", "birth_date"),
                         spark.createDataFrame([("Li Lei", "crm_members", "Ningbo", "orders", "+8613912300001",
                                                 date(1991, 1, 2))],
                                               "name string, name_source string, city string, city_source string, "
                                               "phone string, birth_date date"))
    assert {c["run_id"] for c in lake.history("identity_map")} == {"s1"}

    # Second run, nothing new: incremental, nothing recomputed, same ids, no history events.
    before = lake.read("identity_map").select("id_type", "id_value", "customer_id", "updated_run").localCheckpoint()
    second = stitch.run(spark, context(conf_dir, lake, "s2"))
    assert (second.mode, second.recomputed_identifiers, second.new_customers) == ("incremental", 0, 0)
    assertDataFrameEqual(lake.read("identity_map").select("id_type", "id_value", "customer_id", "updated_run"), before)
    assert {r.run_id for r in lake.read("identity_history").select("run_id").distinct().collect()} == {"s1"}


def test_a_failed_identity_gate_publishes_nothing_and_keeps_the_last_good_version(spark, lake, conf_dir):
    identifiers = spark.createDataFrame([
        ("crm_members", "c1", "member_id", "M100", "M100", T1), ("crm_members", "c1", "phone", "+8613912300001", "", T1),
        ("crm_members", "c2", "member_id", "M200", "M200", T1), ("crm_members", "c2", "email", "two@x.com", "", T1),
        # a cashier typed two member numbers into one order: the split keeps them apart
        ("orders", "o9", "member_id", "M100", "M100", T2), ("orders", "o9", "member_id", "M200", "M200", T2),
    ], SILVER)
    lake.write(identifiers, "silver_identifiers", mode="overwrite")
    first = stitch.run(spark, context(conf_dir, lake, "g1"))
    assert (first.customers, first.dropped_edges) == (2, 1)
    tables = ("identity_map", "customer_profile", "customer_records", "identity_graph", "identity_history",
              "identity_quarantine")
    versions = {table: lake.version(table) for table in tables}
    published_map = lake.read("identity_map").localCheckpoint()

    # A bad config change: two member ids allowed per customer, so the two members merge. The
    # member-id gate (and the merge-rate bound against the published map) must stop it.
    config = parse_file(conf_dir / "identity.yaml", IdentityConfig.from_dict)
    loose = dataclasses.replace(config, types=tuple(
        dataclasses.replace(t, limit=2) if t.name == "member_id" else t for t in config.types))
    with pytest.raises(JobFailed, match="identity quality gates failed, no identity table published") as failure:
        stitch.run(spark, context(conf_dir, lake, "g2"), config=loose)
    message = str(failure.value)
    assert "member_ids_per_customer:expect_column_values_to_be_between" in message
    assert "identity_summary:expect_column_max_to_be_between(column=merge_rate" in message
    assert {table: lake.version(table) for table in tables} == versions
    assertDataFrameEqual(lake.read("identity_map"), published_map)
    reports = Path(lake.root) / "_reports" / "quality" / "g2"
    map_report = json.loads((reports / "identity_map.json").read_text())
    assert map_report["success"] is False
    failed = {(o["view"], o["expectation"]) for o in map_report["outcomes"] if o["blocking"]}
    assert ("member_ids_per_customer", "expect_column_values_to_be_between") in failed
    assert ("identity_type_counts", "expect_column_values_to_be_in_set") not in failed  # within the loose limits
    assert json.loads((reports / "customer_profile.json").read_text())["success"] is True
    merged = min(cid("member_id:M100"), cid("member_id:M200"))  # both issued in g1: the smaller id survives
    assert {r.customer_id for r in lake.read("_staging_identity_map").collect()} == {merged}  # kept for inspection

    # Back to the good config: incremental from the last good state, nothing recomputed, same ids.
    third = stitch.run(spark, context(conf_dir, lake, "g3"))
    assert (third.mode, third.recomputed_identifiers) == ("incremental", 0)
    assertDataFrameEqual(lake.read("identity_map").select("id_type", "id_value", "customer_id"),
                         published_map.select("id_type", "id_value", "customer_id"))
