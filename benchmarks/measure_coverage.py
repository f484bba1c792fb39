"""Coverage of the measured lift's 95 % interval against the generator's true lift.

For each seed, ``cdp generate`` simulates its campaign sends (:data:`cdp.synthetic.CAMPAIGNS`): random
treatment and control groups, response files for the treated, orders the message caused, and each
member's two potential outcomes in ``_truth``. The campaign's conversions are then measured with the
engage functions ``cdp measure`` uses (:func:`cdp.engage.goal_actions`, :func:`cdp.engage.member_outcomes`,
:func:`cdp.engage.group_totals`, :func:`cdp.engage.lift`) on frames built from the generated order files,
without the pipeline (no land, stitch or publish per seed: customers are the true persons). A campaign's
interval covers when it contains ``true_abs_lift``, the members' mean of Y1 - Y0.

    .venv/bin/python benchmarks/measure_coverage.py --seeds 40 --customers 6000

Expected: about 95 % of intervals contain the truth (the unpooled Wald interval for a difference of
two proportions; with a few hundred control members and rates of a few percent, a little under).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from cdp.engage import Goal, Lift, goal_actions, group_totals, lift, member_outcomes
from cdp.synthetic import GenerateParams, generate, read_campaign_truth, read_orders

ORDERS_SCHEMA = ("customer_id string, order_id string, order_time timestamp, channel string, status string, "
                 "total_amount double")


@dataclass(frozen=True)
class Measured:
    seed: int
    message_id: str
    true_abs_lift: float
    members_treatment: int
    members_control: int
    measured: Lift

    @property
    def covered(self) -> bool:
        low, high = self.measured.abs_lift_low, self.measured.abs_lift_high
        return low is not None and high is not None and low <= self.true_abs_lift <= high


def orders_frame(spark: SparkSession, out: Path) -> DataFrame:
    """The generated orders as silver_orders with customer ids (the true persons)."""
    rows = [(person, order_no, datetime.fromtimestamp(created, UTC), channel, status, amount)
            for person, order_no, created, channel, status, amount in read_orders(out)]
    return spark.createDataFrame(rows, ORDERS_SCHEMA)


def campaign_outcomes(spark: SparkSession, out: Path) -> list[tuple[dict[str, str], DataFrame, DataFrame]]:
    """Per simulated campaign: its truth row, the members' measured outcomes (customer_id, in_control,
    converted, revenue) and the members' truth (customer_id, in_control, converted_without, converted_with)."""
    campaigns, members = read_campaign_truth(out)
    # read by every campaign: cached once rather than shipped from Python four times
    orders = orders_frame(spark, out).cache()
    truth = spark.createDataFrame(
        [(m["message_id"], m["person_id"], m["group"] == "control", m["converted_without"] == "1",
          m["converted_with"] == "1") for m in members],
        "message_id string, customer_id string, in_control boolean, converted_without boolean, "
        "converted_with boolean").cache()
    result = []
    for campaign in campaigns:
        goal = Goal(name="order_in_window", kind="order", within_days=int(campaign["window_days"]))
        entered_at = datetime.fromisoformat(campaign["sent_at"].replace("Z", "+00:00"))
        ours = truth.filter(truth.message_id == campaign["message_id"]).drop("message_id")
        outcomes = member_outcomes(ours.select("customer_id", "in_control"),
                                   goal_actions(goal, orders=orders, order_lines=None, events=None),
                                   entered_at=entered_at, window_end=entered_at + timedelta(days=goal.within_days))
        result.append((campaign, outcomes, ours))
    return result


def measure_seed(spark: SparkSession, seed: int, customers: int, workdir: Path) -> list[Measured]:
    out = workdir / f"seed{seed}"
    generate(GenerateParams(out=out, customers=customers, seed=seed, end=date(2025, 6, 30), workers=2,
                            chunk_size=max(1000, -(-customers // 2))))
    try:
        measured = []
        for campaign, outcomes, _ in campaign_outcomes(spark, out):
            totals = group_totals(outcomes)
            measured.append(Measured(seed, campaign["message_id"], float(campaign["true_abs_lift"]),
                                     totals[False].members, totals[True].members, lift(totals[False], totals[True])))
        return measured
    finally:
        spark.catalog.clearCache()
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--customers", type=int, default=6000)
    args = parser.parse_args()
    spark = (SparkSession.builder.master("local[2]").appName("bench-measure-coverage")
             .config("spark.sql.shuffle.partitions", "2").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter()
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="cdp-coverage-") as folder:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            seed_started = time.perf_counter()
            found = measure_seed(spark, seed, args.customers, Path(folder))
            results += found
            print(f"seed {seed:3d} ({time.perf_counter() - seed_started:5.1f} s): " + "; ".join(
                f"{m.message_id.split('.')[0]} truth {100 * m.true_abs_lift:+.2f} pp, measured "
                f"{100 * (m.measured.abs_lift or 0):+.2f} [{100 * (m.measured.abs_lift_low or 0):+.2f}, "
                f"{100 * (m.measured.abs_lift_high or 0):+.2f}]{'' if m.covered else ' MISS'}" for m in found),
                flush=True)
    print(f"\n{args.seeds} seeds x {args.customers} customers in {time.perf_counter() - started:.0f} s")
    for message_id in dict.fromkeys(m.message_id for m in results):
        ours = [m for m in results if m.message_id == message_id]
        print(f"{message_id:32s} coverage {sum(m.covered for m in ours)}/{len(ours)} = "
              f"{sum(m.covered for m in ours) / len(ours):.1%}; mean members {sum(m.members_treatment for m in ours) / len(ours):.0f}"
              f" treatment / {sum(m.members_control for m in ours) / len(ours):.0f} control; mean true lift "
              f"{100 * sum(m.true_abs_lift for m in ours) / len(ours):+.2f} pp")
    covered = sum(m.covered for m in results)
    print(f"all campaigns: {covered}/{len(results)} = {covered / len(results):.1%} of 95% intervals contain the truth")
    spark.stop()


if __name__ == "__main__":
    main()
