"""The audience language on tiny hand-made frames: operators, nesting, behaviour, exclusions, caps."""
from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.audiences.language import (
    Audience,
    behaviour_conditions,
    behaviour_flags,
    compile_condition,
    customer_frame,
    parse_condition,
    referenced_columns,
    select_members,
    validate_audience,
)

AS_OF = datetime(2026, 11, 1, 0, 0, 0)

PROFILE_SCHEMA = "customer_id string, city_tier int, gender string, email string, phone string"
TAGS_SCHEMA = ("customer_id string, value_tier string, churn_risk double, is_employee boolean, "
               "clv double, run_id string")
EVENTS_SCHEMA = "customer_id string, event_type string, channel string, event_time timestamp"
PURCHASES_SCHEMA = "customer_id string, order_id string, order_time timestamp, category string"


@pytest.fixture()
def customers(spark):
    profile = spark.createDataFrame([
        ("c1", 1, "F", "a@x.com", None),
        ("c2", 2, "M", "b@x.com", None),
        ("c3", 3, None, None, "+8613800000003"),
        ("c4", None, "F", "d@x.com", None),
        ("c5", 1, "M", None, None),
    ], PROFILE_SCHEMA)
    tags = spark.createDataFrame([
        ("c1", "gold", 0.9, False, 500.0, "r1"),
        ("c2", "silver", 0.5, False, 100.0, "r1"),
        ("c3", "platinum", 0.7, True, 900.0, "r1"),
        ("c4", None, None, None, None, "r1"),
        ("c5", "bronze", 0.1, False, 10.0, "r1"),
    ], TAGS_SCHEMA)
    return profile, tags


def members_of(spark, customers, spec: dict, *, events=None, purchases=None, eligible=None) -> list[str]:
    profile, tags = customers
    audience = Audience.from_dict({"name": "t", "channel": "email", **spec})
    flags = behaviour_flags(behaviour_conditions([audience]), as_of=AS_OF, events=events, purchases=purchases)
    # the frame keeps only the columns the audience refers to, as the job builds it
    frame = customer_frame(profile, tags, flags, only=set(referenced_columns(audience)))
    rows = select_members(frame, audience, eligible=eligible).collect()
    return sorted(r.customer_id for r in rows)


OPERATOR_CASES = [
    ({"tag": "value_tier", "=": "gold"}, ["c1"]),
    ({"tag": "value_tier", "!=": "gold"}, ["c2", "c3", "c4", "c5"]),  # null is "not gold"
    ({"tag": "value_tier", "in": ["gold", "platinum"]}, ["c1", "c3"]),
    ({"tag": "value_tier", "not in": ["gold", "platinum"]}, ["c2", "c4", "c5"]),
    ({"tag": "churn_risk", "between": [0.5, 0.7]}, ["c2", "c3"]),
    ({"tag": "churn_risk", ">=": 0.7}, ["c1", "c3"]),
    ({"tag": "churn_risk", "<=": 0.5}, ["c2", "c5"]),
    ({"tag": "churn_risk", ">": 0.7}, ["c1"]),
    ({"tag": "churn_risk", "<": 0.5}, ["c5"]),
    ({"tag": "value_tier", "is null": True}, ["c4"]),
    ({"tag": "value_tier", "is not null": True}, ["c1", "c2", "c3", "c5"]),
    ({"tag": "is_employee", "=": True}, ["c3"]),
    ({"profile": "city_tier", "<=": 2}, ["c1", "c2", "c5"]),
    ({"profile": "gender", "=": "F"}, ["c1", "c4"]),
]


def test_each_operator_selects_expected_customers(spark, customers):
    # all operators evaluated in one Spark job: one boolean column per case
    profile, tags = customers
    frame = customer_frame(profile, tags)
    columns = [compile_condition(parse_condition(cond, "where")).alias(f"case{i}")
               for i, (cond, _) in enumerate(OPERATOR_CASES)]
    rows = frame.select("customer_id", *columns).collect()
    for i, (cond, expected) in enumerate(OPERATOR_CASES):
        selected = sorted(r.customer_id for r in rows if r[f"case{i}"])
        assert selected == expected, cond
        assert all(r[f"case{i}"] is not None for r in rows), f"{cond}: compiled test must never be null"


def test_nested_all_any_not(spark, customers):
    spec = {"where": {"all": [
        {"any": [{"tag": "value_tier", "in": ["gold", "platinum"]}, {"profile": "city_tier", "=": 2}]},
        {"not": {"tag": "is_employee", "=": True}},
    ]}}
    # c1 gold; c2 tier 2; c3 platinum but an employee
    assert members_of(spark, customers, spec) == ["c1", "c2"]


def test_not_of_a_null_comparison_includes_unknowns(spark, customers):
    # c4 has no churn risk: "churn_risk >= 0.5" is false for it, so its negation includes it
    assert members_of(spark, customers, {"where": {"not": {"tag": "churn_risk", ">=": 0.5}}}) == ["c4", "c5"]


def test_exclusions_remove_matching_customers(spark, customers):
    spec = {"where": {"tag": "churn_risk", ">=": 0.5},
            "exclude": [{"tag": "is_employee", "=": True}, {"profile": "city_tier", "=": 2}]}
    assert members_of(spark, customers, spec) == ["c1"]


def test_eligible_frame_limits_members(spark, customers):
    eligible = spark.createDataFrame([("c1",), ("c5",)], "customer_id string")
    assert members_of(spark, customers, {"where": {"profile": "city_tier", "=": 1}}, eligible=eligible) == ["c1", "c5"]


def test_event_condition_counts_in_window_and_channel(spark, customers):
    events = spark.createDataFrame([
        ("c1", "email_open", "email", datetime(2026, 10, 25)),
        ("c1", "email_open", "email", datetime(2026, 10, 28)),
        ("c2", "email_open", "email", datetime(2026, 10, 28)),  # only once
        ("c3", "email_open", "email", datetime(2026, 9, 1)),   # outside 30 days
        ("c3", "email_open", "email", datetime(2026, 10, 30)),
        ("c5", "email_open", "app", datetime(2026, 10, 29)),   # other channel
        ("c5", "email_open", "app", datetime(2026, 10, 30)),
    ], EVENTS_SCHEMA)
    spec = {"where": {"event": "email_open", "at_least": 2, "within_days": 30, "channel": "email"}}
    assert members_of(spark, customers, spec, events=events) == ["c1"]
    spec_any_channel = {"where": {"event": "email_open", "at_least": 2, "within_days": 30}}
    assert members_of(spark, customers, spec_any_channel, events=events) == ["c1", "c5"]


def test_did_x_but_not_y_afterwards(spark, customers):
    events = spark.createDataFrame([
        ("c1", "add_to_cart", "web", datetime(2026, 10, 30)),                   # abandoned
        ("c2", "add_to_cart", "web", datetime(2026, 10, 29)),
        ("c2", "checkout", "web", datetime(2026, 10, 30)),                      # converted
        ("c3", "checkout", "web", datetime(2026, 10, 28)),
        ("c3", "add_to_cart", "web", datetime(2026, 10, 30)),                   # new cart after checkout
        ("c5", "add_to_cart", "web", datetime(2026, 10, 1)),                    # too old
    ], EVENTS_SCHEMA)
    spec = {"where": {"did": "add_to_cart", "not_followed_by": "checkout", "within_days": 7}}
    assert members_of(spark, customers, spec, events=events) == ["c1", "c3"]


def test_bought_category_in_window(spark, customers):
    purchases = spark.createDataFrame([
        ("c1", "o1", datetime(2026, 10, 1), "shoes"),
        ("c2", "o2", datetime(2026, 5, 1), "shoes"),       # too old for 90 days
        ("c3", "o3", datetime(2026, 10, 2), "bags"),
        ("c3", "o4", datetime(2026, 10, 3), "bags"),
        ("c5", "o5", datetime(2026, 10, 3), "beauty"),
    ], PURCHASES_SCHEMA)
    shoes = {"where": {"bought": {"category": "shoes", "within_days": 90}}}
    assert members_of(spark, customers, shoes, purchases=purchases) == ["c1"]
    two_orders = {"where": {"bought": {"category": ["bags", "shoes"], "within_days": 90, "at_least": 2}}}
    assert members_of(spark, customers, two_orders, purchases=purchases) == ["c3"]
    # behaviour and tag conditions mix; customers without activity are simply not matched
    mixed = {"where": {"any": [{"bought": {"category": "beauty", "within_days": 90}},
                               {"tag": "value_tier", "=": "silver"}]}}
    assert members_of(spark, customers, mixed, purchases=purchases) == ["c2", "c5"]


def test_cap_orders_by_priority_tag_then_stable_hash(spark, customers):
    spec = {"where": {"tag": "clv", ">": 0}, "cap": {"size": 2, "order_by": [{"tag": "clv", "desc": True}]}}
    assert members_of(spark, customers, spec) == ["c1", "c3"]
    # without an order the cap still picks the same customers every time
    no_order = {"where": {"tag": "clv", ">": 0}, "cap": 2}
    assert members_of(spark, customers, no_order) == members_of(spark, customers, no_order)


def test_control_group_is_stable_and_per_customer(spark):
    profile = spark.range(2000).select(F.concat(F.lit("c"), F.col("id").cast("string")).alias("customer_id"),
                                       F.lit(1).alias("city_tier"))
    audience = Audience.from_dict({"name": "promo", "channel": "sms", "where": {"profile": "city_tier", "=": 1},
                                   "control_group": {"percent": 10}})
    frame = customer_frame(profile)
    first = select_members(frame, audience)
    # a different partitioning / subset of customers must not change anyone's assignment
    shuffled = select_members(customer_frame(profile.repartition(7).filter(F.col("customer_id") < "c5")), audience)
    joined = first.join(shuffled.withColumnRenamed("in_control", "again"), on="customer_id", how="inner")
    assert joined.filter(F.col("in_control") != F.col("again")).count() == 0
    assert joined.count() == shuffled.count()
    in_control = first.filter("in_control").count()
    assert 140 <= in_control <= 260  # ~10% of 2000
    # another audience name draws a different control group
    other = select_members(frame, Audience.from_dict({**{"name": "promo2", "channel": "sms"},
                                                      "where": {"profile": "city_tier", "=": 1},
                                                      "control_group": {"percent": 10}}))
    differ = first.join(other.withColumnRenamed("in_control", "other"), on="customer_id").filter(
        F.col("in_control") != F.col("other")).count()
    assert differ > 0


def test_customer_frame_keeps_only_the_referenced_columns(spark, customers):
    profile, tags = customers
    audience = Audience.from_dict({"name": "t", "channel": "email", "where": {"all": [
        {"tag": "value_tier", "=": "gold"}, {"profile": "city_tier", "<=": 2}]},
        "cap": {"size": 1, "order_by": [{"tag": "clv", "desc": True}]}})
    frame = customer_frame(profile, tags, only=set(referenced_columns(audience)))
    assert frame.columns == ["customer_id", "profile__city_tier", "tag__value_tier", "tag__clv"]
    assert frame.count() == 5
    assert customer_frame(profile, tags).columns == [
        "customer_id", "profile__city_tier", "profile__gender", "profile__email", "profile__phone",
        "tag__value_tier", "tag__churn_risk", "tag__is_employee", "tag__clv"]
    # no tag referenced: tags_wide is not joined at all
    profile_only = customer_frame(profile, tags, only={"profile__gender"})
    assert profile_only.columns == ["customer_id", "profile__gender"]
    assert "Join" not in profile_only._jdf.queryExecution().optimizedPlan().toString()


def test_selected_members_frame_is_exact(spark, customers):
    profile, tags = customers
    audience = Audience.from_dict({"name": "t", "channel": "email", "where": {"tag": "value_tier", "in": ["gold", "silver"]}})
    result = select_members(customer_frame(profile, tags), audience)
    expected = spark.createDataFrame([("c1", False), ("c2", False)], "customer_id string, in_control boolean")
    assertDataFrameEqual(result, expected)


@pytest.mark.parametrize(("spec", "message"), [
    ({"channel": "fax", "where": {"tag": "a", "=": 1}}, "channel: expected one of"),
    ({"channel": "email", "where": {"tag": "a", "~=": 1}}, "where.~=: unknown operator"),
    ({"channel": "email", "where": {"all": [{"tag": "a", "=": 1}, {"tag": "b", "like": "x"}]}},
     "where.all[1].like: unknown operator"),
    ({"channel": "email", "where": {"tag": "a", "between": [1]}}, "where.between: expected [low, high]"),
    ({"channel": "email", "where": {"event": "email_open"}}, "where.within_days: expected an integer"),
    ({"channel": "email", "where": {"tag": "a", "=": 1}, "control_group": {"percent": 150}},
     "control_group.percent"),
    ({"channel": "email", "where": {"tag": "a", "=": 1}, "colour": "red"}, "audience.colour: unknown key"),
    ({"channel": "email", "where": {"smell": "a"}}, "where: unknown condition"),
])
def test_parse_errors_name_the_key(spec, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        Audience.from_dict({"name": "bad", **spec})


def test_validate_names_unknown_tags_attributes_and_events():
    audience = Audience.from_dict({"name": "x", "channel": "email", "where": {"all": [
        {"tag": "value_tier", "=": "gold"}, {"tag": "nope", "=": 1}, {"profile": "shoe_size", ">": 40},
        {"event": "teleport", "within_days": 3}]},
        "cap": {"size": 5, "order_by": [{"tag": "missing_priority"}]}})
    problems = validate_audience(audience, tags=["value_tier"], profile_attributes=["city_tier"],
                                 event_types=["email_open"])
    assert problems == [
        "where.all[1].tag: unknown tag 'nope'",
        "where.all[2].profile: unknown profile 'shoe_size'",
        "where.all[3].event: unknown event type 'teleport'",
        "cap.order_by[0].tag: unknown tag 'missing_priority'",
    ]
