"""The HTML run report, rendered from a tiny lake built by hand with the lake API."""
from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from cdp import report as report_sections
from cdp.jobs import report
from cdp.runtime.config import JobContext, Profile

RUN = "20260101T000000Z-abc123"
EARLIER = "20251231T000000Z-000000"
T0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)


def _ctx(lake) -> JobContext:
    return JobContext(conf_dir=Path("conf"), profile=Profile("local", lake.root, {}), lake_root=lake.root,
                      run_id="report-test")


def _runs(spark, lake):
    from cdp.jobs.run import _runs_schema

    rows = [
        (EARLIER, "run", "ok", "land", None, None, datetime(2025, 12, 31, tzinfo=UTC), 30.0, {}, None),
        (RUN, "land", "ok", "raw -> bronze", 120, 118, T0, 4.5, {"bronze_crm": 0, "quarantine": 0}, None),
        (RUN, "stitch", "ok", "identity", 40, 61, T0, 9.25, {"identity_map": 1}, None),
        (RUN, "tag", "failed", "tags", 5, None, T0, 1.0, {}, "ValueError: bad tag\ntrace"),
        (RUN, "export", "not_run", "an earlier step failed", None, None, T0, 0.0, {}, None),
        (RUN, "run", "failed", "land -> export", None, None, T0, 14.75, {}, "ValueError: bad tag"),
    ]
    lake.write(spark.createDataFrame(rows, _runs_schema()), "runs")


def _performance(spark, lake):
    """vip_email's checkout goal: v1 closed, v2 open then closed (both rows kept), v3 still open."""
    from cdp.jobs.measure import RESULT_SCHEMA

    def closed(version, treatment, control, at):
        t_conv, t_n = treatment
        c_conv, c_n = control
        p_t, p_c = t_conv / t_n, c_conv / c_n
        return (RUN, "vip_email", version, "checkout_7d", T0, T0, "closed", t_n, c_n, t_conv, c_conv, p_t, p_c,
                p_t - p_c, LIFTS[version][0], LIFTS[version][1], None, None, None, None, None, None, None,
                LIFTS[version][0] > 0, at)

    def opened(version, at):
        return (RUN, "vip_email", version, "checkout_7d", T0, datetime(2026, 1, 8, tzinfo=UTC), "open", 90, 10,
                None, None, None, None, None, None, None, None, None, None, None, None, None, None, False, at)

    rows = [closed(1, (12, 100), (1, 20), T0), opened(2, datetime(2025, 12, 30, tzinfo=UTC)),
            closed(2, (30, 100), (2, 20), T0), opened(3, T0)]
    lake.write(spark.createDataFrame(rows, RESULT_SCHEMA + ", measured_at timestamp"), "audience_performance")


LIFTS = {1: (-0.044806, 0.184806), 2: (0.040772, 0.359228)}  # the Wald intervals of those counts


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def test_report_renders_every_section_from_a_hand_built_lake(spark, lake, monkeypatch, tmp_path):
    _runs(spark, lake)
    lake.write(spark.createDataFrame(
        [("crm", "l1", RUN, 100, 98, 2), ("orders", "l2", RUN, 20, 20, 0)],
        "source string, load_id string, run_id string, raw_records long, bronze_rows long, quarantined_rows long"),
        "load_log")
    lake.write(spark.createDataFrame(
        [("crm", "l1", "bad timestamp: 2024-13-01"), ("crm", "l1", "bad timestamp: 2024-00-00")],
        "source string, load_id string, reason string"), "quarantine")
    lake.write(spark.createDataFrame([("e1",), ("e2",)], "event_id string"), "silver_events")
    lake.write(spark.createDataFrame(
        [("email", "a@x.cn", "c1", False), ("phone", "+861", "c1", False), ("device_id", "d1", "c1", True),
         ("email", "b@x.cn", "c2", False)],
        "id_type string, id_value string, customer_id string, is_shared boolean"), "identity_map")
    lake.write(spark.createDataFrame(
        [(RUN, "new", "c2", [], "first seen"), (RUN, "merge", "c1", ["c9"], "shared email"),
         (EARLIER, "new", "c1", [], "first seen")],
        "run_id string, event string, customer_id string, old_ids array<string>, reason string"),
        "identity_history")
    lake.write(spark.createDataFrame(
        [(RUN, T0, date(2026, 1, 1), "vip", "rule", "def:abc", 2, 1, 0.5),
         (RUN, T0, date(2026, 1, 1), "churn_risk", "predictive", "model:cdp_churn/1", 2, 2, 1.0)],
        "run_id string, computed_at timestamp, as_of date, tag string, kind string, version string, "
        "customers long, covered long, coverage double"), "tag_stats")
    lake.write(spark.createDataFrame(
        [(RUN, "vip_email", "email", 3, 20, 2, 1, 0, 17, 2, T0)],
        "run_id string, audience string, channel string, publish_version long, matched long, no_consent long, "
        "unreachable long, suppressed long, members long, in_control long, computed_at timestamp"),
        "audience_stats")
    lake.write(spark.createDataFrame(
        [("vip_email", "c1", "entered", RUN), ("vip_email", "c3", "exited", RUN)],
        "audience string, customer_id string, change string, run_id string"), "audience_changes")
    _performance(spark, lake)
    gate_dir = Path(lake.root, "_reports", "quality", RUN)
    gate_dir.mkdir(parents=True)
    (gate_dir / "audience_vip_email.json").write_text(json.dumps({
        "suite": "audience", "table": "audience_vip_email", "run_id": RUN, "success": False, "warn_only": False,
        "outcomes": [{"view": "members", "expectation": "expect_column_values_to_not_be_null", "success": True,
                      "blocking": False},
                     {"view": "compliance", "expectation": "expect_table_row_count_to_equal", "success": False,
                      "blocking": True}]}))
    for name, suite in (("tags_wide", "tags_wide"), ("tags_wide.tags_drift", "tags_drift")):  # two suites, one table
        (gate_dir / f"{name}.json").write_text(json.dumps({
            "suite": suite, "table": "tags_wide", "run_id": RUN, "success": True, "warn_only": False,
            "outcomes": [{"view": "tags", "expectation": "expect_column_values_to_be_between", "success": True,
                          "blocking": True}]}))
    from cdp.runtime import mlflow as mlflow_store

    client = mlflow_store.client(lake.root)  # the store the report reads (conftest points it at tmp_path)
    experiment = client.create_experiment("cdp_churn")
    trained = client.create_run(experiment)
    client.log_metric(trained.info.run_id, "test_auc", 0.81)
    # what cdp train logs beside a classifier: its and the baseline's calibration curve and lift by decile
    for who, rates in (("model", (0.1, 0.5, 0.8)), ("baseline", (0.3, 0.4, 0.5))):
        client.log_text(trained.info.run_id, "bin,customers,mean_predicted,observed_rate\n" + "".join(
            f"{i},10,{(i + 0.5) / 3},{rate}\n" for i, rate in enumerate(rates)),
            f"diagnostics/calibration_curve_{who}.csv")
        client.log_text(trained.info.run_id, "decile,customers,mean_score,mean_actual,lift,cumulative_share\n" +
                        "".join(f"{d},3,0.5,0.5,{2.0 / d if who == 'model' else 1.0},0.1\n" for d in range(1, 11)),
                        f"diagnostics/lift_by_decile_{who}.csv")
    client.create_registered_model("cdp_churn")
    client.create_model_version("cdp_churn", f"{tmp_path}/model", run_id=trained.info.run_id)
    client.set_registered_model_alias("cdp_churn", "champion", "1")

    index = Path(report.run(spark, _ctx(lake), lake=lake, run_id=RUN))

    page = index.read_text(encoding="utf-8")
    assert index == Path(lake.root, "_reports", "runs", RUN, "index.html")
    assert "Not shown" not in page and "could not be rendered" not in page
    charts = re.findall(r'<img src="([^"]+)"', page)
    assert charts == ["step_timings.png", "run_history.png", "source_volumes.png", "quarantine_reasons.png",
                      "silver_rows.png", "component_sizes.png", "identifiers_by_type.png", "identity_events.png",
                      "tag_coverage.png", "model_metrics.png", "diag_cdp_churn_calibration.png",
                      "diag_cdp_churn_lift.png", "audience_sizes.png", "audience_exclusions.png",
                      "audience_changes.png", "performance_vip_email_checkout_7d.png", "gates.png"]
    assert all(_png(index.parent / chart) for chart in charts)
    assert "<b>FAILED</b> in 14.8 s" in page
    assert "<td>tag</td><td>failed</td>" in page and "ValueError: bad tag" in page and "trace" not in page
    assert "2 quarantined records" in page  # both "bad timestamp: ..." reasons grouped as one kind
    assert "2 customers; 2.00 identifiers per customer on average; the largest holds 3." in page
    assert "<td>merge</td><td>shared email</td>" in page
    assert "1 predictive, 1 rule; 2 customers" in page
    assert "cdp_churn" in page and "test_auc=0.810" in page and "champion" in page
    for name in ("audience_vip_email", "tags_wide", "tags_wide.tags_drift"):  # each gate links its own report
        assert f'href="../../../_reports/quality/{RUN}/{name}.html"' in page
    assert "<td>tags_wide</td><td>tags_drift</td>" in page
    assert f"Gates of run {RUN}." in page
    # the newest row per publish and goal: v2's closed result replaces its earlier open one
    assert "2 closed and 1 open results" in page
    assert ("<td>vip_email</td><td>checkout_7d</td><td class=\"num\">1</td><td>closed</td><td>12 / 100</td>"
            "<td>1 / 20</td><td>+7.00 pp [-4.48, +18.48]</td><td>no</td>") in page
    assert "<td>30 / 100</td><td>2 / 20</td><td>+20.00 pp [+4.08, +35.92]</td><td>yes</td>" in page
    # an open result has members only: its conversions are not counted before the window closes
    assert ("<td class=\"num\">3</td><td>open until 2026-01-08</td><td>90 members</td><td>10 members</td>"
            "<td></td><td>no</td>") in page
    latest = Path(lake.root, "_reports", "runs", "latest")
    assert (latest / "index.html").read_text(encoding="utf-8") == page
    assert _png(latest / "gates.png")


def test_headline_metric_ranks_classifiers_by_auc_and_clv_by_spearman():
    assert report_sections.headline_metric({"eval_auc": 0.71, "test_auc": 0.9, "eval_log_loss": 0.6}) == ("auc", 0.71)
    assert report_sections.headline_metric({"test_auc": 0.81}) == ("auc", 0.81)  # no held-out figure: any *_auc
    assert report_sections.headline_metric({"eval_mae": 287.9, "eval_spearman": 0.31}) == ("spearman", 0.31)
    assert report_sections.headline_metric({"eval_mae": 287.9}) is None


def test_run_started_label_reads_the_run_id():
    assert report_sections.run_started_label("20261126T165126Z-a07391") == "11-26 16:51"
    assert report_sections.run_started_label("manual-run-000000000") == "run-000000000"  # not a run id: its tail


def test_sections_without_their_tables_say_so(spark, lake):
    _runs(spark, lake)
    index = Path(report.run(spark, _ctx(lake), lake=lake))  # no run id: the latest run in `runs`

    page = index.read_text(encoding="utf-8")
    assert RUN in index.parts
    assert re.findall(r'<img src="([^"]+)"', page) == ["step_timings.png", "run_history.png"]
    for missing in ("table load_log not in the lake", "table quarantine not in the lake",
                    "no silver_* tables in the lake", "table identity_map not in the lake",
                    "table tag_stats not in the lake", "table audience_stats not in the lake",
                    "table audience_performance not in the lake",
                    "no gate reports under _reports/quality/ in the lake"):
        assert f"Not shown: {missing}." in page


def test_report_without_any_run_is_a_clear_failure(spark, lake):
    from cdp.jobs.entry import JobFailed

    with pytest.raises(JobFailed, match="no runs recorded"):
        report.run(spark, _ctx(lake), lake=lake)


def test_page_is_rendered_from_the_packaged_templates_with_everything_escaped():
    from datetime import datetime

    from cdp.report import Cell, Heading, Paragraph, RunStatus, Section, Table, render_html

    sections = [
        Section("run", "Run <1>", lead=[RunStatus("r&1", "ok", 3.25, datetime(2026, 12, 1, 8, 0, 0))],
                body=[Table(("step", "rows"), ((Cell("<script>"), Cell("1,234", "num")),
                                               (Cell("report", href="a b/x.html?q=1&r=2"), Cell("", None))))],
                charts=["steps.png"]),
        Section("tags", "Tags", body=[Paragraph("a < b"), Heading("Lowest & worst")]),
        Section("models", "Models", absent="no <models>"),
    ]
    page = render_html("r&1", "/lake", sections, datetime(2026, 12, 1, 9, 30, 0))
    assert page.startswith('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CDP run r&amp;1</title>')
    assert "td.num{text-align:right" in page  # the packaged stylesheet, inlined
    for fragment in (
        '<nav><a href="#run">Run &lt;1&gt;</a> <a href="#tags">Tags</a> <a href="#models">Models</a> </nav>',
        '<section id="run"><h2>Run &lt;1&gt;</h2><p class="status ok">Run r&amp;1: <b>OK</b> in 3.2 s, started '
        '2026-12-01 08:00:00 UTC.</p><div class="charts"><img src="steps.png" alt="steps.png"></div>'
        '<table><thead><tr><th>step</th><th>rows</th></tr></thead><tbody><tr><td>&lt;script&gt;</td>'
        '<td class="num">1,234</td></tr><tr><td><a href="a b/x.html?q=1&amp;r=2">report</a></td><td></td></tr>'
        '</tbody></table></section>',
        '<section id="tags"><h2>Tags</h2><p>a &lt; b</p><h3>Lowest &amp; worst</h3></section>',
        '<section id="models"><h2>Models</h2><p class="absent">Not shown: no &lt;models&gt;.</p></section>',
        "run r&amp;1 · lake /lake · generated 2026-12-01 09:30:00 UTC",
    ):
        assert fragment in page
    assert "<script>" not in page
