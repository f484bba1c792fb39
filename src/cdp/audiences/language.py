"""The audience language: YAML definitions by business users, compiled to Spark columns.

An audience file (``conf/audiences/<name>.yaml``) looks like::

    name: lapsed_vip_email
    channel: email                      # email | sms | wechat | ads
    description: VIPs who stopped buying
    where:                              # one condition, usually a nested all / any / not
      all:
        - {tag: value_tier, in: [gold, platinum]}
        - {tag: churn_risk, between: [0.6, 1.0]}
        - {profile: city_tier, "<=": 2}
        - any:
            - {event: email_open, at_least: 2, within_days: 30}
            - {bought: {category: shoes, within_days: 90}}
        - not: {tag: is_employee, "=": true}
    exclude:                            # any match removes the customer
      - {did: add_to_cart, not_followed_by: checkout, within_days: 3}
    suppression_lists: [legal_hold]     # lists in the suppression_list table (erasure always applies)
    cap: {size: 50000, order_by: [{tag: clv_12m, desc: true}]}
    control_group: {percent: 10}
    destinations:
      - {name: crm_email, format: csv}

Leaf conditions:
    ``{tag: T, OP: V}`` / ``{profile: A, OP: V}`` with OP one of ``=, !=, in, not in, between,
    >=, <=, >, <, is null, is not null`` (``is null`` takes ``true``). A missing value (null) makes
    every operator false except ``!=`` and ``not in``, which are the exact negations of ``=`` and
    ``in``; so ``not`` and ``!=`` agree.
    ``{event: E, at_least: n, within_days: d, channel: C}``: at least n events of type E (optionally
    on channel C) in the last d days.
    ``{did: X, not_followed_by: Y, within_days: d}``: an X event in the last d days with no Y event at
    or after the latest X (e.g. cart abandonment).
    ``{bought: {category: C | [C...], within_days: d, at_least: n}}``: at least n paid orders with a
    line in category C in the last d days.
    ``{journey: J}`` / ``{journey: J, step: S}``: in journey J now (at step S), by ``journey_state``
    (``conf/journeys``; exited members are in no step). ``{journey: J, entered: true, within_days: d}``:
    entered journey J (in the last d days when given; still in it or not).

Past campaigns (:func:`campaign_flags`; inputs built by ``cdp audiences`` from the last committed
publishes, exports and responses):
    ``{entered_audience: X, within_days: d}`` / ``{exited_audience: X, within_days: d}``: entered or
    left audience X (``audience_changes``) at a publish whose as-of lies in the last d days (ever
    without ``within_days``).
    ``{message: M, response: opened, within_days: d}``: a response event of kind sent, delivered,
    bounced, opened, clicked, unsubscribed or converted answering message M (its message id, as
    ``cdp export`` wrote it), in the last d days (ever without ``within_days``).
    ``{goal: G, audience: X, converted: true}``: converted on audience X's goal G within the goal's
    window after entering X; ``converted: false``: entered X, the window has closed, and no conversion.

Every parsed node keeps its key path (``where.all[3].any[0]``) so validation errors name it.
Compilation is in two steps: :func:`behaviour_flags` turns all behaviour conditions of all
audiences into one boolean column each with a single aggregation per input, and
:func:`compile_condition` turns a condition into one Spark ``Column`` over the customer frame
built by :func:`customer_frame`.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cdp.engage.measure import Goal
from cdp.engage.responses import RESPONSE_EVENT_TYPES
from cdp.identity.records import with_customer_id

Channel = Literal["email", "sms", "wechat", "ads"]
CHANNELS: tuple[str, ...] = ("email", "sms", "wechat", "ads")
OPERATORS: tuple[str, ...] = ("=", "!=", "in", "not in", "between", ">=", "<=", ">", "<",
                              "is null", "is not null")
EXPORT_FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl")

TAG_PREFIX = "tag__"
PROFILE_PREFIX = "profile__"
BEHAVIOUR_PREFIX = "beh__"
JOURNEY_PREFIX = "jrn__"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# -- condition tree ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttributeCondition:
    """A comparison on a tag (``source='tag'``) or a profile attribute (``source='profile'``)."""

    source: Literal["tag", "profile"]
    name: str
    op: str
    value: Any
    path: str


@dataclass(frozen=True)
class EventCondition:
    event_type: str
    at_least: int
    within_days: int
    path: str
    channel: str | None = None

    @property
    def key(self) -> str:
        return _behaviour_key("event", self.event_type, self.at_least, self.within_days, self.channel)


@dataclass(frozen=True)
class SequenceCondition:
    did: str
    not_followed_by: str
    within_days: int
    path: str

    @property
    def key(self) -> str:
        return _behaviour_key("sequence", self.did, self.not_followed_by, self.within_days)


@dataclass(frozen=True)
class PurchaseCondition:
    categories: tuple[str, ...]
    within_days: int
    at_least: int
    path: str

    @property
    def key(self) -> str:
        return _behaviour_key("bought", sorted(self.categories), self.within_days, self.at_least)


@dataclass(frozen=True)
class JourneyCondition:
    """In journey ``journey`` now (at ``step`` when given), or, with ``entered``, ever entered it (in the
    last ``within_days`` days when given)."""

    journey: str
    path: str
    step: str | None = None
    entered: bool = False
    within_days: int | None = None

    @property
    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(["journey", self.journey, self.step, self.entered, self.within_days]
                                         ).encode()).hexdigest()[:12]
        return f"{JOURNEY_PREFIX}{digest}"


@dataclass(frozen=True)
class AllOf:
    children: tuple[Condition, ...]
    path: str


@dataclass(frozen=True)
class AnyOf:
    children: tuple[Condition, ...]
    path: str


@dataclass(frozen=True)
class NotOf:
    child: Condition
    path: str


class _KeyedByFields:
    """A condition compiled to one boolean column, named by its kind and every field but its path."""

    kind: ClassVar[str]

    @property
    def key(self) -> str:
        return _behaviour_key(self.kind, *[getattr(self, f.name) for f in fields(self) if f.name != "path"])


@dataclass(frozen=True)
class AudienceChangeCondition(_KeyedByFields):
    """Entered or exited audience ``audience`` (at a publish within the last ``within_days`` days)."""

    kind: ClassVar[str] = "audience_change"
    audience: str
    change: Literal["entered", "exited"]
    within_days: int | None
    path: str


@dataclass(frozen=True)
class MessageCondition(_KeyedByFields):
    """A response of kind ``response`` answering message ``message_id`` (within the last ``within_days``)."""

    kind: ClassVar[str] = "message"
    message_id: str
    response: str
    within_days: int | None
    path: str


@dataclass(frozen=True)
class GoalCondition(_KeyedByFields):
    """Converted (or, with ``converted`` false, did not within a closed window) on an audience's goal."""

    kind: ClassVar[str] = "goal"
    audience: str
    goal: str
    converted: bool
    path: str


Condition = (AttributeCondition | EventCondition | SequenceCondition | PurchaseCondition | JourneyCondition
             | AudienceChangeCondition | MessageCondition | GoalCondition | AllOf | AnyOf | NotOf)
BehaviourCondition = EventCondition | SequenceCondition | PurchaseCondition
CampaignCondition = AudienceChangeCondition | MessageCondition | GoalCondition
_FLAG_CONDITIONS = (EventCondition, SequenceCondition, PurchaseCondition, JourneyCondition, AudienceChangeCondition,
                    MessageCondition, GoalCondition)  # compiled to the boolean column named by their key


def _behaviour_key(*parts: Any) -> str:
    digest = hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:12]
    return f"{BEHAVIOUR_PREFIX}{parts[0]}_{digest}"


# -- audience definition ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OrderKey:
    source: Literal["tag", "profile"]
    name: str
    desc: bool
    path: str


@dataclass(frozen=True)
class SizeCap:
    size: int
    order_by: tuple[OrderKey, ...] = ()


@dataclass(frozen=True)
class Destination:
    """Where ``cdp export`` sends the audience. ``hashed``: SHA-256 emails / phones (ad platforms)."""

    name: str
    format: Literal["csv", "parquet", "jsonl"]
    hashed: bool = True
    default_region: str = "CN"


@dataclass(frozen=True)
class Audience:
    name: str
    channel: str
    where: Condition
    description: str = ""
    exclude: tuple[Condition, ...] = ()
    suppression_lists: tuple[str, ...] = ()
    cap: SizeCap | None = None
    control_percent: float = 0.0
    wechat_appid: str | None = None
    destinations: tuple[Destination, ...] = ()
    goals: tuple[Goal, ...] = ()  # conversions cdp measure counts against the control group
    transactional: bool = False  # receipts, service messages: the global control group still gets them

    @classmethod
    def from_dict(cls, data: Any, *, default_name: str | None = None) -> Audience:
        """Parse one audience file's content. Raises ``ValueError`` naming the key path."""
        if not isinstance(data, Mapping):
            raise ValueError(f"audience: expected a mapping, got {type(data).__name__}")
        known = {"name", "channel", "description", "where", "exclude", "suppression_lists", "cap",
                 "control_group", "wechat_appid", "destinations", "goals", "transactional"}
        _no_unknown_keys(data, known, "audience")
        name = data.get("name", default_name)
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"name: audience name must be lower snake_case, got {name!r}")
        channel = data.get("channel")
        if channel not in CHANNELS:
            raise ValueError(f"channel: expected one of {list(CHANNELS)}, got {channel!r}")
        if "where" not in data:
            raise ValueError("where: required key is missing")
        where = parse_condition(data["where"], "where")
        exclude_raw = data.get("exclude") or []
        if not isinstance(exclude_raw, list):
            raise ValueError("exclude: expected a list of conditions")
        exclude = tuple(parse_condition(item, f"exclude[{i}]") for i, item in enumerate(exclude_raw))
        lists = data.get("suppression_lists") or []
        if not isinstance(lists, list) or not all(isinstance(x, str) and x for x in lists):
            raise ValueError("suppression_lists: expected a list of list names")
        cap = _parse_cap(data.get("cap"), "cap")
        control_percent = _parse_control(data.get("control_group"), "control_group")
        appid = data.get("wechat_appid")
        if appid is not None and not isinstance(appid, str):
            raise ValueError("wechat_appid: expected a string")
        destinations_raw = data.get("destinations") or []
        if not isinstance(destinations_raw, list):
            raise ValueError("destinations: expected a list")
        destinations = tuple(parse_destination(d, f"destinations[{i}]")
                             for i, d in enumerate(destinations_raw))
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destinations: duplicate destination names {names}")
        goals_raw = data.get("goals") or []
        if not isinstance(goals_raw, list):
            raise ValueError("goals: expected a list of goals")
        goals = tuple(Goal.from_dict(g, f"goals[{i}]") for i, g in enumerate(goals_raw))
        goal_names = [g.name for g in goals]
        if len(set(goal_names)) != len(goal_names):
            raise ValueError(f"goals: duplicate goal names {goal_names}")
        transactional = data.get("transactional", False)
        if not isinstance(transactional, bool):
            raise ValueError(f"transactional: expected true or false, got {transactional!r}")
        return cls(name=name, channel=channel, where=where, description=str(data.get("description") or ""),
                   exclude=exclude, suppression_lists=tuple(lists), cap=cap,
                   control_percent=control_percent, wechat_appid=appid, destinations=destinations,
                   goals=goals, transactional=transactional)

    def conditions(self) -> list[Condition]:
        return [self.where, *self.exclude]


def _no_unknown_keys(data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (expected one of {sorted(known)})")


def _positive_int(value: Any, path: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{path}: expected an integer >= {minimum}, got {value!r}")
    return value


def _parse_cap(data: Any, path: str) -> SizeCap | None:
    if data is None:
        return None
    if isinstance(data, int) and not isinstance(data, bool):
        return SizeCap(size=_positive_int(data, path))
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a size or a mapping with size and order_by")
    _no_unknown_keys(data, {"size", "order_by"}, path)
    size = _positive_int(data.get("size"), f"{path}.size")
    keys = []
    order_by = data.get("order_by") or []
    if not isinstance(order_by, list):
        raise ValueError(f"{path}.order_by: expected a list of {{tag: NAME, desc: true}}")
    for i, item in enumerate(order_by):
        item_path = f"{path}.order_by[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{item_path}: expected a mapping like {{tag: NAME, desc: true}}")
        _no_unknown_keys(item, {"tag", "profile", "desc"}, item_path)
        source = "tag" if "tag" in item else "profile" if "profile" in item else None
        if source is None:
            raise ValueError(f"{item_path}: needs a 'tag' or 'profile' key")
        desc = item.get("desc", True)
        if not isinstance(desc, bool):
            raise ValueError(f"{item_path}.desc: expected true or false")
        keys.append(OrderKey(source=source, name=str(item[source]), desc=desc, path=f"{item_path}.{source}"))
    return SizeCap(size=size, order_by=tuple(keys))


def _parse_control(data: Any, path: str) -> float:
    if data is None:
        return 0.0
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping like {{percent: 10}}")
    _no_unknown_keys(data, {"percent"}, path)
    percent = data.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent < 100:
        raise ValueError(f"{path}.percent: expected a number in [0, 100), got {percent!r}")
    return float(percent)


def parse_destination(data: Any, path: str) -> Destination:
    """One destination mapping (name, format, hashed, default_region); ValueError naming the key path."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping with name and format")
    _no_unknown_keys(data, {"name", "format", "hashed", "default_region"}, path)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{path}.name: expected a lower snake_case name, got {name!r}")
    fmt = data.get("format")
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"{path}.format: expected one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    hashed = data.get("hashed", True)
    if not isinstance(hashed, bool):
        raise ValueError(f"{path}.hashed: expected true or false")
    region = data.get("default_region", "CN")
    if not isinstance(region, str) or len(region) != 2:
        raise ValueError(f"{path}.default_region: expected a two-letter region code, got {region!r}")
    return Destination(name=name, format=fmt, hashed=hashed, default_region=region.upper())


def parse_condition(data: Any, path: str) -> Condition:
    """Parse one condition node (recursively). Raises ``ValueError`` naming the key path."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path}: expected a condition mapping, got {data!r}")
    if "all" in data or "any" in data:
        key = "all" if "all" in data else "any"
        _no_unknown_keys(data, {key}, path)
        items = data[key]
        if not isinstance(items, list) or not items:
            raise ValueError(f"{path}.{key}: expected a non-empty list of conditions")
        children = tuple(parse_condition(item, f"{path}.{key}[{i}]") for i, item in enumerate(items))
        return AllOf(children, path) if key == "all" else AnyOf(children, path)
    if "not" in data:
        _no_unknown_keys(data, {"not"}, path)
        return NotOf(parse_condition(data["not"], f"{path}.not"), path)
    campaign = _parse_campaign_condition(data, path)
    if campaign is not None:
        return campaign
    if "tag" in data or "profile" in data:
        source = "tag" if "tag" in data else "profile"
        name = data[source]
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}.{source}: expected a name, got {name!r}")
        ops = [k for k in data if k != source]
        if len(ops) != 1:
            raise ValueError(f"{path}: a {source} condition needs exactly one operator "
                             f"(one of {list(OPERATORS)}), got {ops}")
        op = ops[0]
        if op not in OPERATORS:
            raise ValueError(f"{path}.{op}: unknown operator (expected one of {list(OPERATORS)})")
        value = _check_operand(op, data[op], f"{path}.{op}")
        return AttributeCondition(source=source, name=name, op=op, value=value, path=path)
    if "event" in data:
        _no_unknown_keys(data, {"event", "at_least", "within_days", "channel"}, path)
        event = data["event"]
        if not isinstance(event, str) or not event:
            raise ValueError(f"{path}.event: expected an event type")
        channel = data.get("channel")
        if channel is not None and not isinstance(channel, str):
            raise ValueError(f"{path}.channel: expected a channel name")
        return EventCondition(event_type=event, at_least=_positive_int(data.get("at_least", 1), f"{path}.at_least"),
                              within_days=_positive_int(data.get("within_days"), f"{path}.within_days"),
                              path=path, channel=channel)
    if "journey" in data:
        return _parse_journey_condition(data, path)
    if "did" in data:
        _no_unknown_keys(data, {"did", "not_followed_by", "within_days"}, path)
        did, nxt = data.get("did"), data.get("not_followed_by")
        if not isinstance(did, str) or not did:
            raise ValueError(f"{path}.did: expected an event type")
        if not isinstance(nxt, str) or not nxt:
            raise ValueError(f"{path}.not_followed_by: expected an event type")
        return SequenceCondition(did=did, not_followed_by=nxt,
                                 within_days=_positive_int(data.get("within_days"), f"{path}.within_days"),
                                 path=path)
    if "bought" in data:
        _no_unknown_keys(data, {"bought"}, path)
        spec = data["bought"]
        spec_path = f"{path}.bought"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{spec_path}: expected a mapping with category and within_days")
        _no_unknown_keys(spec, {"category", "within_days", "at_least"}, spec_path)
        category = spec.get("category")
        categories = [category] if isinstance(category, str) else category
        if not isinstance(categories, list) or not categories or not all(isinstance(c, str) for c in categories):
            raise ValueError(f"{spec_path}.category: expected a category or a list of categories")
        return PurchaseCondition(categories=tuple(categories),
                                 within_days=_positive_int(spec.get("within_days"), f"{spec_path}.within_days"),
                                 at_least=_positive_int(spec.get("at_least", 1), f"{spec_path}.at_least"),
                                 path=path)
    raise ValueError(f"{path}: unknown condition with keys {sorted(data)}; expected one of "
                     "all, any, not, tag, profile, event, did, bought, journey, entered_audience, exited_audience, "
                     "message, goal")


def _parse_journey_condition(data: Mapping[str, Any], path: str) -> JourneyCondition:
    _no_unknown_keys(data, {"journey", "step", "entered", "within_days"}, path)
    journey = data["journey"]
    if not isinstance(journey, str) or not _NAME.match(journey):
        raise ValueError(f"{path}.journey: expected a journey name, got {journey!r}")
    entered = data.get("entered", False)
    if entered is not True and entered is not False:
        raise ValueError(f"{path}.entered: expected true or false, got {entered!r}")
    step = data.get("step")
    if step is not None and (not isinstance(step, str) or not step):
        raise ValueError(f"{path}.step: expected a step id, got {step!r}")
    if entered and step is not None:
        raise ValueError(f"{path}: 'entered' and 'step' do not combine (entered counts every step)")
    within = data.get("within_days")
    if within is not None and not entered:
        raise ValueError(f"{path}.within_days: only with 'entered: true'")
    return JourneyCondition(journey=journey, path=path, step=step, entered=entered,
                            within_days=None if within is None else _positive_int(within, f"{path}.within_days"))


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _check_operand(op: str, value: Any, path: str) -> Any:
    if op in ("in", "not in"):
        if not isinstance(value, list) or not value or not all(_scalar(v) and v is not None for v in value):
            raise ValueError(f"{path}: expected a non-empty list of values")
        return tuple(value)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2 or not all(_scalar(v) and v is not None for v in value):
            raise ValueError(f"{path}: expected [low, high]")
        return tuple(value)
    if op in ("is null", "is not null"):
        if value is not True:
            raise ValueError(f"{path}: write '{op}: true'")
        return True
    if not _scalar(value) or value is None:
        raise ValueError(f"{path}: expected a single value, got {value!r}")
    return value


# -- validation against what exists -----------------------------------------------------------------
def iter_conditions(condition: Condition) -> Iterable[Condition]:
    yield condition
    if isinstance(condition, (AllOf, AnyOf)):
        for child in condition.children:
            yield from iter_conditions(child)
    elif isinstance(condition, NotOf):
        yield from iter_conditions(condition.child)


def behaviour_conditions(audiences: Iterable[Audience]) -> list[BehaviourCondition]:
    """Every distinct behaviour condition in ``audiences`` (by key), in first-seen order."""
    return conditions_of_kind([root for audience in audiences for root in audience.conditions()],
                              (EventCondition, SequenceCondition, PurchaseCondition))


def journey_conditions(audiences: Iterable[Audience]) -> list[JourneyCondition]:
    """Every distinct journey condition in ``audiences`` (by key), in first-seen order."""
    return conditions_of_kind([root for audience in audiences for root in audience.conditions()], (JourneyCondition,))


def conditions_of_kind(roots: Iterable[Condition], kinds: tuple[type, ...]) -> list[Any]:
    """The distinct nodes (by key) of ``kinds`` in the condition trees ``roots``, in first-seen order."""
    seen: dict[str, Any] = {}
    for root in roots:
        for node in iter_conditions(root):
            if isinstance(node, kinds):
                seen.setdefault(node.key, node)
    return list(seen.values())


def validate_audience(audience: Audience, *, tags: Iterable[str], profile_attributes: Iterable[str],
                      event_types: Iterable[str] | None = None,
                      journeys: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Problems with names used by ``audience`` (unknown tag, attribute, event type, journey or journey
    step; journeys maps each journey to its step ids, None skips that check), by key path."""
    problems = validate_conditions(audience.conditions(), tags=tags, profile_attributes=profile_attributes,
                                   event_types=event_types, journeys=journeys)
    tags, attrs = set(tags), set(profile_attributes)
    events = set(event_types) if event_types is not None else None
    if events is not None:
        for i, goal in enumerate(audience.goals):
            if goal.kind == "event" and goal.event_type not in events:
                problems.append(f"goals[{i}].event_type: unknown event type {goal.event_type!r}")
    if audience.cap:
        for key in audience.cap.order_by:
            known = tags if key.source == "tag" else attrs
            if key.name not in known:
                problems.append(f"{key.path}: unknown {key.source} {key.name!r}")
    return problems


def validate_conditions(roots: Iterable[Condition], *, tags: Iterable[str], profile_attributes: Iterable[str],
                        event_types: Iterable[str] | None = None,
                        journeys: Mapping[str, Collection[str]] | None = None) -> list[str]:
    """Problems with the names the condition trees ``roots`` use, each with its key path."""
    tags, attrs = set(tags), set(profile_attributes)
    events = set(event_types) if event_types is not None else None
    problems: list[str] = []
    for root in roots:
        for node in iter_conditions(root):
            if isinstance(node, AttributeCondition):
                known = tags if node.source == "tag" else attrs
                if node.name not in known:
                    problems.append(f"{node.path}.{node.source}: unknown {node.source} {node.name!r}")
            elif events is not None and isinstance(node, EventCondition) and node.event_type not in events:
                problems.append(f"{node.path}.event: unknown event type {node.event_type!r}")
            elif events is not None and isinstance(node, SequenceCondition):
                for key, value in (("did", node.did), ("not_followed_by", node.not_followed_by)):
                    if value not in events:
                        problems.append(f"{node.path}.{key}: unknown event type {value!r}")
            elif journeys is not None and isinstance(node, JourneyCondition):
                if node.journey not in journeys:
                    problems.append(f"{node.path}.journey: unknown journey {node.journey!r}")
                elif node.step is not None and node.step not in journeys[node.journey]:
                    problems.append(f"{node.path}.step: journey {node.journey!r} has no step {node.step!r}")
    return problems


def journey_flags(conditions: Sequence[JourneyCondition], journey_state: DataFrame, *, as_of: datetime) -> DataFrame:
    """One boolean column per journey condition, from one aggregation over ``journey_state``.

    Args:
        conditions: from :func:`journey_conditions`.
        journey_state: journey, customer_id, step, status (``active`` | ``exited``), entered_at.
        as_of: the evaluation time (``entered`` within d days: entered_at in ``[as_of - d days, as_of]``).

    Returns:
        customer_id + one ``jrn__*`` boolean column per condition (keyed by ``condition.key``), for the
        customers with a state row in a named journey.
    """
    names = sorted({c.journey for c in conditions})
    active = F.col("status") == F.lit("active")
    aggs = []
    for cond in conditions:
        hit = F.col("journey") == F.lit(cond.journey)
        if cond.entered:
            hit = hit & F.col("entered_at").isNotNull() & (F.col("entered_at") <= F.lit(as_of))
            if cond.within_days is not None:
                hit = hit & (F.col("entered_at") >= F.lit(as_of - timedelta(days=cond.within_days)))
        else:
            hit = hit & active
            if cond.step is not None:
                hit = hit & (F.col("step") == F.lit(cond.step))
        aggs.append(F.max(hit).alias(cond.key))
    return journey_state.filter(F.col("journey").isin(*names)).groupBy("customer_id").agg(*aggs)


# -- customer frame ----------------------------------------------------------------------------------
def customer_frame(profile: DataFrame, tags_wide: DataFrame | None = None,
                   behaviour: DataFrame | None = None, *, only: Collection[str] | None = None) -> DataFrame:
    """One row per customer of ``profile`` with prefixed tag, profile and behaviour columns.

    Args:
        profile: ``customer_profile`` (customer_id + attributes).
        tags_wide: ``tags_wide`` (customer_id + one column per tag; bookkeeping columns ignored).
        behaviour: output of :func:`behaviour_flags` (customer_id + ``beh__*`` booleans).
        only: keep only these prefixed profile and tag columns (e.g. the union of
            :func:`referenced_columns`); None keeps all. tags_wide is not joined when none of
            its tags is kept, which spares shuffling hundreds of tag columns nobody reads.

    Returns:
        customer_id, ``profile__<attr>`` per profile column, ``tag__<tag>`` per tag,
        ``beh__*`` per behaviour flag (false when the customer has no activity).
    """
    def kept(name: str) -> bool:
        return only is None or name in only

    frame = profile.select("customer_id", *[F.col(f"`{c}`").alias(PROFILE_PREFIX + c)
                                            for c in profile.columns
                                            if c != "customer_id" and kept(PROFILE_PREFIX + c)])
    if tags_wide is not None:
        tag_columns = [c for c in tag_names(tags_wide) if kept(TAG_PREFIX + c)]
        if tag_columns or only is None:
            tags = tags_wide.select("customer_id", *[F.col(f"`{c}`").alias(TAG_PREFIX + c) for c in tag_columns])
            frame = frame.join(tags, on="customer_id", how="left")
    if behaviour is not None:
        flags = [c for c in behaviour.columns if c != "customer_id"]
        frame = frame.join(behaviour, on="customer_id", how="left").select(
            *[c for c in frame.columns], *[F.coalesce(F.col(c), F.lit(False)).alias(c) for c in flags])
    return frame


def tag_names(tags_wide: DataFrame) -> list[str]:
    return [c for c in tags_wide.columns if c not in ("customer_id", "as_of", "computed_at", "run_id")]


def events_by_customer(silver_events: DataFrame, customer_records: DataFrame) -> DataFrame:
    """silver_events mapped to customers: customer_id, event_type, channel, event_time."""
    return with_customer_id(silver_events, customer_records).select("customer_id", "event_type", "channel",
                                                                    "event_time")


def purchases_by_customer(silver_orders: DataFrame, silver_order_lines: DataFrame,
                          customer_records: DataFrame) -> DataFrame:
    """Paid order lines per customer: customer_id, order_id, order_time, category."""
    paid = silver_orders.filter(F.col("status").isin("paid", "partially_returned"))
    orders = with_customer_id(paid, customer_records).select("customer_id", "order_id", "order_time")
    lines = silver_order_lines.select("order_id", "category").distinct()
    return orders.join(lines, on="order_id", how="inner").select("customer_id", "order_id", "order_time",
                                                                 "category")


def behaviour_flags(conditions: Sequence[BehaviourCondition], *, as_of: datetime,
                    events: DataFrame | None = None, purchases: DataFrame | None = None) -> DataFrame | None:
    """One boolean column per behaviour condition, from one aggregation per input.

    Args:
        conditions: from :func:`behaviour_conditions`.
        as_of: the evaluation time; a window of d days is ``[as_of - d days, as_of]``.
        events: :func:`events_by_customer` output (needed by event / sequence conditions).
        purchases: :func:`purchases_by_customer` output (needed by bought conditions).

    Returns:
        customer_id + one ``beh__*`` boolean column per condition (keyed by ``condition.key``),
        only for customers with some activity; None when there are no conditions.
    """
    event_conds = [c for c in conditions if isinstance(c, (EventCondition, SequenceCondition))]
    purchase_conds = [c for c in conditions if isinstance(c, PurchaseCondition)]
    frames: list[DataFrame] = []
    as_of_lit = F.lit(as_of).cast("timestamp")

    def in_window(time_col: str, days: int) -> Column:
        return (F.col(time_col) >= F.lit(as_of - timedelta(days=days)).cast("timestamp")) & \
            (F.col(time_col) <= as_of_lit)

    if event_conds:
        if events is None:
            raise ValueError("behaviour conditions on events need the events frame")
        aggs: list[Column] = []
        for cond in event_conds:
            if isinstance(cond, EventCondition):
                hit = (F.col("event_type") == cond.event_type) & in_window("event_time", cond.within_days)
                if cond.channel is not None:
                    hit = hit & (F.col("channel") == cond.channel)
                aggs.append((F.count(F.when(hit, 1)) >= cond.at_least).alias(cond.key))
            else:
                window = in_window("event_time", cond.within_days)
                last_did = F.max(F.when((F.col("event_type") == cond.did) & window, F.col("event_time")))
                last_next = F.max(F.when((F.col("event_type") == cond.not_followed_by) & window,
                                         F.col("event_time")))
                aggs.append((last_did.isNotNull() & (last_next.isNull() | (last_next < last_did)))
                            .alias(cond.key))
        frames.append(events.groupBy("customer_id").agg(*aggs))
    if purchase_conds:
        if purchases is None:
            raise ValueError("bought conditions need the purchases frame")
        aggs = [(F.size(F.collect_set(F.when(F.col("category").isin(*c.categories)
                                             & in_window("order_time", c.within_days), F.col("order_id"))))
                 >= c.at_least).alias(c.key) for c in purchase_conds]
        frames.append(purchases.groupBy("customer_id").agg(*aggs))
    if not frames:
        return None
    result = frames[0]
    for other in frames[1:]:
        result = result.join(other, on="customer_id", how="full_outer")
    return result


# -- compilation ---------------------------------------------------------------------------------------
def _attribute_column(cond: AttributeCondition) -> Column:
    prefix = TAG_PREFIX if cond.source == "tag" else PROFILE_PREFIX
    col = F.col(f"`{prefix}{cond.name}`")
    op, value = cond.op, cond.value
    if op == "is null":
        return col.isNull()
    if op == "is not null":
        return col.isNotNull()
    if op in ("=", "!="):
        test = col == F.lit(value)
    elif op in ("in", "not in"):
        test = col.isin(*value)
    elif op == "between":
        test = col.between(F.lit(value[0]), F.lit(value[1]))
    elif op == ">=":
        test = col >= F.lit(value)
    elif op == "<=":
        test = col <= F.lit(value)
    elif op == ">":
        test = col > F.lit(value)
    elif op == "<":
        test = col < F.lit(value)
    else:  # parse_condition only lets OPERATORS through
        raise ValueError(f"{cond.path}: unknown operator {op!r}")
    # Null (unknown) never matches; != and not in are the exact negations of = and in.
    test = F.coalesce(test, F.lit(False))
    return ~test if op in ("!=", "not in") else test


def compile_condition(condition: Condition) -> Column:
    """One boolean Column (never null) over the :func:`customer_frame` of the audience's inputs."""
    if isinstance(condition, AttributeCondition):
        return _attribute_column(condition)
    if isinstance(condition, _FLAG_CONDITIONS):
        return F.coalesce(F.col(condition.key), F.lit(False))
    if isinstance(condition, AllOf):
        result = compile_condition(condition.children[0])
        for child in condition.children[1:]:
            result = result & compile_condition(child)
        return result
    if isinstance(condition, AnyOf):
        result = compile_condition(condition.children[0])
        for child in condition.children[1:]:
            result = result | compile_condition(child)
        return result
    if isinstance(condition, NotOf):
        return ~compile_condition(condition.child)
    raise TypeError(f"not a condition: {condition!r}")


def compile_audience(audience: Audience) -> Column:
    """``where`` and not any ``exclude``: the audience's membership test over the customer frame."""
    test = compile_condition(audience.where)
    for excluded in audience.exclude:
        test = test & ~compile_condition(excluded)
    return test


def control_hash(audience_name: str, customer_id: Column | str = "customer_id") -> Column:
    """A stable bucket in [0, 10000) from the audience name and the customer id (no randomness)."""
    cid = F.col(customer_id) if isinstance(customer_id, str) else customer_id
    return F.pmod(F.xxhash64(F.concat_ws(":", F.lit("control"), F.lit(audience_name), cid)), F.lit(10000))


def in_global_control(percent: float, customer_id: Column | str = "customer_id") -> Column:
    """True for the stable, hash-drawn ``percent`` % of all customers that no audience sends to (the
    global control group), the same customers in every audience and run."""
    cid = F.col(customer_id) if isinstance(customer_id, str) else customer_id
    bucket = F.pmod(F.xxhash64(F.concat_ws(":", F.lit("global-control"), cid)), F.lit(10000))
    return bucket < F.lit(int(round(percent * 100)))


def order_hash(audience_name: str) -> Column:
    """Deterministic tie-break for size caps, different from the control-group hash."""
    return F.xxhash64(F.concat_ws(":", F.lit("cap"), F.lit(audience_name), F.col("customer_id")))


def select_members(customers: DataFrame, audience: Audience, *,
                   eligible: DataFrame | None = None, global_control_percent: float = 0.0) -> DataFrame:
    """Evaluate ``audience`` over the customer frame: conditions, eligibility, cap, control group.

    Args:
        customers: :func:`customer_frame` output holding every column the audience uses.
        audience: the parsed definition.
        eligible: optional customer_id frame of customers that may be contacted on the channel
            (consent, reachability, suppression); applied before the cap so the cap counts
            people who can actually be reached.
        global_control_percent: the share of all customers held out of every audience except
            transactional ones (:func:`in_global_control`); they stay members, in control, so they are
            measured like everyone else and never exported.

    Returns:
        customer_id string, in_control boolean: one row per member.
    """
    matched = customers.filter(compile_audience(audience))
    if eligible is not None:
        matched = matched.join(eligible.select("customer_id"), on="customer_id", how="left_semi")
    if audience.cap is not None:
        order = []
        for key in audience.cap.order_by:
            prefix = TAG_PREFIX if key.source == "tag" else PROFILE_PREFIX
            col = F.col(f"`{prefix}{key.name}`")
            order.append(col.desc_nulls_last() if key.desc else col.asc_nulls_last())
        order += [order_hash(audience.name).asc(), F.col("customer_id").asc()]
        matched = matched.orderBy(*order).limit(audience.cap.size)
    in_control = (control_hash(audience.name) < F.lit(int(round(audience.control_percent * 100)))) \
        if audience.control_percent > 0 else F.lit(False)
    if global_control_percent > 0 and not audience.transactional:
        in_control = in_control | in_global_control(global_control_percent)
    return matched.select(F.col("customer_id"), in_control.alias("in_control"))


def referenced_columns(audience: Audience) -> list[str]:
    """Customer-frame columns the audience reads (for pruning and for error messages)."""
    cols = condition_columns(audience.conditions())
    if audience.cap:
        cols += [(TAG_PREFIX if k.source == "tag" else PROFILE_PREFIX) + k.name for k in audience.cap.order_by]
    return list(dict.fromkeys(cols))


def condition_columns(roots: Iterable[Condition]) -> list[str]:
    """Customer-frame columns the condition trees ``roots`` read, in first-seen order."""
    cols: list[str] = []
    for root in roots:
        for node in iter_conditions(root):
            if isinstance(node, AttributeCondition):
                cols.append((TAG_PREFIX if node.source == "tag" else PROFILE_PREFIX) + node.name)
            elif isinstance(node, _FLAG_CONDITIONS):
                cols.append(node.key)
    return list(dict.fromkeys(cols))


# -- past campaigns ----------------------------------------------------------------------------------
def _parse_campaign_condition(data: Mapping[str, Any], path: str) -> CampaignCondition | None:
    """The past-campaign conditions (module docstring); None when ``data`` is none of them."""
    def window(spec: Mapping[str, Any]) -> int | None:
        return None if spec.get("within_days") is None else _positive_int(spec["within_days"], f"{path}.within_days")

    def name(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{path}.{key}: expected a name, got {value!r}")
        return value

    for key, change in (("entered_audience", "entered"), ("exited_audience", "exited")):
        if key in data:
            _no_unknown_keys(data, {key, "within_days"}, path)
            return AudienceChangeCondition(audience=name(key), change=change, within_days=window(data), path=path)
    if "message" in data:
        _no_unknown_keys(data, {"message", "response", "within_days"}, path)
        response = data.get("response")
        if response not in RESPONSE_EVENT_TYPES:
            raise ValueError(f"{path}.response: expected one of {list(RESPONSE_EVENT_TYPES)}, got {response!r}")
        return MessageCondition(message_id=name("message"), response=response, within_days=window(data), path=path)
    if "goal" in data:
        _no_unknown_keys(data, {"goal", "audience", "converted"}, path)
        converted = data.get("converted", True)
        if not isinstance(converted, bool):
            raise ValueError(f"{path}.converted: expected true or false, got {converted!r}")
        return GoalCondition(audience=name("audience"), goal=name("goal"), converted=converted, path=path)
    return None


def campaign_conditions(audiences: Iterable[Audience]) -> list[CampaignCondition]:
    """Every distinct past-campaign condition in ``audiences`` (by key), in first-seen order."""
    seen: dict[str, CampaignCondition] = {}
    for audience in audiences:
        for root in audience.conditions():
            for node in iter_conditions(root):
                if isinstance(node, (AudienceChangeCondition, MessageCondition, GoalCondition)):
                    seen.setdefault(node.key, node)
    return list(seen.values())


def validate_campaign_references(audience: Audience, audiences: Iterable[Audience]) -> list[str]:
    """Problems with the audiences and goals ``audience``'s past-campaign conditions name, by key path."""
    goals = {a.name: {g.name for g in a.goals} for a in audiences}
    problems = []
    for root in audience.conditions():
        for node in iter_conditions(root):
            if isinstance(node, AudienceChangeCondition) and node.audience not in goals:
                problems.append(f"{node.path}.{node.change}_audience: unknown audience {node.audience!r}")
            elif isinstance(node, GoalCondition):
                if node.audience not in goals:
                    problems.append(f"{node.path}.audience: unknown audience {node.audience!r}")
                elif node.goal not in goals[node.audience]:
                    problems.append(f"{node.path}.goal: audience {node.audience!r} has no goal {node.goal!r} "
                                    f"(its goals: {sorted(goals[node.audience])})")
    return problems


def responses_by_customer(silver_events: DataFrame, customer_records: DataFrame) -> DataFrame:
    """Response events (those answering a message) per customer: customer_id, message_id, event_type,
    event_time."""
    answered = silver_events.filter(F.col("attributes")["message_id"].isNotNull())
    return with_customer_id(answered, customer_records).select(
        "customer_id", F.col("attributes")["message_id"].alias("message_id"), "event_type", "event_time")


def campaign_flags(conditions: Sequence[CampaignCondition], *, as_of: datetime, changes: DataFrame | None = None,
                   responses: DataFrame | None = None, entries: DataFrame | None = None,
                   goal_actions: Mapping[tuple[str, str], tuple[Goal, DataFrame]] | None = None
                   ) -> DataFrame | None:
    """One boolean column per past-campaign condition (named by its key), from one aggregation per input.

    Args:
        conditions: from :func:`campaign_conditions`.
        as_of: the evaluation time; nothing after it is seen, a window of d days is ``[as_of - d, as_of]``.
        changes: audience, customer_id, change ('entered' | 'exited'), changed_at (the publish's as-of).
        responses: :func:`responses_by_customer` output.
        entries: audience, customer_id, entered_at: each time a customer entered an audience.
        goal_actions: (audience, goal name) -> (the goal, its actions: customer_id, action_time), from
            :func:`cdp.engage.goal_actions`.

    Returns:
        customer_id + one boolean column per condition, only for customers some input names; None when
        there are no conditions.
    """
    as_of_lit = F.lit(as_of).cast("timestamp")

    def seen(time_col: str, days: int | None) -> Column:
        test = F.col(time_col) <= as_of_lit
        if days is not None:
            test = test & (F.col(time_col) >= F.lit(as_of - timedelta(days=days)).cast("timestamp"))
        return test

    frames: list[DataFrame] = []
    change_conds = [c for c in conditions if isinstance(c, AudienceChangeCondition)]
    if change_conds:
        if changes is None:
            raise ValueError("entered/exited audience conditions need the audience changes frame")
        frames.append(changes.groupBy("customer_id").agg(*[
            F.max((F.col("audience") == c.audience) & (F.col("change") == c.change)
                  & seen("changed_at", c.within_days)).alias(c.key) for c in change_conds]))
    message_conds = [c for c in conditions if isinstance(c, MessageCondition)]
    if message_conds:
        if responses is None:
            raise ValueError("message conditions need the responses frame")
        frames.append(responses.groupBy("customer_id").agg(*[
            F.max((F.col("message_id") == c.message_id) & F.col("event_type").isin(*RESPONSE_EVENT_TYPES[c.response])
                  & seen("event_time", c.within_days)).alias(c.key) for c in message_conds]))
    for cond in (c for c in conditions if isinstance(c, GoalCondition)):
        if entries is None or goal_actions is None or (cond.audience, cond.goal) not in goal_actions:
            raise ValueError(f"{cond.path}: goal conditions need the entries and the actions of "
                             f"{cond.audience}.{cond.goal}")
        goal, actions = goal_actions[(cond.audience, cond.goal)]
        entered = entries.filter((F.col("audience") == cond.audience) & (F.col("entered_at") <= as_of_lit)).select(
            "customer_id", "entered_at",
            (F.col("entered_at") + F.expr(f"INTERVAL {goal.within_days} DAYS")).alias("window_end"))
        hits = actions.select("customer_id", "action_time").filter(F.col("action_time") <= as_of_lit)
        per_entry = entered.join(hits, on="customer_id", how="left").groupBy("customer_id", "entered_at",
                                                                              "window_end").agg(
            F.max(F.coalesce((F.col("action_time") > F.col("entered_at"))
                             & (F.col("action_time") <= F.col("window_end")), F.lit(False))).alias("hit"))
        per_customer = per_entry.groupBy("customer_id").agg(
            F.max("hit").alias("converted"), F.max(F.col("window_end") <= as_of_lit).alias("closed"))
        flag = F.col("converted") if cond.converted else (F.col("closed") & ~F.col("converted"))
        frames.append(per_customer.select("customer_id", flag.alias(cond.key)))
    if not frames:
        return None
    result = frames[0]
    for other in frames[1:]:
        result = result.join(other, on="customer_id", how="full_outer")
    return result


__all__ = [
    "AllOf", "AnyOf", "AttributeCondition", "Audience", "AudienceChangeCondition", "CHANNELS", "Destination",
    "EventCondition", "GoalCondition", "JourneyCondition", "MessageCondition", "NotOf", "OPERATORS",
    "PurchaseCondition", "SequenceCondition", "SizeCap", "behaviour_conditions", "behaviour_flags",
    "campaign_conditions", "campaign_flags", "compile_audience", "compile_condition", "condition_columns",
    "conditions_of_kind", "control_hash", "customer_frame", "events_by_customer", "journey_conditions",
    "journey_flags", "parse_condition", "parse_destination", "purchases_by_customer", "referenced_columns",
    "responses_by_customer", "select_members", "tag_names", "validate_audience",
    "validate_campaign_references", "validate_conditions",
]
