"""Shared plumbing for job entry points: arguments, logging, context, session.

Each job module exposes ``run(spark, ctx, ...)`` (the testable unit) and ``main(argv=None)`` which
calls :func:`job_main` here. ``main`` works the same under ``cdp <job>`` and ``spark-submit
src/cdp/jobs/<job>.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from cdp.lake import LakeError
from cdp.runtime.config import ConfigError, JobContext, load_profile, resolve_conf_dir
from cdp.runtime.errors import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, JobFailed

if TYPE_CHECKING:
    from cdp.runtime.lock import LakeLock

__all__ = ["LAKE_WRITERS", "JobFailed", "JsonFormatter", "as_of_job_main", "base_parser", "job_main", "lake_lock", "make_context",
           "new_run_id", "parse_date", "setup_logging"]

logger = logging.getLogger("cdp")

# Commands that write to the lake: job_main holds the lake's lock around them (`cdp run` takes it once
# for all its steps, which it calls directly, not through job_main).
LAKE_WRITERS = frozenset({"land", "standardize", "stitch", "features", "train", "tag", "audiences", "journeys",
                          "export", "forget", "measure"})


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
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as text (default) or one JSON object per line, for schedulers and "
                             "log shippers")
    if job in LAKE_WRITERS:
        parser.add_argument("--force-unlock", action="store_true",
                            help="break a lock left by a dead process on this host (never a live one); every "
                                 "command does so anyway, the flag is kept for scripts")
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: bool = False, log_format: str = "text") -> None:
    """Handlers live only in entry points; library code just uses logging.getLogger(__name__)."""
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    formatter = (JsonFormatter() if log_format == "json"
                 else logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S"))
    ours = [h for h in root.handlers if getattr(h, "_cdp", False)]
    if not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler._cdp = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        handler.setFormatter(formatter)
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


def lake_lock(ctx: JobContext, job: str) -> LakeLock:
    """The lake's lock for ``job``, with the object-store settings of the profile: it is taken before
    the Spark session starts, so the session's settings are not there to read yet."""
    from cdp.lake.storage import ObjectStore
    from cdp.runtime.lock import LakeLock

    return LakeLock(ctx.lake_root, ctx.run_id, command=job, store=ObjectStore.from_settings(ctx.profile.spark))


def job_main(
    job: str,
    argv: list[str] | None,
    run_from_args: Callable[[Any, JobContext, argparse.Namespace], Any],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    description: str | None = None,
    needs_spark: bool | Callable[[argparse.Namespace], bool] = True,
    while_spark_starts: Callable[[JobContext], Any] | None = None,
) -> int:
    """Parse arguments, set up logging, take the lake's lock (commands in :data:`LAKE_WRITERS`), start
    the session, run the job; return a process exit code (README "Exit codes"): 0 ok, 1 the job failed,
    2 bad configuration or usage, 75 the lake is locked (retry later).

    ``while_spark_starts(ctx)`` runs in a thread while the JVM starts (seconds the driver otherwise
    waits): work the job needs anyway and caches, such as ``cdp run``'s validation of the config files.
    Its failures are left to the job, which does the same work again and reports them.
    ``needs_spark``: whether the job takes a session, or a function of the parsed arguments saying so
    (``cdp generate`` needs one only to read a lake's exports).
    """
    parser = base_parser(job, description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)  # usage errors exit 2 (argparse)
    setup_logging(args.verbose, args.log_format)
    from cdp.runtime.lock import LakeLocked

    try:
        ctx = make_context(args)
        logger.info("cdp %s: run %s, conf %s, profile %s, lake %s", job, ctx.run_id, ctx.conf_dir,
                    ctx.profile.name, ctx.lake_root)
        lock = None
        if job in LAKE_WRITERS:
            # a lock whose process died on this host is broken without a person (recovery after a crash,
            # as `cdp run` does); a live process's lock, or another host's, is never broken
            lock = lake_lock(ctx, job).acquire(force=True)
        try:
            spark = None
            if needs_spark(args) if callable(needs_spark) else needs_spark:
                from cdp.runtime.session import build_session

                if while_spark_starts is not None:
                    _start_beside(while_spark_starts, ctx)
                spark = build_session(ctx.profile, f"cdp-{job}", remote=args.remote)
            result = _run_as_step(spark, ctx, job, args, run_from_args)
        finally:
            if lock is not None:
                lock.release()
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except LakeLocked as exc:
        logger.error("%s", exc)
        return EXIT_LOCKED
    except JobFailed as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except LakeError as exc:  # disk full, an unreadable Delta log, a missing table: one line naming it
        logger.error("cdp %s failed: %s", job, exc)
        logger.debug("cdp %s failed here:", job, exc_info=True)
        return EXIT_FAILED
    if isinstance(result, int):
        return result
    return EXIT_OK


def parse_date(text: str) -> date:
    """argparse type for ``--as-of``-like options: a date YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from exc


def as_of_job_main(job: str, argv: list[str] | None, run: Callable[..., Any], *, as_of_help: str,
                   description: str) -> int:
    """:func:`job_main` for a job whose one option is ``--as-of YYYY-MM-DD``: ``run(spark, ctx, as_of=...)``."""
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--as-of", type=parse_date, default=None, help=as_of_help)

    def run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
        run(spark, ctx, as_of=args.as_of)
        return 0

    return job_main(job, argv, run_from_args, add, description=description)


def _start_beside(work: Callable[[JobContext], Any], ctx: JobContext) -> None:
    """Run ``work(ctx)`` in a daemon thread; an exception is logged at debug level only (the job redoes it)."""
    import threading

    def guarded() -> None:
        try:
            work(ctx)
        except Exception:  # noqa: BLE001 - the job does the same work and reports the failure itself
            logger.debug("%s while the session started failed; the job does it again", work.__name__, exc_info=True)

    threading.Thread(target=guarded, name=f"cdp-{work.__name__}", daemon=True).start()


def _run_as_step(spark: Any, ctx: JobContext, job: str, args: argparse.Namespace,
                 run_from_args: Callable[[Any, JobContext, argparse.Namespace], Any]) -> Any:
    """A command that writes lake tables, run on its own, is one step of the lake's step commits
    (cdp.lake): readers see its tables only once it commits them; a failure drops its writes.
    ``cdp run`` commits step by step itself."""
    if spark is None or job not in LAKE_WRITERS:
        return run_from_args(spark, ctx, args)
    from cdp.lake import Lake, step_scope

    lake = Lake(spark, ctx.lake_root)
    lake.ensure_commit_log(ctx.run_id)
    try:
        with step_scope(job):
            result = run_from_args(spark, ctx, args)
    except BaseException:
        lake.abandon()
        raise
    if isinstance(result, int) and result != 0:
        lake.abandon()
        return result
    with step_scope(job):
        versions = lake.commit(job, ctx.run_id)
    if versions:
        logger.info("cdp %s: committed %s", job, ", ".join(f"{n}@v{v}" for n, v in sorted(versions.items())))
    return result
