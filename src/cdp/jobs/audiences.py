"""``cdp audiences``: evaluate every audience in ``conf/audiences/*.yaml``, gate and publish them.

For each audience: members = customers matching ``where`` and no ``exclude``, who have consent for
the audience's channel (``consent_current``, latest event wins, no record = no consent), have the
identifier the channel needs, and are on no applicable suppression list (erasure always applies);
then the size cap and the stable control group. The candidate goes through the ``audience`` quality
suite (``conf/quality.yaml``) and is published as ``audience_<name>`` only when it passes.
``audience_changes`` gets who entered and exited since the previous publish, with the new version;
``audience_stats`` gets the counts (matched, excluded for consent / reachability / suppression).

``cdp audiences preview NAME`` prints size, exclusions, overlap with the other audiences and the
top tag composition, without writing anything.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.audiences.language import (
    TAG_PREFIX,
    Audience,
    AudienceChangeCondition,
    CampaignCondition,
    GoalCondition,
    MessageCondition,
    PurchaseCondition,
    behaviour_conditions,
    behaviour_flags,
    campaign_conditions,
    campaign_flags,
    compile_audience,
    customer_frame,
    events_by_customer,
    journey_conditions,
    journey_flags,
    purchases_by_customer,
    referenced_columns,
    responses_by_customer,
    select_members,
    tag_names,
    validate_audience,
    validate_campaign_references,
)
from cdp.engage import EngageConfig
from cdp.jobs.entry import JobFailed
from cdp.privacy import (
    ERASURE_LIST,
    SUPPRESSION_SCHEMA,
    channel_contacts,
    consent_current,
    eligibility,
    suppressed_customers,
)
from cdp.runtime.config import ConfigError, JobContext, parse_file
from cdp.runtime.gates import publish_with_gates
from cdp.sources import EVENT_TYPES as SILVER_EVENT_TYPES

logger = logging.getLogger(__name__)

EVENT_TYPES = tuple(sorted(SILVER_EVENT_TYPES))  # conf/sources.yaml's mappings may only produce these
MEMBER_COLUMNS = ("customer_id", "channel", "email", "phone", "wechat_openid", "device_id", "in_control",
                  "run_id", "published_at")
CHANGES_TABLE = "audience_changes"
STATS_TABLE = "audience_stats"


def audience_table(name: str) -> str:
    return f"audience_{name}"


# -- configuration ------------------------------------------------------------------------------
def select_audiences(conf_dir: Path, names: Sequence[str] | None) -> list[Audience]:
    """The audiences in ``conf_dir``, or only the named ones (an unknown name is a ConfigError)."""
    audiences = load_audiences(conf_dir)
    if not names:
        return audiences
    unknown = sorted(set(names) - {a.name for a in audiences})
    if unknown:
        raise ConfigError(f"{conf_dir / 'audiences'}: no audience named {unknown[0]!r}")
    return [a for a in audiences if a.name in names]


def load_engage_config(conf_dir: Path) -> EngageConfig:
    """``conf/engage.yaml`` (the global control group); absent: no global control group."""
    path = conf_dir / "engage.yaml"
    return parse_file(path, EngageConfig.from_dict) if path.exists() else EngageConfig()


def load_audiences(conf_dir: Path) -> list[Audience]:
    """Every ``conf/audiences/*.yaml`` (one audience per file, name defaults to the file name)."""
    folder = conf_dir / "audiences"
    audiences: list[Audience] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        audience = parse_file(path, lambda data, stem=path.stem: Audience.from_dict(data, default_name=stem))
        if audience.name in seen:
            raise ConfigError(f"{path}: name: audience {audience.name!r} is also defined in {seen[audience.name]}")
        seen[audience.name] = path
        audiences.append(audience)
    return audiences


def check_audiences(audiences: Sequence[Audience], conf_dir: Path, *, tags: Sequence[str],
                    profile_attributes: Sequence[str]) -> None:
    """Raise ConfigError naming file and key for unknown tags, attributes and event types."""
    from cdp.jobs.journeys import journey_steps

    problems = []
    journeys = journey_steps(conf_dir) if journey_conditions(audiences) else None
    for audience in audiences:
        for problem in validate_audience(audience, tags=tags, profile_attributes=profile_attributes,
                                         event_types=EVENT_TYPES, journeys=journeys):
            problems.append(f"{_file_of(conf_dir, audience)}: {problem}")
    if problems:
        raise ConfigError("; ".join(problems))


def _file_of(conf_dir: Path, audience: Audience) -> Path:
    candidate = conf_dir / "audiences" / f"{audience.name}.yaml"
    return candidate if candidate.exists() else conf_dir / "audiences"


def as_of_datetime(as_of: date | datetime | str | None) -> datetime:
    """Behaviour windows end here: a date means the end of that day (UTC); default: now."""
    if as_of is None:
        return datetime.now(UTC).replace(tzinfo=None)
    if isinstance(as_of, str):
        as_of = date.fromisoformat(as_of)
    if isinstance(as_of, datetime):
        return as_of.astimezone(UTC).replace(tzinfo=None) if as_of.tzinfo else as_of
    return datetime.combine(as_of, time(23, 59, 59, 999999))


# -- inputs ----------------------------------------------------------------------------------------
@dataclass
class Inputs:
    profile: DataFrame
    tags_wide: DataFrame | None
    identity_map: DataFrame
    consent: DataFrame
    suppression: DataFrame
    events: DataFrame | None
    purchases: DataFrame | None
    past: PastCampaigns | None = None  # inputs of the past-campaign conditions, when any audience has some
    journey_state: DataFrame | None = None


@dataclass
class PastCampaigns:
    """What :func:`cdp.audiences.language.campaign_flags` reads, as of the last committed publishes."""

    conditions: list[CampaignCondition]
    changes: DataFrame | None = None
    responses: DataFrame | None = None
    entries: DataFrame | None = None
    goal_actions: dict[tuple[str, str], tuple[Any, DataFrame]] = field(default_factory=dict)

    def flags(self, as_of: datetime) -> DataFrame | None:
        return campaign_flags(self.conditions, as_of=as_of, changes=self.changes, responses=self.responses,
                              entries=self.entries, goal_actions=self.goal_actions)


def read_past_campaigns(spark: SparkSession, lake: Any, conditions: Sequence[CampaignCondition],
                        audiences: Sequence[Audience]) -> PastCampaigns | None:
    """The audience changes (timed by each publish's as-of), response events and goal actions that
    ``conditions`` need; None without conditions."""
    from cdp.jobs.measure import goal_actions_in_lake, publishes

    if not conditions:
        return None
    past = PastCampaigns(conditions=list(conditions))
    named = sorted({c.audience for c in conditions if isinstance(c, AudienceChangeCondition | GoalCondition)})
    if named:
        timed = [(name, version, entered_at) for name in named if lake.exists(audience_table(name))
                 for version, entered_at in publishes(lake, audience_table(name))]
        as_of = spark.createDataFrame(timed, "audience string, publish_version long, publish_as_of timestamp")
        changes = (lake.read(CHANGES_TABLE).filter(F.col("audience").isin(*named)) if lake.exists(CHANGES_TABLE)
                   else spark.createDataFrame([], "audience string, customer_id string, change string, "
                                                  "publish_version long, changed_at timestamp"))
        # a change happened when its publish's members were evaluated (its as-of), not when it was written
        past.changes = (changes.join(F.broadcast(as_of), on=["audience", "publish_version"], how="left")
                        .select("audience", "customer_id", "change",
                                F.coalesce(F.col("publish_as_of"), F.col("changed_at")).alias("changed_at")))
        past.entries = past.changes.filter(F.col("change") == "entered").select(
            "audience", "customer_id", F.col("changed_at").alias("entered_at"))
    if any(isinstance(c, MessageCondition) for c in conditions):
        if not lake.exists("silver_events"):
            raise JobFailed("an audience selects by message responses but silver_events is missing")
        past.responses = responses_by_customer(lake.read("silver_events"), lake.read("customer_records"))
    by_name = {a.name: a for a in audiences}
    cache: dict[str, DataFrame | None] = {}
    for cond in (c for c in conditions if isinstance(c, GoalCondition)):
        goal = next(g for g in by_name[cond.audience].goals if g.name == cond.goal)  # checked by check_audiences
        past.goal_actions[(cond.audience, cond.goal)] = (goal, goal_actions_in_lake(lake, goal, cache))
    return past


JOURNEY_STATE_TABLE = "journey_state"


def read_inputs(spark: SparkSession, lake: Any, *, need_events: bool, need_purchases: bool,
                need_journeys: bool = False) -> Inputs:
    for table in ("customer_profile", "identity_map", "customer_records"):
        if not lake.exists(table):
            raise JobFailed(f"table {table} is missing: run cdp stitch first")
    records = lake.read("customer_records")
    if lake.exists("silver_consent"):
        consent = consent_current(lake.read("silver_consent"), records)
    else:
        logger.warning("silver_consent is missing: nobody has consent, every audience will be empty")
        consent = spark.createDataFrame([], "customer_id string, channel string, granted boolean, "
                                            "event_time timestamp, source string, record_id string")
    suppression = (lake.read("suppression_list") if lake.exists("suppression_list")
                   else spark.createDataFrame([], SUPPRESSION_SCHEMA))
    events = purchases = None
    if need_events:
        if not lake.exists("silver_events"):
            raise JobFailed("an audience uses event conditions but silver_events is missing")
        events = events_by_customer(lake.read("silver_events"), records)
    if need_purchases:
        if not (lake.exists("silver_orders") and lake.exists("silver_order_lines")):
            raise JobFailed("an audience uses bought conditions but silver_orders / silver_order_lines are missing")
        purchases = purchases_by_customer(lake.read("silver_orders"), lake.read("silver_order_lines"), records)
    journey_state = None
    if need_journeys:
        if lake.exists(JOURNEY_STATE_TABLE):
            journey_state = lake.read(JOURNEY_STATE_TABLE)
        else:
            logger.warning("an audience selects by journey but journey_state is missing: nobody is in a journey yet")
            journey_state = spark.createDataFrame([], "journey string, customer_id string, step string, "
                                                      "status string, entered_at timestamp")
    return Inputs(profile=lake.read("customer_profile"),
                  tags_wide=lake.read("tags_wide") if lake.exists("tags_wide") else None,
                  identity_map=lake.read("identity_map"), consent=consent, suppression=suppression,
                  events=events, purchases=purchases, journey_state=journey_state)


def _read_for(spark: SparkSession, lake: Any, audiences: Sequence[Audience], conf_dir: Path) -> Inputs:
    conditions = behaviour_conditions(audiences)
    inputs = read_inputs(spark, lake,
                         need_events=any(not isinstance(c, PurchaseCondition) for c in conditions),
                         need_purchases=any(isinstance(c, PurchaseCondition) for c in conditions),
                         need_journeys=bool(journey_conditions(audiences)))
    past = campaign_conditions(audiences)
    if past:
        _check_campaign_references(audiences, conf_dir)
        inputs.past = read_past_campaigns(spark, lake, past, load_audiences(conf_dir))
    return inputs


def _check_campaign_references(audiences: Sequence[Audience], conf_dir: Path) -> None:
    """Raise ConfigError naming file and key for a past-campaign condition on an unknown audience or goal."""
    every = load_audiences(conf_dir)
    problems = [f"{_file_of(conf_dir, audience)}: {problem}" for audience in audiences
                for problem in validate_campaign_references(audience, every)]
    if problems:
        raise ConfigError("; ".join(problems))


# -- evaluation --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudienceCounts:
    name: str
    channel: str
    matched: int
    no_consent: int
    unreachable: int
    suppressed: int
    members: int
    in_control: int


@dataclass(frozen=True)
class Evaluated:
    audience: Audience
    members: DataFrame          # MEMBER_COLUMNS
    suppressed: DataFrame       # customer_id of suppressed customers (for the gate)
    counts_frame: DataFrame     # one row of counts (computed lazily)


class Evaluator:
    """Builds the shared customer frame once and evaluates audiences over it."""

    def __init__(self, inputs: Inputs, audiences: Sequence[Audience], *, as_of: datetime, run_id: str,
                 all_columns: bool = False, global_control_percent: float = 0.0,
                 journey_state: DataFrame | None = None) -> None:
        """``all_columns``: keep every tag and profile column in the customer frame (the preview's tag
        composition reads them); otherwise only the columns the audiences refer to are kept.
        ``journey_state``: the state the audiences' journey conditions read (default: the inputs'
        ``journey_state``; ``cdp journeys`` passes each run's due sends here)."""
        self.inputs = inputs
        self.run_id = run_id
        self.as_of = as_of
        self.global_control_percent = global_control_percent
        flags = behaviour_flags(behaviour_conditions(audiences), as_of=as_of, events=inputs.events,
                                purchases=inputs.purchases)
        past = inputs.past.flags(as_of) if inputs.past is not None else None
        if past is not None:
            flags = past if flags is None else flags.join(past, on="customer_id", how="full_outer")
        in_journeys = journey_conditions(audiences)
        state = journey_state if journey_state is not None else inputs.journey_state
        if in_journeys:
            if state is None:
                raise ValueError("audiences with journey conditions need the journey state")
            journeys = journey_flags(in_journeys, state, as_of=as_of)
            flags = journeys if flags is None else flags.join(journeys, on="customer_id", how="full_outer")
        only = None if all_columns else {c for audience in audiences for c in referenced_columns(audience)}
        self.customers = customer_frame(inputs.profile, inputs.tags_wide, flags,
                                        only=only).persist(StorageLevel.MEMORY_AND_DISK)
        self._contacts: dict[tuple[str, str | None], DataFrame] = {}
        self._suppressed: dict[tuple[str, ...], DataFrame] = {}

    def close(self) -> None:
        self.customers.unpersist()
        for frame in [*self._contacts.values(), *self._suppressed.values()]:
            frame.unpersist()

    def contacts(self, channel: str, appid: str | None) -> DataFrame:
        key = (channel, appid)
        if key not in self._contacts:
            self._contacts[key] = channel_contacts(self.inputs.profile, self.inputs.identity_map, channel,
                                                   wechat_appid=appid).persist(StorageLevel.MEMORY_AND_DISK)
        return self._contacts[key]

    def suppressed(self, lists: Sequence[str]) -> DataFrame:
        """customer_id of the customers on ``lists``, computed once per set of lists: the staged
        members, the gate's ``forgotten`` input and the counts all read it."""
        key = tuple(sorted(set(lists)))
        if key not in self._suppressed:
            self._suppressed[key] = suppressed_customers(self.inputs.identity_map, self.inputs.suppression,
                                                         list(key)).persist(StorageLevel.MEMORY_AND_DISK)
        return self._suppressed[key]

    def evaluate(self, audience: Audience) -> Evaluated:
        suppressed = self.suppressed([ERASURE_LIST, *audience.suppression_lists])
        eligible = eligibility(self.contacts(audience.channel, audience.wechat_appid), self.inputs.consent,
                               audience.channel, suppressed=suppressed)
        members = select_members(self.customers, audience, eligible=eligible.filter(F.col("eligible")),
                                 global_control_percent=self.global_control_percent)
        published = (members.join(eligible, on="customer_id", how="inner")
                     .select("customer_id", F.lit(audience.channel).alias("channel"), "email", "phone",
                             "wechat_openid", "device_id", "in_control", F.lit(self.run_id).alias("run_id"),
                             F.current_timestamp().alias("published_at")))
        matched = self.customers.filter(compile_audience(audience)).select("customer_id").join(
            eligible, on="customer_id", how="left")
        counts = matched.agg(
            F.count(F.lit(1)).alias("matched"),
            F.count(F.when(~F.coalesce(F.col("has_consent"), F.lit(False)), 1)).alias("no_consent"),
            F.count(F.when(~F.coalesce(F.col("reachable"), F.lit(False)), 1)).alias("unreachable"),
            F.count(F.when(F.coalesce(F.col("is_suppressed"), F.lit(False)), 1)).alias("suppressed"),
        )
        return Evaluated(audience=audience, members=published, suppressed=suppressed, counts_frame=counts)


# -- publishing ---------------------------------------------------------------------------------------
@dataclass
class AudiencesResult:
    published: dict[str, int | None] = field(default_factory=dict)   # name -> new version
    counts: dict[str, AudienceCounts] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)              # name -> gate summary
    reports: dict[str, str] = field(default_factory=dict)
    stats_rows: list[tuple] = field(default_factory=list)  # audience_stats rows not yet written (write_stats)


def publish_evaluated(lake: Any, ctx: JobContext, evaluated: Evaluated, consent: DataFrame,
                      result: AudiencesResult, as_of: datetime, *, suite: str = "audience") -> None:
    """Gate and publish one evaluated audience as ``audience_<name>``; record its changes and counts.

    A failed gate is recorded in ``result.failed`` (nothing published); the caller decides to fail.
    ``suite``: the quality suite (``cdp journeys`` publishes its send batches with ``journey_send``).
    The audience's ``audience_stats`` row is kept in ``result.stats_rows``: the caller appends every
    audience's rows in one commit with :func:`write_stats`.
    """
    audience = evaluated.audience
    table = audience_table(audience.name)
    previous_version = lake.version(table) if lake.exists(table) else None
    try:
        outcome = publish_with_gates(
            lake, evaluated.members.select(*MEMBER_COLUMNS), table, suite, ctx,
            inputs={"consent_current": consent, "forgotten": evaluated.suppressed},
            params={"audience_compliance": {"channel": audience.channel}},
            # as_of: when the members entered, for cdp measure's conversion windows
            metadata={"audience": audience.name, "channel": audience.channel, "as_of": as_of.isoformat()})
    except JobFailed as exc:
        result.failed[audience.name] = str(exc)
        logger.error("audience %s not published: %s", audience.name, exc)
        return
    result.published[audience.name] = outcome.version
    result.reports[audience.name] = outcome.report_path
    published = lake.read(table, version=outcome.version).select("customer_id", "in_control")
    sizes = published.agg(F.count(F.lit(1)).alias("members"),
                          F.count(F.when(F.col("in_control"), 1)).alias("in_control")).first()
    members, in_control = int(sizes["members"]), int(sizes["in_control"])
    row = evaluated.counts_frame.first()
    result.counts[audience.name] = AudienceCounts(
        name=audience.name, channel=audience.channel, matched=row["matched"], no_consent=row["no_consent"],
        unreachable=row["unreachable"], suppressed=row["suppressed"], members=members, in_control=in_control)
    changes = audience_changes(published, lake.read(table, version=previous_version)
                               if previous_version is not None else None, audience.name, outcome.version,
                               ctx.run_id)
    lake.write(changes, CHANGES_TABLE, mode="append", app_id=f"audience_changes_{audience.name}",
               app_version=outcome.version, metadata={"run_id": ctx.run_id, "audience": audience.name})
    counts = result.counts[audience.name]
    result.stats_rows.append((ctx.run_id, audience.name, audience.channel, outcome.version, counts.matched,
                              counts.no_consent, counts.unreachable, counts.suppressed, counts.members,
                              counts.in_control))
    logger.info("audience %s (%s): matched %d, excluded no-consent %d, unreachable %d, suppressed %d; "
                "published %d members (%d control) as version %s", audience.name, audience.channel,
                counts.matched, counts.no_consent, counts.unreachable, counts.suppressed, members, in_control,
                outcome.version)


def write_stats(lake: Any, ctx: JobContext, result: AudiencesResult) -> None:
    """Append the ``audience_stats`` rows :func:`publish_evaluated` kept, in one commit (none without rows)."""
    if not result.stats_rows:
        return
    stats = lake.spark.createDataFrame(
        result.stats_rows,
        "run_id string, audience string, channel string, publish_version long, matched long, "
        "no_consent long, unreachable long, suppressed long, members long, in_control long",
    ).withColumn("computed_at", F.current_timestamp())
    lake.write(stats, STATS_TABLE, mode="append", metadata={"run_id": ctx.run_id})
    result.stats_rows.clear()


def audience_changes(current: DataFrame, previous: DataFrame | None, name: str, version: int | None,
                     run_id: str) -> DataFrame:
    """Who entered and exited between two published versions.

    Returns:
        audience, customer_id, change ('entered' | 'exited'), publish_version, run_id, changed_at.
    """
    now = current.select("customer_id").distinct()
    if previous is None:
        entered, exited = now, now.limit(0)
    else:
        before = previous.select("customer_id").distinct()
        entered = now.join(before, on="customer_id", how="left_anti")
        exited = before.join(now, on="customer_id", how="left_anti")
    tagged = entered.withColumn("change", F.lit("entered")).unionByName(exited.withColumn("change", F.lit("exited")))
    return tagged.select(F.lit(name).alias("audience"), "customer_id", "change",
                         F.lit(version).cast("long").alias("publish_version"), F.lit(run_id).alias("run_id"),
                         F.current_timestamp().alias("changed_at"))


def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None, as_of: date | datetime | str | None = None,
        names: Sequence[str] | None = None) -> AudiencesResult:
    """Evaluate, gate and publish every (or the named) audience; raise JobFailed if any gate failed."""
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    audiences = select_audiences(ctx.conf_dir, names)
    result = AudiencesResult()
    if not audiences:
        logger.warning("no audiences in %s", ctx.conf_dir / "audiences")
        return result
    inputs = _read_for(spark, lake, audiences, ctx.conf_dir)
    check_audiences(audiences, ctx.conf_dir,
                    tags=tag_names(inputs.tags_wide) if inputs.tags_wide is not None else [],
                    profile_attributes=[c for c in inputs.profile.columns if c != "customer_id"])
    lake.write(inputs.consent, "consent_current", mode="overwrite", metadata={"run_id": ctx.run_id})
    consent = lake.read("consent_current")
    # audiences are evaluated on the stored consent: computing it joins every customer record, which
    # each audience would otherwise repeat two or three times (a 502 MB shuffle each time at 1M)
    inputs = replace(inputs, consent=consent)
    evaluator = Evaluator(inputs, audiences, as_of=as_of_datetime(as_of), run_id=ctx.run_id,
                          global_control_percent=load_engage_config(ctx.conf_dir).global_control_percent)
    try:
        for audience in audiences:
            publish_evaluated(lake, ctx, evaluator.evaluate(audience), consent, result, evaluator.as_of)
        write_stats(lake, ctx, result)
    finally:
        evaluator.close()
    if result.failed:
        raise JobFailed(f"{len(result.failed)} audience(s) failed their quality gate and were not published: "
                        + "; ".join(f"{k}: {v}" for k, v in result.failed.items()))
    return result


# -- preview -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preview:
    name: str
    channel: str
    counts: AudienceCounts
    overlap: dict[str, int]                      # other audience -> customers matching both
    composition: list[tuple[str, str, int, float]]  # tag, value, members, share of members


def preview(spark: SparkSession, ctx: JobContext, name: str, *, lake: Any = None,
            as_of: date | datetime | str | None = None, top: int = 5) -> Preview:
    """Size, exclusions, overlap and top tag values of one audience; writes nothing."""
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    audiences = load_audiences(ctx.conf_dir)
    by_name = {a.name: a for a in audiences}
    if name not in by_name:
        raise ConfigError(f"{ctx.conf_dir / 'audiences'}: no audience named {name!r} (known: {sorted(by_name)})")
    inputs = _read_for(spark, lake, audiences, ctx.conf_dir)
    check_audiences(audiences, ctx.conf_dir,
                    tags=tag_names(inputs.tags_wide) if inputs.tags_wide is not None else [],
                    profile_attributes=[c for c in inputs.profile.columns if c != "customer_id"])
    evaluator = Evaluator(inputs, audiences, as_of=as_of_datetime(as_of), run_id=ctx.run_id, all_columns=True,
                          global_control_percent=load_engage_config(ctx.conf_dir).global_control_percent)
    try:
        target = by_name[name]
        evaluated = evaluator.evaluate(target)
        members = evaluated.members.select("customer_id", "in_control").persist(StorageLevel.MEMORY_AND_DISK)
        size = members.count()
        in_control = members.filter(F.col("in_control")).count()
        row = evaluated.counts_frame.first()
        counts = AudienceCounts(name=name, channel=target.channel, matched=row["matched"],
                                no_consent=row["no_consent"], unreachable=row["unreachable"],
                                suppressed=row["suppressed"], members=size, in_control=in_control)
        # overlap on conditions (before consent) with every other audience, in one pass
        others = [a for a in audiences if a.name != name]
        overlap: dict[str, int] = {}
        if others:
            flagged = evaluator.customers.join(members.select("customer_id"), on="customer_id", how="left_semi")
            agg = flagged.agg(*[F.count(F.when(compile_audience(a), 1)).alias(a.name) for a in others]).first()
            overlap = {a.name: int(agg[a.name]) for a in others}
        composition: list[tuple[str, str, int, float]] = []
        if inputs.tags_wide is not None and size:
            member_tags = evaluator.customers.join(members.select("customer_id"), on="customer_id", how="left_semi")
            categorical = [c for c, t in member_tags.dtypes if c.startswith(TAG_PREFIX) and t in ("string", "boolean", "int")]
            if categorical:
                stacked = member_tags.select(F.explode(F.array(*[
                    F.struct(F.lit(c[len(TAG_PREFIX):]).alias("tag"), F.col(f"`{c}`").cast("string").alias("value"))
                    for c in categorical])).alias("t")).select("t.tag", "t.value").filter(F.col("value").isNotNull())
                for r in (stacked.groupBy("tag", "value").count().orderBy(F.col("count").desc(), "tag", "value")
                          .limit(top * 4).collect()):
                    composition.append((r["tag"], r["value"], int(r["count"]), r["count"] / size))
        members.unpersist()
    finally:
        evaluator.close()
    return Preview(name=name, channel=target.channel, counts=counts, overlap=overlap, composition=composition)


def format_preview(p: Preview) -> str:
    c = p.counts
    lines = [f"audience {p.name} ({p.channel})",
             f"  size {c.members} (control {c.in_control}); matched {c.matched}, excluded: no consent "
             f"{c.no_consent}, unreachable {c.unreachable}, suppressed {c.suppressed}"]
    if p.overlap:
        lines.append("  overlap with other audiences (members also matching):")
        lines += [f"    {other:<30} {n:>10}  {n / c.members:6.1%}" if c.members else f"    {other:<30} {n:>10}"
                  for other, n in sorted(p.overlap.items(), key=lambda kv: -kv[1])]
    if p.composition:
        lines.append("  top tag values among members:")
        lines += [f"    {tag}={value:<20} {n:>10}  {share:6.1%}" for tag, value, n, share in p.composition]
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------------------
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["publish", "preview"], default="publish",
                        help="publish (default) every audience, or preview one")
    parser.add_argument("name", nargs="?", help="audience name (preview; or restrict publish to it)")
    parser.add_argument("--as-of", help="end of the behaviour windows, YYYY-MM-DD (default: now)")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    if args.action == "preview":
        if not args.name:
            raise ConfigError("cdp audiences preview NAME: the audience name is missing")
        sys.stdout.write(format_preview(preview(spark, ctx, args.name, as_of=args.as_of)) + "\n")
        return 0
    result = run(spark, ctx, as_of=args.as_of, names=[args.name] if args.name else None)
    for name, version in result.published.items():
        logger.info("published audience_%s version %s (%d members)", name, version, result.counts[name].members)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("audiences", argv, _run_from_args, _add_arguments,
                    description="evaluate, gate and publish audiences; preview one")


if __name__ == "__main__":
    sys.exit(main())
