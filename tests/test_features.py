"""Feature snapshot: windows, as-of cut-off, zero fill, per-source compilation."""
from __future__ import annotations

from datetime import date, datetime
from functools import reduce

import pytest
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.features import FeatureConfig, FeatureInputs, build_features, prepare_sources
from cdp.features import schemas as S
from cdp.features.build import aggregation_groups
from cdp.runtime.config import ConfigError, parse_file

AS_OF = date(2024, 3, 1)


def _inputs(spark, orders=(), lines=(), returns=(), events=(), consent=(), profile=None, records=None):
    profile = profile if profile is not None else [
        ("c1", "F", date(1990, 3, 5), "Shanghai", "Shanghai", 1, "Gold", date(2020, 3, 1)),
        ("c2", None, None, None, None, None, None, None),
    ]
    records = records if records is not None else [("pos", "r1", "c1"), ("web", "w1", "c1"), ("pos", "r2", "c2")]
    return FeatureInputs(
        customer_profile=spark.createDataFrame(profile, S.CUSTOMER_PROFILE),
        customer_records=spark.createDataFrame(records, S.CUSTOMER_RECORDS),
        orders=spark.createDataFrame(list(orders), S.ORDERS),
        order_lines=spark.createDataFrame(list(lines), S.ORDER_LINES),
        returns=spark.createDataFrame(list(returns), S.RETURNS),
        events=spark.createDataFrame(list(events), S.EVENTS),
        consent=spark.createDataFrame(list(consent), S.CONSENT),
    )


def _order(order_id, when, amount, *, status="paid", discount=0.0, coupon=None, channel="pos", record="r1",
           pay="Alipay"):
    return (order_id, "pos", record, when, channel, "s1", status, amount, discount, coupon, pay, "CNY")


SMALL = {
    "windows": [7, 30],
    "lists": {"cats": [{"value": "Beauty"}, {"value": "Home & Living"}]},
    "families": {
        "orders": {
            "source": "orders",
            "aggregates": [
                {"name": "n", "agg": "count", "expr": "order_id", "where": "status <> 'cancelled'"},
                {"name": "rev", "agg": "sum", "expr": "total_amount", "where": "status <> 'cancelled'"},
                {"name": "last_t", "agg": "max", "expr": "_t", "windows": "none"},
            ],
            "derived": [{"name": "aov", "expr": "rev_{w} / nullif(n_{w}, 0)", "windows": [30]}],
        },
        "lines": {
            "source": "order_lines",
            "aggregates": [{"name": "spend_{slug}", "for_each": "cats", "agg": "sum", "expr": "line_amount",
                            "where": "_cat = '{slug}'", "windows": ["lifetime"]}],
        },
    },
}


def test_windows_cut_off_at_as_of_and_fill_zero(spark):
    config = FeatureConfig.from_dict(SMALL)
    orders = [
        _order("o_future", datetime(2024, 3, 1, 0, 0), 999.0),  # at the as-of instant: excluded
        _order("o_day_before", datetime(2024, 2, 29, 23, 59), 100.0),
        _order("o_7d_edge", datetime(2024, 2, 23, 0, 0), 50.0),  # exactly 7 days before: in 7d
        _order("o_8d", datetime(2024, 2, 22, 23, 0), 30.0),
        _order("o_cancel", datetime(2024, 2, 28), 70.0, status="cancelled"),
        _order("o_old", datetime(2023, 1, 1), 20.0),
        _order("o_unmapped", datetime(2024, 2, 28), 5.0, record="nobody"),
    ]
    lines = [("o_day_before", 1, "p1", " beauty ", 1, 60.0, 60.0), ("o_day_before", 2, "p2", "Home & Living", 1, 40.0, 40.0),
             ("o_future", 1, "p1", "Beauty", 1, 999.0, 999.0), ("o_cancel", 1, "p3", "Beauty", 1, 70.0, 70.0)]
    result = build_features(_inputs(spark, orders=orders, lines=lines), config, AS_OF)
    expected = spark.createDataFrame([
        Row(customer_id="c1", as_of=AS_OF, n_7d=2, n_30d=3, n_lifetime=4, rev_7d=150.0, rev_30d=180.0,
            rev_lifetime=200.0, last_t=datetime(2024, 2, 29, 23, 59), aov_30d=60.0,
            spend_beauty_lifetime=130.0, spend_home_living_lifetime=40.0),
        Row(customer_id="c2", as_of=AS_OF, n_7d=0, n_30d=0, n_lifetime=0, rev_7d=0.0, rev_30d=0.0,
            rev_lifetime=0.0, last_t=None, aov_30d=None, spend_beauty_lifetime=0.0,
            spend_home_living_lifetime=0.0),
    ], result.schema)
    assertDataFrameEqual(result, expected)


def test_one_aggregation_per_source(spark):
    config = FeatureConfig.from_dict(SMALL)
    plan = build_features(_inputs(spark), config, AS_OF)._jdf.queryExecution().optimizedPlan().toString()
    # one Aggregate per source table used (orders, order_lines), however many features they hold
    # (all fixed-width here: one hash aggregation each), plus the de-duplication of customer_profile rows
    assert plan.count("Aggregate [customer_id") == 3
    assert plan.count("Aggregate [customer_id#") == 3


def test_fixed_width_aggregates_hash_and_the_rest_in_a_second_group(spark):
    config = FeatureConfig.from_dict({"windows": [30], "families": {"orders": {"source": "orders", "aggregates": [
        {"name": "n", "agg": "count", "expr": "order_id"},
        {"name": "stores", "agg": "count_distinct", "expr": "store_id"},
        {"name": "last_t", "agg": "max", "expr": "_t", "windows": "none"},
        {"name": "last_channel", "agg": "max_by", "expr": "channel", "by": "_t", "windows": "none"},
        {"name": "last_paid", "agg": "max_by", "expr": "status = 'paid'", "by": "_t", "windows": "none"},
        {"name": "max_status", "agg": "max", "expr": "status", "windows": "none"},
    ]}}})
    inputs = _inputs(spark, orders=[_order("o1", datetime(2024, 2, 20), 100.0, channel="online"),
                                    _order("o2", datetime(2024, 2, 25), 50.0, status="cancelled"),
                                    _order("o3", datetime(2024, 3, 5), 70.0)])  # after as-of
    orders = prepare_sources(inputs, AS_OF)["orders"]
    groups = aggregation_groups(orders, [f for f in config.features if f.is_aggregate])
    assert [[f.name for f in group] for group in groups] == [
        ["n_30d", "n_lifetime", "last_t", "last_paid"],
        ["stores_30d", "stores_lifetime", "last_channel", "max_status"]]
    result = build_features(inputs, config, AS_OF)
    plan = result._jdf.queryExecution().executedPlan().toString().splitlines()
    hashed = [line for line in plan if " HashAggregate(keys=[customer_id" in line]  # not Object-/SortAggregate
    # the fixed-width group (last_paid: max_by of a boolean) runs in the hash aggregation, the sets do not
    assert any("max_by((status" in line for line in hashed)
    assert not any("collect_set" in line or "max_by(channel" in line for line in hashed)
    assert result.where("customer_id = 'c1'").select(
        "n_30d", "stores_lifetime", "last_t", "last_channel", "last_paid", "max_status").first() == Row(
        n_30d=2, stores_lifetime=1, last_t=datetime(2024, 2, 25), last_channel="pos", last_paid=False,
        max_status="paid")


def test_bad_feature_config_names_key(tmp_path):
    bad = {**SMALL, "families": {"orders": {"source": "orders", "aggregates": [{"name": "n", "agg": "median"}]}}}
    with pytest.raises(ValueError, match=r"families.orders.aggregates\[0\].agg"):
        FeatureConfig.from_dict(bad)
    path = tmp_path / "features.yaml"
    path.write_text("windows: [7]\nlists: {}\nfamilies:\n  x: {source: shops}\n")
    with pytest.raises(ConfigError, match=r"features.yaml: families.x.source"):
        parse_file(path, FeatureConfig.from_dict)


@pytest.fixture(scope="module")
def full_config(conf_dir):
    return parse_file(conf_dir / "features.yaml", FeatureConfig.from_dict)


def _full_inputs(spark):
    """One customer touching every family (c1), one with a profile only (c2)."""
    ts = datetime
    orders = [
        _order("o1", ts(2024, 2, 20, 9), 100.0, discount=20.0, coupon="C1", channel="online", pay="WeChat Pay"),
        _order("o2", ts(2024, 1, 1, 20), 300.0, channel="pos"),
        _order("o3", ts(2023, 12, 2, 20), 200.0, channel="pos"),
    ]
    lines = [("o1", 1, "p1", "Beauty", 2, 50.0, 100.0), ("o2", 1, "p2", "Home", 1, 300.0, 300.0),
             ("o3", 1, "p2", "Home", 1, 200.0, 200.0)]
    returns = [("rt1", "o2", "p2", 1, 300.0, ts(2024, 1, 5)), ("rt2", "o1", "p1", 1, 50.0, ts(2024, 3, 2))]

    def ev(i, etype, when, session=None, channel="web", attrs=None, category=None):
        return (f"e{i}", "web", "w1", etype, channel, when, session, None, category, attrs)

    events = [
        ev(1, "add_to_cart", ts(2024, 2, 25, 10), "s1"), ev(2, "checkout", ts(2024, 2, 25, 10, 5), "s1"),
        ev(3, "add_to_cart", ts(2024, 2, 27, 22), "s2"), ev(4, "product_view", ts(2024, 2, 27, 22), "s2",
                                                             category="Beauty"),
        ev(5, "email_sent", ts(2024, 2, 10), channel="email"), ev(6, "email_sent", ts(2024, 2, 11), channel="email"),
        ev(7, "email_open", ts(2024, 2, 11, 8), channel="email"),
        ev(8, "wechat_follow", ts(2023, 6, 1), channel="wechat"),
        ev(9, "wechat_unfollow", ts(2023, 7, 1), channel="wechat"),
        ev(10, "wechat_follow", ts(2024, 2, 1), channel="wechat"),
        ev(11, "ticket_opened", ts(2024, 2, 2), channel="service",
           attrs={"is_complaint": "true", "resolution_hours": "10", "satisfaction": "2"}),
        ev(12, "ticket_opened", ts(2024, 2, 3), channel="service",
           attrs={"is_complaint": "false", "resolution_hours": "20", "satisfaction": "4"}),
        ev(13, "wechat_unfollow", ts(2024, 3, 5), channel="wechat"),  # after as-of: ignored
    ]
    consent = [("web", "w1", "email", True, ts(2023, 1, 1)), ("web", "w1", "email", False, ts(2024, 1, 1)),
               ("pos", "r1", "sms", True, ts(2024, 1, 1)), ("pos", "r1", "sms", False, ts(2024, 3, 2))]
    return _inputs(spark, orders, lines, returns, events, consent)


def test_full_catalogue_families(spark, full_config):
    result = build_features(_full_inputs(spark), full_config, AS_OF)
    columns = ["customer_id", "orders_count_lifetime", "orders_revenue_90d", "orders_aov_lifetime",
               "orders_discount_share_30d", "orders_coupon_share_lifetime", "orders_online_count_30d",
               "orders_pay_wechat_pay_count_lifetime", "orders_category_count_lifetime", "cat_spend_beauty_lifetime",
               "cat_share_home_lifetime", "returns_count_lifetime", "returns_rate_lifetime", "days_since_last_order",
               "ipt_mean_days", "orders_evening_share", "beh_cart_sessions_7d", "beh_abandoned_carts_7d",
               "beh_cart_abandon_rate_7d", "cat_views_beauty_30d", "eng_email_sent_30d", "eng_email_open_rate_30d",
               "eng_wechat_following", "eng_wechat_follow_days", "consent_email", "consent_sms", "consent_wechat",
               "svc_tickets_30d", "svc_complaints_30d", "svc_resolution_hours_90d", "svc_satisfaction_90d",
               "prof_age", "prof_age_band", "prof_days_to_birthday", "prof_member_level",
               "prof_member_tenure_days"]
    expected = spark.createDataFrame([
        ("c1", 3, 600.0, 200.0, 20.0 / 120.0, 1 / 3, 1, 1, 2, 100.0, 500.0 / 600.0, 1, 1 / 3, 10, (79 * 24 + 13) / 24 / 2, 2 / 3,
         2, 1, 0.5, 1, 2, 0.5, True, 29, False, True, None, 2, 1, 15.0, 3.0, 33, "25_34", 4, "gold", 1461),
        ("c2", 0, 0.0, None, None, None, 0, 0, 0, 0.0, None, 0, None, None, None, None, 0, 0, None, 0, 0, None,
         False, None, None, None, None, 0, 0, None, None, None, None, None, None, None),
    ], result.select(columns).schema)
    assertDataFrameEqual(result.select(columns), expected)


def test_several_dates_in_one_pass_equal_each_single_date_snapshot(spark, full_config):
    inputs = _full_inputs(spark)
    # the usual as-of, and a later date that sees the late return, SMS opt-out and WeChat unfollow
    dates = [AS_OF, date(2024, 3, 10)]
    combined = build_features(inputs, full_config, dates)
    one_by_one = reduce(DataFrame.unionByName, [build_features(inputs, full_config, day) for day in dates])

    def comparable(df):  # collect_set order is not defined: sort arrays before comparing
        arrays = [f.name for f in df.schema.fields if f.dataType.typeName() == "array"]
        return df.withColumns({name: F.array_sort(name) for name in arrays})

    assertDataFrameEqual(comparable(combined), comparable(one_by_one))  # 2 customers x 2 dates, every feature

    def aggregates(df):
        return df._jdf.queryExecution().optimizedPlan().toString().count("Aggregate [customer_id#")

    # still one aggregation per source table, now keyed by (customer_id, as_of)
    assert aggregates(combined) == aggregates(build_features(inputs, full_config, AS_OF))


def test_reduced_config_keeps_what_the_columns_derive_from_and_builds_the_same_values(spark, full_config):
    reduced = full_config.only(["orders_aov_lifetime", "beh_cart_abandon_rate_7d", "prof_age_band"])
    assert [f.name for f in reduced.features] == [
        "orders_count_lifetime", "orders_revenue_lifetime", "orders_aov_lifetime",
        "_cart_sessions_7d", "_checkout_sessions_7d", "beh_cart_sessions_7d", "beh_abandoned_carts_7d",
        "beh_cart_abandon_rate_7d", "prof_age", "prof_age_band"]
    inputs = _full_inputs(spark)
    dates = [AS_OF, date(2024, 3, 10)]
    result = build_features(inputs, reduced, dates)
    assert result.columns == ["customer_id", "as_of", *[f.name for f in reduced.public_features()]]
    assertDataFrameEqual(result, build_features(inputs, full_config, dates).select(result.columns))
    # only the orders and events aggregations are left
    plan = result._jdf.queryExecution().optimizedPlan().toString()
    assert plan.count("Aggregate [customer_id#") == 3  # orders; events hash + set-based
    with pytest.raises(KeyError, match="no feature named 'orders_count_2d'"):
        full_config.only(["orders_count_lifetime", "orders_count_2d"])


def test_campaign_responses_feed_the_engagement_features(spark, full_config):
    """Response events of a campaign send (sources email_responses / sms_responses) count like any
    other engagement event: sends, opens and the conversions the channel reports."""
    linked = {"message_id": "vip.esp.v3", "audience": "vip", "publish_version": "3"}

    def response(i, etype, when):
        return (f"r{i}", "web", "w1", etype, etype.split("_")[0], when, None, None, None, linked)

    events = [response(1, "email_sent", datetime(2024, 2, 20)), response(2, "email_delivered", datetime(2024, 2, 20)),
              response(3, "email_open", datetime(2024, 2, 21)), response(4, "email_conversion", datetime(2024, 2, 22)),
              response(5, "sms_sent", datetime(2024, 1, 10)), response(6, "sms_conversion", datetime(2023, 12, 15))]
    result = build_features(_inputs(spark, events=events), full_config, AS_OF)
    columns = ["customer_id", "eng_email_sent_30d", "eng_email_open_rate_30d", "eng_email_conversion_30d",
               "eng_sms_sent_90d", "eng_sms_conversion_30d", "eng_sms_conversion_90d"]
    assertDataFrameEqual(result.select(columns), spark.createDataFrame(
        [("c1", 1, 1.0, 1, 1, 0, 1), ("c2", 0, None, 0, 0, 0, 0)], result.select(columns).schema))
