"""Journeys as data: ``conf/journeys/*.yaml`` parsed into frozen dataclasses and checked on load.

A journey file (one journey per file, its name defaulting to the file name)::

    name: welcome_series
    description: a first week for new members
    entry: {audience: new_members}           # or {where: <audience condition>}
                                             # or {event: add_to_cart, channel: web, lookback_days: 1}
    re_entry: never                          # or {after_days: 60}
    exit:                                    # checked at the start of every run for members already in
      goal: {name: first_order, kind: order, within_days: 30}   # a goal of cdp.engage, since entering
      left_entry: true                       # no longer in the entry audience / condition
      consent_withdrawn: true                # withdrew consent for a channel the journey sends on (default)
    quiet_days: {weekdays: [sunday], dates: [2025-12-25]}       # no sends; due members wait a day
    transactional: false                     # true: the global control group still gets the messages
    suppression_lists: [legal_hold]
    destinations:                            # per channel, where its sends are exported
      email: {name: esp, format: csv, hashed: false}
    goals: [{name: order_7d, kind: order, within_days: 7}]      # measured per send (cdp measure)
    steps:
      - {id: welcome, send: {channel: email, message: welcome_1}}
      - {id: pause, wait: {days: 3}}
      - id: opened
        branch:
          - {when: {event: email_open, within_days: 3}, next: offer}
          - {else: nudge}
      - {id: nudge, send: {channel: email, message: welcome_2}, next: done}
      - id: offer
        split:
          - {arm: a, percent: 45, next: offer_a}
          - {arm: b, percent: 45, next: offer_b}
          - {arm: holdout, percent: 10, next: done}
      - {id: offer_a, send: {channel: email, message: offer_10pct}, next: done}
      - {id: offer_b, send: {channel: email, message: offer_free_shipping}, next: done}
      - {id: wait_checkout, wait: {until_event: checkout, timeout_days: 2}, next: done, on_timeout: nudge}
      - {id: done, exit: completed}

Steps run in list order unless ``next`` says otherwise; a step after which the list ends, without
``next``, completes the journey. ``wait`` takes ``days``, or ``until_event`` (an event of that type
after the member reached the step) or ``until`` (an audience condition) with ``timeout_days`` and an
``on_timeout`` step. ``branch`` takes arms with ``when`` (an audience condition on tags, profile or
events) and a final ``else``. ``split`` draws a stable hash of (journey, step, customer) into arms
whose percentages add up to 100 (A/B tests, holdouts).

Checked on load (``ValueError`` naming the step): unknown step kinds and keys, a ``next`` to an unknown
step, an unreachable step, a cycle without a wait, a send to a channel without a destination.
Checked against the catalogue and the other files (:func:`validate_journey`): unknown tags, profile
attributes, event types and entry audiences.

``conf/journeys/_policy.yaml`` (not a journey; files starting with ``_`` never are) holds what applies
across journeys and audiences: frequency caps per channel and quiet days.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from cdp.audiences.language import (
    CHANNELS,
    Condition,
    Destination,
    parse_condition,
    parse_destination,
    validate_conditions,
)
from cdp.engage import Goal

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
STEP_KINDS = ("send", "wait", "branch", "split", "exit")
SEND_AUDIENCE_PREFIX = "journey_"
POLICY_FILE = "_policy.yaml"


def _no_unknown_keys(data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (expected one of {sorted(known)})")


def _mapping(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    return data


def _days(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: expected a whole number of days >= 1, got {value!r}")
    return value


def _name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or "__" in value:
        raise ValueError(f"{where}: {what} must be lower snake_case without '__', got {value!r}")
    return value


# -- quiet days and the policy --------------------------------------------------------------------
@dataclass(frozen=True)
class QuietDays:
    """Days on which nothing is sent: weekdays (0 = Monday) and dates."""

    weekdays: frozenset[int] = frozenset()
    dates: frozenset[date] = frozenset()

    @classmethod
    def from_dict(cls, data: Any, where: str) -> QuietDays:
        if data is None:
            return cls()
        data = _mapping(data, where)
        _no_unknown_keys(data, {"weekdays", "dates"}, where)
        weekdays = data.get("weekdays") or []
        if not isinstance(weekdays, list) or any(str(d).lower() not in WEEKDAYS for d in weekdays):
            raise ValueError(f"{where}.weekdays: expected a list of {list(WEEKDAYS)}, got {weekdays!r}")
        dates = data.get("dates") or []
        if not isinstance(dates, list):
            raise ValueError(f"{where}.dates: expected a list of YYYY-MM-DD dates")
        parsed = set()
        for i, value in enumerate(dates):
            try:
                parsed.add(value if isinstance(value, date) else date.fromisoformat(str(value)))
            except ValueError as exc:
                raise ValueError(f"{where}.dates[{i}]: expected YYYY-MM-DD, got {value!r}") from exc
        return cls(frozenset(WEEKDAYS.index(str(d).lower()) for d in weekdays), frozenset(parsed))

    def __or__(self, other: QuietDays) -> QuietDays:
        return QuietDays(self.weekdays | other.weekdays, self.dates | other.dates)

    def is_quiet(self, day: date) -> bool:
        return day.weekday() in self.weekdays or day in self.dates


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``sends`` messages per customer on a channel within ``days`` days."""

    sends: int
    days: int


@dataclass(frozen=True)
class JourneyPolicy:
    """``conf/journeys/_policy.yaml``: caps per channel across every journey and audience, quiet days."""

    caps: Mapping[str, tuple[FrequencyCap, ...]] = field(default_factory=dict)
    quiet_days: QuietDays = QuietDays()

    @classmethod
    def from_dict(cls, data: Any) -> JourneyPolicy:
        if data is None:
            return cls()
        data = _mapping(data, "policy")
        _no_unknown_keys(data, {"frequency_caps", "quiet_days"}, "policy")
        caps_raw = _mapping(data.get("frequency_caps") or {}, "frequency_caps")
        caps: dict[str, tuple[FrequencyCap, ...]] = {}
        for channel, items in caps_raw.items():
            where = f"frequency_caps.{channel}"
            if channel not in CHANNELS:
                raise ValueError(f"{where}: unknown channel (expected one of {list(CHANNELS)})")
            if not isinstance(items, list) or not items:
                raise ValueError(f"{where}: expected a list like [{{sends: 2, days: 7}}]")
            parsed = []
            for i, item in enumerate(items):
                item = _mapping(item, f"{where}[{i}]")
                _no_unknown_keys(item, {"sends", "days"}, f"{where}[{i}]")
                sends = item.get("sends")
                if isinstance(sends, bool) or not isinstance(sends, int) or sends < 0:
                    raise ValueError(f"{where}[{i}].sends: expected a whole number >= 0, got {sends!r}")
                parsed.append(FrequencyCap(sends=sends, days=_days(item.get("days"), f"{where}[{i}].days")))
            caps[channel] = tuple(parsed)
        return cls(caps=caps, quiet_days=QuietDays.from_dict(data.get("quiet_days"), "quiet_days"))


# -- steps --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    channel: str
    message: str
    destination: Destination
    goals: tuple[Goal, ...] = ()


@dataclass(frozen=True)
class EventMatch:
    """An event of ``event_type`` (on ``channel`` when given): the column name the engine reads."""

    event_type: str
    channel: str | None = None

    @property
    def key(self) -> str:
        return "ev__" + self.event_type + ("__" + self.channel if self.channel else "")


@dataclass(frozen=True)
class Wait:
    days: int | None = None
    until: Condition | None = None
    until_event: EventMatch | None = None
    timeout_days: int | None = None


@dataclass(frozen=True)
class Arm:
    """A branch arm (``when`` None: the else arm) or a split arm (``name`` and ``percent``)."""

    next: str
    when: Condition | None = None
    name: str | None = None
    percent: float | None = None


@dataclass(frozen=True)
class Step:
    id: str
    kind: Literal["send", "wait", "branch", "split", "exit"]
    path: str  # "steps[3]": where it is in the file
    next: str | None = None  # resolved: the explicit next, else the following step, else None (completes)
    on_timeout: str | None = None
    send: Send | None = None
    wait: Wait | None = None
    arms: tuple[Arm, ...] = ()
    exit_reason: str | None = None

    def where(self) -> str:
        return f"{self.path} ({self.id})"

    def targets(self) -> list[str]:
        """Steps this one can lead to."""
        found = [a.next for a in self.arms]
        found += [t for t in (self.next, self.on_timeout) if t is not None]
        return list(dict.fromkeys(found))


# -- the journey ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """How customers join: members of a published audience, a condition, or an event."""

    audience: str | None = None
    where: Condition | None = None
    event: EventMatch | None = None
    lookback_days: int = 1  # first evaluation of an event entry: events of the last N days

    @property
    def kind(self) -> str:
        return "audience" if self.audience else "where" if self.where is not None else "event"


@dataclass(frozen=True)
class ExitRules:
    goal: Goal | None = None
    left_entry: bool = False
    consent_withdrawn: bool = True


@dataclass(frozen=True)
class Journey:
    name: str
    entry: Entry
    steps: tuple[Step, ...]
    version: str  # 12 hex of SHA-1 over the definition: a changed file is a new version
    description: str = ""
    re_entry_after_days: int | None = None  # None: never
    exit: ExitRules = ExitRules()
    quiet_days: QuietDays = QuietDays()
    transactional: bool = False
    suppression_lists: tuple[str, ...] = ()
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    goals: tuple[Goal, ...] = ()

    @property
    def first_step(self) -> str:
        return self.steps[0].id

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.steps)

    @property
    def sends(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind == "send")

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.send.channel for s in self.sends if s.send))

    def send_audience(self, step_id: str) -> str:
        """The audience a send step's batches are published as: ``journey_<journey>__<step>``."""
        return f"{SEND_AUDIENCE_PREFIX}{self.name}__{step_id}"

    def conditions(self) -> list[tuple[str, Condition]]:
        """(column key, condition) of every condition the journey reads: entry, waits, branch arms."""
        found: list[tuple[str, Condition]] = []
        if self.entry.where is not None:
            found.append((condition_key(self.name, "entry.where"), self.entry.where))
        for step in self.steps:
            if step.wait is not None and step.wait.until is not None:
                found.append((condition_key(self.name, f"{step.path}.wait.until"), step.wait.until))
            for i, arm in enumerate(step.arms):
                if arm.when is not None:
                    found.append((condition_key(self.name, f"{step.path}.branch[{i}].when"), arm.when))
        return found

    def event_matches(self) -> list[EventMatch]:
        found = [self.entry.event] if self.entry.event else []
        found += [s.wait.until_event for s in self.steps if s.wait is not None and s.wait.until_event]
        return list(dict.fromkeys(found))

    @property
    def max_moves(self) -> int:
        """The most moves a member can make in one pass (the engine's number of iterations).

        A pass ends on arriving at a wait or a send, and after an exit step; every cycle passes through a
        wait, so the chains between are finite. From a wait that is due, one move out plus the chain."""
        by_id = {s.id: s for s in self.steps}
        memo: dict[str, int] = {}

        def after_arriving(step_id: str) -> int:
            if step_id not in memo:
                step = by_id[step_id]
                if step.kind in ("wait", "send"):
                    memo[step_id] = 0
                elif step.kind == "exit":
                    memo[step_id] = 1
                else:
                    memo[step_id] = 1 + max(after_arriving(t) for t in step.targets())
            return memo[step_id]

        def from_rest(step: Step) -> int:
            if step.kind == "wait":
                return 1 + max((after_arriving(t) for t in step.targets()), default=0)
            return 0 if step.kind == "send" else after_arriving(step.id)

        return max(from_rest(step) for step in self.steps)

    @classmethod
    def from_dict(cls, data: Any, *, default_name: str | None = None) -> Journey:
        """Parse one journey file's content. Raises ``ValueError`` naming the key path and step."""
        data = _mapping(data, "journey")
        known = {"name", "description", "entry", "re_entry", "exit", "quiet_days", "transactional",
                 "suppression_lists", "destinations", "goals", "steps"}
        _no_unknown_keys(data, known, "journey")
        name = _name(data.get("name", default_name), "name", "a journey name")
        entry = _parse_entry(data.get("entry"), "entry")
        re_entry = data.get("re_entry", "never")
        if re_entry == "never":
            after = None
        else:
            re_entry = _mapping(re_entry, "re_entry")
            _no_unknown_keys(re_entry, {"after_days"}, "re_entry")
            after = _days(re_entry.get("after_days"), "re_entry.after_days")
        destinations: dict[str, Destination] = {}
        for channel, spec in _mapping(data.get("destinations") or {}, "destinations").items():
            if channel not in CHANNELS:
                raise ValueError(f"destinations.{channel}: unknown channel (expected one of {list(CHANNELS)})")
            destinations[channel] = parse_destination(spec, f"destinations.{channel}")
        goals = _parse_goals(data.get("goals"), "goals")
        steps = _parse_steps(data.get("steps"), destinations)
        exit_rules = _parse_exit(data.get("exit"), entry)
        lists = data.get("suppression_lists") or []
        if not isinstance(lists, list) or not all(isinstance(x, str) and x for x in lists):
            raise ValueError("suppression_lists: expected a list of list names")
        transactional = data.get("transactional", False)
        if not isinstance(transactional, bool):
            raise ValueError(f"transactional: expected true or false, got {transactional!r}")
        version = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
        journey = cls(name=name, entry=entry, steps=steps, version=version,
                      description=str(data.get("description") or ""), re_entry_after_days=after, exit=exit_rules,
                      quiet_days=QuietDays.from_dict(data.get("quiet_days"), "quiet_days"),
                      transactional=transactional, suppression_lists=tuple(lists), destinations=destinations,
                      goals=goals)
        _check_graph(journey)
        return journey


def condition_key(journey: str, path: str) -> str:
    """The column a journey's condition is computed into (stable for the journey and the key path)."""
    return "jc__" + hashlib.sha1(f"{journey}|{path}".encode()).hexdigest()[:12]


def _parse_goals(data: Any, where: str) -> tuple[Goal, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of goals")
    goals = tuple(Goal.from_dict(g, f"{where}[{i}]") for i, g in enumerate(data))
    names = [g.name for g in goals]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate goal names {names}")
    return goals


def _parse_event(data: Mapping[str, Any], key: str, where: str) -> EventMatch:
    event = data.get(key)
    if not isinstance(event, str) or not event:
        raise ValueError(f"{where}.{key}: expected an event type, got {event!r}")
    channel = data.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ValueError(f"{where}.channel: expected a channel name, got {channel!r}")
    return EventMatch(event_type=event, channel=channel)


def _parse_entry(data: Any, where: str) -> Entry:
    if data is None:
        raise ValueError(f"{where}: required key is missing (audience, where or event)")
    data = _mapping(data, where)
    kinds = [k for k in ("audience", "where", "event") if k in data]
    if len(kinds) != 1:
        raise ValueError(f"{where}: expected exactly one of audience, where, event; got {sorted(data)}")
    kind = kinds[0]
    if kind == "audience":
        _no_unknown_keys(data, {"audience"}, where)
        return Entry(audience=_name(data["audience"], f"{where}.audience", "an audience name"))
    if kind == "where":
        _no_unknown_keys(data, {"where"}, where)
        return Entry(where=parse_condition(data["where"], f"{where}.where"))
    _no_unknown_keys(data, {"event", "channel", "lookback_days"}, where)
    return Entry(event=_parse_event(data, "event", where),
                 lookback_days=_days(data.get("lookback_days", 1), f"{where}.lookback_days"))


def _parse_exit(data: Any, entry: Entry) -> ExitRules:
    if data is None:
        return ExitRules()
    data = _mapping(data, "exit")
    _no_unknown_keys(data, {"goal", "left_entry", "consent_withdrawn"}, "exit")
    goal = Goal.from_dict(data["goal"], "exit.goal") if data.get("goal") is not None else None
    flags = {}
    for key, default in (("left_entry", False), ("consent_withdrawn", True)):
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"exit.{key}: expected true or false, got {value!r}")
        flags[key] = value
    if flags["left_entry"] and entry.kind == "event":
        raise ValueError("exit.left_entry: an event entry has nothing to leave (use an audience or where entry)")
    return ExitRules(goal=goal, **flags)


def _parse_steps(data: Any, destinations: Mapping[str, Destination]) -> tuple[Step, ...]:
    if not isinstance(data, list) or not data:
        raise ValueError("steps: expected a non-empty list of steps")
    raw: list[dict[str, Any]] = []
    ids: list[str] = []
    for i, item in enumerate(data):
        where = f"steps[{i}]"
        item = _mapping(item, where)
        step_id = _name(item.get("id"), f"{where}.id", "a step id")
        if step_id in ids:
            raise ValueError(f"{where}.id: step id {step_id!r} is also steps[{ids.index(step_id)}]")
        ids.append(step_id)
        raw.append(dict(item))
    steps = []
    for i, item in enumerate(raw):
        following = ids[i + 1] if i + 1 < len(ids) else None
        steps.append(_parse_step(item, f"steps[{i}]", following, destinations))
    return tuple(steps)


def _parse_step(item: dict[str, Any], path: str, following: str | None,
                destinations: Mapping[str, Destination]) -> Step:
    step_id = item["id"]
    where = f"{path} ({step_id})"
    kinds = [k for k in STEP_KINDS if k in item]
    unknown = sorted(set(item) - {"id", "next", "on_timeout", "goals", *STEP_KINDS})
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown step key (a step is one of {list(STEP_KINDS)}, "
                         "with id, next, on_timeout, goals)")
    if len(kinds) != 1:
        raise ValueError(f"{where}: a step is exactly one of {list(STEP_KINDS)}, got {kinds or sorted(item)}")
    kind = kinds[0]
    nxt = item.get("next")
    if nxt is not None and not isinstance(nxt, str):
        raise ValueError(f"{where}.next: expected a step id, got {nxt!r}")
    if kind in ("branch", "split", "exit") and nxt is not None:
        raise ValueError(f"{where}.next: a {kind} step chooses its own next step")
    if "on_timeout" in item and kind != "wait":
        raise ValueError(f"{where}.on_timeout: only a wait step has a timeout")
    if "goals" in item and kind != "send":
        raise ValueError(f"{where}.goals: only a send step is measured against goals")
    resolved_next = nxt if nxt is not None else following if kind in ("send", "wait") else None
    spec = item[kind]
    if kind == "send":
        spec = _mapping(spec, f"{where}.send")
        _no_unknown_keys(spec, {"channel", "message", "destination"}, f"{where}.send")
        channel = spec.get("channel")
        if channel not in CHANNELS:
            raise ValueError(f"{where}.send.channel: expected one of {list(CHANNELS)}, got {channel!r}")
        message = spec.get("message")
        if not isinstance(message, str) or not message:
            raise ValueError(f"{where}.send.message: expected a message id")
        destination = destinations.get(channel)
        if destination is None:
            raise ValueError(f"{where}.send.channel: no destination for channel {channel!r} "
                             f"(the journey's destinations: {sorted(destinations)})")
        named = spec.get("destination")
        if named is not None and named != destination.name:
            raise ValueError(f"{where}.send.destination: {named!r} is not the journey's {channel} destination "
                             f"({destination.name!r})")
        send = Send(channel=channel, message=message, destination=destination,
                    goals=_parse_goals(item.get("goals"), f"{where}.goals"))
        return Step(id=step_id, kind="send", path=path, next=resolved_next, send=send)
    if kind == "wait":
        return _parse_wait(item, spec, step_id, path, where, resolved_next)
    if kind == "exit":
        reason = spec if spec is not None else "completed"
        if not isinstance(reason, str) or not _NAME.match(reason):
            raise ValueError(f"{where}.exit: expected a reason in snake_case (e.g. completed), got {spec!r}")
        return Step(id=step_id, kind="exit", path=path, exit_reason=reason)
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"{where}.{kind}: expected a non-empty list of arms")
    arms = []
    for i, arm in enumerate(spec):
        arm_where = f"{where}.{kind}[{i}]"
        arm = _mapping(arm, arm_where)
        if kind == "branch":
            if "else" in arm:
                _no_unknown_keys(arm, {"else"}, arm_where)
                if i != len(spec) - 1:
                    raise ValueError(f"{arm_where}.else: the else arm comes last")
                arms.append(Arm(next=_target(arm["else"], f"{arm_where}.else")))
            else:
                _no_unknown_keys(arm, {"when", "next"}, arm_where)
                if "when" not in arm:
                    raise ValueError(f"{arm_where}: an arm needs 'when' and 'next' (or is the final 'else')")
                arms.append(Arm(next=_target(arm.get("next"), f"{arm_where}.next"),
                                when=parse_condition(arm["when"], f"{path}.branch[{i}].when")))
        else:
            _no_unknown_keys(arm, {"arm", "percent", "next"}, arm_where)
            percent = arm.get("percent")
            if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100:
                raise ValueError(f"{arm_where}.percent: expected a number in (0, 100], got {percent!r}")
            arms.append(Arm(next=_target(arm.get("next"), f"{arm_where}.next"),
                            name=_name(arm.get("arm"), f"{arm_where}.arm", "an arm name"), percent=float(percent)))
    if kind == "branch" and arms[-1].when is not None:
        raise ValueError(f"{where}.branch: the last arm must be {{else: STEP}} (who matches no arm goes there)")
    if kind == "split":
        total = sum(a.percent or 0 for a in arms)
        if abs(total - 100) > 1e-9:
            raise ValueError(f"{where}.split: percentages add up to {total:g}, not 100")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}.split: duplicate arm names {names}")
    return Step(id=step_id, kind=kind, path=path, arms=tuple(arms))


def _target(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a step id, got {value!r}")
    return value


def _parse_wait(item: Mapping[str, Any], spec: Any, step_id: str, path: str, where: str,
                resolved_next: str | None) -> Step:
    spec = _mapping(spec, f"{where}.wait")
    _no_unknown_keys(spec, {"days", "until", "until_event", "channel", "timeout_days"}, f"{where}.wait")
    given = [k for k in ("days", "until", "until_event") if k in spec]
    if len(given) != 1:
        raise ValueError(f"{where}.wait: expected exactly one of days, until, until_event; got {sorted(spec)}")
    if given[0] == "days":
        if "timeout_days" in spec or "on_timeout" in item or "channel" in spec:
            raise ValueError(f"{where}.wait: a wait of fixed days has no timeout or channel")
        wait = Wait(days=_days(spec["days"], f"{where}.wait.days"))
        return Step(id=step_id, kind="wait", path=path, next=resolved_next, wait=wait)
    timeout = _days(spec.get("timeout_days"), f"{where}.wait.timeout_days")
    on_timeout = item.get("on_timeout")
    if not isinstance(on_timeout, str) or not on_timeout:
        raise ValueError(f"{where}.on_timeout: a wait until an event or condition needs the step to take on timeout")
    if given[0] == "until":
        if "channel" in spec:
            raise ValueError(f"{where}.wait.channel: only with until_event")
        wait = Wait(until=parse_condition(spec["until"], f"{path}.wait.until"), timeout_days=timeout)
    else:
        wait = Wait(until_event=_parse_event(spec, "until_event", f"{where}.wait"), timeout_days=timeout)
    return Step(id=step_id, kind="wait", path=path, next=resolved_next, on_timeout=on_timeout, wait=wait)


def _check_graph(journey: Journey) -> None:
    """Unknown targets, unreachable steps, cycles without a wait: ValueError naming the step."""
    by_id = {s.id: s for s in journey.steps}
    for step in journey.steps:
        for target in step.targets():
            if target not in by_id:
                raise ValueError(f"{step.where()}: next step {target!r} does not exist "
                                 f"(steps: {list(by_id)})")
    reached = {journey.first_step}
    frontier = [journey.first_step]
    while frontier:
        for target in by_id[frontier.pop()].targets():
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    for step in journey.steps:
        if step.id not in reached:
            raise ValueError(f"{step.where()}: unreachable (no step leads to it from {journey.first_step!r})")
    # a cycle must pass through a wait: otherwise a member would loop within one run
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(step_id: str, trail: list[str]) -> None:
        state[step_id] = 1
        for target in by_id[step_id].targets():
            if by_id[target].kind == "wait":
                continue
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target] if target in trail else [step_id, target]
                raise ValueError(f"{by_id[target].where()}: cycle without a wait ({' -> '.join(cycle)})")
            if target not in state:
                visit(target, [*trail, target])
        state[step_id] = 2

    for step in journey.steps:
        if step.kind != "wait" and step.id not in state:
            visit(step.id, [step.id])


def validate_journey(journey: Journey, *, tags: Iterable[str], profile_attributes: Iterable[str],
                     event_types: Iterable[str] | None = None, audiences: Collection[str] | None = None,
                     journeys: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Problems with the names ``journey`` uses (tags, attributes, event types, entry audience), by step."""
    problems = validate_conditions([c for _, c in journey.conditions()], tags=tags,
                                   profile_attributes=profile_attributes, event_types=event_types, journeys=journeys)
    events = set(event_types) if event_types is not None else None
    if events is not None:
        for where, match in [("entry.event", journey.entry.event)] + [
                (f"{s.where()}.wait.until_event", s.wait.until_event) for s in journey.steps if s.wait]:
            if match is not None and match.event_type not in events:
                problems.append(f"{where}: unknown event type {match.event_type!r}")
        goals = [("goals", i, g) for i, g in enumerate(journey.goals)]
        goals += [(f"{s.where()}.goals", i, g) for s in journey.sends if s.send for i, g in enumerate(s.send.goals)]
        if journey.exit.goal is not None:
            goals.append(("exit", None, journey.exit.goal))
        for where, i, goal in goals:
            if goal.kind == "event" and goal.event_type not in events:
                at = f"{where}[{i}]" if i is not None else f"{where}.goal"
                problems.append(f"{at}.event_type: unknown event type {goal.event_type!r}")
    if audiences is not None and journey.entry.audience is not None and journey.entry.audience not in audiences:
        problems.append(f"entry.audience: unknown audience {journey.entry.audience!r} (conf/audiences defines "
                        f"{sorted(audiences)})")
    return problems


__all__ = ["POLICY_FILE", "SEND_AUDIENCE_PREFIX", "Arm", "Entry", "EventMatch", "ExitRules", "FrequencyCap",
           "Journey", "JourneyPolicy", "QuietDays", "Send", "Step", "Wait", "condition_key", "validate_journey"]
