"""``cdp measure [--as-of DATE]``: every audience publish measured against its control group, per goal.

For each audience with ``goals`` and each published version of ``audience_<name>`` (its commit records
the ``as_of`` at which its members entered), each goal's conversions within the goal's window are
counted for treatment and control members (:mod:`cdp.engage.measure`). A result whose window has not
closed by ``--as-of`` (the end of observed data) is written as ``open`` with member counts only and
measured again on later runs; a closed one is written once (re-runs skip it). Appends to
``audience_performance``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.engage import Goal, goal_actions, group_totals, lift, member_outcomes, window_end
from cdp.runtime.config import JobContext

logger = logging.getLogger("cdp.jobs.measure")  # not __name__: under spark-submit this module is __main__

PERFORMANCE_TABLE = "audience_performance"
# one row per (run, audience publish, goal); measured_at is added when the rows are written
RESULT_SCHEMA = (
    "run_id string, audience string, publish_version long, goal string, entered_at timestamp, "
    "window_end timestamp, status string, members_treatment long, members_control long, "
    "conversions_treatment long, conversions_control long, rate_treatment double, rate_control double, "
    "abs_lift double, abs_lift_low double, abs_lift_high double, rel_lift double, rel_lift_low double, "
    "rel_lift_high double, revenue_per_member_treatment double, revenue_per_member_control double, "
    "revenue_diff_low double, revenue_diff_high double, conclusive boolean")
RESULT_COLUMNS = tuple(part.split()[0] for part in RESULT_SCHEMA.split(", "))


@dataclass
class MeasureResult:
    closed: int = 0
    open: int = 0
    skipped: int = 0  # closed earlier
    rows: list[dict[str, Any]] = field(default_factory=list)


def publishes(lake: Any, table: str) -> list[tuple[int, datetime]]:
    """(version, as_of) of each publish of an audience table that recorded its as-of instant, oldest first."""
    found = []
    for entry in lake.history(table):
        if entry.get("as_of"):
            found.append((int(entry["version"]), datetime.fromisoformat(str(entry["as_of"]))))
    return sorted(found)


def _measured(lake: Any) -> set[tuple[str, int, str]]:
    if not lake.exists(PERFORMANCE_TABLE):
        return set()
    rows = (lake.read(PERFORMANCE_TABLE).filter(F.col("status") == "closed")
            .select("audience", "publish_version", "goal").distinct().collect())
    return {(r["audience"], int(r["publish_version"]), r["goal"]) for r in rows}


def goal_actions_in_lake(lake: Any, goal: Goal, cache: dict[str, DataFrame | None]) -> DataFrame:
    """The lake's actions that satisfy ``goal`` (:func:`cdp.engage.goal_actions` over silver, with customer
    ids); ``cache`` keeps the silver frames between goals. Also read by ``cdp journeys`` (exit goals)."""
    from cdp.identity.records import with_customer_id

    def table(name: str, *, with_customer: bool) -> DataFrame | None:
        if name not in cache:
            if not lake.exists(name):
                cache[name] = None
            else:
                frame = lake.read(name)
                cache[name] = with_customer_id(frame, lake.read("customer_records")) if with_customer else frame
        return cache[name]

    if goal.kind == "order":
        return goal_actions(goal, orders=table("silver_orders", with_customer=True),
                            order_lines=table("silver_order_lines", with_customer=False) if goal.category else None,
                            events=None)
    return goal_actions(goal, orders=None, order_lines=None, events=table("silver_events", with_customer=True))


def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None, as_of: date | datetime | str | None = None
        ) -> MeasureResult:
    """Measure every audience publish whose goals are not yet measured closed; append the results."""
    from cdp.jobs.audiences import as_of_datetime, audience_table, load_audiences
    from cdp.jobs.journeys import journey_send_audiences
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    observed_until = as_of_datetime(as_of)
    done = _measured(lake)
    result = MeasureResult()
    cache: dict[str, DataFrame | None] = {}
    # journeys' send steps are published as audiences too: each batch is measured like a publish
    for audience in [*load_audiences(ctx.conf_dir), *journey_send_audiences(ctx.conf_dir)]:
        table = audience_table(audience.name)
        if not audience.goals or not lake.exists(table):
            continue
        for version, entered_at in publishes(lake, table):
            members = lake.read(table, version=version).select("customer_id", "in_control")
            for goal in audience.goals:
                if (audience.name, version, goal.name) in done:
                    result.skipped += 1
                    continue
                end = window_end(entered_at, goal)
                row: dict[str, Any] = {"run_id": ctx.run_id, "audience": audience.name, "publish_version": version,
                                       "goal": goal.name, "entered_at": entered_at, "window_end": end}
                if observed_until < end:
                    counts = {bool(r["in_control"]): r["count"] for r in members.groupBy("in_control").count().collect()}
                    row.update(status="open", members_treatment=counts.get(False, 0), members_control=counts.get(True, 0),
                               conclusive=False)
                    result.open += 1
                else:
                    outcomes = member_outcomes(members, goal_actions_in_lake(lake, goal, cache), entered_at=entered_at,
                                               window_end=end)
                    totals = group_totals(outcomes)
                    measured = lift(totals[False], totals[True])
                    row.update(status="closed", members_treatment=totals[False].members,
                               members_control=totals[True].members, conversions_treatment=totals[False].conversions,
                               conversions_control=totals[True].conversions, **asdict(measured))
                    result.closed += 1
                    logger.info("audience %s v%d goal %s: treatment %d/%d, control %d/%d, lift %s (95%% %s..%s)%s",
                                audience.name, version, goal.name, totals[False].conversions, totals[False].members,
                                totals[True].conversions, totals[True].members, _pct(measured.abs_lift),
                                _pct(measured.abs_lift_low), _pct(measured.abs_lift_high),
                                ", conclusive" if measured.conclusive else "")
                result.rows.append(row)
    if result.rows:
        frame = spark.createDataFrame([tuple(row.get(n) for n in RESULT_COLUMNS) for row in result.rows],
                                      RESULT_SCHEMA)
        lake.write(frame.withColumn("measured_at", F.current_timestamp()), PERFORMANCE_TABLE, mode="append",
                   metadata={"run_id": ctx.run_id})
    logger.info("measured %d closed and %d open results (%d closed earlier)", result.closed, result.open,
                result.skipped)
    return result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.2f} pp"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as-of", dest="as_of", help="end of observed data (YYYY-MM-DD; default: now)")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    run(spark, ctx, as_of=args.as_of)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("measure", argv, _run_from_args, _add_arguments,
                    description="measure audience publishes against their control groups")


if __name__ == "__main__":
    sys.exit(main())
