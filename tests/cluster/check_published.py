"""After the standalone-cluster run: every step of the last run succeeded and a published audience has members.

Usage: ``python tests/cluster/check_published.py LAKE [--written-by delta-spark|delta-rs]`` (exit 0 when
fine, 1 with the reason otherwise); ``--written-by`` also checks which engine committed the tables.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

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


def writers(lake_root: str, table: str) -> set[str]:
    """The engines that committed ``table``: ``delta-spark`` or ``delta-rs`` per commit's commitInfo."""
    found = set()
    for commit in sorted(Path(lake_root, table, "_delta_log").glob("*.json")):
        for line in commit.read_text(encoding="utf-8").splitlines():
            info = json.loads(line).get("commitInfo")
            if info is not None:
                engine = str(info.get("engineInfo", "")) + str(info.get("clientVersion", ""))
                found.add("delta-spark" if "Delta-Lake/" in engine else "delta-rs" if "delta-rs" in engine
                          else engine or "unknown")
    return found


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--written-by"):
        print(__doc__, file=sys.stderr)
        return 2
    spark = (SparkSession.builder.master("local[1]").appName("cdp-cluster-check")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        problems = check(Lake(spark, argv[0]))
    finally:
        spark.stop()
    if len(argv) == 3:
        for table in ("runs", "identity_map"):
            if writers(argv[0], table) != {argv[2]}:
                problems.append(f"{table} was committed by {sorted(writers(argv[0], table))}, not {argv[2]}")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
