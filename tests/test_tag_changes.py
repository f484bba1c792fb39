"""What changed in a tag between two tags_wide versions: transitions and `cdp tags changes`."""
from __future__ import annotations

from datetime import date
from pathlib import Path

from cdp.jobs import tags as tags_job
from cdp.runtime.config import JobContext, Profile
from cdp.tagging.changes import NO_ROW, tag_transitions

WIDE = "customer_id string, as_of date, run_id string, segment string, vip boolean"


def _rows(df):
    return [(r["previous"], r["current"], r["changed"], r["customers"]) for r in df.collect()]


def test_transitions_count_customers_per_value_pair(spark):
    previous = spark.createDataFrame(
        [("c1", "loyal"), ("c2", "loyal"), ("c3", "at_risk"), ("c4", None), ("c5", "new")],
        "customer_id string, segment string")
    current = spark.createDataFrame(
        [("c1", "loyal"), ("c2", "at_risk"), ("c3", "at_risk"), ("c4", "new"), ("c6", "new")],
        "customer_id string, segment string")

    assert _rows(tag_transitions(current, previous, "segment")) == [
        (None, "new", True, 1),  # c4 had no value; ties: by previous then current, nulls first
        (NO_ROW, "new", True, 1),  # c6 is new
        ("at_risk", "at_risk", False, 1),
        ("loyal", "at_risk", True, 1),
        ("loyal", "loyal", False, 1),
        ("new", NO_ROW, True, 1),  # c5 is gone (forgotten)
    ]


def test_a_tag_new_since_the_previous_version_starts_from_null(spark):
    previous = spark.createDataFrame([("c1",), ("c2",)], "customer_id string")
    current = spark.createDataFrame([("c1", True), ("c2", None)], "customer_id string, vip boolean")

    assert _rows(tag_transitions(current, previous, "vip")) == [(None, None, False, 1), (None, "true", True, 1)]


def test_cdp_tags_changes_compares_the_latest_version_with_the_one_before(spark, lake, capsys):
    ctx = JobContext(conf_dir=Path("conf"), profile=Profile("local", lake.root, {}), lake_root=lake.root,
                     run_id="changes-test")
    assert tags_job.changes(spark, ctx, "segment") == 2
    assert "no tags_wide table" in capsys.readouterr().err

    first = [("c1", date(2026, 1, 1), "run-1", "loyal", True), ("c2", date(2026, 1, 1), "run-1", "loyal", False),
             ("c3", date(2026, 1, 1), "run-1", "new", False)]
    lake.write(spark.createDataFrame(first, WIDE), "tags_wide", mode="overwrite")
    assert tags_job.changes(spark, ctx, "segment") == 2
    assert "nothing earlier than v0" in capsys.readouterr().err

    second = [("c1", date(2026, 1, 2), "run-2", "loyal", True), ("c2", date(2026, 1, 2), "run-2", "at_risk", False),
              ("c3", date(2026, 1, 2), "run-2", "loyal", True)]
    lake.write(spark.createDataFrame(second, WIDE), "tags_wide", mode="overwrite")

    assert tags_job.changes(spark, ctx, "segment") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("tag segment: tags_wide v1 (run run-2, as of 2026-01-02) against "
                      "v0 (run run-1, as of 2026-01-01)")
    assert out[1] == "3 customers; 2 changed value (66.7%)"
    assert [line.split() for line in out[3:]] == [["loyal", "at_risk", "1"], ["new", "loyal", "1"]]

    assert tags_job.changes(spark, ctx, "vip", against=0, top=5) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "3 customers; 1 changed value (33.3%)"
    assert [line.split() for line in out[3:]] == [["false", "true", "1"]]
    assert tags_job.changes(spark, ctx, "segment", top=1) == 0  # the transitions beyond --top are counted
    assert capsys.readouterr().out.splitlines()[3:] == [f"{'loyal':<28} {'at_risk':<28} {1:>12,}",
                                                        "... 1 more transitions"]
    assert tags_job.changes(spark, ctx, "no_such_tag") == 2
    assert "in neither tags_wide v1 nor v0" in capsys.readouterr().err
