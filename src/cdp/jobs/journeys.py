"""``cdp journeys [--as-of DATE] [NAME ...]``: advance every journey of ``conf/journeys`` by one run.

Per run (:mod:`cdp.journeys.engine` holds the rules): members leave on the exit rules, new members
enter, everyone moves as far as the definition lets them; the members due at a send step are
published, per step, as the audience ``audience_journey_<journey>__<step>`` through the audiences'
own evaluation and publishing (consent, reachability, suppression lists, the global control group,
the ``journey_send`` quality suite), so ``cdp export`` sends them and ``cdp measure`` measures them.
Frequency caps (``conf/journeys/_policy.yaml``) count every journey's sends and every audience entry.

Tables:
- ``journey_state`` (one merge per run; key journey, customer_id): step, entered_step_at, path, version
  (of the definition), status (``active`` | ``exited``), entered_at, exited_at, exit_reason, entries,
  updated_at.
- ``journey_events`` (appended): every transition of the run (entered, advanced, migrated, sent,
  control, skipped, held, exited) with as_of, its order per member, channel and message of sends.
- ``journey_runs`` (appended): per journey and as-of date, the definition version and the counts of
  each event (exits and holds by reason), and the active members after the run.

A journey evaluated for an as-of date is not evaluated again for that date or an earlier one: a re-run
for the same day sends nobody twice (it logs the skip). A changed definition keeps members at their
step when it still exists (``migrated``) and lets the others leave (``exited``, ``step_removed``); the
run logs both counts per journey.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.audiences.language import (
    Audience,
    EventCondition,
    JourneyCondition,
    PurchaseCondition,
    SequenceCondition,
    behaviour_flags,
    compile_condition,
    condition_columns,
    conditions_of_kind,
    customer_frame,
    in_global_control,
    tag_names,
)
from cdp.jobs.audiences import (
    CHANGES_TABLE,
    EVENT_TYPES,
    AudiencesResult,
    Evaluator,
    Inputs,
    as_of_datetime,
    audience_table,
    load_audiences,
    load_engage_config,
    publish_evaluated,
    read_inputs,
    write_stats,
)
from cdp.jobs.entry import JobFailed, parse_date
from cdp.jobs.measure import goal_actions_in_lake
from cdp.jobs.measure import publishes as audience_publishes
from cdp.journeys import POLICY_FILE, Journey, JourneyPolicy, engine, validate_journey
from cdp.runtime.config import ConfigError, JobContext, parse_file

logger = logging.getLogger("cdp.jobs.journeys")  # not __name__: under spark-submit this module is __main__

STATE_TABLE = "journey_state"
EVENTS_TABLE = "journey_events"
RUNS_TABLE = "journey_runs"
RUNS_SCHEMA = ("journey string, as_of date, version string, run_id string, counts map<string,bigint>, "
               "active long")


# -- configuration ------------------------------------------------------------------------------------
def load_journeys(conf_dir: Path) -> list[Journey]:
    """Every ``conf/journeys/*.yaml`` but ``_``-prefixed files (one journey per file; the name defaults to
    the file name); an absent folder means no journeys."""
    folder = conf_dir / "journeys"
    found: list[Journey] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        journey = parse_file(path, lambda data, stem=path.stem: Journey.from_dict(data, default_name=stem))
        if journey.name in seen:
            raise ConfigError(f"{path}: name: journey {journey.name!r} is also defined in {seen[journey.name]}")
        seen[journey.name] = path
        found.append(journey)
    return found


def load_policy(conf_dir: Path) -> JourneyPolicy:
    """``conf/journeys/_policy.yaml`` (frequency caps, quiet days); absent: no caps, no quiet days."""
    path = conf_dir / "journeys" / POLICY_FILE
    return parse_file(path, JourneyPolicy.from_dict) if path.exists() else JourneyPolicy()


def journey_file(conf_dir: Path, journey: Journey) -> Path:
    candidate = conf_dir / "journeys" / f"{journey.name}.yaml"
    return candidate if candidate.exists() else conf_dir / "journeys"


def journey_steps(conf_dir: Path) -> dict[str, tuple[str, ...]]:
    """Journey name -> its step ids (what audiences' ``{journey: J, step: S}`` conditions are checked against)."""
    return {j.name: j.step_ids for j in load_journeys(conf_dir)}


def send_audience(journey: Journey, step_id: str) -> Audience:
    """A send step as the audience its batches are published as: its members are the run's due members
    at that step (the journey condition reads the run's released sends), on the step's channel."""
    step = journey.step(step_id)
    assert step.send is not None
    return Audience(name=journey.send_audience(step.id), channel=step.send.channel,
                    where=JourneyCondition(journey=journey.name, step=step.id, path=f"{step.path}.send"),
                    description=f"journey {journey.name}, step {step.id}: message {step.send.message}",
                    suppression_lists=journey.suppression_lists, destinations=(step.send.destination,),
                    goals=journey.goals + step.send.goals, transactional=journey.transactional)


def journey_send_audiences(conf_dir: Path) -> list[Audience]:
    """Every send step of every journey as its audience (``cdp export`` and ``cdp measure`` read these)."""
    return [send_audience(j, s.id) for j in load_journeys(conf_dir) for s in j.sends]


def check_journeys(journeys: Sequence[Journey], conf_dir: Path, *, tags: Sequence[str],
                   profile_attributes: Sequence[str]) -> None:
    """Raise ConfigError naming file and step for unknown tags, attributes, event types and audiences."""
    audiences = {a.name for a in load_audiences(conf_dir)}
    steps = {j.name: j.step_ids for j in journeys}
    problems = [f"{journey_file(conf_dir, j)}: {problem}" for j in journeys
                for problem in validate_journey(j, tags=tags, profile_attributes=profile_attributes,
                                                event_types=EVENT_TYPES, audiences=audiences, journeys=steps)]
    if problems:
        raise ConfigError("; ".join(problems))


# -- inputs -----------------------------------------------------------------------------------------------
def _previous_evaluations(lake: Any) -> dict[str, date]:
    if not lake.exists(RUNS_TABLE):
        return {}
    rows = lake.read(RUNS_TABLE).groupBy("journey").agg(F.max("as_of").alias("as_of")).collect()
    return {r["journey"]: r["as_of"] for r in rows}


def _facts(inputs: Inputs, journeys: Sequence[Journey], as_of: datetime) -> DataFrame:
    """customer_id + every condition column (:func:`cdp.journeys.condition_key`) and event-time column
    the journeys read, one row per customer of the profile or with a matching event."""
    keyed = [(key, cond) for j in journeys for key, cond in j.conditions()]
    roots = [cond for _, cond in keyed]
    behaviour = conditions_of_kind(roots, (EventCondition, SequenceCondition, PurchaseCondition))
    flags = behaviour_flags(behaviour, as_of=as_of, events=inputs.events, purchases=inputs.purchases)
    customers = customer_frame(inputs.profile, inputs.tags_wide, flags, only=set(condition_columns(roots)))
    facts = customers.select("customer_id", *[compile_condition(cond).alias(key) for key, cond in keyed])
    times = engine.last_event_times(inputs.events, journeys, as_of=as_of) if inputs.events is not None else None
    if times is not None:
        facts = facts.join(times, on="customer_id", how="full_outer")
    return facts


def _audience_members(lake: Any, journeys: Sequence[Journey], control_percent: float) -> dict[str, DataFrame]:
    """Entry audiences' current members who may be sent to: treatment, and the global control group
    (held out at every send, so measured); the audience's own control group never enters a journey."""
    members: dict[str, DataFrame] = {}
    for name in sorted({j.entry.audience for j in journeys if j.entry.audience}):
        table = audience_table(name)
        if not lake.exists(table):
            logger.warning("entry audience %s has never been published: nobody enters its journeys", name)
            members[name] = lake.spark.createDataFrame([], "customer_id string")
            continue
        published = lake.read(table)
        sendable = ~F.col("in_control") | (in_global_control(control_percent) if control_percent > 0 else F.lit(False))
        members[name] = published.filter(sendable).select("customer_id")
    return members


def _goal_actions(lake: Any, journeys: Sequence[Journey]) -> dict[str, DataFrame]:
    cache: dict[str, DataFrame | None] = {}
    found = {}
    for journey in journeys:
        if journey.exit.goal is not None:
            try:
                found[journey.name] = goal_actions_in_lake(lake, journey.exit.goal, cache)
            except ValueError as exc:  # the silver table the goal reads does not exist yet
                logger.warning("journey %s: exit goal not checked: %s", journey.name, exc)
    return found


def send_history(lake: Any, conf_dir: Path, *, as_of: datetime, days: int) -> DataFrame:
    """customer_id, channel, sent_at of the sends frequency caps count, in the ``days`` before ``as_of``:
    journeys' ``sent`` / ``control`` events and entries into every audience of ``conf/audiences`` (each at
    the as-of instant of the publish that added the customer)."""
    spark = lake.spark
    start = as_of - timedelta(days=days)
    frames = []
    if lake.exists(EVENTS_TABLE):
        frames.append(lake.read(EVENTS_TABLE)
                      .filter(F.col("event").isin(*engine.SEND_EVENTS) & (F.col("as_of") > F.lit(start)))
                      .select("customer_id", "channel", F.col("as_of").alias("sent_at")))
    publishes = []
    for audience in load_audiences(conf_dir):
        table = audience_table(audience.name)
        if not lake.exists(table):
            continue
        publishes += [(audience.name, audience.channel, version, at)
                      for version, at in audience_publishes(lake, table) if start < at <= as_of]
    if publishes and lake.exists(CHANGES_TABLE):
        versions = spark.createDataFrame(publishes, "audience string, channel string, publish_version long, "
                                                    "sent_at timestamp")
        frames.append(lake.read(CHANGES_TABLE).filter(F.col("change") == "entered")
                      .join(versions, on=["audience", "publish_version"], how="inner")
                      .select("customer_id", "channel", "sent_at"))
    history = spark.createDataFrame([], "customer_id string, channel string, sent_at timestamp")
    for frame in frames:
        history = history.unionByName(frame)
    return history


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class JourneysResult:
    as_of: datetime | None = None
    evaluated: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)         # journey -> why it was not evaluated
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # journey -> event (or event:reason) -> n
    active: dict[str, int] = field(default_factory=dict)
    published: dict[str, int | None] = field(default_factory=dict)   # send audience -> version
    rows_out: int = 0


def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None, as_of: date | datetime | str | None = None,
        names: Sequence[str] | None = None) -> JourneysResult:
    """Advance the journeys (all, or the named ones) by one run as of ``as_of``; publish the sends."""
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    journeys = load_journeys(ctx.conf_dir)
    if names:
        unknown = sorted(set(names) - {j.name for j in journeys})
        if unknown:
            raise ConfigError(f"{ctx.conf_dir / 'journeys'}: no journey named {unknown[0]!r}")
        journeys = [j for j in journeys if j.name in names]
    policy = load_policy(ctx.conf_dir)
    t = as_of_datetime(as_of)
    result = JourneysResult(as_of=t)
    if not journeys:
        logger.info("no journeys in %s", ctx.conf_dir / "journeys")
        return result
    previous = _previous_evaluations(lake)
    todo = []
    for journey in journeys:
        last = previous.get(journey.name)
        if last is not None and last >= t.date():
            result.skipped[journey.name] = f"already evaluated as of {last.isoformat()}"
            logger.info("journey %s: already evaluated as of %s; nothing to do for %s (nobody is sent twice)",
                        journey.name, last, t.date())
        else:
            todo.append(journey)
    if not todo:
        return result

    roots = [cond for j in todo for _, cond in j.conditions()]
    need_events = bool(conditions_of_kind(roots, (EventCondition, SequenceCondition))) or any(
        j.event_matches() for j in todo)
    need_purchases = bool(conditions_of_kind(roots, (PurchaseCondition,)))
    need_journeys = bool(conditions_of_kind(roots, (JourneyCondition,)))
    inputs = read_inputs(spark, lake, need_events=need_events, need_purchases=need_purchases,
                         need_journeys=need_journeys)
    check_journeys(journeys, ctx.conf_dir, tags=tag_names(inputs.tags_wide) if inputs.tags_wide is not None else [],
                   profile_attributes=[c for c in inputs.profile.columns if c != "customer_id"])
    consent = inputs.consent.persist(StorageLevel.MEMORY_AND_DISK)
    inputs = replace(inputs, consent=consent)
    control_percent = load_engage_config(ctx.conf_dir).global_control_percent
    facts = _facts(inputs, todo, t).persist(StorageLevel.MEMORY_AND_DISK)
    state = (lake.read(STATE_TABLE) if lake.exists(STATE_TABLE)
             else spark.createDataFrame([], engine.STATE_SCHEMA))
    since = {name: datetime.combine(day, datetime.max.time()) for name, day in previous.items()}
    persisted: list[DataFrame] = [consent, facts]
    try:
        frame = engine.start_frame(state, todo, as_of=t)
        candidates, in_entry = engine.entry_candidates(
            todo, facts=facts, audience_members=_audience_members(lake, todo, control_percent), since=since, as_of=t)
        withdrawn = consent.filter(~F.col("granted")).select("customer_id", "channel")
        reasons = engine.exit_reasons(frame, todo, as_of=t, in_entry=in_entry, withdrawn=withdrawn,
                                      goal_actions=_goal_actions(lake, todo))
        frame = engine.apply_exits(frame, reasons, as_of=t)
        frame = engine.apply_entries(frame, candidates, todo, as_of=t)
        keep = [c for c in engine.fact_columns(todo) if c in facts.columns]
        frame = engine.with_facts(frame, facts, todo)
        # computed once and cut from its lineage: each pass of advance stacks a projection whose step,
        # path and _changed refer to the previous pass's. A persisted copy did not stop day 2's merge of
        # state_rows from optimizing that whole stack again (pushing its _changed filter down through
        # every pass), which never finished (issue 29); a checkpoint leaves no stack to push through
        frame = engine.advance(frame, todo, as_of=t, keep=keep).localCheckpoint(eager=True)

        windows = [cap.days for caps in policy.caps.values() for cap in caps]
        history = send_history(lake, ctx.conf_dir, as_of=t, days=max(windows, default=1))
        quiet = [j.name for j in todo if (policy.quiet_days | j.quiet_days).is_quiet(t.date())]
        released = engine.release_sends(engine.due_sends(frame, todo), history, policy, quiet, as_of=t
                                        ).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(released)
        gates = AudiencesResult()
        outcomes = _publish_sends(lake, ctx, todo, released, inputs, consent, t, control_percent, gates, result)
        if gates.failed:
            raise JobFailed(f"{len(gates.failed)} journey send batch(es) failed their quality gate; no journey "
                            "was advanced: " + "; ".join(f"{k}: {v}" for k, v in gates.failed.items()))
        frame = engine.apply_sends(frame, outcomes, todo, as_of=t, keep=keep)
        frame = engine.advance(frame, todo, as_of=t, keep=keep).localCheckpoint(eager=True)
        _write(lake, ctx, todo, frame, t, result)
    finally:
        for cached in persisted:
            cached.unpersist()
    return result


def _publish_sends(lake: Any, ctx: JobContext, journeys: Sequence[Journey], released: DataFrame, inputs: Inputs,
                   consent: DataFrame, as_of: datetime, control_percent: float, gates: AudiencesResult,
                   result: JourneysResult) -> DataFrame:
    """Publish each send step's released members through the audiences' evaluation and gates (a failed
    gate lands in ``gates.failed``; the caller must then advance nobody).

    Returns journey, customer_id, outcome, detail, channel, message for every due member."""
    held = released.filter(~F.col("released")).select(
        "journey", "customer_id", F.lit("held").alias("outcome"), F.col("held").alias("detail"), "channel", "message")
    going = released.filter(F.col("released"))
    steps = sorted((r["journey"], r["step"]) for r in going.select("journey", "step").distinct().collect())
    by_name = {j.name: j for j in journeys}
    audiences = [send_audience(by_name[j], s) for j, s in steps]
    outcomes = [held]
    if audiences:
        state = going.select("journey", "customer_id", "step", F.lit(engine.ACTIVE).alias("status"),
                             F.lit(as_of).cast("timestamp").alias("entered_at"))
        evaluator = Evaluator(inputs, audiences, as_of=as_of, run_id=ctx.run_id,
                              global_control_percent=control_percent, journey_state=state)
        try:
            for (journey, step), audience in zip(steps, audiences, strict=True):
                publish_evaluated(lake, ctx, evaluator.evaluate(audience), consent, gates, as_of,
                                  suite="journey_send")
                if audience.name in gates.failed:
                    continue
                version = gates.published[audience.name]
                result.published[audience.name] = version
                published = lake.read(audience_table(audience.name), version=version).select(
                    "customer_id", F.col("in_control").alias("_control"))
                mine = going.filter((F.col("journey") == journey) & (F.col("step") == step))
                outcome = (F.when(F.col("_control").isNull(), F.lit("skipped"))
                           .when(F.col("_control"), F.lit("control")).otherwise(F.lit("sent")))
                detail = (F.when(F.col("_control").isNull(), F.lit("no consent, unreachable or suppressed"))
                          .when(F.col("_control"), F.lit("global control group"))
                          .otherwise(F.lit(f"{audience.name} v{version}")))
                outcomes.append(mine.join(published, on="customer_id", how="left").select(
                    "journey", "customer_id", outcome.alias("outcome"), detail.alias("detail"), "channel",
                    "message"))
            write_stats(lake, ctx, gates)
        finally:
            evaluator.close()
    union = outcomes[0]
    for other in outcomes[1:]:
        union = union.unionByName(other)
    return union


def _write(lake: Any, ctx: JobContext, journeys: Sequence[Journey], frame: DataFrame, as_of: datetime,
           result: JourneysResult) -> None:
    """One merge into journey_state, one append to journey_events and one to journey_runs."""
    spark = lake.spark
    events = engine.event_rows(frame, as_of=as_of, run_id=ctx.run_id).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        label = F.when(F.col("event").isin("exited", "held"), F.concat_ws(":", "event", "detail")).otherwise(
            F.col("event"))
        counted = events.groupBy("journey", label.alias("what")).count().collect()
        active = frame.filter(F.col("status") == engine.ACTIVE).groupBy("journey").count().collect()
        changed = engine.state_rows(frame)
        lake.merge(changed, STATE_TABLE, keys=["journey", "customer_id"], metadata={"run_id": ctx.run_id,
                                                                                     "as_of": as_of.isoformat()})
        lake.write(events.withColumn("recorded_at", F.current_timestamp()), EVENTS_TABLE, mode="append",
                   metadata={"run_id": ctx.run_id, "as_of": as_of.isoformat()})
        result.rows_out += sum(r["count"] for r in counted)
    finally:
        events.unpersist()
    counts: dict[str, dict[str, int]] = {j.name: {} for j in journeys}
    for row in counted:
        counts[row["journey"]][row["what"]] = int(row["count"])
    actives = {r["journey"]: int(r["count"]) for r in active}
    rows = []
    for journey in journeys:
        mine = counts[journey.name]
        result.evaluated.append(journey.name)
        result.counts[journey.name] = mine
        result.active[journey.name] = actives.get(journey.name, 0)
        rows.append((journey.name, as_of.date(), journey.version, ctx.run_id, mine, actives.get(journey.name, 0)))
        removed = mine.get("exited:step_removed", 0)
        if mine.get("migrated") or removed:
            logger.warning("journey %s changed (now version %s): %d members kept at their step, %d left because "
                           "their step no longer exists (journey_events: migrated, exited step_removed)",
                           journey.name, journey.version, mine.get("migrated", 0), removed)
        logger.info("journey %s as of %s: %s; %d active", journey.name, as_of.date(),
                    ", ".join(f"{k} {v}" for k, v in sorted(mine.items())) or "no transitions",
                    actives.get(journey.name, 0))
    lake.write(spark.createDataFrame(rows, RUNS_SCHEMA).withColumn("recorded_at", F.current_timestamp()),
               RUNS_TABLE, mode="append", metadata={"run_id": ctx.run_id})


# -- entry point -------------------------------------------------------------------------------------------
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="journeys to advance (default: all)")
    parser.add_argument("--as-of", dest="as_of", type=parse_date, help="the run's day, YYYY-MM-DD (default: today)")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    run(spark, ctx, as_of=args.as_of, names=args.names or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("journeys", argv, _run_from_args, _add_arguments,
                    description="advance journeys by one run and publish their due sends")


if __name__ == "__main__":
    sys.exit(main())
