"""``cdp run``: the whole pipeline in dependency order, under a lake lock, with a run record.

Steps: generate (only when asked) -> land -> standardize -> stitch -> features -> train (when due)
-> tag -> audiences (quality gates run inside) -> journeys -> export -> measure. The steps are the registry of
:mod:`cdp.jobs.steps`: each names its job's function and a typed parameters object the runner builds
from its own options, so the runner never copies a job's logic.

While it runs: one log line per step with what it does, rows in and out, elapsed time and the
table versions it wrote. At the end: a summary, one row per step in the ``runs`` table, and the HTML
run report (``cdp.jobs.report``).

A step commits as a whole or not at all: when its job returns, the runner appends one record to the
lake's ``step_commits`` (the versions the step wrote), last; until then no reader sees the step's
writes (``cdp.lake``: reads are at the last committed versions). A failed step stops the run and
commits nothing, so readers keep the previous step's consistent tables; the run is recorded as failed
and the process exits non-zero. A run killed at any instruction leaves the same picture, plus its
lock: the next plain ``cdp run`` breaks the lock of a dead process on this host, restores each table
it writes to its committed version first, and so redoes the dead step from the last committed state.

Works the same under ``cdp run`` and ``spark-submit src/cdp/jobs/run.py`` (master from the command line).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import Any

from cdp.jobs.entry import JobFailed
from cdp.jobs.steps import DEFAULT_CUSTOMERS, STEP_NAMES, STEPS, RunOptions, Step
from cdp.lake import COMMITS_TABLE, LakeError, step_scope
from cdp.lake.inventory import table_rows, table_versions
from cdp.lake.paths import delta_rs_uri, is_local
from cdp.runtime.config import ConfigError, JobContext

logger = logging.getLogger("cdp.jobs.run")  # not __name__: under spark-submit this module is __main__

RUNS_TABLE = "runs"


class StepUnavailable(RuntimeError):
    """A step's job module is not installed, or lacks the function the registry names."""


_BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}


# -- selection (pure) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    name: str
    explicit: bool  # named with --only: a missing module fails the run instead of being skipped


def _check_names(names: Sequence[str], flag: str) -> None:
    unknown = [name for name in names if name not in _BY_NAME]
    if unknown:
        raise ConfigError(f"{flag}: unknown step(s) {unknown}; steps are {list(STEP_NAMES)}")


def select_steps(*, from_step: str | None = None, to_step: str | None = None,
                 only: Sequence[str] | None = None, generate: bool = False) -> list[Planned]:
    """The steps to run, in dependency order.

    Args:
        from_step, to_step: an inclusive range of the pipeline (default: all of it).
        only: exactly these steps (any order given; run in dependency order). Not with a range.
        generate: include ``generate`` (it writes new raw data, so it only runs when asked).

    Raises:
        ConfigError: unknown step names, ``--only`` with ``--from/--to``, or an empty range.
    """
    if only:
        if from_step or to_step:
            raise ConfigError("--only cannot be combined with --from/--to")
        _check_names(only, "--only")
        wanted = set(only)
        return [Planned(name, explicit=True) for name in STEP_NAMES if name in wanted]
    for flag, name in (("--from", from_step), ("--to", to_step)):
        if name is not None:
            _check_names([name], flag)
    start = STEP_NAMES.index(from_step) if from_step else 0
    stop = STEP_NAMES.index(to_step) if to_step else len(STEP_NAMES) - 1
    if start > stop:
        raise ConfigError(f"--from {from_step} comes after --to {to_step}; order is {list(STEP_NAMES)}")
    chosen = [name for name in STEP_NAMES[start:stop + 1] if name != "generate" or generate]
    if not chosen:
        raise ConfigError(f"nothing to run between --from {from_step} and --to {to_step} "
                          "(generate runs only with --generate/--customers/--seed)")
    return [Planned(name, explicit=False) for name in chosen]


# -- calling a job ------------------------------------------------------------------------------

def job_module(step: Step) -> ModuleType:
    """Import the step's job module; :class:`StepUnavailable` when it is not installed (yet)."""
    try:
        return importlib.import_module(step.module)
    except ModuleNotFoundError as exc:
        if exc.name and (step.module == exc.name or step.module.startswith(exc.name + ".")):
            raise StepUnavailable(f"step {step.name}: module {step.module} is not installed") from exc
        raise


def job_callable(step: Step, module: ModuleType, name: str) -> Callable[..., Any]:
    """The function ``name`` of the step's module, which the registry names (``Step.function``, ``Step.due``)."""
    function = getattr(module, name, None)
    if not callable(function):
        raise StepUnavailable(f"step {step.name}: {step.module} has no function {name}()")
    return function


# -- lake bookkeeping ---------------------------------------------------------------------------

def rows_written(lake: Any, name: str, since: int | None) -> int:
    """Rows in the data files the commits after version ``since`` added (all rows for a new table).

    Appends count what they appended, overwrites what they wrote, merges the rows of the files they
    rewrote. From the Delta log (file stats / operation metrics); counted with Spark only as a fallback.
    """
    if since is None:
        return table_rows(lake, name)
    try:
        if lake.backend == "embedded":
            import pyarrow as pa
            from deltalake import DeltaTable

            uri = delta_rs_uri(lake.uri(name))
            options = getattr(lake, "storage_options", None) or None  # an object store's endpoint and keys
            before = set(pa.table(DeltaTable(uri, version=since, storage_options=options)
                                  .get_add_actions(flatten=True)).column("path").to_pylist())
            actions = pa.table(DeltaTable(uri, version=lake.version(name), storage_options=options)
                               .get_add_actions(flatten=True)).to_pydict()
            counts = [n for path, n in zip(actions["path"], actions["num_records"], strict=True) if path not in before]
            if all(n is not None for n in counts):
                return int(sum(counts))
        else:
            total = 0
            for entry in lake.history(name):
                if entry["version"] <= since:
                    break
                metrics = entry.get("operationMetrics") or {}
                total += int(metrics.get("numOutputRows", 0) or 0)
            return total
    except Exception:  # noqa: BLE001 - stats missing or unreadable: count instead
        logger.debug("no file stats for %s; counting rows", name)
    return table_rows(lake, name)


def _matching(patterns: Sequence[str], tables: Sequence[str]) -> list[str]:
    def hit(table: str, pattern: str) -> bool:
        return table.startswith(pattern[:-1]) if pattern.endswith("*") else table == pattern

    excluded = [p[1:] for p in patterns if p.startswith("!")]
    included = [p for p in patterns if not p.startswith("!")]
    return [t for t in tables if any(hit(t, p) for p in included) and not any(hit(t, p) for p in excluded)]


# -- the run ------------------------------------------------------------------------------------

@dataclass
class StepRecord:
    """One step of one run, as it goes to the ``runs`` table."""

    run_id: str
    step: str
    status: str  # ok | failed | skipped | not_run
    detail: str
    rows_in: int | None
    rows_out: int | None
    started_at: datetime
    seconds: float
    versions: dict[str, int]
    error: str | None = None


@dataclass
class RunSummary:
    run_id: str
    lake: str
    status: str  # ok | failed
    steps: list[StepRecord]
    started_at: datetime
    seconds: float
    report: str | None = None

    @property
    def failed_step(self) -> str | None:
        return next((s.step for s in self.steps if s.status == "failed"), None)


def _runs_schema():
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField("run_id", T.StringType()),
        T.StructField("step", T.StringType()),
        T.StructField("status", T.StringType()),
        T.StructField("detail", T.StringType()),
        T.StructField("rows_in", T.LongType()),
        T.StructField("rows_out", T.LongType()),
        T.StructField("started_at", T.TimestampType()),
        T.StructField("seconds", T.DoubleType()),
        T.StructField("versions", T.MapType(T.StringType(), T.LongType())),
        T.StructField("error", T.StringType()),
    ])


def _record_rows(spark: Any, lake: Any, records: Sequence[StepRecord]) -> None:
    rows = [(r.run_id, r.step, r.status, r.detail, r.rows_in, r.rows_out, r.started_at, float(r.seconds),
             dict(r.versions), r.error) for r in records]
    try:
        lake.write(spark.createDataFrame(rows, _runs_schema()), RUNS_TABLE, "append",
                   metadata={"run_id": records[0].run_id, "job": "run"})
    except LakeError as exc:  # a full disk fails the record too: say so in one line, the run still ends
        logger.error("run %s: step %s could not be recorded: %s", records[0].run_id, records[0].step, exc)
        logger.debug("recording failed here:", exc_info=True)


def _fmt(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _execute_step(spark: Any, ctx: JobContext, lake: Any, step: Step, planned: Planned, options: RunOptions,
                  position: str) -> StepRecord:
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    record = StepRecord(ctx.run_id, step.name, "ok", step.does, None, None, started_at, 0.0, {})
    try:
        module = job_module(step)
        function = job_callable(step, module, step.function)
        due = job_callable(step, module, step.due) if step.due else None
    except StepUnavailable as exc:
        record.status = "failed" if planned.explicit else "skipped"
        record.detail = f"{exc}" + ("" if planned.explicit else " (skipped: not asked for explicitly)")
        record.error = str(exc) if planned.explicit else None
        log = logger.error if planned.explicit else logger.warning
        log("step %s %s: %s", position, step.name, record.detail)
        return record
    if due is not None and not (options.train or planned.explicit):
        is_due, why = due(ctx)
        if not is_due:
            record.status, record.detail = "skipped", f"not due: {why}"
            logger.info("step %s %s: skipped, not due: %s", position, step.name, why)
            return record
        record.detail = f"{step.does} (due: {why})"
    try:
        before = table_versions(lake)
        inputs = _matching(step.reads, list(before))
        record.rows_in = sum(table_rows(lake, name) for name in inputs) if inputs else None
    except LakeError as exc:  # an unreadable table: the step cannot start
        return _failed(record, position, exc, clock)
    logger.info("step %s %s: %s; reads %s (%s rows)", position, step.name, record.detail,
                ", ".join(inputs) or "no tables", _fmt(record.rows_in))
    result = None
    try:
        params = step.params(options)
        with step_scope(step.name):
            result = function(spark, ctx, **params.keywords())
    except (JobFailed, ConfigError, LakeError) as exc:
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        logger.error("step %s %s failed: %s", position, step.name, exc)
        logger.debug("step %s failed here:", step.name, exc_info=True)
    except Exception as exc:  # noqa: BLE001 - any crash marks the run failed; the trace goes to the runs row
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        logger.error("step %s %s crashed: %s: %s (the traceback is in the runs table; --verbose logs it)",
                     position, step.name, type(exc).__name__, _first_line(exc))
        logger.debug("step %s crashed here:", step.name, exc_info=True)
    try:
        after = table_versions(lake)
    except LakeError as exc:
        logger.debug("table versions after %s unreadable: %s", step.name, exc)
        after = before
    # _staging_* tables are write-audit-publish scratch space, not results
    record.versions = {name: v for name, v in after.items()
                       if before.get(name) != v and name not in (RUNS_TABLE, COMMITS_TABLE) and not name.startswith("_")}
    written_rows = [rows_written(lake, name, before.get(name)) for name in record.versions]
    # a job that returns nothing (a stand-in) says nothing about its rows
    if written_rows:
        record.rows_out = sum(written_rows)
    elif step.rows_out is not None and result is not None:
        record.rows_out = step.rows_out(result)
    if step.rows_in is not None and result is not None:
        record.rows_in = step.rows_in(result)
    record.seconds = time.perf_counter() - clock
    if record.status == "ok" and isinstance(result, int) and not isinstance(result, bool) and result != 0:
        record.status, record.error = "failed", f"{step.module}.run returned exit code {result}"
    if record.status == "ok":
        # the step's tables become current only now, with this record written last
        with step_scope(step.name):
            lake.commit(step.name, ctx.run_id)
    else:
        lake.abandon()
    wrote = ", ".join(f"{name}@v{v}" for name, v in sorted(record.versions.items())) or "no tables"
    logger.info("step %s %s %s in %.1f s: rows in %s, out %s; wrote %s", position, step.name, record.status,
                record.seconds, _fmt(record.rows_in), _fmt(record.rows_out), wrote)
    return record


def check_configuration(ctx: JobContext) -> None:
    """Every config file parsed and cross-checked before the first step (``cdp validate``'s checks):
    a bad tag or audience fails here, not after land, standardize, stitch and features have run."""
    from cdp.jobs.validate import validate_conf_cached

    report = validate_conf_cached(ctx.conf_dir)
    if not report.ok:
        raise ConfigError(f"configuration {ctx.conf_dir}: {len(report.problems)} problem(s):\n  "
                          + "\n  ".join(report.problems))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failed(record: StepRecord, position: str, exc: Exception, clock: float) -> StepRecord:
    """The step failed on an error a person can act on: one line naming the step (and the table)."""
    record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
    record.seconds = time.perf_counter() - clock
    logger.error("step %s %s failed: %s", position, record.step, exc)
    logger.debug("step %s failed here:", record.step, exc_info=True)
    return record


def run(spark: Any, ctx: JobContext, *, from_step: str | None = None, to_step: str | None = None,
        only: Sequence[str] | None = None, generate: bool = False, customers: int | None = None,
        seed: int | None = None, raw: str | None = None, end: str | None = None, as_of: str | None = None,
        train: bool = False, force_unlock: bool = False, report: bool = True, lake: Any = None,
        observer: Callable[[str, str], None] | None = None) -> RunSummary:
    """Run the selected steps under the lake lock; record them in ``runs``; render the report.

    Args:
        from_step, to_step, only: which steps (see :func:`select_steps`).
        generate, customers, seed: generate raw data first (any of them asks for it).
        raw: raw exports folder (default ``<lake>/../raw`` for a local lake).
        end: last day of generated history (the generator's default otherwise).
        as_of: snapshot date (YYYY-MM-DD) for features / train / tag / audiences / measure (default:
            the day after ``end`` when this run generates data, else the jobs' own default).
        train: train even when training is not due (every model has a champion).
        force_unlock: accepted for scripts; a dead run's lock on this host is broken anyway.
        report: render the HTML run report at the end.
        lake: the lake (default: ``ctx.lake_root`` on the session's backend).
        observer: called with ("start" | "end", step name) around each step (benchmarks sample
            memory per step with it).

    Returns:
        the run summary; ``status`` is ``failed`` when a step failed.
    """
    from cdp.lake import Lake
    from cdp.runtime.lock import LakeLock

    check_configuration(ctx)
    generate = generate or customers is not None or seed is not None
    if only and "generate" in only:
        generate = True
    step_table = {s.name: s for s in STEPS}
    plan = select_steps(from_step=from_step, to_step=to_step, only=only, generate=generate)
    snapshot = _snapshot_date(as_of, end, generate)
    lake = lake or Lake(spark, ctx.lake_root)
    raw_dir = raw or _default_raw(lake.root)
    options = RunOptions(lake=lake, raw_dir=raw_dir, customers=customers or DEFAULT_CUSTOMERS,
                         seed=42 if seed is None else seed, end=end, as_of=snapshot, train=train)
    ctx = replace(ctx, lake_root=lake.root)
    # A lock whose process is gone on this host is broken without asking (recovery needs no person);
    # a live run's lock, or another host's, never is. --force-unlock is kept for scripts that pass it.
    lock = LakeLock(lake.root, ctx.run_id).acquire(force=True)
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    records: list[StepRecord] = []
    logger.info("run %s: %d steps (%s) on lake %s [%s backend], raw %s, as of %s", ctx.run_id, len(plan),
                " -> ".join(p.name for p in plan), lake.root, lake.backend, raw_dir, snapshot or "job default")
    try:
        lake.ensure_commit_log(ctx.run_id)
        failed = False
        for index, planned in enumerate(plan, start=1):
            position = f"{index}/{len(plan)}"
            if failed:
                record = StepRecord(ctx.run_id, planned.name, "not_run", "an earlier step failed", None, None,
                                    datetime.now(UTC), 0.0, {})
            else:
                if observer:
                    observer("start", planned.name)
                record = _execute_step(spark, ctx, lake, step_table[planned.name], planned, options, position)
                if observer:
                    observer("end", planned.name)
                failed = record.status == "failed"
            records.append(record)
            _record_rows(spark, lake, [record])
        seconds = time.perf_counter() - clock
        status = "failed" if failed else "ok"
        summary = RunSummary(ctx.run_id, lake.root, status, records, started_at, seconds)
        total = StepRecord(ctx.run_id, "run", status, " -> ".join(p.name for p in plan), None, None, started_at,
                           seconds, {}, next((r.error for r in records if r.error), None))
        _record_rows(spark, lake, [total])
        if report:
            summary.report = _render_report(spark, ctx, lake)
    finally:
        lock.release()
    log_summary(summary)  # after the lock is gone, so the next run may start while this is read
    return summary


def context(lake: str | None = None, *, profile: str = "local", conf: str | None = None,
            run_id: str | None = None) -> JobContext:
    """A job context as the command line would build it (for notebooks and scripts).

    Args:
        lake: lake root (default: the profile's).
        profile: a profile in ``conf/profiles``.
        conf: configuration folder (default: $CDP_CONF or the packaged one).
        run_id: default: a new one.
    """
    from cdp.jobs.entry import new_run_id
    from cdp.runtime.config import load_profile, resolve_conf_dir

    conf_dir = resolve_conf_dir(conf)
    chosen = load_profile(conf_dir, profile)
    return JobContext(conf_dir=conf_dir, profile=chosen, lake_root=lake or chosen.lake, run_id=run_id or new_run_id())


def ensure_pipeline(spark: Any, ctx: JobContext, *, customers: int, seed: int = 42, as_of: str | None = None,
                    needs: Sequence[str] = ("tags_wide",), lake: Any = None) -> RunSummary | None:
    """Run the whole pipeline on generated data unless the lake already holds ``needs``.

    For notebooks and demos: the first one on a fresh lake builds it, the others reuse it. Raw
    data is generated only when ``<lake>/../raw`` does not exist yet.

    Raises:
        JobFailed: the pipeline run failed (the message names the step).
    """
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    if all(lake.exists(name) for name in needs):
        return None
    raw = _default_raw(lake.root)
    fresh = raw is None or not os.path.isdir(raw) or not os.listdir(raw)
    summary = run(spark, ctx, customers=customers if fresh else None, seed=seed if fresh else None, as_of=as_of,
                  lake=lake)
    if summary.status != "ok":
        failed = next(r for r in summary.steps if r.status == "failed")
        raise JobFailed(f"pipeline run {summary.run_id} failed at {failed.step}: {failed.error}")
    return summary


def _snapshot_date(as_of: str | None, end: str | None, generate: bool) -> date | None:
    """``--as-of`` as a date; when this run generates data, by default the day after its last day."""
    if as_of is None and generate:
        from cdp.synthetic import DEFAULT_END

        try:
            return date.fromisoformat(end or DEFAULT_END) + timedelta(days=1)
        except ValueError as exc:
            raise ConfigError(f"--end: expected a date YYYY-MM-DD, got {end!r}") from exc
    if as_of is None:
        return None
    try:
        return date.fromisoformat(as_of)
    except ValueError as exc:
        raise ConfigError(f"--as-of: expected a date YYYY-MM-DD, got {as_of!r}") from exc


def _default_raw(lake_root: str) -> str | None:
    if not is_local(lake_root):
        return None
    return os.path.join(os.path.dirname(lake_root.rstrip("/")), "raw")


def _render_report(spark: Any, ctx: JobContext, lake: Any) -> str | None:
    """The HTML report is a view of the run: failing to draw it is logged, not a failed run."""
    try:
        from cdp.jobs import report

        return str(report.run(spark, ctx, lake=lake, run_id=ctx.run_id))
    except Exception as exc:  # noqa: BLE001
        logger.error("run %s: the run report could not be rendered: %s", ctx.run_id, _first_line(exc))
        logger.debug("the report failed here:", exc_info=True)
        return None


def format_summary(summary: RunSummary) -> str:
    """The end-of-run table: one line per step."""
    lines = [f"run {summary.run_id} {summary.status.upper()} in {summary.seconds:.1f} s (lake {summary.lake})",
             f"  {'step':<12} {'status':<8} {'seconds':>8} {'rows in':>12} {'rows out':>12}  detail"]
    for r in summary.steps:
        note = r.error.splitlines()[0] if r.error else r.detail
        lines.append(f"  {r.step:<12} {r.status:<8} {r.seconds:>8.1f} {_fmt(r.rows_in):>12} {_fmt(r.rows_out):>12}"
                     f"  {note}")
    if summary.report:
        lines.append(f"report: {summary.report}")
    return "\n".join(lines)


def log_summary(summary: RunSummary) -> None:
    log = logger.error if summary.status == "failed" else logger.info
    log("%s", format_summary(summary))


def _split_steps(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _step_list(value: str) -> str:
    """argparse type for --only: checked before any Spark session starts."""
    unknown = [name.strip() for name in value.split(",") if name.strip() and name.strip() not in _BY_NAME]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}; steps are {', '.join(STEP_NAMES)}")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_step", metavar="STEP", choices=STEP_NAMES,
                        help=f"first step ({', '.join(STEP_NAMES)})")
    parser.add_argument("--to", dest="to_step", metavar="STEP", choices=STEP_NAMES, help="last step (inclusive)")
    parser.add_argument("--only", action="append", metavar="STEP[,STEP]", type=_step_list,
                        help="run only these steps (repeatable or comma-separated)")
    parser.add_argument("--generate", action="store_true", help="generate raw data first")
    parser.add_argument("--customers", type=int, help=f"persons to generate (implies --generate; "
                                                      f"default {DEFAULT_CUSTOMERS:,})")
    parser.add_argument("--seed", type=int, help="generator seed (implies --generate; default 42)")
    parser.add_argument("--end", help="last day of generated history (YYYY-MM-DD)")
    parser.add_argument("--raw", help="raw exports folder (default: <lake>/../raw)")
    parser.add_argument("--as-of", dest="as_of", help="snapshot date for features/train/tag (YYYY-MM-DD)")
    parser.add_argument("--train", action="store_true", help="train even when every model has a champion")
    parser.add_argument("--force-unlock", action="store_true",
                        help="break a lock left by a dead run on this host (done without asking now; kept for scripts)")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML run report")


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    summary = run(spark, ctx, from_step=args.from_step, to_step=args.to_step, only=_split_steps(args.only),
                  generate=args.generate, customers=args.customers, seed=args.seed, raw=args.raw, end=args.end,
                  as_of=args.as_of, train=args.train, force_unlock=args.force_unlock, report=args.report)
    return 0 if summary.status == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("run", argv, _run_from_args, _add_arguments,
                    description="run the whole pipeline in dependency order",
                    while_spark_starts=check_configuration)  # cached: run() finds it done (~5 s of Python)


if __name__ == "__main__":
    sys.exit(main())
