"""Journeys: definitions checked on load, and `cdp journeys` over several simulated days on a tiny lake.

The lake is test_audience_job's (customers c1..c6, consent, one cart event of c1 on 2026-10-30), with
a few events, orders and consent changes added day by day. Every expected value below is worked out
by hand from the rules in cdp.journeys.engine; the comments say why each row is there.
"""
from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from test_audience_job import VIP_EMAIL, build_lake, make_conf, make_ctx

from cdp.journeys import Journey, JourneyPolicy, engine, validate_journey

REPO_CONF = Path(__file__).resolve().parents[1] / "conf"
EMAIL = {"name": "esp", "format": "csv", "hashed": False}


def _journey(steps: list[dict], **extra) -> dict:
    return {"name": "j", "entry": {"where": {"tag": "value_tier", "=": "gold"}},
            "destinations": {"email": EMAIL}, "steps": steps, **extra}


# -- definitions: load-time checks name the step ---------------------------------------------------------
@pytest.mark.parametrize(("steps", "message"), [
    ([{"id": "a", "send": {"channel": "email", "message": "m"}, "next": "nowhere"}],
     r"steps\[0\] \(a\): next step 'nowhere' does not exist"),
    ([{"id": "a", "exit": "completed"}, {"id": "b", "wait": {"days": 1}}],
     r"steps\[1\] \(b\): unreachable \(no step leads to it from 'a'\)"),
    ([{"id": "a", "branch": [{"when": {"tag": "vip", "=": True}, "next": "b"}, {"else": "c"}]},
      {"id": "b", "send": {"channel": "email", "message": "m"}, "next": "a"}, {"id": "c", "exit": "done"}],
     r"steps\[0\] \(a\): cycle without a wait \(a -> b -> a\)"),
    ([{"id": "a", "send": {"channel": "sms", "message": "m"}}],
     r"steps\[0\] \(a\)\.send\.channel: no destination for channel 'sms' \(the journey's destinations: \['email'\]\)"),
    ([{"id": "a", "email": {"message": "m"}}], r"steps\[0\] \(a\)\.email: unknown step key"),
    ([{"id": "a", "split": [{"arm": "x", "percent": 60, "next": "b"}, {"arm": "y", "percent": 30, "next": "b"}]},
      {"id": "b", "exit": "done"}], r"steps\[0\] \(a\)\.split: percentages add up to 90, not 100"),
    ([{"id": "a", "wait": {"until_event": "checkout", "timeout_days": 2}}],
     r"steps\[0\] \(a\)\.on_timeout: a wait until an event or condition needs the step to take on timeout"),
])
def test_bad_definitions_are_refused_naming_the_step(steps, message):
    with pytest.raises(ValueError, match=message):
        Journey.from_dict(_journey(steps))


def test_a_cycle_through_a_wait_is_allowed_and_steps_follow_the_list():
    journey = Journey.from_dict(_journey([
        {"id": "a", "send": {"channel": "email", "message": "m"}},
        {"id": "pause", "wait": {"days": 7}},
        {"id": "again", "branch": [{"when": {"event": "email_open", "within_days": 7}, "next": "a"},
                                   {"else": "stop"}]},
        {"id": "stop", "exit": "done"}]))
    assert [(s.id, s.next, s.targets()) for s in journey.steps] == [
        ("a", "pause", ["pause"]), ("pause", "again", ["again"]), ("again", None, ["a", "stop"]), ("stop", None, [])]
    assert journey.max_moves == 3  # leave the wait, branch, reach the exit, exit
    assert journey.send_audience("a") == "journey_j__a"


def test_unknown_tags_events_and_audiences_are_problems_naming_the_key():
    journey = Journey.from_dict({
        "name": "j", "entry": {"audience": "nobody"}, "destinations": {"email": EMAIL},
        "steps": [{"id": "w", "wait": {"until_event": "chekout", "timeout_days": 1}, "next": "b", "on_timeout": "b"},
                  {"id": "b", "branch": [{"when": {"tag": "shoe_size", ">": 40}, "next": "s"}, {"else": "s"}]},
                  {"id": "s", "send": {"channel": "email", "message": "m"}}]})
    problems = validate_journey(journey, tags=["value_tier"], profile_attributes=["city"],
                                event_types=["checkout"], audiences=["vip"])
    assert problems == ["steps[1].branch[0].when.tag: unknown tag 'shoe_size'",
                        "steps[0] (w).wait.until_event: unknown event type 'chekout'",
                        "entry.audience: unknown audience 'nobody' (conf/audiences defines ['vip'])"]


def test_journey_conditions_in_the_audience_language():
    from cdp.audiences.language import JourneyCondition, parse_condition

    assert parse_condition({"journey": "cart", "step": "grace"}, "where") == JourneyCondition(
        journey="cart", path="where", step="grace")
    entered = parse_condition({"journey": "welcome", "entered": True, "within_days": 30}, "where")
    assert (entered.entered, entered.within_days, entered.step) == (True, 30, None)
    with pytest.raises(ValueError, match=r"where: 'entered' and 'step' do not combine"):
        parse_condition({"journey": "cart", "step": "grace", "entered": True}, "where")
    with pytest.raises(ValueError, match=r"where\.within_days: only with 'entered: true'"):
        parse_condition({"journey": "cart", "within_days": 3}, "where")


def test_policy_parses_caps_and_quiet_days():
    policy = JourneyPolicy.from_dict({"frequency_caps": {"email": [{"sends": 2, "days": 7}]},
                                      "quiet_days": {"weekdays": ["sunday"], "dates": ["2026-11-05"]}})
    assert [(c.sends, c.days) for c in policy.caps["email"]] == [(2, 7)]
    assert [policy.quiet_days.is_quiet(date(2026, 11, d)) for d in (5, 6, 8)] == [True, False, True]
    with pytest.raises(ValueError, match=r"frequency_caps\.fax: unknown channel"):
        JourneyPolicy.from_dict({"frequency_caps": {"fax": [{"sends": 1, "days": 7}]}})


def test_cdp_validate_checks_the_journeys(tmp_path):
    from cdp.jobs.validate import validate_conf

    conf = tmp_path / "conf"
    shutil.copytree(REPO_CONF, conf)
    path = conf / "journeys" / "welcome_series.yaml"
    path.write_text(path.read_text().replace("{event: email_open, within_days: 3}",
                                             "{event: email_opened, within_days: 3}"))
    cart = conf / "journeys" / "cart_recovery.yaml"
    cart.write_text(cart.read_text().replace("on_timeout: not_recovered", "on_timeout: not_recoverd"))
    problems = validate_conf(conf).problems
    assert problems == (
        f"{cart}: steps[4] (after_reminder): next step 'not_recoverd' does not exist (steps: ['grace', "
        "'reminder_test', 'email_reminder', 'sms_coupon', 'after_reminder', 'checked_out', 'not_recovered', "
        "'no_message'])",
        f"{path}: steps[2].branch[0].when.event: unknown event type 'email_opened'")


# -- engine pieces on in-memory frames ----------------------------------------------------------------------
def test_split_is_stable_and_keeps_its_shares(spark):
    journey = Journey.from_dict(_journey([
        {"id": "ab", "split": [{"arm": "a", "percent": 45, "next": "a"}, {"arm": "b", "percent": 45, "next": "b"},
                               {"arm": "holdout", "percent": 10, "next": "h"}]},
        {"id": "a", "exit": "a"}, {"id": "b", "exit": "b"}, {"id": "h", "exit": "h"}]))
    at = datetime(2026, 11, 1, 23, 59, 59)
    one = spark.createDataFrame([("j", "ab", at, ["ab"], journey.version, "active", at, None, None, 1, at)],
                                "journey string, step string, entered_step_at timestamp, path array<string>, "
                                "version string, status string, entered_at timestamp, exited_at timestamp, "
                                "exit_reason string, entries int, updated_at timestamp")
    state = spark.range(4000).select(F.concat(F.lit("c"), F.col("id").cast("string")).alias("customer_id")) \
        .crossJoin(one).select(*engine.STATE_COLUMNS)

    def arms():
        frame = engine.advance(engine.start_frame(state, [journey], as_of=at), [journey], as_of=at)
        return {r["customer_id"]: r["exit_reason"] for r in frame.select("customer_id", "exit_reason").collect()}

    first, second = arms(), arms()
    assert first == second and len(first) == 4000
    shares = {arm: sum(1 for v in first.values() if v == arm) / 4000 for arm in ("a", "b", "h")}
    assert abs(shares["a"] - 0.45) < 0.03 and abs(shares["b"] - 0.45) < 0.03 and abs(shares["h"] - 0.10) < 0.02
    assert sum(shares.values()) == 1.0


def test_caps_count_other_journeys_and_audiences_and_quiet_days_hold_everyone(spark):
    policy = JourneyPolicy.from_dict({"frequency_caps": {"email": [{"sends": 2, "days": 7}, {"sends": 3, "days": 30}]}})
    at = datetime(2026, 11, 10, 23, 59, 59)
    due = spark.createDataFrame([
        ("j1", "c1", "s", "email", "m1"), ("j2", "c1", "s", "email", "m2"),   # c1: one send 3 days ago
        ("j1", "c2", "s", "email", "m1"), ("j2", "c2", "s", "email", "m2"),   # c2: 3 sends in 30 days
        ("j1", "c3", "s", "sms", "m3"),                                        # no cap on sms
        ("quiet", "c3", "s", "email", "m4")],                                  # a quiet journey holds
        "journey string, customer_id string, step string, channel string, message string")
    history = spark.createDataFrame([
        ("c1", "email", datetime(2026, 11, 7, 23, 59, 59)),
        ("c2", "email", datetime(2026, 10, 12, 23, 59, 59)), ("c2", "email", datetime(2026, 10, 20, 23, 59, 59)),
        ("c2", "email", datetime(2026, 10, 25, 23, 59, 59)),
        ("c3", "email", datetime(2026, 10, 1, 23, 59, 59))],  # older than every window
        "customer_id string, channel string, sent_at timestamp")
    released = engine.release_sends(due, history, policy, ["quiet"], as_of=at)
    assertDataFrameEqual(released.select("journey", "customer_id", "released", "held"), spark.createDataFrame([
        ("j1", "c1", True, None), ("j2", "c1", False, "frequency_cap"),
        ("j1", "c2", False, "frequency_cap"), ("j2", "c2", False, "frequency_cap"),
        ("j1", "c3", True, None), ("quiet", "c3", False, "quiet_day")],
        "journey string, customer_id string, released boolean, held string"))


# -- cdp journeys over several days ---------------------------------------------------------------------------
WELCOME = {
    "name": "welcome", "entry": {"where": {"tag": "value_tier", "in": ["gold", "silver"]}}, "re_entry": "never",
    "exit": {"goal": {"name": "bought", "kind": "order", "within_days": 5}},
    "destinations": {"email": EMAIL},
    "goals": [{"name": "order_7d", "kind": "order", "within_days": 7}],
    "steps": [
        {"id": "hello", "send": {"channel": "email", "message": "hello"}},
        {"id": "pause", "wait": {"days": 2}},
        {"id": "opened", "branch": [{"when": {"event": "email_open", "within_days": 3}, "next": "tips"},
                                    {"else": "bye"}]},
        {"id": "tips", "send": {"channel": "email", "message": "tips"}, "next": "done"},
        {"id": "bye", "exit": "no_open"},
        {"id": "done", "exit": "completed"},
    ],
}
CART = {
    "name": "cart", "entry": {"event": "add_to_cart", "lookback_days": 3}, "re_entry": {"after_days": 3},
    "destinations": {"email": EMAIL},
    "steps": [
        {"id": "grace", "wait": {"until_event": "checkout", "timeout_days": 1}, "next": "bought",
         "on_timeout": "ab"},
        {"id": "ab", "split": [{"arm": "a", "percent": 50, "next": "nudge_a"},
                               {"arm": "b", "percent": 50, "next": "nudge_b"}]},
        {"id": "nudge_a", "send": {"channel": "email", "message": "cart_a"}, "next": "finished"},
        {"id": "nudge_b", "send": {"channel": "email", "message": "cart_b"}, "next": "finished"},
        {"id": "bought", "exit": "recovered"},
        {"id": "finished", "exit": "completed"},
    ],
}
POLICY = {"frequency_caps": {"email": [{"sends": 2, "days": 7}]}}
EVENTS_SCHEMA = ("event_id string, source string, record_id string, event_type string, channel string, "
                 "event_time timestamp, session_id string, product_id string, category string, "
                 "attributes map<string,string>")
EVENT_COLUMNS = ("journey", "customer_id", "seq", "event", "from_step", "to_step", "detail", "channel", "message")
EVENT_DDL = ("journey string, customer_id string, seq int, event string, from_step string, to_step string, "
             "detail string, channel string, message string")
SKIPPED = "no consent, unreachable or suppressed"


def _day(d: int) -> date:
    return date(2026, 11, d)


def _write_journey_conf(conf: Path, journeys: list[dict], *, control_percent: float = 29) -> None:
    folder = conf / "journeys"
    folder.mkdir(exist_ok=True)
    for spec in journeys:
        (folder / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    (folder / "_policy.yaml").write_text(yaml.safe_dump(POLICY))
    # 29 %: of c1..c6 only c5 draws a global-control bucket below 2900 (its bucket is 2788)
    (conf / "engage.yaml").write_text(yaml.safe_dump({"global_control": {"percent": control_percent}}))


def _add_event(spark, lake, event_id: str, customer: str, event_type: str, at: datetime) -> None:
    lake.write(spark.createDataFrame([(event_id, "events", event_id, event_type, "web", at, None, None, None, {})],
                                     EVENTS_SCHEMA), "silver_events", mode="append")
    lake.write(spark.createDataFrame([("events", event_id, customer)], "source string, record_id string, "
                                                                      "customer_id string"),
               "customer_records", mode="append")


def _events_of(lake, day: date):
    return (lake.read("journey_events").filter(F.to_date("as_of") == F.lit(day)).select(*EVENT_COLUMNS))


def _rows(spark, rows):
    return spark.createDataFrame(rows, EVENT_DDL)


def _sent(journey, customer, step, message, version, seq):
    return (journey, customer, seq, "sent", step, step, f"journey_{journey}__{step} v{version}", "email", message)


@pytest.fixture(scope="module")
def days_lake(spark, tmp_path_factory):
    from cdp.jobs import audiences
    from cdp.lake import Lake

    root = tmp_path_factory.mktemp("journeys")
    lake = Lake(spark, str(root / "lake"))
    build_lake(spark, lake)
    conf = make_conf(root, REPO_CONF, [VIP_EMAIL])
    _write_journey_conf(conf, [WELCOME, CART])
    # the VIP e-mail audience is published on day 1 before the journeys: c1 and c6 enter it, which
    # counts one e-mail each against the journeys' cap (2 per 7 days)
    audiences.run(spark, make_ctx(conf, lake.root, "aud1"), lake=lake, as_of=_day(1))
    return lake, conf


def test_journeys_over_several_days(spark, days_lake):
    from cdp.jobs import journeys

    lake, conf = days_lake

    def run(day: int, run_id: str):
        return journeys.run(spark, make_ctx(conf, lake.root, run_id), lake=lake, as_of=_day(day))

    # day 1: gold and silver customers enter the welcome series and are due at `hello`; c1's cart
    # of 10-30 is within the 3-day lookback, so c1 enters the cart journey and rests at its grace wait
    first = run(1, "d1")
    assert first.published == {"journey_welcome__hello": 0}
    entered = [("welcome", c, 0, "entered", None, "hello", "entry 1", None, None) for c in
               ("c1", "c2", "c3", "c4", "c5", "c6")]
    sent_on = [("welcome", c, 2, "advanced", "hello", "pause", "sent", None, None) for c in
               ("c1", "c2", "c3", "c4", "c5", "c6")]
    assertDataFrameEqual(_events_of(lake, _day(1)), _rows(spark, [
        *entered, *sent_on,
        _sent("welcome", "c1", "hello", "hello", 0, 1),                  # consent and an e-mail address
        _sent("welcome", "c6", "hello", "hello", 0, 1),
        ("welcome", "c2", 1, "skipped", "hello", "hello", SKIPPED, "email", "hello"),  # withdrew on 10-20
        ("welcome", "c3", 1, "skipped", "hello", "hello", SKIPPED, "email", "hello"),  # no e-mail address
        ("welcome", "c4", 1, "skipped", "hello", "hello", SKIPPED, "email", "hello"),  # never consented
        ("welcome", "c5", 1, "control", "hello", "hello", "global control group", "email", "hello"),
        ("cart", "c1", 0, "entered", None, "grace", "entry 1", None, None)]))
    batch = lake.read("audience_journey_welcome__hello").select("customer_id", "in_control")
    assertDataFrameEqual(batch, spark.createDataFrame([("c1", False), ("c5", True), ("c6", False)],
                                                      "customer_id string, in_control boolean"))

    # day 2: c6 withdraws e-mail consent, c4 orders (the welcome goal), c1 opens an e-mail
    lake.write(spark.createDataFrame([("crm_members", "M6", "email", False, datetime(2026, 11, 2, 8))],
                                     "source string, record_id string, channel string, granted boolean, "
                                     "event_time timestamp"), "silver_consent", mode="append")
    lake.write(spark.createDataFrame(
        [("O2", "orders", "O2", datetime(2026, 11, 2, 12), "online", None, "paid", 80.0, 0.0, None, "alipay", "CNY")],
        lake.read("silver_orders").schema), "silver_orders", mode="append")
    lake.write(spark.createDataFrame([("orders", "O2", "c4")], "source string, record_id string, customer_id string"),
               "customer_records", mode="append")
    _add_event(spark, lake, "E2", "c1", "email_open", datetime(2026, 11, 2, 10))
    run(2, "d2")
    assertDataFrameEqual(_events_of(lake, _day(2)), _rows(spark, [
        ("welcome", "c2", 0, "exited", "pause", None, "consent_withdrawn", None, None),
        ("welcome", "c6", 0, "exited", "pause", None, "consent_withdrawn", None, None),
        ("welcome", "c4", 0, "exited", "pause", None, "goal_reached", None, None),
        # no checkout within a day: the split sends c1 to arm b (its bucket is 7969 of 10000)
        ("cart", "c1", 0, "advanced", "grace", "ab", "timeout 1 days", None, None),
        ("cart", "c1", 1, "advanced", "ab", "nudge_b", "arm b", None, None),
        # the VIP audience and `hello` used c1's two e-mails of the week
        ("cart", "c1", 2, "held", "nudge_b", "nudge_b", "frequency_cap", "email", "cart_b")]))

    # day 3: the 2-day pause is over; c1 opened an e-mail, c3 and c5 did not
    run(3, "d3")
    assertDataFrameEqual(_events_of(lake, _day(3)), _rows(spark, [
        ("welcome", "c1", 0, "advanced", "pause", "opened", "waited 2 days", None, None),
        ("welcome", "c1", 1, "advanced", "opened", "tips", "arm 0", None, None),
        ("welcome", "c1", 2, "held", "tips", "tips", "frequency_cap", "email", "tips"),
        *[("welcome", c, seq, event, src, dst, detail, None, None) for c in ("c3", "c5") for seq, event, src, dst, detail in (
            (0, "advanced", "pause", "opened", "waited 2 days"), (1, "advanced", "opened", "bye", "else"),
            (2, "exited", "bye", None, "no_open"))],
        ("cart", "c1", 0, "held", "nudge_b", "nudge_b", "frequency_cap", "email", "cart_b")]))

    # a re-run of day 3 evaluates nothing and sends nobody
    events_before = lake.read("journey_events").count()
    again = run(3, "d3-again")
    assert again.skipped == {"welcome": "already evaluated as of 2026-11-03", "cart": "already evaluated as of 2026-11-03"}
    assert (again.published, lake.read("journey_events").count()) == ({}, events_before)

    # day 8: the sends of day 1 left the 7-day window, both held e-mails go out
    eighth = run(8, "d8")
    assert eighth.published == {"journey_cart__nudge_b": 0, "journey_welcome__tips": 0}
    assertDataFrameEqual(_events_of(lake, _day(8)), _rows(spark, [
        _sent("cart", "c1", "nudge_b", "cart_b", 0, 0),
        ("cart", "c1", 1, "advanced", "nudge_b", "finished", "sent", None, None),
        ("cart", "c1", 2, "exited", "finished", None, "completed", None, None),
        _sent("welcome", "c1", "tips", "tips", 0, 0),
        ("welcome", "c1", 1, "advanced", "tips", "done", "sent", None, None),
        ("welcome", "c1", 2, "exited", "done", None, "completed", None, None)]))

    # re-entry after 3 days: a cart on day 9 is too early (left on day 8), one on day 10 is not
    _add_event(spark, lake, "E3", "c1", "add_to_cart", datetime(2026, 11, 9, 9))
    run(9, "d9")
    assert _events_of(lake, _day(9)).count() == 0
    _add_event(spark, lake, "E4", "c1", "add_to_cart", datetime(2026, 11, 10, 9))
    run(11, "d11")
    assertDataFrameEqual(_events_of(lake, _day(11)), _rows(spark, [
        ("cart", "c1", 0, "entered", None, "grace", "entry 2", None, None)]))  # welcome: never re-enters

    state = lake.read("journey_state").select("journey", "customer_id", "step", "path", "status", "exit_reason",
                                              "entries")
    assertDataFrameEqual(state, spark.createDataFrame([
        ("welcome", "c1", "done", ["hello", "pause", "opened", "tips", "done"], "exited", "completed", 1),
        ("welcome", "c2", "pause", ["hello", "pause"], "exited", "consent_withdrawn", 1),
        ("welcome", "c3", "bye", ["hello", "pause", "opened", "bye"], "exited", "no_open", 1),
        ("welcome", "c4", "pause", ["hello", "pause"], "exited", "goal_reached", 1),
        ("welcome", "c5", "bye", ["hello", "pause", "opened", "bye"], "exited", "no_open", 1),
        ("welcome", "c6", "pause", ["hello", "pause"], "exited", "consent_withdrawn", 1),
        ("cart", "c1", "grace", ["grace"], "active", None, 2)],
        "journey string, customer_id string, step string, path array<string>, status string, exit_reason string, "
        "entries int"))
    runs = lake.read("journey_runs").filter(F.col("as_of") == _day(1)).select("journey", "counts", "active")
    assertDataFrameEqual(runs, spark.createDataFrame([
        ("welcome", {"entered": 6, "sent": 2, "skipped": 3, "control": 1, "advanced": 6}, 6),
        ("cart", {"entered": 1}, 1)], "journey string, counts map<string,bigint>, active long"))


def test_audiences_select_by_journey_and_export_sends_the_batches(spark, days_lake):
    from cdp.jobs import audiences, export

    lake, conf = days_lake
    if not lake.exists("journey_runs") or lake.read("journey_runs").filter(F.col("as_of") == _day(11)).count() == 0:
        pytest.skip("needs test_journeys_over_several_days (same module) to have run first")
    specs = [{"name": "cart_grace", "channel": "email", "where": {"journey": "cart", "step": "grace"}},
             {"name": "had_welcome", "channel": "email", "where": {"journey": "welcome", "entered": True}},
             {"name": "in_welcome", "channel": "email", "where": {"journey": "welcome"}}]
    for spec in specs:
        (conf / "audiences" / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    audiences.run(spark, make_ctx(conf, lake.root, "aud11"), lake=lake, as_of=_day(11),
                  names=[s["name"] for s in specs])
    members = {s["name"]: sorted((r["customer_id"], r["in_control"]) for r in
                                 lake.read(f"audience_{s['name']}").collect()) for s in specs}
    # e-mail consent and an address: c1 and c5 (c5 in the global control group) of those who entered
    assert members == {"cart_grace": [("c1", False)], "had_welcome": [("c1", False), ("c5", True)], "in_welcome": []}

    result = export.run(spark, make_ctx(conf, lake.root, "exp"), lake=lake,
                        names=["journey_welcome__hello", "journey_welcome__tips"])
    exported = {(e.audience, e.publish_version): e.rows for e in result.exports}
    # the latest batch of each send step: hello's held c1, c5 (control: never exported) and c6 (withdrew
    # e-mail consent on day 2, and export checks consent again)
    assert exported == {("journey_welcome__hello", 0): 1, ("journey_welcome__tips", 0): 1}


def test_a_changed_definition_keeps_members_whose_step_exists(spark, lake, tmp_path):
    from cdp.jobs import journeys

    build_lake(spark, lake)
    conf = make_conf(tmp_path, REPO_CONF, [])
    tiers = {"name": "tiers", "entry": {"where": {"tag": "value_tier", "=": "gold"}},
             "steps": [{"id": "by_tier", "branch": [{"when": {"profile": "city_tier", "=": 1}, "next": "first"},
                                                    {"else": "other"}]},
                       {"id": "first", "wait": {"days": 30}, "next": "end"},
                       {"id": "other", "wait": {"days": 30}, "next": "end"},
                       {"id": "end", "exit": "completed"}]}
    _write_journey_conf(conf, [tiers])
    journeys.run(spark, make_ctx(conf, lake.root, "v1"), lake=lake, as_of=_day(1))
    old_version = lake.read("journey_state").first()["version"]
    # version 2 drops `other`: its members cannot stay; members at `first` can
    tiers["steps"] = [{"id": "by_tier", "branch": [{"when": {"profile": "city_tier", "=": 1}, "next": "first"},
                                                   {"else": "end"}]},
                      {"id": "first", "wait": {"days": 30}, "next": "end"}, {"id": "end", "exit": "completed"}]
    _write_journey_conf(conf, [tiers])
    result = journeys.run(spark, make_ctx(conf, lake.root, "v2"), lake=lake, as_of=_day(2))
    new_version = Journey.from_dict(tiers).version
    assert result.counts["tiers"] == {"migrated": 2, "exited:step_removed": 3}
    assertDataFrameEqual(_events_of(lake, _day(2)), _rows(spark, [
        ("tiers", c, 0, "migrated", "first", "first", f"{old_version} -> {new_version}", None, None)
        for c in ("c1", "c3")] + [
        ("tiers", c, 0, "exited", "other", None, "step_removed", None, None) for c in ("c2", "c4", "c6")]))
    state = lake.read("journey_state").select("customer_id", "step", "status", "version")
    assertDataFrameEqual(state, spark.createDataFrame(
        [("c1", "first", "active", new_version), ("c3", "first", "active", new_version)]
        + [(c, "other", "exited", old_version) for c in ("c2", "c4", "c6")],
        "customer_id string, step string, status string, version string"))
