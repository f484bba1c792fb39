"""Shared plumbing for job entry points: arguments, logging, context, session.

Each job module exposes ``run(spark, ctx, ...)`` (the testable unit) and ``main(argv=None)`` which
calls :func:`job_main` here. ``main`` works the same under ``cdp <job>`` and ``spark-submit
src/cdp/jobs/<job>.py``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cdp.runtime.config import ConfigError, JobContext, load_profile, resolve_conf_dir

logger = logging.getLogger("cdp")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def base_parser(job: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"cdp {job}", description=description)
    parser.add_argument("--conf", help="configuration directory (default: $CDP_CONF or the packaged conf/)")
    parser.add_argument("--profile", default="local", help="environment profile in conf/profiles (default: local)")
    parser.add_argument("--lake", help="lake root URI (default: the profile's lake)")
    parser.add_argument("--run-id", help="run id recorded with every write (default: a new one)")
    parser.add_argument("--remote", metavar="URL",
                        help="run through a Spark Connect server, e.g. sc://localhost:15002 "
                             "(default: $SPARK_REMOTE; unset: a classic session)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def setup_logging(verbose: bool = False) -> None:
    """Handlers live only in entry points; library code just uses logging.getLogger(__name__)."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if not any(getattr(h, "_cdp", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S"))
        handler._cdp = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("cdp").setLevel(level)
    for noisy in ("py4j", "great_expectations", "mlflow", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def make_context(args: argparse.Namespace) -> JobContext:
    conf_dir = resolve_conf_dir(args.conf)
    profile = load_profile(conf_dir, args.profile)
    lake_root = args.lake or profile.lake
    return JobContext(conf_dir=conf_dir, profile=profile, lake_root=lake_root,
                      run_id=args.run_id or new_run_id())


def job_main(
    job: str,
    argv: list[str] | None,
    run_from_args: Callable[[Any, JobContext, argparse.Namespace], Any],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    description: str | None = None,
    needs_spark: bool = True,
) -> int:
    """Parse arguments, set up logging and the session, run the job; return a process exit code."""
    parser = base_parser(job, description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        ctx = make_context(args)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("cdp %s: run %s, conf %s, profile %s, lake %s", job, ctx.run_id, ctx.conf_dir,
                ctx.profile.name, ctx.lake_root)
    spark = None
    if needs_spark:
        from cdp.runtime.session import build_session

        spark = build_session(ctx.profile, f"cdp-{job}", remote=args.remote)
    try:
        result = run_from_args(spark, ctx, args)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except JobFailed as exc:
        logger.error("%s", exc)
        return 1
    if isinstance(result, int):
        return result
    return 0


class JobFailed(RuntimeError):
    """A job ran but its outcome is a failure (a quality gate, a locked lake): exit non-zero."""
