"""``cdp validate [--conf DIR]``: parse and cross-check every config file, without starting Spark.

Exit 0 when the configuration is consistent; exit 2 listing every problem found, each naming its file
and key (:mod:`cdp.runtime.validation`). ``cdp run`` runs the same checks before its first step.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from cdp.runtime.config import JobContext
from cdp.runtime.validation import validate_conf

logger = logging.getLogger("cdp.jobs.validate")  # not __name__: under spark-submit this module is __main__


def run(spark: Any, ctx: JobContext) -> int:
    """Validate ``ctx.conf_dir``; log every problem; return the exit code (0 ok, 2 problems)."""
    started = time.perf_counter()
    report = validate_conf(ctx.conf_dir)
    seconds = time.perf_counter() - started
    if report.ok:
        logger.info("configuration %s is consistent: %d files checked in %.1f s", ctx.conf_dir,
                    len(report.checked), seconds)
        return 0
    for problem in report.problems:
        logger.error("%s", problem)
    logger.error("configuration %s: %d problem(s) in %d files checked", ctx.conf_dir, len(report.problems),
                 len(report.checked))
    return 2


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    return run(spark, ctx)


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("validate", argv, _run_from_args, description="check every config file (no Spark)",
                    needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
