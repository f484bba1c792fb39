"""``cdp run``: the whole pipeline in dependency order, under a lake lock, with a run record.

Steps: generate (only when asked) -> land -> standardize -> stitch -> features -> train (when due)
-> tag -> audiences (quality gates run inside) -> export. Every step is the job module's own
``run(spark, ctx, ...)``, called through a small adapter that hands it the arguments its signature
asks for, so the runner never copies a job's logic.

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
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import Any

from cdp.jobs.entry import JobFailed
from cdp.lake import COMMITS_TABLE, LakeError, step_scope
from cdp.lake.inventory import list_tables, table_rows, table_versions  # noqa: F401 - list_tables: public here too
from cdp.lake.paths import delta_rs_uri, is_local
from cdp.runtime.config import ConfigError, JobContext

logger = logging.getLogger("cdp.jobs.run")  # not __name__: under spark-submit this module is __main__

RUNS_TABLE = "runs"
# Models `cdp train` registers (docs/ARCHITECTURE.md "Models"), for a train module that does not say
# when training is due (cdp.jobs.train does, from the catalogue): due while one has no `champion` alias.
TRAINED_MODELS = ("cdp_churn", "cdp_purchase_30d", "cdp_clv_12m", "behaviour_kmeans")
CHAMPION_ALIAS = "champion"
DEFAULT_CUSTOMERS = 10_000


class StepUnavailable(RuntimeError):
    """A step's job module is not installed, or its ``run`` needs an argument the runner lacks."""


@dataclass(frozen=True)
class RunSettings:
    """What the runner knows besides the context; offered to the steps that ask for it."""

    raw_dir: str | None = None
    customers: int | None = None
    seed: int = 42
    end: str | None = None
    as_of: str | None = None
    train: bool = False


@dataclass(frozen=True)
class Step:
    """One pipeline step: the job module it calls and the tables it reads (for rows in)."""

    name: str
    module: str
    does: str
    inputs: tuple[str, ...] = ()  # table names; a trailing "*" matches a prefix, a leading "!" excludes
    offer: Callable[[RunSettings, Any], dict[str, Any]] = field(default=lambda settings, lake: {"lake": lake})
    rows_in_attr: str | None = None  # attribute of the step's result holding rows in, when no table does
    rows_out_attr: str | None = None  # attribute of the step's result holding rows out (no tables written)


def _offer_generate(settings: RunSettings, lake: Any) -> dict[str, Any]:
    offered: dict[str, Any] = {"out": settings.raw_dir, "customers": settings.customers or DEFAULT_CUSTOMERS,
                               "seed": settings.seed}
    if settings.end:
        offered["end"] = settings.end
    return offered


def _offer_land(settings: RunSettings, lake: Any) -> dict[str, Any]:
    return {"raw": settings.raw_dir, "raw_dir": settings.raw_dir, "lake": lake}


def _offer_as_of(settings: RunSettings, lake: Any) -> dict[str, Any]:
    return {"lake": lake, "as_of": settings.as_of}


def _offer_train(settings: RunSettings, lake: Any) -> dict[str, Any]:
    # `cdp train --as-of` is the end of observed data; its run() calls it `end`
    return {"lake": lake, "end": settings.as_of, "as_of": settings.as_of}


STEPS: tuple[Step, ...] = (
    Step("generate", "cdp.jobs.generate", "write raw exports of every source system", (), _offer_generate,
         rows_out_attr="records"),
    Step("land", "cdp.jobs.land", "raw files -> bronze tables + quarantine", (), _offer_land,
         rows_in_attr="raw_records"),
    Step("standardize", "cdp.jobs.standardize", "bronze -> silver canonical tables", ("bronze_*",)),
    Step("stitch", "cdp.jobs.stitch", "identity graph -> customer ids, identity map, golden profile",
         ("silver_identifiers",)),
    Step("features", "cdp.jobs.features", "customer feature snapshot",
         ("customer_profile", "silver_orders", "silver_events"), _offer_as_of),
    Step("train", "cdp.jobs.train", "train predictive tag models and the clustering, promote champions", ("features_daily",),
         _offer_train),
    Step("tag", "cdp.jobs.tag", "compute every tag in the catalogue", ("features_daily",), _offer_as_of),
    Step("audiences", "cdp.jobs.audiences", "evaluate, gate and publish audiences", ("tags_wide",), _offer_as_of),
    Step("export", "cdp.jobs.export", "write published audiences for their destinations",
         ("audience_*", "!audience_changes", "!audience_stats", "!audience_performance")),
    Step("measure", "cdp.jobs.measure", "measure audience publishes against their control groups",
         ("audience_changes",), _offer_as_of),
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
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

def load_step_module(step: Step) -> ModuleType:
    """Import the step's job module; :class:`StepUnavailable` when it does not exist (yet)."""
    try:
        return importlib.import_module(step.module)
    except ModuleNotFoundError as exc:
        if exc.name and (step.module == exc.name or step.module.startswith(exc.name + ".")):
            raise StepUnavailable(f"step {step.name}: module {step.module} is not installed") from exc
        raise


def call_run(module: ModuleType, spark: Any, ctx: JobContext, offered: Mapping[str, Any]) -> Any:
    """Call ``module.run(spark, ctx, **kwargs)`` with the offered values its signature names.

    Values that are None are not passed (the job's default applies). A required parameter the
    runner does not offer raises :class:`StepUnavailable` naming it.
    """
    run_function = getattr(module, "run", None)
    if not callable(run_function):
        raise StepUnavailable(f"{module.__name__} has no run(spark, ctx, ...) function")
    parameters = list(inspect.signature(run_function).parameters.values())[2:]
    kwargs: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = offered.get(parameter.name)
        if value is not None:
            kwargs[parameter.name] = _coerce(value, parameter.annotation)
        elif parameter.default is parameter.empty:
            raise StepUnavailable(f"{module.__name__}.run needs {parameter.name!r}, which cdp run "
                                  f"does not supply (it offers {sorted(k for k, v in offered.items() if v is not None)})")
    return run_function(spark, ctx, **kwargs)


def _coerce(value: Any, annotation: Any) -> Any:
    """Dates travel as ISO strings; hand a ``date`` to a parameter annotated as one."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if isinstance(value, str) and "date" in text and "str" not in text:
        try:
            return date.fromisoformat(value)
        except ValueError:
            return value
    return value


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


def _result_rows(result: Any, attr: str | None) -> int | None:
    if result is None or attr is None:
        return None
    value = result.get(attr) if isinstance(result, Mapping) else getattr(result, attr, None)
    if isinstance(value, Mapping):
        value = sum(int(v) for v in value.values())
    return int(value) if isinstance(value, (int, float)) else None


# -- training due? ------------------------------------------------------------------------------

def training_due(ctx: JobContext, module: ModuleType) -> tuple[bool, str]:
    """Is training due? The train module decides when it says (``training_due(ctx)``); otherwise
    training is due while a predictive model lacks a champion."""
    decide = getattr(module, "training_due", None)
    if callable(decide):
        verdict = decide(ctx)
        if isinstance(verdict, tuple):
            return bool(verdict[0]), str(verdict[1])
        return bool(verdict), "cdp.jobs.train.training_due says so" if verdict else "cdp.jobs.train.training_due: not due"
    from mlflow.exceptions import MlflowException

    from cdp.runtime import mlflow as mlflow_store

    client = mlflow_store.client(ctx.lake_root)
    missing = []
    for name in TRAINED_MODELS:
        try:
            client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException:
            missing.append(name)
    if missing:
        return True, f"no {CHAMPION_ALIAS} for {', '.join(missing)}"
    return False, f"every model has a {CHAMPION_ALIAS}; pass --train to retrain"


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


def _execute_step(spark: Any, ctx: JobContext, lake: Any, step: Step, planned: Planned, settings: RunSettings,
                  position: str) -> StepRecord:
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    record = StepRecord(ctx.run_id, step.name, "ok", step.does, None, None, started_at, 0.0, {})
    try:
        module = load_step_module(step)
    except StepUnavailable as exc:
        record.status = "failed" if planned.explicit else "skipped"
        record.detail = f"{exc}" + ("" if planned.explicit else " (skipped: not asked for explicitly)")
        record.error = str(exc) if planned.explicit else None
        log = logger.error if planned.explicit else logger.warning
        log("step %s %s: %s", position, step.name, record.detail)
        return record
    if step.name == "train" and not (settings.train or planned.explicit):
        due, why = training_due(ctx, module)
        if not due:
            record.status, record.detail = "skipped", f"training not due: {why}"
            logger.info("step %s train: skipped, %s", position, why)
            return record
        record.detail = f"{step.does} (due: {why})"
    try:
        before = table_versions(lake)
        inputs = _matching(step.inputs, list(before))
        record.rows_in = sum(table_rows(lake, name) for name in inputs) if inputs else None
    except LakeError as exc:  # an unreadable table: the step cannot start
        return _failed(record, position, exc, clock)
    logger.info("step %s %s: %s; reads %s (%s rows)", position, step.name, record.detail,
                ", ".join(inputs) or "no tables", _fmt(record.rows_in))
    result = None
    try:
        with step_scope(step.name):
            result = call_run(module, spark, ctx, step.offer(settings, lake))
    except StepUnavailable as exc:
        record.status = "failed" if planned.explicit else "skipped"
        record.detail = str(exc)
        record.error = str(exc) if planned.explicit else None
        (logger.error if planned.explicit else logger.warning)("step %s %s: %s", position, step.name, exc)
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
    record.rows_out = sum(written_rows) if written_rows else _result_rows(result, step.rows_out_attr)
    from_result = _result_rows(result, step.rows_in_attr)
    if from_result is not None:
        record.rows_in = from_result
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
        train: bool = False, force_unlock: bool = False, report: bool = True,
        steps: Sequence[Step] | None = None, lake: Any = None,
        observer: Callable[[str, str], None] | None = None) -> RunSummary:
    """Run the selected steps under the lake lock; record them in ``runs``; render the report.

    Args:
        from_step, to_step, only: which steps (see :func:`select_steps`).
        generate, customers, seed: generate raw data first (any of them asks for it).
        raw: raw exports folder (default ``<lake>/../raw`` for a local lake).
        end: last day of generated history (the generator's default otherwise).
        as_of: snapshot date for features / train / tag (default: the day after ``end`` when this
            run generates data, else the jobs' own default).
        train: train even when every model has a champion.
        force_unlock: break a stale lock left by a dead run on this host.
        report: render the HTML run report at the end.
        steps: the step table (tests replace it; default :data:`STEPS`).
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
    step_table = {s.name: s for s in (steps or STEPS)}
    plan = select_steps(from_step=from_step, to_step=to_step, only=only, generate=generate)
    lake = lake or Lake(spark, ctx.lake_root)
    raw_dir = raw or _default_raw(lake.root)
    if as_of is None and generate:
        from cdp.synthetic import DEFAULT_END

        as_of = (date.fromisoformat(end or DEFAULT_END) + timedelta(days=1)).isoformat()
    settings = RunSettings(raw_dir=raw_dir, customers=customers, seed=42 if seed is None else seed, end=end,
                           as_of=as_of, train=train)
    ctx = replace(ctx, lake_root=lake.root, options={**ctx.options, "raw_dir": raw_dir, "as_of": as_of})
    # A lock whose process is gone on this host is broken without asking (recovery needs no person);
    # a live run's lock, or another host's, never is. --force-unlock is kept for scripts that pass it.
    lock = LakeLock(lake.root, ctx.run_id).acquire(force=True)
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    records: list[StepRecord] = []
    logger.info("run %s: %d steps (%s) on lake %s [%s backend], raw %s, as of %s", ctx.run_id, len(plan),
                " -> ".join(p.name for p in plan), lake.root, lake.backend, raw_dir, as_of or "job default")
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
                record = _execute_step(spark, ctx, lake, step_table[planned.name], planned, settings, position)
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
