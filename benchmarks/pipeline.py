"""Whole-pipeline benchmark: per-step wall time, rows and peak memory at N generated customers.

    python benchmarks/pipeline.py --customers 20000 [--lake DIR] [--driver-memory 8g] [--keep]
    python benchmarks/pipeline.py --customers 1000000 --lake DIR --from stitch   # resume on a kept lake

``--from STEP`` continues on an existing lake (for example one kept by ``benchmarks/land.py --keep``,
whose ``lake-N`` folder holds bronze and silver) without generating: a 1M-customer run can be measured
in parts. ``--customers`` then only labels the output. ``--read-once`` first times one full scan of
the tables ``cdp features`` reads: the yardstick the features and tag steps are measured against.

Runs ``cdp run`` in this process (generate -> ... -> export) on a fresh lake and prints, per step:
wall time, rows in / out, peak RSS of the Python processes (this driver, the generator's workers and
Spark's Python workers) and of the Spark JVM. Memory is sampled every 0.2 s from /proc through psutil (the JVM is this process's
``java`` child), so no Spark internals are touched.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import psutil

from cdp.jobs import run as pipeline
from cdp.jobs.entry import setup_logging
from cdp.runtime.config import JobContext, Profile
from cdp.runtime.session import build_session
from cdp.synthetic import DEFAULT_END

MB = 1024 * 1024


class MemorySampler:
    """Peak RSS of the driver (Python) and of its JVM child, per step."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.me = psutil.Process()
        self.peaks: dict[str, tuple[int, int]] = {}
        self._step: str | None = None
        self._python = self._jvm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _jvm_rss(self) -> int:
        total = 0
        for child in self.me.children(recursive=True):
            try:
                if child.name().startswith("java"):
                    total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _python_rss(self) -> int:
        total = self.me.memory_info().rss
        for child in self.me.children(recursive=True):  # generator worker processes
            try:
                if not child.name().startswith("java"):
                    total += child.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        self._python = max(self._python, self._python_rss())
        self._jvm = max(self._jvm, self._jvm_rss())

    def __call__(self, event: str, step: str) -> None:
        self.sample()
        if event == "start":
            self._step, self._python, self._jvm = step, 0, 0
            self.sample()
        else:
            self.peaks[step] = (self._python, self._jvm)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def read_feature_inputs_once(spark, lake: str) -> float:
    """Seconds for one full scan of every table `cdp features` reads (its projected columns)."""
    from dataclasses import fields

    from cdp.jobs.features import read_inputs
    from cdp.lake import Lake

    start = time.perf_counter()
    inputs = read_inputs(spark, Lake(spark, lake))
    for table in (getattr(inputs, f.name) for f in fields(inputs)):
        table.write.format("noop").mode("overwrite").save()  # full scan, no output
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lake", help="lake folder (default: a temp folder, removed unless --keep)")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--shuffle-partitions", default="8")
    parser.add_argument("--from", dest="from_step", help="first step, on an existing --lake (default: generate)")
    parser.add_argument("--to", dest="to_step", help="last step (default: export)")
    parser.add_argument("--as-of", dest="as_of", help="snapshot date (default: the day after the generated history)")
    parser.add_argument("--keep", action="store_true", help="keep the lake and raw files")
    parser.add_argument("--force-unlock", action="store_true",
                        help="break the lock a killed benchmark run left in --lake (never a live run's)")
    parser.add_argument("--read-once", action="store_true",
                        help="time a full scan of the feature inputs (the #4 yardstick for features + tag): "
                             "first on an existing lake, after the run on a generated one")
    parser.add_argument("--report", action="store_true",
                        help="render the HTML run report at the end (timed apart; the lake is then kept)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.from_step and not args.lake:
        parser.error("--from continues on an existing lake: give --lake")
    # Python workers must be this interpreter (with pyarrow, pandas and the package), not the PATH's python3
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    setup_logging(args.verbose)
    logging.getLogger("jobs").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("cdp.jobs.run").setLevel(logging.INFO)

    work = Path(args.lake).parent if args.lake else Path(tempfile.mkdtemp(prefix="cdp-bench-"))
    lake = args.lake or str(work / "lake")
    ctx = pipeline.context(lake)
    profile = Profile(ctx.profile.name, lake, {**ctx.profile.spark, "spark.driver.memory": args.driver_memory,
                                               "spark.sql.shuffle.partitions": args.shuffle_partitions,
                                               "spark.ui.showConsoleProgress": "false"})
    ctx = JobContext(conf_dir=ctx.conf_dir, profile=profile, lake_root=lake, run_id=ctx.run_id)
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    spark = build_session(profile, "cdp-benchmark")
    session_seconds = time.perf_counter() - started
    try:
        generate = args.from_step in (None, "generate")
        if args.read_once and not generate:
            print(f"read the feature inputs once: {read_feature_inputs_once(spark, lake):.1f} s", flush=True)
        as_of = args.as_of or (date.fromisoformat(DEFAULT_END) + timedelta(days=1)).isoformat()
        summary = pipeline.run(spark, ctx, customers=args.customers if generate else None,
                               seed=args.seed if generate else None, raw=str(work / "raw"), as_of=as_of,
                               from_step=args.from_step, to_step=args.to_step, report=False, observer=sampler,
                               force_unlock=args.force_unlock)
        if args.read_once and generate and summary.status == "ok":  # the inputs exist only now
            print(f"read the feature inputs once: {read_feature_inputs_once(spark, lake):.1f} s", flush=True)
        report_seconds = None
        if args.report:
            report_started = time.perf_counter()
            summary.report = pipeline._render_report(spark, ctx, None)
            report_seconds = time.perf_counter() - report_started
    finally:
        sampler.stop()
        spark.stop()
    total = time.perf_counter() - started
    peak_python = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\npipeline at {args.customers:,} customers: {summary.status}, {total:.1f} s wall "
          f"(session start {session_seconds:.1f} s), {os.cpu_count()} cores, driver memory {args.driver_memory}")
    print(f"{'step':<12} {'status':<8} {'seconds':>8} {'rows in':>12} {'rows out':>12} {'python MB':>10} {'jvm MB':>8}")
    for record in summary.steps:
        py, jvm = sampler.peaks.get(record.step, (0, 0))
        print(f"{record.step:<12} {record.status:<8} {record.seconds:>8.1f} {pipeline._fmt(record.rows_in):>12} "
              f"{pipeline._fmt(record.rows_out):>12} {py / MB:>10.0f} {jvm / MB:>8.0f}")
    print(f"peak driver Python RSS over the run: {peak_python:.0f} MB")
    if report_seconds is not None:
        print(f"run report: {summary.report} ({report_seconds:.1f} s)")
    if summary.status != "ok":
        print(f"failed step: {summary.failed_step}: {next(r.error for r in summary.steps if r.error)}",
              file=sys.stderr)
    if not args.keep and not args.lake and not args.report:
        shutil.rmtree(work, ignore_errors=True)
    elif args.keep:
        print(f"kept {work}")
    return 0 if summary.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
