"""Wall time of `cdp journeys` (10 journeys) and `cdp measure` per simulated day, over N customers.

    python benchmarks/journeys.py --customers 100000 --days 4

Builds a synthetic lake in Spark (the tables `cdp journeys` reads: customer_profile, identity_map,
customer_records, silver_consent, silver_events, silver_orders, silver_order_lines, tags_wide), writes
10 journeys into a copy of the packaged conf (welcome series, cart recovery with an A/B split, browse
abandonment, win-back, VIP, each on e-mail and on SMS, with waits, branches, splits, exit goals) plus
frequency caps, then runs `cdp journeys` for ``--days`` consecutive days and `cdp measure` after each,
printing wall time per run and the run's counts. Everything goes through the real jobs and the lake.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

START = date(2026, 11, 2)
HISTORY_DAYS = 30
EVENT_TYPES = ["page_view", "product_view", "add_to_cart", "checkout", "email_open", "email_click"]


def _pick(values: list[str], seed: int) -> F.Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]),
                        (F.pmod(F.xxhash64("id", F.lit(seed)), len(values)) + 1).cast("int"))


def _before(day: date, seed: int, days: int) -> F.Column:
    return (F.lit(datetime.combine(day, datetime.min.time())).cast("timestamp")
            - F.make_interval(secs=F.pmod(F.xxhash64("id", F.lit(seed)), days * 86400)))


def build_lake(spark: SparkSession, lake, customers: int, events_per_customer: int) -> None:
    """The journeys' inputs for ``customers`` customers, events and orders over the 30 days before START
    and over the simulated days (a customer's behaviour keeps arriving while the journeys run)."""
    ids = spark.range(customers).select("id", F.format_string("C%09d", "id").alias("customer_id"))
    profile = ids.select("customer_id", F.format_string("u%d@example.com", "id").alias("email"),
                         F.format_string("+86138%08d", "id").alias("phone"),
                         (F.pmod(F.xxhash64("id", F.lit(1)), 5) + 1).cast("int").alias("city_tier"))
    lake.write(profile, "customer_profile")
    identity = profile.select(F.lit("email").alias("id_type"), F.col("email").alias("id_value"), "customer_id") \
        .unionByName(profile.select(F.lit("phone").alias("id_type"), F.col("phone").alias("id_value"), "customer_id"))
    lake.write(identity.select("*", F.lit(False).alias("is_shared"), F.lit("bench").alias("updated_run")),
               "identity_map")
    consent = ids.crossJoin(spark.createDataFrame([("email",), ("sms",)], "channel string")).select(
        F.lit("crm").alias("source"), F.col("customer_id").alias("record_id"), "channel",
        # 85 % granted; 3 % withdrew during the simulated days (consent exits)
        (F.pmod(F.xxhash64("id", "channel", F.lit(2)), 100) < 85).alias("granted"),
        _before(START, 3, HISTORY_DAYS).alias("event_time"))
    withdrawals = ids.filter(F.pmod(F.xxhash64("id", F.lit(4)), 100) < 3).select(
        F.lit("crm").alias("source"), F.col("customer_id").alias("record_id"), F.lit("email").alias("channel"),
        F.lit(False).alias("granted"), (F.lit(datetime.combine(START, datetime.min.time())).cast("timestamp")
                                        + F.expr("INTERVAL 36 HOURS")).alias("event_time"))
    lake.write(consent.unionByName(withdrawals), "silver_consent")
    total = customers * events_per_customer
    span = HISTORY_DAYS + 10
    events = spark.range(total).select(
        F.format_string("E%d", "id").alias("event_id"), F.lit("events").alias("source"),
        F.format_string("E%d", "id").alias("record_id"), _pick(EVENT_TYPES, 8).alias("event_type"),
        F.lit("web").alias("channel"), _before(START + timedelta(days=10), 9, span).alias("event_time"),
        F.lit(None).cast("string").alias("session_id"), F.lit(None).cast("string").alias("product_id"),
        F.lit(None).cast("string").alias("category"), F.create_map().cast("map<string,string>").alias("attributes"),
        F.format_string("C%09d", F.pmod(F.xxhash64("id", F.lit(7)), customers)).alias("customer_id"))
    lake.write(events.drop("customer_id"), "silver_events")
    orders = spark.range(total // 10).select(
        F.format_string("O%d", "id").alias("order_id"), F.lit("orders").alias("source"),
        F.format_string("O%d", "id").alias("record_id"), _before(START + timedelta(days=10), 11, span).alias("order_time"),
        _pick(["online", "pos", "app"], 12).alias("channel"), F.lit(None).cast("string").alias("store_id"),
        F.lit("paid").alias("status"), (F.pmod(F.xxhash64("id", F.lit(13)), 500) + 20).cast("double").alias("total_amount"),
        F.lit(0.0).alias("discount_amount"), F.lit(None).cast("string").alias("coupon_code"),
        F.lit("alipay").alias("payment_method"), F.lit("CNY").alias("currency"),
        F.format_string("C%09d", F.pmod(F.xxhash64("id", F.lit(10)), customers)).alias("customer_id"))
    lake.write(orders.drop("customer_id"), "silver_orders")
    lake.write(orders.select("order_id", F.lit(1).alias("line_no"), F.lit("P1").alias("product_id"),
                             F.lit("shoes").alias("category"), F.lit(1).alias("quantity"),
                             F.col("total_amount").alias("unit_price"), F.col("total_amount").alias("line_amount")),
               "silver_order_lines")
    records: DataFrame = ids.select(F.lit("crm").alias("source"), F.col("customer_id").alias("record_id"),
                                    "customer_id")
    records = records.unionByName(events.select("source", "record_id", "customer_id")) \
        .unionByName(orders.select("source", "record_id", "customer_id"))
    lake.write(records, "customer_records")
    tags = ids.select("customer_id", F.lit(START).alias("as_of"), F.current_timestamp().alias("computed_at"),
                      F.lit("bench").alias("run_id"),
                      (F.pmod(F.xxhash64("id", F.lit(20)), 100) < 8).alias("lifecycle_new"),
                      _pick(["bronze", "silver", "gold"], 21).alias("value_tier"),
                      (F.pmod(F.xxhash64("id", F.lit(22)), 1000) / 1000.0).alias("churn_propensity"),
                      (F.pmod(F.xxhash64("id", F.lit(23)), 100) < 40).alias("email_opener_90d"))
    lake.write(tags, "tags_wide")


def journeys(channel: str) -> list[dict]:
    """Five journeys on one channel (the other channel's five differ in names, messages and splits)."""
    dest = {channel: {"name": f"{channel}_out", "format": "csv", "hashed": False}}
    send = lambda message: {"send": {"channel": channel, "message": f"{message}_{channel}"}}  # noqa: E731
    goal = [{"name": "order_7d", "kind": "order", "within_days": 7}]
    return [
        {"name": f"welcome_{channel}", "entry": {"where": {"tag": "lifecycle_new", "=": True}}, "destinations": dest,
         "goals": goal, "exit": {"goal": {"name": "second", "kind": "order", "within_days": 14}},
         "steps": [{"id": "hello", **send("welcome")}, {"id": "pause", "wait": {"days": 1}},
                   {"id": "opened", "branch": [{"when": {"event": "email_open", "within_days": 3}, "next": "tips"},
                                               {"else": "reminder"}]},
                   {"id": "tips", **send("tips"), "next": "done"}, {"id": "reminder", **send("reminder"), "next": "done"},
                   {"id": "done", "exit": "completed"}]},
        {"name": f"cart_{channel}", "entry": {"event": "add_to_cart", "lookback_days": 2}, "re_entry": {"after_days": 5},
         "destinations": dest, "goals": goal, "exit": {"goal": {"name": "bought", "kind": "order", "within_days": 3}},
         "steps": [{"id": "grace", "wait": {"until_event": "checkout", "timeout_days": 1}, "next": "recovered",
                    "on_timeout": "ab"},
                   {"id": "ab", "split": [{"arm": "a", "percent": 45, "next": "nudge_a"},
                                          {"arm": "b", "percent": 45, "next": "nudge_b"},
                                          {"arm": "holdout", "percent": 10, "next": "held_out"}]},
                   {"id": "nudge_a", **send("cart_a"), "next": "finished"},
                   {"id": "nudge_b", **send("cart_b"), "next": "finished"},
                   {"id": "recovered", "exit": "recovered"}, {"id": "held_out", "exit": "holdout"},
                   {"id": "finished", "exit": "completed"}]},
        {"name": f"browse_{channel}", "entry": {"event": "product_view", "lookback_days": 1},
         "re_entry": {"after_days": 14}, "destinations": dest, "goals": goal,
         "steps": [{"id": "wait_cart", "wait": {"until_event": "add_to_cart", "timeout_days": 2}, "next": "done",
                    "on_timeout": "nudge"}, {"id": "nudge", **send("browse")}, {"id": "done", "exit": "completed"}]},
        {"name": f"winback_{channel}", "entry": {"where": {"tag": "churn_propensity", ">=": 0.8}},
         "re_entry": {"after_days": 30}, "destinations": dest, "goals": goal,
         "exit": {"left_entry": True, "goal": {"name": "back", "kind": "order", "within_days": 30}},
         "steps": [{"id": "miss_you", **send("miss_you")}, {"id": "pause", "wait": {"days": 2}},
                   {"id": "offer", "split": [{"arm": "coupon", "percent": 50, "next": "coupon"},
                                             {"arm": "none", "percent": 50, "next": "done"}]},
                   {"id": "coupon", **send("coupon"), "next": "done"}, {"id": "done", "exit": "completed"}]},
        {"name": f"vip_{channel}", "entry": {"where": {"all": [{"tag": "value_tier", "=": "gold"},
                                                                {"profile": "city_tier", "<=": 2}]}},
         "destinations": dest, "goals": goal,
         "steps": [{"id": "engaged", "branch": [{"when": {"tag": "email_opener_90d", "=": True}, "next": "preview"},
                                                {"else": "later"}]},
                   {"id": "preview", **send("vip_preview"), "next": "done"},
                   {"id": "later", "wait": {"until": {"event": "page_view", "at_least": 1, "within_days": 1},
                                            "timeout_days": 3}, "next": "preview", "on_timeout": "done"},
                   {"id": "done", "exit": "completed"}]},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events-per-customer", type=int, default=8)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--shuffle-partitions", default="8")
    parser.add_argument("--keep", action="store_true", help="keep the lake folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cdp.jobs.journeys").setLevel(logging.INFO)

    from cdp.jobs import journeys as journeys_job
    from cdp.jobs import measure
    from cdp.jobs.run import context
    from cdp.lake import Lake
    from cdp.runtime.config import JobContext, Profile
    from cdp.runtime.session import build_session

    work = Path(tempfile.mkdtemp(prefix="cdp-bench-journeys-"))
    lake_root = str(work / "lake")
    base = context(lake_root)
    conf = work / "conf"
    shutil.copytree(base.conf_dir, conf)
    shutil.rmtree(conf / "journeys")
    shutil.rmtree(conf / "audiences")
    (conf / "audiences").mkdir()
    (conf / "journeys").mkdir()
    for spec in journeys("email") + journeys("sms"):
        (conf / "journeys" / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    (conf / "journeys" / "_policy.yaml").write_text(yaml.safe_dump({"frequency_caps": {
        "email": [{"sends": 2, "days": 7}], "sms": [{"sends": 1, "days": 7}]}}))
    profile = Profile(base.profile.name, lake_root, {**base.profile.spark, "spark.driver.memory": args.driver_memory,
                                                    "spark.sql.shuffle.partitions": args.shuffle_partitions,
                                                    "spark.ui.showConsoleProgress": "false"})
    started = time.perf_counter()
    spark = build_session(profile, "cdp-benchmark-journeys")
    print(f"session {time.perf_counter() - started:.1f} s", flush=True)
    try:
        lake = Lake(spark, lake_root)
        started = time.perf_counter()
        build_lake(spark, lake, args.customers, args.events_per_customer)
        print(f"synthetic lake ({args.customers} customers, {args.customers * args.events_per_customer} events) "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        for offset in range(args.days):
            day = START + timedelta(days=offset)
            ctx = JobContext(conf_dir=conf, profile=profile, lake_root=lake_root, run_id=f"bench-{day.isoformat()}")
            started = time.perf_counter()
            result = journeys_job.run(spark, ctx, lake=lake, as_of=day)
            seconds = time.perf_counter() - started
            totals: dict[str, int] = {}
            for counts in result.counts.values():
                for key, value in counts.items():
                    head = key.split(":")[0]
                    totals[head] = totals.get(head, 0) + value
            print(f"{day} journeys: {seconds:.1f} s; {len(result.published)} send batches; "
                  + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
                  + f"; active {sum(result.active.values())}", flush=True)
            started = time.perf_counter()
            measured = measure.run(spark, ctx, lake=lake, as_of=day)
            print(f"{day} measure: {time.perf_counter() - started:.1f} s; {measured.closed} closed, "
                  f"{measured.open} open results", flush=True)
    finally:
        spark.stop()
        if args.keep:
            print(f"lake kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
