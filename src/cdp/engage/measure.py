"""Measuring an audience against its control group: goals, conversions, lift with 95 % intervals.

Pure transforms and arithmetic; ``cdp measure`` (:mod:`cdp.jobs.measure`) reads the published
audience versions and silver, and appends the results to ``audience_performance``.

A goal is a conversion within ``within_days`` days after a member entered the audience (the as-of
instant of the publish that contained them): an order (optionally of a category, a channel, at least
an amount; cancelled orders never count) or an event of a type (optionally on a channel).

Statistics (normal approximations, stated so a reader can check them):

- conversion rates p = conversions / members per group; absolute lift p_t - p_c with the unpooled
  Wald interval (p_t - p_c) +- z * sqrt(p_t (1 - p_t) / n_t + p_c (1 - p_c) / n_c);
- relative lift p_t / p_c - 1 with the Katz log interval exp(log(p_t / p_c) +- z * sqrt((1 - p_t) /
  (n_t p_t) + (1 - p_c) / (n_c p_c))) - 1 (undefined when either group has no conversion);
- revenue per member: group means, their difference with the Welch interval (sample variances);
- ``conclusive`` only when the absolute-lift interval excludes zero;
- one group's rate alone (the report's charts): the Wilson score interval (:func:`rate_interval`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
GOAL_KINDS = ("order", "event")


@dataclass(frozen=True)
class Goal:
    """What counts as a conversion for an audience, and within how many days of entering it."""

    name: str
    kind: Literal["order", "event"]
    within_days: int
    event_type: str | None = None
    category: str | None = None
    channel: str | None = None
    min_amount: float | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str, *, event_types: frozenset[str] | None = None) -> Goal:
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping with name, kind and within_days")
        unknown = sorted(set(data) - {"name", "kind", "within_days", "event_type", "category", "channel",
                                      "min_amount"})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        name = data.get("name")
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name[:1].isalpha():
            raise ValueError(f"{path}.name: expected a snake_case name, got {name!r}")
        kind = data.get("kind")
        if kind not in GOAL_KINDS:
            raise ValueError(f"{path}.kind: expected one of {list(GOAL_KINDS)}, got {kind!r}")
        days = data.get("within_days")
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"{path}.within_days: expected a positive number of days, got {days!r}")
        event_type = data.get("event_type")
        if kind == "event":
            if not isinstance(event_type, str):
                raise ValueError(f"{path}.event_type: an event goal needs an event type")
            if event_types is not None and event_type not in event_types:
                raise ValueError(f"{path}.event_type: unknown event type {event_type!r}")
        elif event_type is not None:
            raise ValueError(f"{path}.event_type: only event goals take an event type")
        if kind == "event" and ("category" in data or "min_amount" in data):
            raise ValueError(f"{path}: category and min_amount apply to order goals only")
        amount = data.get("min_amount")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0):
            raise ValueError(f"{path}.min_amount: expected a non-negative number, got {amount!r}")
        for key in ("category", "channel"):
            if data.get(key) is not None and not isinstance(data.get(key), str):
                raise ValueError(f"{path}.{key}: expected a string")
        return cls(name=name, kind=kind, within_days=days, event_type=event_type, category=data.get("category"),
                   channel=data.get("channel"), min_amount=float(amount) if amount is not None else None)


def goal_actions(goal: Goal, *, orders: DataFrame | None, order_lines: DataFrame | None,
                 events: DataFrame | None) -> DataFrame:
    """The actions that satisfy ``goal``: customer_id, action_time timestamp, revenue double.

    Args:
        orders: silver_orders with customer_id (order_id, order_time, channel, status, total_amount).
        order_lines: silver_order_lines (order_id, category); read only for a category filter.
        events: silver_events with customer_id (event_type, channel, event_time).
    """
    if goal.kind == "order":
        if orders is None:
            raise ValueError(f"goal {goal.name}: order goals need silver_orders")
        # cancelled orders never convert; a NULL status is not cancelled, so it is never dropped by accident
        selected = orders.filter(F.coalesce(F.col("status"), F.lit("")) != F.lit("cancelled"))
        if goal.channel is not None:
            selected = selected.filter(F.col("channel") == F.lit(goal.channel))
        if goal.min_amount is not None:
            selected = selected.filter(F.col("total_amount") >= F.lit(goal.min_amount))
        if goal.category is not None:
            if order_lines is None:
                raise ValueError(f"goal {goal.name}: a category filter needs silver_order_lines")
            with_category = order_lines.filter(F.col("category") == F.lit(goal.category)).select("order_id")
            selected = selected.join(with_category.distinct(), on="order_id", how="left_semi")
        return selected.select("customer_id", F.col("order_time").alias("action_time"),
                               F.coalesce(F.col("total_amount"), F.lit(0.0)).cast("double").alias("revenue"))
    if events is None:
        raise ValueError(f"goal {goal.name}: event goals need silver_events")
    selected = events.filter(F.col("event_type") == F.lit(goal.event_type))
    if goal.channel is not None:
        selected = selected.filter(F.col("channel") == F.lit(goal.channel))
    return selected.select("customer_id", F.col("event_time").alias("action_time"), F.lit(0.0).alias("revenue"))


def member_outcomes(members: DataFrame, actions: DataFrame, *, entered_at: datetime, window_end: datetime
                    ) -> DataFrame:
    """Per member: converted (an action in (entered_at, window_end]) and the revenue of those actions.

    Input ``members``: customer_id, in_control. Output: customer_id, in_control, converted boolean,
    revenue double (0 when none).
    """
    in_window = actions.filter((F.col("action_time") > F.lit(entered_at)) & (F.col("action_time") <= F.lit(window_end)))
    per_customer = in_window.groupBy("customer_id").agg(F.count(F.lit(1)).alias("actions"),
                                                        F.sum("revenue").alias("revenue"))
    return (members.select("customer_id", "in_control")
            .join(per_customer, on="customer_id", how="left")
            .select("customer_id", "in_control", F.coalesce(F.col("actions") > 0, F.lit(False)).alias("converted"),
                    F.coalesce(F.col("revenue"), F.lit(0.0)).alias("revenue")))


@dataclass(frozen=True)
class GroupTotals:
    members: int
    conversions: int
    revenue: float
    revenue_squares: float  # sum of squared revenue per member, for the variance


def group_totals(outcomes: DataFrame) -> dict[bool, GroupTotals]:
    """Members, conversions and revenue sums of :func:`member_outcomes`, keyed by in_control."""
    rows = (outcomes.groupBy("in_control")
            .agg(F.count(F.lit(1)).alias("members"), F.count(F.when(F.col("converted"), 1)).alias("conversions"),
                 F.sum("revenue").alias("revenue"), F.sum(F.col("revenue") * F.col("revenue")).alias("squares"))
            .collect())
    totals = {bool(r["in_control"]): GroupTotals(r["members"], r["conversions"], float(r["revenue"] or 0.0),
                                                  float(r["squares"] or 0.0)) for r in rows}
    empty = GroupTotals(0, 0, 0.0, 0.0)
    return {False: totals.get(False, empty), True: totals.get(True, empty)}


@dataclass(frozen=True)
class Lift:
    rate_treatment: float | None
    rate_control: float | None
    abs_lift: float | None
    abs_lift_low: float | None
    abs_lift_high: float | None
    rel_lift: float | None
    rel_lift_low: float | None
    rel_lift_high: float | None
    revenue_per_member_treatment: float | None
    revenue_per_member_control: float | None
    revenue_diff_low: float | None
    revenue_diff_high: float | None
    conclusive: bool


def _mean_and_variance(total: float, squares: float, n: int) -> tuple[float, float]:
    mean = total / n
    variance = max(squares - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
    return mean, variance


def lift(treatment: GroupTotals, control: GroupTotals, *, z: float = Z_95) -> Lift:
    """Rates, absolute and relative lift and revenue per member, with their intervals (module docstring)."""
    if treatment.members == 0 or control.members == 0:
        rate_t = treatment.conversions / treatment.members if treatment.members else None
        rate_c = control.conversions / control.members if control.members else None
        return Lift(rate_t, rate_c, None, None, None, None, None, None, None, None, None, None, False)
    n_t, n_c = treatment.members, control.members
    p_t, p_c = treatment.conversions / n_t, control.conversions / n_c
    diff = p_t - p_c
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    low, high = diff - z * se, diff + z * se
    rel = rel_low = rel_high = None
    if p_c > 0:
        rel = p_t / p_c - 1
    if p_t > 0 and p_c > 0:
        se_log = math.sqrt((1 - p_t) / (n_t * p_t) + (1 - p_c) / (n_c * p_c))
        ratio = math.log(p_t / p_c)
        rel_low, rel_high = math.exp(ratio - z * se_log) - 1, math.exp(ratio + z * se_log) - 1
    mean_t, var_t = _mean_and_variance(treatment.revenue, treatment.revenue_squares, n_t)
    mean_c, var_c = _mean_and_variance(control.revenue, control.revenue_squares, n_c)
    se_rev = math.sqrt(var_t / n_t + var_c / n_c)
    rev_diff = mean_t - mean_c
    return Lift(p_t, p_c, diff, low, high, rel, rel_low, rel_high, mean_t, mean_c,
                rev_diff - z * se_rev, rev_diff + z * se_rev, conclusive=(low > 0 or high < 0) and se > 0)


def rate_interval(conversions: int, members: int, *, z: float = Z_95) -> tuple[float, float, float] | None:
    """One group's conversion rate with its Wilson score interval: (rate, low, high); None without members.

    Wilson rather than Wald for a single rate: it stays inside [0, 1] and keeps its width when a group
    has no or every conversion, which small control groups often do.
    """
    if members <= 0:
        return None
    p = conversions / members
    denominator = 1 + z * z / members
    centre = (p + z * z / (2 * members)) / denominator
    half = z * math.sqrt(p * (1 - p) / members + z * z / (4 * members * members)) / denominator
    return p, max(0.0, centre - half), min(1.0, centre + half)


def window_end(entered_at: datetime, goal: Goal) -> datetime:
    return entered_at + timedelta(days=goal.within_days)
