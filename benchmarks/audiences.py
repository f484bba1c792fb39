"""Wall time to evaluate 50 audiences over N synthetic customers (tags_wide + profile + events).

    python benchmarks/audiences.py --customers 1000000 --events 5000000

Builds a synthetic ``customer_profile``, ``tags_wide`` (40 tags: booleans, bands, scores) and
customer-level events in Spark, generates 50 audiences mixing every operator, nesting, behaviour
conditions, exclusions, caps and control groups, then times:

* behaviour flags (one aggregation over the events for every behaviour condition of all audiences)
  and the shared customer frame (cached);
* one pass counting the matches of all 50 audiences at once (what ``preview`` overlap does);
* 50 x ``select_members`` (cap, control group) + count, as ``cdp audiences`` evaluates them.
"""
from __future__ import annotations

import argparse
import random
import time
from datetime import datetime

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdp.audiences.language import (
    Audience,
    behaviour_conditions,
    behaviour_flags,
    compile_audience,
    customer_frame,
    select_members,
)

BANDS = ["low", "medium", "high"]
SEGMENTS = ["champions", "loyal", "at_risk", "hibernating", "new", "promising"]
EVENT_TYPES = ["page_view", "product_view", "add_to_cart", "checkout", "email_open", "mini_program_open"]
AS_OF = datetime(2026, 11, 1)


def synthetic(spark: SparkSession, customers: int, events: int):
    ids = spark.range(customers).select(F.col("id"), F.format_string("C%09d", "id").alias("customer_id"))
    profile = ids.select(
        "customer_id",
        (F.pmod(F.xxhash64("id", F.lit(1)), 5) + 1).cast("int").alias("city_tier"),
        F.when(F.pmod(F.xxhash64("id", F.lit(2)), 2) == 0, "F").otherwise("M").alias("gender"),
        F.format_string("u%d@example.com", "id").alias("email"),
        F.format_string("+86138%08d", "id").alias("phone"))
    tag_cols = []
    for i in range(20):
        tag_cols.append((F.pmod(F.xxhash64("id", F.lit(100 + i)), 100) < 10 + 3 * i).alias(f"flag_{i}"))
    for i in range(10):
        tag_cols.append(F.element_at(F.array(*[F.lit(b) for b in BANDS]),
                                     (F.pmod(F.xxhash64("id", F.lit(200 + i)), 3) + 1).cast("int")).alias(f"band_{i}"))
    for i in range(8):
        tag_cols.append((F.pmod(F.xxhash64("id", F.lit(300 + i)), 10000) / 10000.0).alias(f"score_{i}"))
    tag_cols.append(F.element_at(F.array(*[F.lit(s) for s in SEGMENTS]),
                                 (F.pmod(F.xxhash64("id", F.lit(400)), len(SEGMENTS)) + 1).cast("int")).alias("rfm_segment"))
    tag_cols.append((F.pmod(F.xxhash64("id", F.lit(401)), 5000)).cast("double").alias("clv_12m"))
    tags = ids.select("customer_id", *tag_cols)
    ev = spark.range(events).select(
        F.format_string("C%09d", F.pmod(F.xxhash64("id", F.lit(7)), customers)).alias("customer_id"),
        F.element_at(F.array(*[F.lit(e) for e in EVENT_TYPES]),
                     (F.pmod(F.xxhash64("id", F.lit(8)), len(EVENT_TYPES)) + 1).cast("int")).alias("event_type"),
        F.lit("web").alias("channel"),
        (F.lit(AS_OF).cast("timestamp") - F.make_interval(secs=F.pmod(F.xxhash64("id", F.lit(9)), 120 * 86400)))
        .alias("event_time"))
    purchases = spark.range(events // 5).select(
        F.format_string("C%09d", F.pmod(F.xxhash64("id", F.lit(10)), customers)).alias("customer_id"),
        F.format_string("O%d", "id").alias("order_id"),
        (F.lit(AS_OF).cast("timestamp") - F.make_interval(secs=F.pmod(F.xxhash64("id", F.lit(11)), 365 * 86400)))
        .alias("order_time"),
        F.element_at(F.array(*[F.lit(c) for c in ("shoes", "beauty", "home", "apparel")]),
                     (F.pmod(F.xxhash64("id", F.lit(12)), 4) + 1).cast("int")).alias("category"))
    return profile, tags, ev, purchases


def random_audiences(n: int, seed: int = 7) -> list[Audience]:
    rng = random.Random(seed)
    channels = ["email", "sms", "wechat", "ads"]

    def leaf() -> dict:
        kind = rng.random()
        if kind < 0.25:
            return {"tag": f"flag_{rng.randrange(20)}", "=": True}
        if kind < 0.4:
            return {"tag": f"band_{rng.randrange(10)}", rng.choice(["in", "not in"]): rng.sample(BANDS, 2)}
        if kind < 0.55:
            low = round(rng.random() * 0.5, 2)
            return {"tag": f"score_{rng.randrange(8)}", "between": [low, round(low + 0.4, 2)]}
        if kind < 0.65:
            return {"tag": "rfm_segment", rng.choice(["=", "!="]): rng.choice(SEGMENTS)}
        if kind < 0.72:
            return {"profile": "city_tier", "<=": rng.randint(1, 4)}
        if kind < 0.82:
            return {"event": rng.choice(EVENT_TYPES), "at_least": rng.randint(1, 3), "within_days": rng.choice([7, 30, 90])}
        if kind < 0.9:
            return {"did": "add_to_cart", "not_followed_by": "checkout", "within_days": rng.choice([3, 7, 14])}
        return {"bought": {"category": rng.choice(["shoes", "beauty", "home"]), "within_days": rng.choice([90, 180])}}

    def tree(depth: int) -> dict:
        if depth == 0 or rng.random() < 0.3:
            return leaf()
        op = rng.choice(["all", "any", "not"])
        if op == "not":
            return {"not": tree(depth - 1)}
        return {op: [tree(depth - 1) for _ in range(rng.randint(2, 4))]}

    audiences = []
    for i in range(n):
        spec = {"name": f"bench_{i:02d}", "channel": rng.choice(channels), "where": tree(3),
                "exclude": [leaf()] if rng.random() < 0.5 else []}
        if rng.random() < 0.3:
            spec["cap"] = {"size": 50_000, "order_by": [{"tag": "clv_12m", "desc": True}]}
        if rng.random() < 0.6:
            spec["control_group"] = {"percent": rng.choice([5, 10, 20])}
        audiences.append(Audience.from_dict(spec))
    return audiences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--audiences", type=int, default=50)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    spark = (SparkSession.builder.master(args.master).appName("bench-audiences")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "8")
             .config("spark.sql.session.timeZone", "UTC").config("spark.driver.memory", "4g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        profile, tags, events, purchases = synthetic(spark, args.customers, args.events)
        tags = tags.persist(StorageLevel.MEMORY_AND_DISK)
        events = events.persist(StorageLevel.MEMORY_AND_DISK)
        purchases = purchases.persist(StorageLevel.MEMORY_AND_DISK)
        start = time.perf_counter()
        print(f"synthetic data: {tags.count():,} customers x {len(tags.columns) - 1} tags, "
              f"{events.count():,} events, {purchases.count():,} order lines "
              f"({time.perf_counter() - start:.1f} s to build)")
        audiences = random_audiences(args.audiences)
        conditions = behaviour_conditions(audiences)

        t0 = time.perf_counter()
        flags = behaviour_flags(conditions, as_of=AS_OF, events=events, purchases=purchases)
        customers = customer_frame(profile, tags, flags).persist(StorageLevel.MEMORY_AND_DISK)
        customers.count()
        t_frame = time.perf_counter() - t0
        print(f"behaviour flags ({len(conditions)} conditions) + customer frame: {t_frame:.1f} s")

        t0 = time.perf_counter()
        row = customers.agg(*[F.count(F.when(compile_audience(a), 1)).alias(a.name) for a in audiences]).first()
        t_one_pass = time.perf_counter() - t0
        print(f"{len(audiences)} audiences, matches counted in one pass: {t_one_pass:.1f} s "
              f"(sizes {min(row)}..{max(row)})")

        t0 = time.perf_counter()
        total = 0
        for audience in audiences:
            total += select_members(customers, audience).count()
        t_each = time.perf_counter() - t0
        print(f"{len(audiences)} audiences one by one (cap, control group, count): {t_each:.1f} s, "
              f"{total:,} members in all")
        print(f"TOTAL wall time to evaluate {len(audiences)} audiences over {args.customers:,} customers: "
              f"{t_frame + t_each:.1f} s (frame + one-by-one)")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
