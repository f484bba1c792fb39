"""After the standalone-cluster run: every step of the last run succeeded and a published audience has members.

Usage: ``python tests/cluster/check_published.py LAKE`` (exit 0 when fine, 1 with the reason otherwise).
"""
from __future__ import annotations

import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdp.lake import Lake

# Tables named audience_* that are bookkeeping, not published audiences (jobs/audiences.py).
NOT_AUDIENCES = {"audience_changes", "audience_stats", "audience_performance"}


def check(lake: Lake) -> list[str]:
    problems = []
    if not lake.exists("runs"):
        return [f"no runs table in {lake.root}"]
    runs = lake.read("runs")
    last = runs.filter(F.col("step") == "run").orderBy(F.col("started_at").desc()).first()
    if last is None or last["status"] != "ok":
        problems.append(f"last run is {last['status'] if last else 'missing'}: {last['error'] if last else ''}")
    steps = runs.filter((F.col("run_id") == last["run_id"]) & (F.col("step") != "run")).collect() if last else []
    not_ok = [(r["step"], r["status"], r["detail"]) for r in steps if r["status"] != "ok"]
    if not_ok:
        problems.append(f"steps not ok: {not_ok}")
    audiences = [t for t in lake.tables() if t.startswith("audience_") and t not in NOT_AUDIENCES]
    sizes = {t: lake.read(t).count() for t in audiences}
    print(f"published audiences: {sizes}")
    if not any(sizes.values()):
        problems.append(f"no published audience has members (tables: {sizes or 'none'})")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spark = (SparkSession.builder.master("local[1]").appName("cdp-cluster-check")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        problems = check(Lake(spark, argv[0]))
    finally:
        spark.stop()
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
