"""Quality gates: config parsing per profile, and write-audit-publish on the real lake."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pyspark.testing import assertDataFrameEqual

from cdp.expectations.quality import QualityConfig, columns_needed, view_tag_coverage, view_tag_drift
from cdp.jobs.entry import JobFailed
from cdp.runtime.config import ConfigError, JobContext, Profile, load_yaml
from cdp.runtime.gates import load_quality_config, publish_with_gates

SCHEMA = "customer_id string, in_control boolean"

GATE_CONF = {
    "thresholds": {"min_ratio": 0.5, "max_ratio": 2.0},
    "profiles": {"strict": {}, "relaxed": {"thresholds": {"min_ratio": 0.0}, "warn_only": ["members"]}},
    "suites": {"members": {"checks": [
        {"view": "table", "id_columns": ["customer_id"], "expectations": [
            {"expectation": "expect_column_values_to_not_be_null", "kwargs": {"column": "customer_id"}},
            {"expectation": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1},
             "relative": {"min_ratio": "$min_ratio", "max_ratio": "$max_ratio"}},
        ]},
        {"view": "audience_compliance", "params": {"channel": "email"}, "id_columns": ["customer_id"],
         "expectations": [
             {"expectation": "expect_column_values_to_be_in_set",
              "kwargs": {"column": "has_consent", "value_set": [True]}}]},
    ]}},
}


def make_ctx(tmp_path: Path, profile: str, run_id: str) -> JobContext:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "quality.yaml").write_text(yaml.safe_dump(GATE_CONF))
    lake_root = str(tmp_path / "lake")
    return JobContext(conf_dir=conf, profile=Profile(name=profile, lake=lake_root), lake_root=lake_root,
                      run_id=run_id)


def test_real_quality_yaml_parses_for_every_profile(conf_dir):
    data = load_yaml(conf_dir / "quality.yaml")
    local = QualityConfig.from_dict(data, "local")
    cluster = QualityConfig.from_dict(data, "cluster")
    assert local.thresholds["audience_min_ratio"] == 0.1
    assert cluster.thresholds["audience_min_ratio"] == 0.5
    assert local.suite("tags_drift").warn_only and not cluster.suite("tags_drift").warn_only
    rel = cluster.suite("audience").checks[0].expectations[2].relative
    assert rel == {"min_ratio": 0.5, "max_ratio": 2.0}
    assert {"bronze", "silver_identifiers", "identity_map", "tags_wide", "audience"} <= set(cluster.suites)


def test_checks_cache_only_the_columns_their_expectations_read(conf_dir):
    config = QualityConfig.from_dict(load_yaml(conf_dir / "quality.yaml"), "local")
    assert columns_needed(config.suite("tags_wide").checks[0]) == {"customer_id"}  # unique + row count
    assert columns_needed(config.suite("bronze").checks[0]) == {"_load_id", "_source_file", "_ingested_at"}
    members = QualityConfig.from_dict(GATE_CONF, "strict").suite("members")
    assert columns_needed(members.checks[1]) == {"customer_id", "has_consent"}
    table_level = {"suites": {"t": {"checks": [{"view": "table", "expectations": [
        {"expectation": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}},
        {"expectation": "expect_table_columns_to_match_set", "kwargs": {"column_set": ["a", "b"]}}]}]}}}
    assert columns_needed(QualityConfig.from_dict(table_level, "local").suite("t").checks[0]) is None


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["suites"]["members"]["checks"][0]["expectations"][1]["relative"].update(min_ratio="$nope"),
     "suites.members.checks[0].expectations[1].relative.min_ratio: unknown threshold '$nope'"),
    (lambda d: d["suites"]["members"]["checks"][0]["expectations"][0].update(expectation="expect_magic"),
     "suites.members.checks[0].expectations[0].expectation: unknown Great Expectations expectation"),
    (lambda d: d["suites"]["members"]["checks"][0].update(view="nowhere"),
     "suites.members.checks[0].view: unknown view 'nowhere'"),
    (lambda d: d["profiles"]["strict"].update(thresholds={"undeclared": 1}),
     "profiles.strict.thresholds.undeclared: not declared in thresholds"),
])
def test_config_errors_name_the_key(mutate, message):
    data = yaml.safe_load(yaml.safe_dump(GATE_CONF))
    mutate(data)
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        QualityConfig.from_dict(data, "strict")


def test_config_errors_name_the_file(tmp_path):
    ctx = make_ctx(tmp_path, "strict", "r0")
    (ctx.conf_dir / "quality.yaml").write_text("suites: {members: {checks: []}}\n")
    with pytest.raises(ConfigError, match=r"quality\.yaml: suites\.members\.checks: expected a non-empty list"):
        load_quality_config(ctx)


def test_failing_gate_keeps_previous_version_and_raises(spark, lake, tmp_path):
    consent = spark.createDataFrame([(f"c{i}", "email", True) for i in range(1, 7)],
                                    "customer_id string, channel string, granted boolean")
    good = spark.createDataFrame([(f"c{i}", False) for i in range(1, 5)], SCHEMA)
    ctx1 = make_ctx(tmp_path, "strict", "run1")
    outcome = publish_with_gates(lake, good, "audience_vip", "members", ctx1, inputs={"consent_current": consent})
    assert outcome.version == 0 and outcome.result.success
    assert Path(outcome.report_path).is_file()

    # shrinks to 1 row (< 0.5 x 4) and holds a member without consent (c9)
    bad = spark.createDataFrame([("c9", False)], SCHEMA)
    ctx2 = make_ctx(tmp_path, "strict", "run2")
    with pytest.raises(JobFailed, match="audience_vip not published") as failure:
        publish_with_gates(lake, bad, "audience_vip", "members", ctx2, inputs={"consent_current": consent})
    assert "expect_table_row_count_to_be_between" in str(failure.value)
    assert "expect_column_values_to_be_in_set" in str(failure.value)
    assert lake.version("audience_vip") == 0
    assertDataFrameEqual(lake.read("audience_vip"), good)

    report = Path(ctx2.lake_root) / "_reports" / "quality" / "run2" / "audience_vip.html"
    text = report.read_text()
    assert "FAILED" in text and "expect_table_row_count_to_be_between" in text
    assert "bounds from the previous version&#x27;s value 4" in text
    assert "<td>c9</td>" in text  # the sample failing row, by customer_id
    # Great Expectations' own Data Docs page per check, linked from the report
    docs = sorted((report.parent / "data_docs" / "audience_vip").glob("*.html"))
    assert [p.name for p in docs] == ["01_table.html", "02_audience_compliance.html"]
    assert "data_docs/audience_vip/01_table.html" in text
    compliance = docs[1].read_text()
    assert "Great Expectations" in compliance and "has_consent" in compliance and "Failed" in compliance
    assertDataFrameEqual(lake.read("_staging_audience_vip"), bad)  # the rejected candidate stays for inspection


def test_warn_only_profile_publishes_despite_failures(spark, lake, tmp_path):
    consent = spark.createDataFrame([], "customer_id string, channel string, granted boolean")
    members = spark.createDataFrame([("c1", False), (None, True)], SCHEMA)
    ctx = make_ctx(tmp_path, "relaxed", "run1")
    outcome = publish_with_gates(lake, members, "audience_x", "members", ctx, inputs={"consent_current": consent})
    assert outcome.version == 0
    assert outcome.result.success
    failed = sorted(o.expectation for o in outcome.result.warnings)
    assert failed == ["expect_column_values_to_be_in_set", "expect_column_values_to_not_be_null"]
    assertDataFrameEqual(lake.read("audience_x"), members)


def test_several_suites_gate_one_candidate_drift_blocks_publish(spark, lake, tmp_path):
    # tags_wide is gated by coverage (tags_wide suite) and by drift against the last publish (tags_drift).
    real = load_yaml(Path(__file__).resolve().parents[1] / "conf" / "quality.yaml")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "quality.yaml").write_text(yaml.safe_dump(real))
    lake_root = str(tmp_path / "lake")
    ctx = JobContext(conf_dir=conf, profile=Profile(name="cluster", lake=lake_root), lake_root=lake_root,
                     run_id="run1")
    schema = "customer_id string, is_vip boolean, spend double"
    first = spark.createDataFrame([(f"c{i}", i % 2 == 0, float(i)) for i in range(10)], schema)
    outcome = publish_with_gates(lake, first, "tags_wide", ("tags_wide", "tags_drift"), ctx)
    assert outcome.version == 0 and [r.suite for r in outcome.results] == ["tags_wide", "tags_drift"]

    # spend loses 80% of its coverage (max change 0.2 on the cluster profile): drift blocks the publish
    drifted = spark.createDataFrame([(f"c{i}", i % 2 == 0, float(i) if i < 2 else None) for i in range(10)], schema)
    ctx2 = JobContext(conf_dir=conf, profile=ctx.profile, lake_root=lake_root, run_id="run2")
    with pytest.raises(JobFailed, match="suite tags_drift on tags_wide FAILED") as failure:
        publish_with_gates(lake, drifted, "tags_wide", ("tags_wide", "tags_drift"), ctx2)
    assert "tags_wide.tags_drift.html" in str(failure.value)
    assert lake.version("tags_wide") == 0
    report = Path(lake_root) / "_reports" / "quality" / "run2" / "tags_wide.tags_drift.html"
    assert "<td>spend</td>" in report.read_text()  # the failing tag is named in the sample


def test_tag_views_use_supplied_statistics_only_when_they_cover_the_table(spark):
    schema = "customer_id string, is_vip boolean, spend double"
    now = spark.createDataFrame([("c1", True, 10.0), ("c2", False, None)], schema)
    before = spark.createDataFrame([("c1", True, 4.0), ("c2", True, 2.0)], schema)
    stats = "tag string, coverage double, mean double"
    # supplied statistics are taken as they are (these differ from the frames on purpose)
    supplied = {"tag_profile": spark.createDataFrame([("is_vip", 0.9, 0.1), ("spend", 0.8, 7.0)], stats),
                "previous_tag_profile": spark.createDataFrame([("is_vip", 0.7, 0.2), ("spend", 0.6, 5.0)], stats)}
    assertDataFrameEqual(view_tag_coverage(now, {}, supplied), spark.createDataFrame(
        [("is_vip", 0.9), ("spend", 0.8)], "tag string, coverage double"))
    drift = {r["tag"]: r for r in view_tag_drift(now, {}, {"previous": before, **supplied}).collect()}
    assert (drift["spend"]["coverage"], drift["spend"]["previous_coverage"], drift["spend"]["mean_change"]) == \
        (0.8, 0.6, pytest.approx(0.4))
    # statistics that miss a column of the table (or name one it lacks) are computed from the table
    partial = {"tag_profile": supplied["tag_profile"].where("tag = 'spend'"),
               "previous_tag_profile": spark.createDataFrame([("is_vip", 0.7, 0.2), ("gone", 1.0, 1.0)], stats)}
    drift = {r["tag"]: r for r in view_tag_drift(now, {}, {"previous": before, **partial}).collect()}
    assert {t: (r["coverage"], r["previous_coverage"], r["mean"], r["previous_mean"]) for t, r in drift.items()} == {
        "is_vip": (1.0, 1.0, 0.5, 1.0), "spend": (0.5, 1.0, 10.0, 3.0)}


@pytest.mark.parametrize(("kwargs", "rows", "passes"), [
    ({"min_value": 1.5}, 1, False),   # was truncated to 1 and passed
    ({"min_value": 1.5}, 2, True),
    ({"max_value": 2.5}, 3, False),
    ({"max_value": 2.5}, 2, True),
    ({"min_value": 0.5, "max_value": 1.5}, 1, True),
    ({"min_value": 1, "max_value": 1}, 1, True),
])
def test_fractional_row_count_bounds_are_compared_exactly(spark, kwargs, rows, passes):
    from cdp.expectations.quality import validate_suite

    data = {"suites": {"t": {"checks": [{"view": "table", "expectations": [
        {"expectation": "expect_table_row_count_to_be_between", "kwargs": kwargs}]}]}}}
    suite = QualityConfig.from_dict(data, "local").suite("t")
    frame = spark.createDataFrame([(f"c{i}",) for i in range(rows)], "customer_id string")
    result = validate_suite(suite, frame, table="t")
    (outcome,) = result.outcomes
    assert (outcome.success, outcome.observed_value, outcome.kwargs) == (passes, rows, kwargs)
    assert result.success is passes


def test_whole_number_bounds_of_a_fractional_metric_stay_as_written(spark):
    """GX holds ``max_value: 1`` of a column maximum as 1.0: the same number, kept (conf/quality.yaml's
    identity_map member_ids check)."""
    from cdp.expectations.quality import validate_suite

    data = {"suites": {"t": {"checks": [{"view": "table", "expectations": [
        {"expectation": "expect_column_max_to_be_between", "kwargs": {"column": "v", "max_value": 1}}]}]}}}
    suite = QualityConfig.from_dict(data, "local").suite("t")
    for values, passes in (([0.5, 1.0], True), ([1.5], False)):
        result = validate_suite(suite, spark.createDataFrame([(v,) for v in values], "v double"), table="t")
        assert (result.outcomes[0].success, result.outcomes[0].note) == (passes, "")
