"""Advancing journey members by one run, as pure DataFrame transforms (the batch model of early Segment
journeys: every run moves each member as far as the definition lets it, then rests).

One run at instant ``as_of`` (the end of the run's day), in this order:

1. :func:`start_frame`: the state of the evaluated journeys; members of a changed definition stay at
   their step when it still exists (``migrated``), else leave (``exited``, ``step_removed``).
2. :func:`apply_exits`: members already in leave on a journey's exit rules (consent withdrawn for a
   channel it sends on, goal reached since entering, left the entry audience or condition).
3. :func:`apply_entries`: customers who meet the entry and are not in the journey enter at its first
   step (a former member only under the re-entry rule: never, or after N days since leaving).
4. :func:`advance`: each member moves through branches, splits and due waits until a wait that is not
   due, a send, or an exit. A member who reaches a wait rests there at least until the next run.
5. :func:`due_sends` / :func:`release_sends`: members at a send step are due; on a quiet day they are
   held; per customer and channel, frequency caps (sends in the last N days, counting every journey's
   sends and every audience entry, plus the sends released earlier in this run) hold the rest. The job
   publishes the released ones per step through the audiences' gates; :func:`apply_sends` records
   each outcome (``sent``, ``control`` for the global control group, ``skipped`` when consent,
   reachability or suppression stopped it) and moves them on; held members stay and are due again.
6. :func:`advance` again from the step after the send: at most one message per journey and member per
   run (a send right after a send goes out on the next run).

The working frame carries the state columns plus ``_events`` (this run's transitions, in order) and
``_changed``; :func:`state_rows` and :func:`event_rows` turn it into the merge and the append.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from cdp.journeys.definition import Journey, JourneyPolicy, Step, condition_key

STATE_SCHEMA = ("journey string, customer_id string, step string, entered_step_at timestamp, path array<string>, "
                "version string, status string, entered_at timestamp, exited_at timestamp, exit_reason string, "
                "entries int, updated_at timestamp")
STATE_COLUMNS = tuple(part.split()[0] for part in STATE_SCHEMA.split(", "))
EVENT_TYPE = ("struct<event:string,from_step:string,to_step:string,detail:string,channel:string,"
              "message:string>")
EVENTS_SCHEMA = ("journey string, customer_id string, as_of timestamp, seq int, event string, from_step string, "
                 "to_step string, detail string, channel string, message string, version string, run_id string")
SEND_EVENTS = ("sent", "control")  # what counts against frequency caps: control members are held out
# of the message but follow the same path, caps included, so they stay comparable
EXIT_PREFIX = "__exit__:"
ACTIVE, EXITED = "active", "exited"
_NO_CAP = 1 << 30


def _ts(value: datetime) -> Column:
    return F.lit(value).cast("timestamp")


def _event(event: str | Column, from_step: Column | None, to_step: Column | None, detail: Column | str | None,
           channel: Column | None = None, message: Column | None = None) -> Column:
    def text(value: Column | str | None) -> Column:
        if value is None:
            return F.lit(None).cast("string")
        return F.lit(value) if isinstance(value, str) else value.cast("string")

    return F.struct(text(event).alias("event"), text(from_step).alias("from_step"), text(to_step).alias("to_step"),
                    text(detail).alias("detail"), text(channel).alias("channel"), text(message).alias("message"))


def _no_events() -> Column:
    return F.expr(f"CAST(array() AS array<{EVENT_TYPE}>)")


def _append(events: Column, when: Column, event: Column) -> Column:
    return F.when(when, F.concat(events, F.array(event))).otherwise(events)


def _case(column: str, cases: Sequence[tuple[str, Column | None]], otherwise: Column | None = None) -> Column | None:
    """CASE column WHEN key THEN value ... for the cases whose value is not None; None when there is
    none and no ``otherwise``."""
    result = None
    for key, branch in cases:
        if branch is None:
            continue
        test = F.col(column) == F.lit(key)
        result = F.when(test, branch) if result is None else result.when(test, branch)
    if result is None:
        return otherwise
    return result.otherwise(otherwise) if otherwise is not None else result


def _by_journey(journeys: Sequence[Journey], value: Callable[[Journey], Column | None],
                otherwise: Column | None = None) -> Column | None:
    """CASE journey WHEN j THEN value(j) ... (value may return None: no branch for that journey)."""
    return _case("journey", [(j.name, value(j)) for j in journeys], otherwise)


def _by_step(steps: Sequence[Step], value: Callable[[Step], Column | None]) -> Column | None:
    """CASE step WHEN s THEN value(s) ... within one journey."""
    return _case("step", [(s.id, value(s)) for s in steps])


# -- 1. state of the evaluated journeys ----------------------------------------------------------------
def start_frame(state: DataFrame, journeys: Sequence[Journey], *, as_of: datetime) -> DataFrame:
    """The state rows of ``journeys`` with an empty event list; a changed definition handled.

    Args:
        state: ``journey_state`` (:data:`STATE_SCHEMA`).
        journeys: the definitions evaluated this run.

    Returns:
        :data:`STATE_COLUMNS` + ``_events`` + ``_changed``. An active member whose row carries another
        version stays at its step when the new definition has it (event ``migrated``, detail
        ``<old> -> <new>``), else leaves (event ``exited``, reason ``step_removed``).
    """
    names = [j.name for j in journeys]
    frame = state.filter(F.col("journey").isin(*names)).select(*STATE_COLUMNS)
    current = _by_journey(journeys, lambda j: F.lit(j.version), F.lit(None).cast("string"))
    has_step = _by_journey(journeys, lambda j: F.col("step").isin(*j.step_ids), F.lit(False))
    changed = (F.col("status") == ACTIVE) & (F.col("version") != current)
    kept = changed & has_step
    removed = changed & ~has_step
    events = _no_events()
    events = _append(events, kept, _event("migrated", F.col("step"), F.col("step"),
                                          F.concat_ws(" -> ", F.col("version"), current)))
    events = _append(events, removed, _event("exited", F.col("step"), None, F.lit("step_removed")))
    return frame.select(
        "journey", "customer_id", "step", "entered_step_at", "path",
        F.when(kept, current).otherwise(F.col("version")).alias("version"),
        F.when(removed, F.lit(EXITED)).otherwise(F.col("status")).alias("status"),
        "entered_at",
        F.when(removed, _ts(as_of)).otherwise(F.col("exited_at")).alias("exited_at"),
        F.when(removed, F.lit("step_removed")).otherwise(F.col("exit_reason")).alias("exit_reason"),
        "entries",
        F.when(changed, _ts(as_of)).otherwise(F.col("updated_at")).alias("updated_at"),
        events.alias("_events"), changed.alias("_changed"))


# -- 2. exits ----------------------------------------------------------------------------------------------
EXIT_PRIORITY = ("consent_withdrawn", "goal_reached", "left_entry")


def exit_reasons(frame: DataFrame, journeys: Sequence[Journey], *, as_of: datetime,
                 in_entry: DataFrame | None = None, withdrawn: DataFrame | None = None,
                 goal_actions: Mapping[str, DataFrame] | None = None) -> DataFrame:
    """Why active members leave this run, one reason each (first of :data:`EXIT_PRIORITY`).

    Args:
        frame: the working frame (active members are read).
        in_entry: journey, customer_id of customers who meet their journey's audience / where entry now.
        withdrawn: customer_id, channel of withdrawn consent (``consent_current`` with granted false).
        goal_actions: journey name -> customer_id, action_time of its exit goal's actions.

    Returns:
        journey, customer_id, reason.
    """
    active = frame.filter(F.col("status") == ACTIVE).select("journey", "customer_id", "entered_at")
    found: list[DataFrame] = []
    if withdrawn is not None:
        pairs = [(j.name, c) for j in journeys if j.exit.consent_withdrawn for c in j.channels]
        if pairs:
            wanted = frame.sparkSession.createDataFrame(pairs, "journey string, channel string")
            hit = withdrawn.select("customer_id", "channel").join(wanted, on="channel", how="inner")
            found.append(active.join(hit.select("journey", "customer_id").distinct(), on=["journey", "customer_id"],
                                     how="left_semi").select("journey", "customer_id",
                                                             F.lit("consent_withdrawn").alias("reason")))
    for journey in journeys:
        goal = journey.exit.goal
        actions = (goal_actions or {}).get(journey.name)
        if goal is not None and actions is not None:
            members = active.filter(F.col("journey") == journey.name)
            window_end = F.least(F.col("entered_at") + F.expr(f"INTERVAL {goal.within_days} DAYS"), _ts(as_of))
            reached = members.join(actions.select("customer_id", "action_time"), on="customer_id", how="inner").filter(
                (F.col("action_time") > F.col("entered_at")) & (F.col("action_time") <= window_end))
            found.append(reached.select("journey", "customer_id", F.lit("goal_reached").alias("reason")).distinct())
    leaving = [j.name for j in journeys if j.exit.left_entry]
    if leaving and in_entry is not None:
        found.append(active.filter(F.col("journey").isin(*leaving))
                     .join(in_entry, on=["journey", "customer_id"], how="left_anti")
                     .select("journey", "customer_id", F.lit("left_entry").alias("reason")))
    if not found:
        return frame.sparkSession.createDataFrame([], "journey string, customer_id string, reason string")
    union = found[0]
    for other in found[1:]:
        union = union.unionByName(other)
    rank = F.array_position(F.array(*[F.lit(r) for r in EXIT_PRIORITY]), F.col("reason"))
    return (union.groupBy("journey", "customer_id").agg(F.min_by("reason", rank).alias("reason")))


def apply_exits(frame: DataFrame, reasons: DataFrame, *, as_of: datetime) -> DataFrame:
    """Active members with a reason (:func:`exit_reasons`) leave: status exited, event ``exited``."""
    joined = frame.join(reasons.withColumnRenamed("reason", "_reason"), on=["journey", "customer_id"], how="left")
    leaving = (F.col("status") == ACTIVE) & F.col("_reason").isNotNull()
    return joined.select(
        *[c for c in ("journey", "customer_id", "step", "entered_step_at", "path", "version")],
        F.when(leaving, F.lit(EXITED)).otherwise(F.col("status")).alias("status"), "entered_at",
        F.when(leaving, _ts(as_of)).otherwise(F.col("exited_at")).alias("exited_at"),
        F.when(leaving, F.col("_reason")).otherwise(F.col("exit_reason")).alias("exit_reason"), "entries",
        F.when(leaving, _ts(as_of)).otherwise(F.col("updated_at")).alias("updated_at"),
        _append(F.col("_events"), leaving, _event("exited", F.col("step"), None, F.col("_reason"))).alias("_events"),
        (F.col("_changed") | leaving).alias("_changed"))


# -- 3. entries --------------------------------------------------------------------------------------------
def entry_candidates(journeys: Sequence[Journey], *, facts: DataFrame, audience_members: Mapping[str, DataFrame],
                     since: Mapping[str, datetime], as_of: datetime) -> tuple[DataFrame, DataFrame]:
    """Who meets each journey's entry now.

    Args:
        facts: :func:`facts` output (condition and event-time columns per customer).
        audience_members: audience name -> customer_id of its members who may be sent to (not its own
            control group).
        since: journey name -> the instant of its previous evaluation (event entries count events
            after it; absent: the entry's ``lookback_days`` before ``as_of``).

    Returns:
        (candidates, in_entry): journey, customer_id of who meets the entry; the same restricted to
        audience and where entries (what ``left_entry`` exits compare with).
    """
    spark = facts.sparkSession
    candidates: list[DataFrame] = []
    lasting: list[DataFrame] = []
    for journey in journeys:
        entry = journey.entry
        if entry.audience is not None:
            members = audience_members[entry.audience].select("customer_id")
        elif entry.where is not None:
            members = facts.filter(F.coalesce(F.col(condition_key(journey.name, "entry.where")), F.lit(False))
                                   ).select("customer_id")
        else:
            assert entry.event is not None
            start = since.get(journey.name, as_of - timedelta(days=entry.lookback_days))
            members = facts.filter((F.col(entry.event.key) > _ts(start)) & (F.col(entry.event.key) <= _ts(as_of))
                                   ).select("customer_id")
        tagged = members.select(F.lit(journey.name).alias("journey"), "customer_id")
        candidates.append(tagged)
        if entry.event is None:
            lasting.append(tagged)
    empty = spark.createDataFrame([], "journey string, customer_id string")

    def union(frames: list[DataFrame]) -> DataFrame:
        result = empty
        for frame in frames:
            result = result.unionByName(frame)
        return result.distinct()

    return union(candidates), union(lasting)


def apply_entries(frame: DataFrame, candidates: DataFrame, journeys: Sequence[Journey], *,
                  as_of: datetime) -> DataFrame:
    """Candidates not in their journey enter at its first step (former members by the re-entry rule)."""
    joined = frame.join(candidates.select("journey", "customer_id", F.lit(True).alias("_candidate")),
                        on=["journey", "customer_id"], how="full_outer")
    after = _by_journey(journeys, lambda j: F.lit(j.re_entry_after_days).cast("int"))
    returning = ((F.col("status") == EXITED) & after.isNotNull()
                 & (F.datediff(_ts(as_of), F.col("exited_at")) >= after))
    enters = F.coalesce(F.col("_candidate"), F.lit(False)) & (F.col("status").isNull() | returning)
    first = _by_journey(journeys, lambda j: F.lit(j.first_step))
    version = _by_journey(journeys, lambda j: F.lit(j.version))
    entries = F.coalesce(F.col("entries"), F.lit(0)) + 1
    events = F.coalesce(F.col("_events"), _no_events())
    t = _ts(as_of)
    return joined.select(
        "journey", "customer_id",
        F.when(enters, first).otherwise(F.col("step")).alias("step"),
        F.when(enters, t).otherwise(F.col("entered_step_at")).alias("entered_step_at"),
        F.when(enters, F.array(first)).otherwise(F.col("path")).alias("path"),
        F.when(enters, version).otherwise(F.col("version")).alias("version"),
        F.when(enters, F.lit(ACTIVE)).otherwise(F.col("status")).alias("status"),
        F.when(enters, t).otherwise(F.col("entered_at")).alias("entered_at"),
        F.when(enters, F.lit(None)).otherwise(F.col("exited_at")).alias("exited_at"),
        F.when(enters, F.lit(None)).otherwise(F.col("exit_reason")).alias("exit_reason"),
        F.when(enters, entries).otherwise(F.col("entries")).cast("int").alias("entries"),
        F.when(enters, t).otherwise(F.col("updated_at")).alias("updated_at"),
        _append(events, enters, _event("entered", None, first, F.concat(F.lit("entry "), entries.cast("string"))))
        .alias("_events"),
        (F.coalesce(F.col("_changed"), F.lit(False)) | enters).alias("_changed"),
    ).filter(F.col("status").isNotNull())  # candidates who did not enter and have no row


# -- 4. advancing -------------------------------------------------------------------------------------------
def _target(step_id: str | None, detail: str) -> Column:
    to = F.lit(step_id) if step_id is not None else F.lit(EXIT_PREFIX + "completed")
    return F.struct(to.alias("to"), F.lit(detail).alias("detail"))


def split_bucket(journey: str, step: str) -> Column:
    """A stable bucket in [0, 10000) of (journey, step, customer): the same arm on every run and entry."""
    return F.pmod(F.xxhash64(F.concat_ws(":", F.lit("split"), F.lit(journey), F.lit(step), F.col("customer_id"))),
                  F.lit(10000))


def _move(journey: Journey, step: Step, as_of: datetime) -> Column | None:
    """The step a member at ``step`` moves to now (struct of to, detail), or null to stay."""
    t = _ts(as_of)
    waited = F.datediff(t, F.col("entered_step_at"))
    arrived_earlier = F.col("entered_step_at") < t  # a member who reached a wait this run rests there
    if step.kind == "exit":
        return F.struct(F.lit(EXIT_PREFIX + (step.exit_reason or "completed")).alias("to"),
                        F.lit("exit step").alias("detail"))
    if step.kind == "wait" and step.wait is not None:
        wait = step.wait
        if wait.days is not None:
            return F.when(waited >= wait.days, _target(step.next, f"waited {wait.days} days"))
        if wait.until_event is not None:
            happened = F.coalesce(F.col(wait.until_event.key) > F.col("entered_step_at"), F.lit(False))
            reason = f"{wait.until_event.event_type} happened"
        else:
            happened = F.coalesce(F.col(condition_key(journey.name, f"{step.path}.wait.until")), F.lit(False))
            reason = "condition met"
        return (F.when(arrived_earlier & happened, _target(step.next, reason))
                .when(waited >= (wait.timeout_days or 0), _target(step.on_timeout, f"timeout {wait.timeout_days} days")))
    if step.kind == "branch":
        result = None
        for i, arm in enumerate(step.arms):
            if arm.when is None:
                target = _target(arm.next, "else")
                return target if result is None else result.otherwise(target)
            test = F.coalesce(F.col(condition_key(journey.name, f"{step.path}.branch[{i}].when")), F.lit(False))
            branch = _target(arm.next, f"arm {i}")
            result = F.when(test, branch) if result is None else result.when(test, branch)
        return result
    if step.kind == "split":
        bucket = split_bucket(journey.name, step.id)
        result, upper = None, 0.0
        for arm in step.arms:
            upper += (arm.percent or 0) * 100
            test = bucket < F.lit(int(round(upper)))
            branch = _target(arm.next, f"arm {arm.name}")
            result = F.when(test, branch) if result is None else result.when(test, branch)
        return result
    return None  # send: the send phase moves members on


def _apply_move(frame: DataFrame, move: Column, as_of: datetime, keep: Sequence[str]) -> DataFrame:
    """Move every member whose ``move`` is not null; record the transition."""
    t = _ts(as_of)
    staged = frame.withColumn("_mv", move)
    moved = F.col("_mv").isNotNull()
    exiting = moved & F.col("_mv.to").startswith(EXIT_PREFIX)
    stepping = moved & ~exiting
    reason = F.substring(F.col("_mv.to"), len(EXIT_PREFIX) + 1, 200)
    event = F.when(exiting, _event("exited", F.col("step"), None, reason)).otherwise(
        _event("advanced", F.col("step"), F.col("_mv.to"), F.col("_mv.detail")))
    return staged.select(
        "journey", "customer_id",
        F.when(stepping, F.col("_mv.to")).otherwise(F.col("step")).alias("step"),
        F.when(stepping, t).otherwise(F.col("entered_step_at")).alias("entered_step_at"),
        F.when(stepping, F.concat(F.col("path"), F.array(F.col("_mv.to")))).otherwise(F.col("path")).alias("path"),
        "version",
        F.when(exiting, F.lit(EXITED)).otherwise(F.col("status")).alias("status"), "entered_at",
        F.when(exiting, t).otherwise(F.col("exited_at")).alias("exited_at"),
        F.when(exiting, reason).otherwise(F.col("exit_reason")).alias("exit_reason"), "entries",
        F.when(moved, t).otherwise(F.col("updated_at")).alias("updated_at"),
        _append(F.col("_events"), moved, event).alias("_events"),
        (F.col("_changed") | moved).alias("_changed"), *keep)


def advance(frame: DataFrame, journeys: Sequence[Journey], *, as_of: datetime, keep: Sequence[str] = ()) -> DataFrame:
    """Move active members through due waits, branches, splits and exits until they rest (module doc, 4).

    ``frame`` must carry the fact columns the journeys read (:func:`facts`); ``keep`` names them so
    they survive each pass.
    """
    move = _by_journey(journeys, lambda j: _by_step(j.steps, lambda s: _move(j, s, as_of)))
    if move is None:  # nothing but sends: the send phase moves members
        return frame
    move = F.when(F.col("status") == ACTIVE, move)
    for _ in range(max((j.max_moves for j in journeys), default=0)):
        frame = _apply_move(frame, move, as_of, keep)
    return frame


# -- 5. sends ------------------------------------------------------------------------------------------------
def due_sends(frame: DataFrame, journeys: Sequence[Journey]) -> DataFrame:
    """Active members at a send step: journey, customer_id, step, channel, message."""
    def attr(name: str) -> Column:
        value = _by_journey(journeys, lambda j: _by_step(j.sends, lambda s: F.lit(getattr(s.send, name))))
        return value if value is not None else F.lit(None).cast("string")

    at_send = _by_journey(journeys, lambda j: F.col("step").isin(*[s.id for s in j.sends]) if j.sends else None,
                          F.lit(False))
    return (frame.filter((F.col("status") == ACTIVE) & at_send)
            .select("journey", "customer_id", "step", attr("channel").alias("channel"),
                    attr("message").alias("message")))


def release_sends(due: DataFrame, history: DataFrame, policy: JourneyPolicy, quiet: Sequence[str], *,
                  as_of: datetime) -> DataFrame:
    """Which due sends go out now, and why the others wait.

    Args:
        due: :func:`due_sends` output.
        history: customer_id, channel, sent_at: every earlier send (journeys' ``sent`` / ``control``
            events and audience entries) that counts against the caps.
        quiet: the journeys for which ``as_of`` is a quiet day.

    Returns:
        due's columns + released boolean + held string (``quiet_day`` | ``frequency_cap``; null when
        released). Per customer and channel the due sends are ranked by journey and step name; the
        first ``min over caps (sends - sent in the cap's window)`` go out.
    """
    t = _ts(as_of)
    windows = sorted({cap.days for caps in policy.caps.values() for cap in caps})
    if windows:
        used = history.filter(F.col("sent_at") <= t).groupBy("customer_id", "channel").agg(
            *[F.count(F.when(F.col("sent_at") > _ts(as_of - timedelta(days=d)), 1)).alias(f"_used_{d}")
              for d in windows])
        ranked = due.join(used, on=["customer_id", "channel"], how="left")
    else:
        ranked = due
    allowed = None
    for channel, caps in policy.caps.items():
        room = F.least(*[F.lit(cap.sends) - F.coalesce(F.col(f"_used_{cap.days}"), F.lit(0)) for cap in caps]) \
            if len(caps) > 1 else F.lit(caps[0].sends) - F.coalesce(F.col(f"_used_{caps[0].days}"), F.lit(0))
        test = F.col("channel") == F.lit(channel)
        allowed = F.when(test, room) if allowed is None else allowed.when(test, room)
    allowed = F.lit(_NO_CAP) if allowed is None else allowed.otherwise(F.lit(_NO_CAP))
    is_quiet = F.col("journey").isin(*quiet) if quiet else F.lit(False)
    order = Window.partitionBy("customer_id", "channel").orderBy(is_quiet.asc(), F.col("journey"), F.col("step"))
    ranked = ranked.withColumn("_rank", F.row_number().over(order))
    released = ~is_quiet & (F.col("_rank") <= allowed)
    held = F.when(is_quiet, F.lit("quiet_day")).when(~released, F.lit("frequency_cap"))
    return ranked.select("journey", "customer_id", "step", "channel", "message", released.alias("released"),
                         held.alias("held"))


def apply_sends(frame: DataFrame, outcomes: DataFrame, journeys: Sequence[Journey], *, as_of: datetime,
                keep: Sequence[str] = ()) -> DataFrame:
    """Record each due member's send outcome; move the released ones past their send step.

    Args:
        outcomes: journey, customer_id, outcome (``sent`` | ``control`` | ``skipped`` | ``held``),
            detail, channel, message.
    """
    joined = frame.join(outcomes.select("journey", "customer_id", F.col("outcome").alias("_outcome"),
                                        F.col("detail").alias("_detail"), F.col("channel").alias("_channel"),
                                        F.col("message").alias("_message")),
                        on=["journey", "customer_id"], how="left")
    recorded = joined.select(
        *STATE_COLUMNS,
        _append(F.col("_events"), F.col("_outcome").isNotNull(),
                _event(F.col("_outcome"), F.col("step"), F.col("step"), F.col("_detail"), F.col("_channel"),
                       F.col("_message"))).alias("_events"),
        "_changed", "_outcome", *keep)
    after_send = _by_journey(journeys, lambda j: _by_step(j.sends, lambda s: _target(s.next, "sent")))
    if after_send is None:  # no journey sends anything
        return recorded.drop("_outcome")
    move = F.when(F.col("_outcome").isin(*SEND_EVENTS, "skipped"), after_send)
    return _apply_move(recorded, move, as_of, keep)


# -- 6. outputs -----------------------------------------------------------------------------------------------
def state_rows(frame: DataFrame) -> DataFrame:
    """The rows this run changed, in :data:`STATE_SCHEMA` (the merge source, keyed on journey, customer_id)."""
    return frame.filter(F.col("_changed")).select(*STATE_COLUMNS)


def event_rows(frame: DataFrame, *, as_of: datetime, run_id: str) -> DataFrame:
    """Every transition of this run, in order per member (:data:`EVENTS_SCHEMA`)."""
    exploded = frame.select("journey", "customer_id", "version", F.posexplode("_events").alias("seq", "e"))
    return exploded.select("journey", "customer_id", _ts(as_of).alias("as_of"), F.col("seq").cast("int"),
                           "e.event", "e.from_step", "e.to_step", "e.detail", "e.channel", "e.message", "version",
                           F.lit(run_id).alias("run_id"))


# -- facts: what the conditions and waits read -------------------------------------------------------------------
def last_event_times(events: DataFrame, journeys: Sequence[Journey], *, as_of: datetime) -> DataFrame | None:
    """customer_id + one column per event match of the journeys (entries, waits): the latest such event
    at or before ``as_of``; None when no journey reads events."""
    matches = list(dict.fromkeys(m for j in journeys for m in j.event_matches()))
    if not matches:
        return None
    aggs = []
    for match in matches:
        hit = F.col("event_type") == F.lit(match.event_type)
        if match.channel is not None:
            hit = hit & (F.col("channel") == F.lit(match.channel))
        aggs.append(F.max(F.when(hit, F.col("event_time"))).alias(match.key))
    types = sorted({m.event_type for m in matches})
    return (events.filter(F.col("event_type").isin(*types) & (F.col("event_time") <= _ts(as_of)))
            .groupBy("customer_id").agg(*aggs))


def fact_columns(journeys: Sequence[Journey]) -> list[str]:
    """The columns :func:`advance` and :func:`entry_candidates` read from the facts frame."""
    cols = [key for j in journeys for key, _ in j.conditions()]
    cols += [m.key for j in journeys for m in j.event_matches()]
    return list(dict.fromkeys(cols))


def with_facts(frame: DataFrame, facts: DataFrame, journeys: Sequence[Journey]) -> DataFrame:
    """The working frame with the fact columns joined on customer_id (null where the customer has none)."""
    cols = [c for c in fact_columns(journeys) if c in facts.columns]
    return frame.join(facts.select("customer_id", *cols), on="customer_id", how="left")


__all__ = ["ACTIVE", "EVENTS_SCHEMA", "EXITED", "SEND_EVENTS", "STATE_COLUMNS", "STATE_SCHEMA", "advance",
           "apply_entries", "apply_exits", "apply_sends", "due_sends", "entry_candidates", "event_rows",
           "exit_reasons", "fact_columns", "last_event_times", "release_sends", "split_bucket", "start_frame",
           "state_rows", "with_facts"]
