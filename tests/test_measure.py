"""Measuring audiences against control groups: lift and its intervals, windows, goals, the global control."""
from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.audiences.language import Audience, in_global_control, select_members
from cdp.engage import EngageConfig, Goal, GroupTotals, goal_actions, lift, member_outcomes

T0 = datetime(2025, 7, 1, 23, 59, 59)


def test_lift_for_known_counts_is_exact():
    small = lift(GroupTotals(1000, 120, 0.0, 0.0), GroupTotals(1000, 100, 0.0, 0.0))
    assert (small.rate_treatment, small.rate_control) == (0.12, 0.10)
    assert small.abs_lift == pytest.approx(0.02)
    assert (small.abs_lift_low, small.abs_lift_high) == pytest.approx((-0.007411, 0.047411), abs=1e-6)
    assert small.rel_lift == pytest.approx(0.2)
    assert (small.rel_lift_low, small.rel_lift_high) == pytest.approx((-0.065894, 0.541581), abs=1e-6)
    assert small.conclusive is False  # the interval holds zero

    large = lift(GroupTotals(10000, 1200, 0.0, 0.0), GroupTotals(10000, 1000, 0.0, 0.0))
    assert (large.abs_lift_low, large.abs_lift_high) == pytest.approx((0.011332, 0.028668), abs=1e-6)
    assert (large.rel_lift_low, large.rel_lift_high) == pytest.approx((0.108614, 0.298919), abs=1e-6)
    assert large.conclusive is True


def test_revenue_per_member_has_a_welch_interval():
    # treatment revenues 10, 0, 20, 0; control 0, 5 (sums and sums of squares)
    result = lift(GroupTotals(4, 2, 30.0, 500.0), GroupTotals(2, 1, 5.0, 25.0))
    assert (result.revenue_per_member_treatment, result.revenue_per_member_control) == (7.5, 2.5)
    assert (result.revenue_diff_low, result.revenue_diff_high) == pytest.approx((-5.585015, 15.585015), abs=1e-5)


def test_without_a_control_group_nothing_is_concluded():
    result = lift(GroupTotals(50, 5, 0.0, 0.0), GroupTotals(0, 0, 0.0, 0.0))
    assert (result.rate_treatment, result.rate_control, result.abs_lift, result.conclusive) == (0.1, None, None, False)


def test_a_conversion_counts_only_inside_its_window(spark):
    members = spark.createDataFrame([("c1", False), ("c2", False), ("c3", False), ("c4", True), ("c5", True)],
                                    "customer_id string, in_control boolean")
    actions = spark.createDataFrame([
        ("c1", datetime(2025, 7, 1, 12, 0), 50.0),    # before entering: not a conversion
        ("c2", datetime(2025, 7, 3, 9, 0), 80.0),     # inside
        ("c2", datetime(2025, 7, 4, 9, 0), 20.0),     # inside: revenue adds up
        ("c3", datetime(2025, 7, 8, 23, 59, 59), 10.0),  # the window's last instant: inside
        ("c4", datetime(2025, 7, 9, 0, 0), 30.0),     # after the window
        ("c5", datetime(2025, 7, 2, 0, 0), 0.0),      # inside, no revenue (an event goal)
    ], "customer_id string, action_time timestamp, revenue double")
    outcomes = member_outcomes(members, actions, entered_at=T0, window_end=datetime(2025, 7, 8, 23, 59, 59))
    expected = spark.createDataFrame([("c1", False, False, 0.0), ("c2", False, True, 100.0), ("c3", False, True, 10.0),
                                      ("c4", True, False, 0.0), ("c5", True, True, 0.0)],
                                     "customer_id string, in_control boolean, converted boolean, revenue double")
    assertDataFrameEqual(outcomes, expected)


def test_order_goals_filter_on_status_channel_amount_and_category(spark):
    orders = spark.createDataFrame([
        ("o1", "c1", datetime(2025, 7, 2), "online", "paid", 120.0),
        ("o2", "c2", datetime(2025, 7, 2), "online", None, 150.0),       # NULL status: not cancelled
        ("o3", "c3", datetime(2025, 7, 2), "online", "cancelled", 300.0),
        ("o4", "c4", datetime(2025, 7, 2), "pos", "paid", 500.0),
        ("o5", "c5", datetime(2025, 7, 2), "online", "paid", 40.0),
    ], "order_id string, customer_id string, order_time timestamp, channel string, status string, total_amount double")
    lines = spark.createDataFrame([("o1", "shoes"), ("o2", "beauty"), ("o5", "shoes")], "order_id string, category string")
    goal = Goal("online_shoes", "order", 14, category="shoes", channel="online", min_amount=100)
    assertDataFrameEqual(goal_actions(goal, orders=orders, order_lines=lines, events=None),
                         spark.createDataFrame([("c1", datetime(2025, 7, 2), 120.0)],
                                               "customer_id string, action_time timestamp, revenue double"))
    any_order = goal_actions(Goal("any", "order", 14), orders=orders, order_lines=None, events=None)
    assert sorted(r["customer_id"] for r in any_order.collect()) == ["c1", "c2", "c4", "c5"]


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "buy", "kind": "purchase", "within_days": 7}, "goals[0].kind: expected one of ['order', 'event']"),
    ({"name": "buy", "kind": "order", "within_days": 0}, "goals[0].within_days: expected a positive number"),
    ({"name": "open", "kind": "event", "within_days": 7}, "goals[0].event_type: an event goal needs an event type"),
    ({"name": "open", "kind": "event", "event_type": "email_open", "within_days": 7, "min_amount": 5},
     "goals[0]: category and min_amount apply to order goals only"),
    ({"name": "buy", "kind": "order", "within_days": 7, "amount": 5}, "goals[0]: unknown keys ['amount']"),
])
def test_goal_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        Audience.from_dict({"name": "a", "channel": "email", "where": {"tag": "t", "=": True}, "goals": [data]})


def _audience(**extra) -> Audience:
    return Audience.from_dict({"name": "promo", "channel": "email", "where": {"tag": "vip", "=": True}, **extra})


def test_the_global_control_group_is_held_out_of_every_audience_but_transactional_ones(spark):
    customers = spark.range(20000).select(F.format_string("c%05d", "id").alias("customer_id"),
                                          F.lit(True).alias("tag__vip"))
    held = {r["customer_id"] for r in customers.filter(in_global_control(5.0)).collect()}
    assert 900 < len(held) < 1100  # about 5 % of 20,000, drawn by hash

    promo = select_members(customers, _audience(), global_control_percent=5.0)
    other = select_members(customers, _audience(name="other"), global_control_percent=5.0)
    receipts = select_members(customers, _audience(name="receipts", transactional=True), global_control_percent=5.0)
    controls = {name: {r["customer_id"] for r in frame.filter("in_control").collect()}
                for name, frame in (("promo", promo), ("other", other), ("receipts", receipts))}
    assert controls == {"promo": held, "other": held, "receipts": set()}  # the same people everywhere
    assert promo.count() == 20000  # still members: measured like everyone else, exported never (in control)


def test_engage_config_is_validated():
    assert EngageConfig.from_dict({"global_control": {"percent": 5}}).global_control_percent == 5.0
    with pytest.raises(ValueError, match=r"global_control.percent: expected a number in \[0, 50\)"):
        EngageConfig.from_dict({"global_control": {"percent": 60}})


def test_cdp_measure_reports_closed_windows_once_and_open_ones_until_they_close(spark, lake, tmp_path):
    import shutil

    from cdp.jobs import measure as measure_job
    from cdp.runtime.config import JobContext, Profile

    conf = tmp_path / "conf"
    shutil.copytree(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf", conf)
    for path in (conf / "audiences").glob("*.yaml"):
        path.unlink()
    (conf / "audiences" / "promo.yaml").write_text(
        "name: promo\nchannel: email\nwhere: {tag: vip, '=': true}\n"
        "goals:\n  - {name: buy_7d, kind: order, within_days: 7}\n")
    ctx = JobContext(conf_dir=conf, profile=Profile("local", lake.root), lake_root=lake.root, run_id="m1")
    member_schema = "customer_id string, in_control boolean"
    lake.write(spark.createDataFrame([("c1", False), ("c2", False), ("c3", True), ("c4", True)], member_schema),
               "audience_promo", mode="overwrite", metadata={"as_of": "2025-07-01T23:59:59"})
    lake.write(spark.createDataFrame([("c1", False), ("c3", True)], member_schema),
               "audience_promo", mode="overwrite", metadata={"as_of": "2025-07-06T23:59:59"})
    lake.write(spark.createDataFrame([("orders", "r1", "c1"), ("orders", "r2", "c3"), ("orders", "r3", "c2")],
                                     "source string, record_id string, customer_id string"), "customer_records")
    lake.write(spark.createDataFrame([
        ("o1", "orders", "r1", datetime(2025, 7, 3), "online", "paid", 100.0),   # c1, in both windows
        ("o2", "orders", "r2", datetime(2025, 7, 10), "pos", "paid", 50.0),      # c3 (control), in the second only
        ("o3", "orders", "r3", datetime(2025, 6, 30), "online", "paid", 70.0),   # c2, before entering
    ], "order_id string, source string, record_id string, order_time timestamp, channel string, status string, "
       "total_amount double"), "silver_orders")

    first = measure_job.run(spark, ctx, lake=lake, as_of="2025-07-09")
    assert (first.closed, first.open, first.skipped) == (1, 1, 0)
    second = measure_job.run(spark, ctx, lake=lake, as_of="2025-07-20")
    assert (second.closed, second.open, second.skipped) == (1, 0, 1)

    rows = (lake.read("audience_performance")
            .select("run_id", "publish_version", "status", "members_treatment", "members_control",
                    "conversions_treatment", "conversions_control", "rate_treatment", "rate_control",
                    "revenue_per_member_treatment", "revenue_per_member_control", "conclusive"))
    expected = spark.createDataFrame([
        ("m1", 0, "closed", 2, 2, 1, 0, 0.5, 0.0, 50.0, 0.0, False),
        ("m1", 1, "open", 1, 1, None, None, None, None, None, None, False),
        ("m1", 1, "closed", 1, 1, 0, 1, 0.0, 1.0, 0.0, 50.0, False),
    ], "run_id string, publish_version long, status string, members_treatment long, members_control long, "
       "conversions_treatment long, conversions_control long, rate_treatment double, rate_control double, "
       "revenue_per_member_treatment double, revenue_per_member_control double, conclusive boolean")
    assertDataFrameEqual(rows, expected)
