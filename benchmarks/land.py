"""Throughput of generate -> land -> standardize, and how it grows with the number of customers.

    python benchmarks/land.py --customers 100000            # one size
    python benchmarks/land.py --customers 100000 1000000    # growth from 100k to 1M

Prints, per size: raw records, wall seconds and rows/s of each step. Works in a scratch folder
(``--workdir``, default a temp dir) that is removed afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers must use this venv


def measure(customers: int, workdir: Path, seed: int, memory: str) -> dict[str, float]:
    from cdp.jobs.generate import run as generate
    from cdp.jobs.land import run as land
    from cdp.jobs.standardize import run as standardize
    from cdp.lake import Lake
    from cdp.runtime.config import JobContext, Profile
    from cdp.runtime.session import build_session

    raw = workdir / f"raw-{customers}"
    lake_root = workdir / f"lake-{customers}"
    profile = Profile("bench", str(lake_root), {
        "spark.master": "local[*]", "spark.driver.memory": memory, "spark.sql.shuffle.partitions": "8",
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    ctx = JobContext(conf_dir=Path(__file__).resolve().parents[1] / "conf", profile=profile,
                     lake_root=str(lake_root), run_id=f"bench-{customers}")
    figures: dict[str, float] = {}
    start = time.perf_counter()
    generated = generate(None, ctx, out=str(raw), customers=customers, seed=seed)
    figures["generate_s"] = time.perf_counter() - start
    figures["raw_records"] = sum(generated.records.values())
    figures["raw_mb"] = sum(f.stat().st_size for f in raw.rglob("*") if f.is_file() and "_truth" not in f.parts) / 1e6
    spark = build_session(profile, "cdp-bench-land")
    lake = Lake(spark, str(lake_root))
    start = time.perf_counter()
    landed = land(spark, ctx, raw=str(raw), lake=lake)
    figures["land_s"] = time.perf_counter() - start
    figures["bronze_rows"] = landed.bronze_rows
    figures["quarantined"] = landed.quarantined_rows
    start = time.perf_counter()
    silver = standardize(spark, ctx, lake=lake)
    figures["standardize_s"] = time.perf_counter() - start
    figures["silver_rows"] = sum(silver.rows.values())
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", help="scratch folder (default: a new temp dir)")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--keep", action="store_true", help="keep raw files and lake")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cdp-bench-land-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for customers in args.customers:
            figures = measure(customers, workdir, args.seed, args.driver_memory)
            rows.append((customers, figures))
            print(f"customers={customers}: {figures}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'customers':>10} {'raw rec':>11} {'raw MB':>8} | {'generate s':>10} {'rec/s':>9} | {'land s':>8} "
          f"{'rec/s':>9} | {'std s':>8} {'silver rows':>11} {'rows/s':>9} | {'total s':>8}")
    for customers, f in rows:
        total = f["generate_s"] + f["land_s"] + f["standardize_s"]
        print(f"{customers:>10} {int(f['raw_records']):>11} {f['raw_mb']:>8.0f} | {f['generate_s']:>10.1f} "
              f"{f['raw_records'] / f['generate_s']:>9.0f} | {f['land_s']:>8.1f} {f['raw_records'] / f['land_s']:>9.0f} | "
              f"{f['standardize_s']:>8.1f} {int(f['silver_rows']):>11} {f['silver_rows'] / f['standardize_s']:>9.0f} | "
              f"{total:>8.1f}")
    if len(rows) > 1:
        (c0, f0), (c1, f1) = rows[0], rows[-1]
        for step in ("generate_s", "land_s", "standardize_s"):
            print(f"{step}: x{f1[step] / f0[step]:.1f} time for x{c1 / c0:.0f} customers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
