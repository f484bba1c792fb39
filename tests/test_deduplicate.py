"""Resolving bronze records to one row per record id without collapsing different contents silently."""
from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.sources import SourcesConfig, deduplicate

NOW = datetime(2024, 4, 1)
BRONZE = "order_no string, status string, updated string, _source_file string, _line long, _load_id string, " \
         "_ingested_at timestamp"
ROWS = [
    ("SO1", "PAID", "2024-03-01T10:00:00+08:00", "a.jsonl", 1, "L1", datetime(2024, 3, 2)),
    ("SO1", "PAID", "2024-03-01T10:00:00+08:00", "b.jsonl", 1, "L2", datetime(2024, 3, 3)),  # re-delivered
    ("SO2", "PAID", "2024-03-01T11:00:00+08:00", "a.jsonl", 2, "L1", datetime(2024, 3, 2)),
    ("SO2", "REFUNDED", "2024-03-05T09:00:00+08:00", "b.jsonl", 2, "L2", datetime(2024, 3, 3)),  # an update
    ("SO3", "PAID", "2024-03-01T12:00:00+08:00", "a.jsonl", 3, "L1", datetime(2024, 3, 2)),
    ("SO3", "CANCELLED", "2024-03-01T12:00:00+08:00", "b.jsonl", 3, "L2", datetime(2024, 3, 3)),  # same time
    (None, "PAID", "2024-03-01T13:00:00+08:00", "a.jsonl", 4, "L1", datetime(2024, 3, 2)),
]


def _source(**extra):
    spec = {"path": "*.jsonl", "format": "jsonl", "record_id": "order_no", "event_time": "updated",
            "fields": {"order_no": "string", "status": "string", "updated": {"type": "timestamp", "format": "iso8601"}},
            **extra}
    return SourcesConfig.from_dict({"sources": {"shop": spec}}).sources["shop"]


def _counts(resolved):
    row = resolved.counts.first().asDict()
    return {k: row[k] for k in ("rows", "missing_id", "exact_duplicates", "superseded", "collision_keys",
                                "collision_rows")}


def test_by_default_different_contents_under_one_key_are_quarantined_not_collapsed(spark):
    resolved = deduplicate(spark.createDataFrame(ROWS, BRONZE), _source(), now=NOW)
    assert sorted(r["record_id"] for r in resolved.records.collect()) == ["SO1"]
    assertDataFrameEqual(resolved.rejected.select("source", "stage", "file", "line", "field", "raw", "reason"),
                         spark.createDataFrame([
                             ("shop", "standardize", "a.jsonl", 4, "record_id", None, "missing record id (record_id: order_no)"),
                             *[("shop", "standardize", f, line, "record_id", key,
                                f"key collision: record id '{key}' has 2 different contents in source shop "
                                "(on_duplicate_key: quarantine)")
                               for f, line, key in (("a.jsonl", 2, "SO2"), ("b.jsonl", 2, "SO2"), ("a.jsonl", 3, "SO3"),
                                                    ("b.jsonl", 3, "SO3"))]],
                             "source string, stage string, file string, line long, field string, raw string, reason string"))
    assert _counts(resolved) == {"rows": 7, "missing_id": 1, "exact_duplicates": 1, "superseded": 0,
                                 "collision_keys": 2, "collision_rows": 4}


def test_latest_keeps_the_newest_version_and_counts_the_older_ones(spark):
    resolved = deduplicate(spark.createDataFrame(ROWS, BRONZE), _source(on_duplicate_key="latest"), now=NOW)
    kept = resolved.records.select("record_id", "status", "_source_file")
    # SO2: the later event time; SO3: same event time, the later load
    assertDataFrameEqual(kept, spark.createDataFrame(
        [("SO1", "PAID", "b.jsonl"), ("SO2", "REFUNDED", "b.jsonl"), ("SO3", "CANCELLED", "b.jsonl")],
        "record_id string, status string, _source_file string"))
    assert _counts(resolved) == {"rows": 7, "missing_id": 1, "exact_duplicates": 1, "superseded": 2,
                                 "collision_keys": 0, "collision_rows": 0}
    assert [r["reason"] for r in resolved.rejected.collect()] == ["missing record id (record_id: order_no)"]


def test_derived_record_ids_content_hash_and_file_line(spark):
    bronze = spark.createDataFrame(ROWS[:2], BRONZE)
    by_content = deduplicate(bronze, _source(record_id="$content_hash"), now=NOW)
    expected_hash = bronze.select(F.sha2(F.to_json(F.struct("order_no", "status", "updated")), 256)).first()[0]
    assert [r["record_id"] for r in by_content.records.collect()] == [expected_hash]  # one record, delivered twice
    by_line = deduplicate(bronze, _source(record_id="$file_line"), now=NOW)
    assert sorted(r["record_id"] for r in by_line.records.collect()) == ["a.jsonl:1", "b.jsonl:1"]


@pytest.mark.parametrize(("extra", "message"), [
    ({"on_duplicate_key": "first"}, "sources.shop.on_duplicate_key: expected one of ['quarantine', 'latest', 'error']"),
    ({"record_id": ["$content_hash", "order_no"]}, "sources.shop.record_id: $content_hash or $file_line stands alone"),
])
def test_record_identity_options_are_validated(extra, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        _source(**extra)
