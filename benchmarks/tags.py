"""Benchmark: features + every tag for N synthetic customers.

    python benchmarks/tags.py --customers 100000 [--lake /tmp/cdp-bench] [--no-train] [--floor]

Builds synthetic silver tables of the contract schemas (about 8 orders, 16 order lines, 40 events per
customer) in a scratch lake, then prints wall time, peak memory (driver JVM and Python, from /proc)
and the number of Spark jobs and stages for: reading every input once, `cdp features`, `cdp tag`.
`cdp train` runs first (untimed) so predictive tags are scored with real models and the k-means tags
with the registered clustering, as on a scheduled day; with --no-train only the clustering is trained
(`cdp train --model behaviour_kmeans`) and the predictive tags are null.

With --floor it then measures what the outputs alone cost, a floor under any implementation on this
backend: reading features_daily, tags_wide and tags_long once, and rewriting each with pyarrow inside
the tasks (the cheapest writer the lake has), as multiples of reading the inputs once.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

REPO = Path(__file__).resolve().parents[1]
AS_OF = date(2024, 7, 1)
CATS = ["apparel", "shoes", "beauty", "home", "electronics", "food", "baby", "sports"]


def synthesize(spark: SparkSession, lake, customers: int) -> None:
    """Silver tables with behaviour that carries signal (activity drives orders and visits)."""
    base = (spark.range(customers).withColumn("customer_id", F.format_string("c%08d", "id"))
            .withColumn("activity", F.pow(F.rand(1), 2)))
    lake.write(base.select(
        "customer_id", F.when(F.rand(2) < 0.6, "F").otherwise("M").alias("gender"),
        F.expr("date_add(DATE'1960-01-01', cast(rand(3) * 15000 as int))").alias("birth_date"),
        F.lit("上海").alias("city"), F.lit("上海").alias("province"),
        (F.floor(F.rand(4) * 5) + 1).cast("int").alias("city_tier"),
        F.element_at(F.array(*[F.lit(x) for x in ("standard", "silver", "gold", "diamond")]),
                     (F.floor(F.rand(5) * 4) + 1).cast("int")).alias("member_level"),
        F.expr("date_add(DATE'2018-01-01', cast(rand(6) * 2000 as int))").alias("member_since"),
    ), "customer_profile", mode="overwrite")
    lake.write(base.select(F.lit("crm").alias("source"), F.col("customer_id").alias("record_id"), "customer_id"),
               "customer_records", mode="overwrite")
    span = "cast(rand({s}) * 900 * 86400 as bigint)"
    orders = (base.withColumn("n", F.floor(F.col("activity") * 16).cast("int"))
              .withColumn("k", F.explode(F.sequence(F.lit(0), F.col("n"))))
              .where(F.col("k") < F.col("n"))
              .select(F.format_string("o%s-%s", "id", "k").alias("order_id"), F.lit("crm").alias("source"),
                      F.col("customer_id").alias("record_id"),
                      F.expr(f"timestamp_seconds(unix_seconds(TIMESTAMP'2022-01-01 00:00:00') + {span.format(s=7)})")
                      .alias("order_time"),
                      F.element_at(F.array(*[F.lit(c) for c in ("online", "pos", "mini_program", "app")]),
                                   (F.floor(F.rand(8) * 4) + 1).cast("int")).alias("channel"),
                      F.format_string("s%d", (F.rand(9) * 50).cast("int")).alias("store_id"),
                      F.when(F.rand(10) < 0.05, "cancelled").otherwise("paid").alias("status"),
                      F.round(F.rand(11) * 800 + 20, 2).alias("total_amount"),
                      F.when(F.rand(12) < 0.3, F.round(F.rand(13) * 80, 2)).otherwise(0.0).alias("discount_amount"),
                      F.when(F.rand(14) < 0.2, "SAVE10").alias("coupon_code"),
                      F.element_at(F.array(*[F.lit(p) for p in ("alipay", "wechat_pay", "unionpay", "card", "cash")]),
                                   (F.floor(F.rand(15) * 5) + 1).cast("int")).alias("payment_method"),
                      F.lit("CNY").alias("currency")))
    lake.write(orders, "silver_orders", mode="overwrite")
    orders = lake.read("silver_orders")
    cat = F.element_at(F.array(*[F.lit(c) for c in CATS]), (F.floor(F.rand(16) * len(CATS)) + 1).cast("int"))
    lines = (orders.select("order_id", "total_amount", F.explode(F.array(F.lit(1), F.lit(2))).alias("line_no"))
             .select("order_id", F.col("line_no").cast("int"), F.format_string("p%d", (F.rand(17) * 2000).cast("int"))
                     .alias("product_id"), cat.alias("category"), F.lit(1).alias("quantity"),
                     (F.col("total_amount") / 2).alias("unit_price"), (F.col("total_amount") / 2).alias("line_amount")))
    lake.write(lines, "silver_order_lines", mode="overwrite")
    lake.write(orders.where(F.rand(18) < 0.08).select(
        F.concat(F.lit("r"), "order_id").alias("return_id"), "order_id", F.lit("p1").alias("product_id"),
        F.lit(1).alias("quantity"), (F.col("total_amount") / 2).alias("refund_amount"),
        F.expr("order_time + INTERVAL 5 DAYS").alias("return_time")), "silver_returns", mode="overwrite")
    types = ["page_view", "product_view", "product_view", "search", "add_to_cart", "checkout", "app_open",
             "mini_program_open", "email_sent", "email_open", "email_click", "sms_sent", "wechat_follow",
             "ticket_opened"]
    channel = {"email_sent": "email", "email_open": "email", "email_click": "email", "sms_sent": "sms",
               "wechat_follow": "wechat", "ticket_opened": "service", "app_open": "app",
               "mini_program_open": "mini_program"}
    etype = F.element_at(F.array(*[F.lit(t) for t in types]), (F.floor(F.rand(19) * len(types)) + 1).cast("int"))
    events = (base.withColumn("n", F.floor(F.col("activity") * 80).cast("int"))
              .withColumn("k", F.explode(F.sequence(F.lit(0), F.col("n")))).where(F.col("k") < F.col("n"))
              .withColumn("event_type", etype))
    chan = F.coalesce(F.element_at(F.create_map(*[F.lit(x) for kv in channel.items() for x in kv]),
                                   F.col("event_type")), F.lit("web"))
    events = events.select(
        F.format_string("e%s-%s", "id", "k").alias("event_id"), F.lit("crm").alias("source"),
        F.col("customer_id").alias("record_id"), "event_type", chan.alias("channel"),
        F.expr(f"timestamp_seconds(unix_seconds(TIMESTAMP'2022-01-01 00:00:00') + {span.format(s=20)})")
        .alias("event_time"), F.format_string("s%s-%d", "id", (F.col("k") / 4).cast("int")).alias("session_id"),
        F.lit(None).cast("string").alias("product_id"), cat.alias("category"),
        F.when(F.col("event_type") == "ticket_opened", F.create_map(
            F.lit("is_complaint"), F.when(F.rand(21) < 0.3, "true").otherwise("false"),
            F.lit("resolution_hours"), (F.rand(22) * 72).cast("int").cast("string"),
            F.lit("satisfaction"), (F.floor(F.rand(23) * 5) + 1).cast("int").cast("string"))).alias("attributes"))
    lake.write(events, "silver_events", mode="overwrite")
    lake.write(base.select(F.lit("crm").alias("source"), F.col("customer_id").alias("record_id"),
                           F.lit("email").alias("channel"), (F.rand(24) < 0.7).alias("granted"),
                           F.lit("2021-06-01 00:00:00").cast("timestamp").alias("event_time")),
               "silver_consent", mode="overwrite")


def peak_memory_mb(spark: SparkSession) -> tuple[float, float]:
    """(driver JVM peak RSS, this Python process peak RSS) in MiB."""
    jvm = 0.0
    proc = getattr(spark.sparkContext._gateway, "proc", None)  # the JVM launched by this process
    if proc is not None and os.path.exists(f"/proc/{proc.pid}/status"):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                jvm = int(line.split()[1]) / 1024
    return jvm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(spark: SparkSession, label: str, fn):
    """Run ``fn`` as job group ``label``, print its wall time, jobs, stages and peak memory;
    returns (fn's result, wall seconds)."""
    sc = spark.sparkContext
    sc.setJobGroup(label, label)
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    tracker = sc.statusTracker()
    jobs = tracker.getJobIdsForGroup(label)
    stages = sum(len(tracker.getJobInfo(j).stageIds) for j in jobs if tracker.getJobInfo(j))
    jvm, py = peak_memory_mb(spark)
    print(f"{label:<22} {elapsed:8.1f} s   jobs {len(jobs):4d}   stages {stages:4d}   "
          f"peak JVM {jvm:7.0f} MiB   peak Python {py:6.0f} MiB", flush=True)
    return result, elapsed


def scan_tables(lake, tables) -> None:
    """Read every row and column of each table once, to a no-op sink."""
    for table in tables:
        lake.read(table).write.format("noop").mode("overwrite").save()


def identity_batches(batches):
    """mapInArrow function handing each Arrow batch on unchanged (a copy through the lake's writer)."""
    yield from batches


def measure_floor(spark: SparkSession, lake, read_once_s: float) -> None:
    """Read each output once, then rewrite it with pyarrow in the tasks to a scratch table (dropped)."""
    outputs = ("features_daily", "tags_wide", "tags_long")
    start = time.perf_counter()
    timed(spark, "outputs read once", lambda: scan_tables(lake, outputs))
    rewrite_s = 0.0
    for table in outputs:
        schema = lake.read(table).schema
        scan = lake.arrow_scan(table, schema.fieldNames())

        def rewrite(table: str = table, scan=scan, schema: T.StructType = schema) -> None:
            lake.write_arrow(scan.source, f"_floor_{table}", scan.feeding(identity_batches), schema, mode="overwrite")

        rewrite_s += timed(spark, f"rewrite {table}", rewrite)[1]
        shutil.rmtree(lake.uri(f"_floor_{table}"), ignore_errors=True)
    print(f"outputs rewritten once: {rewrite_s:.1f} s; with the inputs read once {read_once_s + rewrite_s:.1f} s, "
          f"{(read_once_s + rewrite_s) / read_once_s:.1f}x reading the inputs once "
          f"(floor measured in {time.perf_counter() - start:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--lake", default=None, help="scratch lake (default: a temp folder, removed)")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--no-train", action="store_true",
                        help="train only the k-means clustering, not the predictive models (their tags null)")
    parser.add_argument("--floor", action="store_true",
                        help="then read and rewrite the outputs once: the floor under any implementation")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from cdp.jobs import features as features_job
    from cdp.jobs import tag as tag_job
    from cdp.jobs import train as train_job
    from cdp.lake import Lake
    from cdp.runtime.config import JobContext, Profile, load_profile

    java_options = load_profile(REPO / "conf", "local").spark.get("spark.driver.extraJavaOptions", "")
    spark = (SparkSession.builder.master("local[2]").appName("bench-tags")
             .config("spark.driver.extraJavaOptions", java_options)  # the JVM options `cdp` runs with
             .config("spark.driver.memory", args.driver_memory).config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "8").config("spark.sql.adaptive.enabled", "true")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    root = args.lake or tempfile.mkdtemp(prefix="cdp-bench-")
    try:
        lake = Lake(spark, root)
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        ctx = JobContext(conf_dir=REPO / "conf", profile=Profile("bench", root), lake_root=root, run_id="bench")
        start = time.perf_counter()
        synthesize(spark, lake, args.customers)
        sizes = {t: lake.read(t).count() for t in ("silver_orders", "silver_order_lines", "silver_events")}
        print(f"customers {args.customers:,}; rows {sizes}; synthesis {time.perf_counter() - start:.0f} s")

        inputs = ("customer_profile", "customer_records", "silver_orders", "silver_order_lines", "silver_returns",
                  "silver_events", "silver_consent")
        read_once_s = timed(spark, "read inputs once", lambda: scan_tables(lake, inputs))[1]
        start = time.perf_counter()
        results = train_job.run(spark, ctx, AS_OF, models=["behaviour_kmeans"] if args.no_train else None)
        print("train (untimed in the total): " + ", ".join(
            f"{r['model']} v{r['version']} {r['metric']}={r['value']:.3f}" for r in results)
            + f" in {time.perf_counter() - start:.0f} s")
        timed(spark, "cdp features", lambda: features_job.run(spark, ctx, AS_OF))
        result, _ = timed(spark, "cdp tag (all tags)", lambda: tag_job.run(spark, ctx, AS_OF))
        print(f"tags {result['tags']}, customers {result['customers']:,}, models {result['model_versions']}, "
              f"k-means {[(v['k'], 'fitted in the run' if v['fitted_in_run'] else 'registered') for v in result['kmeans'].values()]}")
        if args.floor:
            measure_floor(spark, lake, read_once_s)
    finally:
        spark.stop()
        if args.lake is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
