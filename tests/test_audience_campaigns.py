"""Selection by past campaigns in the audience language, on tiny hand-made frames with exact members."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pyspark.testing import assertDataFrameEqual

from cdp.audiences.language import (
    Audience,
    campaign_conditions,
    campaign_flags,
    customer_frame,
    parse_condition,
    referenced_columns,
    select_members,
    validate_campaign_references,
)
from cdp.engage import Goal

AS_OF = datetime(2026, 11, 1, 0, 0, 0)
CUSTOMERS = ("c1", "c2", "c3", "c4", "c5")


def _days(n: float) -> datetime:
    return AS_OF - timedelta(days=n)


@pytest.fixture()
def profile(spark):
    return spark.createDataFrame([(c, 1) for c in CUSTOMERS], "customer_id string, city_tier int")


@pytest.fixture()
def changes(spark):
    return spark.createDataFrame([
        ("vip", "c1", "entered", _days(5)),
        ("vip", "c2", "entered", _days(40)),
        ("vip", "c3", "exited", _days(2)),
        ("other", "c4", "entered", _days(1)),
        ("vip", "c5", "entered", AS_OF + timedelta(days=1)),  # a later publish: not seen as of AS_OF
    ], "audience string, customer_id string, change string, changed_at timestamp")


@pytest.fixture()
def responses(spark):
    return spark.createDataFrame([
        ("c1", "vip.esp.v1", "email_sent", _days(4)),
        ("c1", "vip.esp.v1", "email_open", _days(3)),
        ("c2", "vip.esp.v1", "email_sent", _days(4)),
        ("c3", "cart.sms_gateway.v2", "sms_click", _days(1)),
        ("c4", "cart.sms_gateway.v2", "email_open", _days(40)),
        ("c5", "vip.esp.v1", "email_open", AS_OF + timedelta(hours=1)),  # after as_of
    ], "customer_id string, message_id string, event_type string, event_time timestamp")


GOAL = Goal(name="checkout_7d", kind="order", within_days=7)


@pytest.fixture()
def goal_inputs(spark):
    entries = spark.createDataFrame([
        ("vip", "c1", _days(20)),   # bought 2 days later: converted
        ("vip", "c2", _days(20)),   # bought 10 days later, after the 7-day window: not converted (closed)
        ("vip", "c3", _days(3)),    # nothing yet, window open: neither
        ("vip", "c4", _days(3)),    # bought in the open window: converted
        ("other", "c5", _days(20)),  # bought, but entered another audience: neither
    ], "audience string, customer_id string, entered_at timestamp")
    actions = spark.createDataFrame([
        ("c1", _days(18)), ("c2", _days(10)), ("c4", _days(1)), ("c5", _days(19)),
    ], "customer_id string, action_time timestamp")
    return entries, {("vip", "checkout_7d"): (GOAL, actions)}


def _members(profile, where: dict, **inputs) -> list[str]:
    audience = Audience.from_dict({"name": "t", "channel": "email", "where": where})
    flags = campaign_flags(campaign_conditions([audience]), as_of=AS_OF, **inputs)
    frame = customer_frame(profile, None, flags, only=set(referenced_columns(audience)))
    return sorted(r.customer_id for r in select_members(frame, audience).collect())


def test_entered_or_exited_an_audience(profile, changes):
    assert _members(profile, {"entered_audience": "vip", "within_days": 30}, changes=changes) == ["c1"]
    assert _members(profile, {"entered_audience": "vip"}, changes=changes) == ["c1", "c2"]
    assert _members(profile, {"exited_audience": "vip"}, changes=changes) == ["c3"]
    assert _members(profile, {"not": {"entered_audience": "vip"}}, changes=changes) == ["c3", "c4", "c5"]


def test_sent_opened_clicked_a_message(profile, responses):
    assert _members(profile, {"message": "vip.esp.v1", "response": "opened"}, responses=responses) == ["c1"]
    assert _members(profile, {"message": "vip.esp.v1", "response": "sent"}, responses=responses) == ["c1", "c2"]
    assert _members(profile, {"message": "cart.sms_gateway.v2", "response": "clicked"},
                    responses=responses) == ["c3"]
    assert _members(profile, {"message": "cart.sms_gateway.v2", "response": "opened", "within_days": 30},
                    responses=responses) == []  # c4's open is 40 days old
    sent_not_opened = {"all": [{"message": "vip.esp.v1", "response": "sent"},
                               {"not": {"message": "vip.esp.v1", "response": "opened"}}]}
    assert _members(profile, sent_not_opened, responses=responses) == ["c2"]


def test_converted_or_not_on_a_goal(profile, goal_inputs):
    entries, actions = goal_inputs
    assert _members(profile, {"goal": "checkout_7d", "audience": "vip"}, entries=entries,
                    goal_actions=actions) == ["c1", "c4"]
    assert _members(profile, {"goal": "checkout_7d", "audience": "vip", "converted": False}, entries=entries,
                    goal_actions=actions) == ["c2"]


def test_campaign_flags_frame_is_exact(spark, changes, responses, goal_inputs):
    entries, actions = goal_inputs
    conditions = [parse_condition({"entered_audience": "vip", "within_days": 30}, "where.all[0]"),
                  parse_condition({"message": "vip.esp.v1", "response": "opened"}, "where.all[1]"),
                  parse_condition({"goal": "checkout_7d", "audience": "vip", "converted": False}, "where.all[2]")]
    flags = campaign_flags(conditions, as_of=AS_OF, changes=changes, responses=responses, entries=entries,
                           goal_actions=actions)
    entered, opened, missed = (c.key for c in conditions)
    expected = spark.createDataFrame([
        ("c1", True, True, False),
        ("c2", False, False, True),
        ("c3", False, False, False),
        ("c4", False, False, False),
        ("c5", False, False, None),  # c5 has changes and responses but never entered vip: no goal row
    ], f"customer_id string, {entered} boolean, {opened} boolean, {missed} boolean")
    assertDataFrameEqual(flags.select("customer_id", entered, opened, missed), expected)


def test_no_campaign_conditions_give_no_frame():
    assert campaign_flags([], as_of=AS_OF) is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"message": "m1", "response": "read"}, "where.response: expected one of"),
    ({"message": "", "response": "opened"}, "where.message: expected a name"),
    ({"goal": "g", "converted": True}, "where.audience: expected a name"),
    ({"goal": "g", "audience": "a", "converted": "yes"}, "where.converted: expected true or false"),
    ({"entered_audience": "a", "within_days": 0}, "where.within_days: expected an integer >= 1"),
    ({"exited_audience": "a", "since": 3}, "where.since: unknown key"),
])
def test_parse_errors_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_condition(spec, "where")


def test_unknown_audiences_and_goals_are_named_by_key_path():
    vip = Audience.from_dict({"name": "vip", "channel": "email", "where": {"tag": "x", "=": 1},
                              "goals": [{"name": "checkout_7d", "kind": "order", "within_days": 7}]})
    follow_up = Audience.from_dict({"name": "follow_up", "channel": "email", "where": {"all": [
        {"entered_audience": "vipp"}, {"goal": "checkout_7d", "audience": "vip"},
        {"goal": "checkout_30d", "audience": "vip"}, {"goal": "checkout_7d", "audience": "nobody"}]}})
    assert validate_campaign_references(follow_up, [vip, follow_up]) == [
        "where.all[0].entered_audience: unknown audience 'vipp'",
        "where.all[2].goal: audience 'vip' has no goal 'checkout_30d' (its goals: ['checkout_7d'])",
        "where.all[3].audience: unknown audience 'nobody'",
    ]


def test_missing_inputs_are_a_clear_error(changes):
    condition = parse_condition({"message": "m1", "response": "opened"}, "where")
    with pytest.raises(ValueError, match="message conditions need the responses frame"):
        campaign_flags([condition], as_of=AS_OF, changes=changes)
