"""``cdp generate``: write realistic raw exports of every source system (:mod:`cdp.synthetic`)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from cdp.runtime.config import JobContext
from cdp.synthetic import DEFAULT_CHUNK, DEFAULT_END, GenerateParams, GenerateResult, generate

logger = logging.getLogger("cdp.jobs.generate")

def run(spark: Any, ctx: JobContext, *, out: str, customers: int, seed: int = 42, end: str = DEFAULT_END,
        chunk_size: int = DEFAULT_CHUNK, workers: int = 2) -> GenerateResult:
    """Generate raw exports (no Spark needed; ``spark`` is accepted for the common job signature)."""
    if customers <= 0:
        raise ValueError("--customers must be positive")
    params = GenerateParams(out=Path(out), customers=customers, seed=seed, end=date.fromisoformat(end),
                            chunk_size=chunk_size, workers=max(1, workers))
    return generate(params)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the raw exports (must be empty)")
    parser.add_argument("--customers", type=int, required=True, help="number of persons to simulate")
    parser.add_argument("--seed", type=int, default=42, help="random seed (output is a function of it)")
    parser.add_argument("--end", default=DEFAULT_END, help="last day of the two-year history (YYYY-MM-DD)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="persons per part file")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    try:
        result = run(spark, ctx, out=args.out, customers=args.customers, seed=args.seed, end=args.end,
                     chunk_size=args.chunk_size, workers=args.workers)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("records per source: %s", json.dumps(result.records, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("generate", argv, _run_from_args, _add_arguments,
                    description="write realistic raw exports of every source system", needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
