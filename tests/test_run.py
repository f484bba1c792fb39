"""`cdp run`: step selection, the step registry and its parameters, the lake lock, failed runs."""
from __future__ import annotations

import dataclasses
import getpass
import importlib
import inspect
import os
import socket
import subprocess
import sys
import types
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.jobs import run as runner
from cdp.jobs import steps as registry
from cdp.jobs.entry import JobFailed, base_parser
from cdp.lake import inventory
from cdp.runtime.config import ConfigError, JobContext, Profile
from cdp.runtime.lock import LakeLock, LakeLocked, pid_alive

# -- selection (no Spark) -------------------------------------------------------------------------


def names(plan):
    return [(p.name, p.explicit) for p in plan]


def test_default_plan_is_the_pipeline_in_dependency_order_without_generate():
    assert [p.name for p in runner.select_steps()] == [
        "land", "standardize", "stitch", "features", "train", "tag", "audiences", "journeys", "export",
        "measure"]


def test_generate_joins_the_plan_only_when_asked():
    assert [p.name for p in runner.select_steps(generate=True, to_step="land")] == ["generate", "land"]
    assert [p.name for p in runner.select_steps(to_step="land")] == ["land"]


def test_from_to_is_an_inclusive_range_and_not_explicit():
    assert names(runner.select_steps(from_step="stitch", to_step="train")) == [
        ("stitch", False), ("features", False), ("train", False)]


def test_only_runs_the_named_steps_in_pipeline_order_as_explicit():
    assert names(runner.select_steps(only=["tag", "land", "features"])) == [
        ("land", True), ("features", True), ("tag", True)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"only": ["tag"], "from_step": "land"}, "--only cannot be combined"),
    ({"only": ["tagging"]}, r"--only: unknown step\(s\) \['tagging'\]"),
    ({"from_step": "nope"}, "--from: unknown step"),
    ({"from_step": "tag", "to_step": "land"}, "--from tag comes after --to land"),
    ({"only": None, "to_step": "generate"}, "nothing to run"),
])
def test_bad_selections_are_config_errors_naming_the_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        runner.select_steps(**kwargs)


def test_only_accepts_comma_lists_and_repeats():
    parser = base_parser("run")
    runner._add_arguments(parser)
    args = parser.parse_args(["--only", "tag,land", "--only", "export"])
    assert runner._split_steps(args.only) == ["tag", "land", "export"]


def test_unknown_steps_are_rejected_on_the_command_line_before_spark_starts(capsys):
    parser = base_parser("run")
    runner._add_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--only", "tag,nope"])
    assert exited.value.code == 2
    assert "argument --only: unknown step(s) ['nope']" in capsys.readouterr().err


# -- the step registry (no Spark) -------------------------------------------------------------------


def _module(name: str, run_function) -> types.ModuleType:
    module = types.ModuleType(name)
    module.run = run_function
    return module


class _StandInLake:
    root = "/lake"


OPTIONS = registry.RunOptions(lake=_StandInLake(), raw_dir="/raw", customers=300, seed=7, end="2025-06-30",
                              as_of=date(2025, 7, 1))


@pytest.mark.parametrize("step", registry.STEPS, ids=lambda s: s.name)
def test_every_step_hands_its_job_exactly_what_its_function_accepts(step):
    """The registry's parameters bind to the real job's signature: a job whose ``run`` renames, drops or
    newly requires a keyword fails here, not in the middle of a run."""
    module = importlib.import_module(step.module)
    params = step.params(OPTIONS)
    assert dataclasses.is_dataclass(params) and isinstance(params, registry.StepParams)
    inspect.signature(getattr(module, step.function)).bind("spark", "ctx", **params.keywords())
    if step.due:
        inspect.signature(getattr(module, step.due)).bind("ctx")


def test_each_step_has_its_own_parameters_type_and_the_registry_is_the_pipeline_order():
    types_by_step = {step.name: type(step.params(OPTIONS)).__name__ for step in registry.STEPS}
    assert types_by_step == {
        "generate": "GenerateParams", "land": "LandParams", "standardize": "StandardizeParams",
        "stitch": "StitchParams", "features": "FeaturesParams", "train": "TrainParams", "tag": "TagParams",
        "audiences": "AudiencesParams", "journeys": "JourneysParams", "export": "ExportParams",
        "measure": "MeasureParams"}
    assert [s.name for s in registry.STEPS if s.due] == ["train"]


def test_parameters_are_built_from_the_runners_options():
    by_name = {step.name: step.params(OPTIONS).keywords() for step in registry.STEPS}
    lake = OPTIONS.lake
    assert by_name == {
        "generate": {"out": "/raw", "customers": 300, "seed": 7, "end": "2025-06-30"},
        "land": {"raw": "/raw", "lake": lake},
        "standardize": {"lake": lake}, "stitch": {"lake": lake}, "export": {"lake": lake},
        "features": {"lake": lake, "as_of": date(2025, 7, 1)}, "tag": {"lake": lake, "as_of": date(2025, 7, 1)},
        "audiences": {"lake": lake, "as_of": date(2025, 7, 1)}, "journeys": {"lake": lake, "as_of": date(2025, 7, 1)},
        "measure": {"lake": lake, "as_of": date(2025, 7, 1)},
        "train": {"lake": lake, "end": date(2025, 7, 1)}}  # `cdp train --as-of` is its end of data
    from cdp.synthetic import DEFAULT_END

    generate = registry.STEPS[0]
    assert generate.params(registry.RunOptions(lake=lake, raw_dir="/raw")) == registry.GenerateParams(
        out="/raw", customers=registry.DEFAULT_CUSTOMERS, seed=42, end=DEFAULT_END)


def test_rows_of_generate_and_land_come_from_their_real_results():
    from cdp.jobs.land import LandResult, SourceLoad
    from cdp.synthetic import GenerateResult

    generate, land = registry.STEPS[:2]
    generated = GenerateResult(out=Path("/raw"), customers=3, files=2, records={"crm": 3, "orders": 5}, broken={})
    landed = LandResult({"crm": SourceLoad("crm", raw_records=3), "orders": SourceLoad("orders", raw_records=4)})
    assert (generate.rows_out(generated), land.rows_in(landed)) == (8, 7)
    assert [s.name for s in registry.STEPS if s.rows_in or s.rows_out] == ["generate", "land"]


def test_steps_that_need_the_raw_folder_say_so_when_the_lake_has_no_default_one():
    remote = registry.RunOptions(lake=_StandInLake())
    for step in registry.STEPS[:2]:
        with pytest.raises(ConfigError, match=rf"step {step.name}: the lake /lake is not on a local disk.*pass --raw"):
            step.params(remote)


@pytest.mark.parametrize(("as_of", "end", "generate", "expected"), [
    ("2025-03-01", None, False, date(2025, 3, 1)),
    (None, None, False, None),
    (None, "2025-01-31", True, date(2025, 2, 1)),  # generated data: the day after its last day
])
def test_the_snapshot_date_is_parsed_once_by_the_runner(as_of, end, generate, expected):
    assert runner._snapshot_date(as_of, end, generate) == expected


def test_a_bad_snapshot_date_is_a_config_error_naming_the_flag():
    with pytest.raises(ConfigError, match=r"--as-of: expected a date YYYY-MM-DD, got '2025-13-01'"):
        runner._snapshot_date("2025-13-01", None, False)


# -- the lock ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


def test_second_lock_on_the_same_lake_is_refused_naming_the_holder(tmp_path):
    first = LakeLock(str(tmp_path), "run-A").acquire()
    with pytest.raises(LakeLocked, match=rf"locked by run run-A \(cdp run, owner {getpass.getuser()}, host "
                                         rf"{socket.gethostname()}, pid {os.getpid()}, since .*, age 0m0\ds\): it "
                                         r"is still running on this host"):
        LakeLock(str(tmp_path), "run-B").acquire()
    first.release()
    second = LakeLock(str(tmp_path), "run-B").acquire()
    assert second.holder().run_id == "run-B"
    second.release()
    assert not (tmp_path / "_lock").exists()


def test_force_unlock_breaks_a_dead_runs_lock_but_never_a_live_one(tmp_path):
    stale = LakeLock(str(tmp_path), "run-dead")
    dead = _dead_pid()
    stale.info = stale.info.__class__(run_id="run-dead", host=stale.info.host, pid=dead,
                                      started_at="2026-01-01T00:00:00+00:00", owner="etl", command="stitch")
    assert stale._try_create()
    with pytest.raises(LakeLocked, match=rf"stale lock of run run-dead \(cdp stitch, owner etl, host "
                                         rf"{socket.gethostname()}, pid {dead}, since 2026-01-01T00:00:00\+00:00, "
                                         rf"age \d+h\d\dm\): pid {dead} is gone on this host; rerun with "
                                         r"--force-unlock"):
        LakeLock(str(tmp_path), "run-new").acquire()
    taken = LakeLock(str(tmp_path), "run-new").acquire(force=True)
    assert taken.holder().run_id == "run-new"
    with pytest.raises(LakeLocked, match="still alive"):
        LakeLock(str(tmp_path), "run-other").acquire(force=True)
    taken.release()


def test_lock_age_reads_hours_and_minutes():
    from datetime import UTC, datetime

    from cdp.runtime.lock import LockInfo

    info = LockInfo(run_id="r", host="h", pid=1, started_at="2026-12-07T09:00:00+00:00")
    assert [info.age(datetime(2026, 12, 7, h, m, s, tzinfo=UTC)) for h, m, s in ((9, 3, 7), (11, 5, 0))] == [
        "3m07s", "2h05m"]
    assert (LockInfo.from_json('{"run_id": "r", "host": "h", "pid": 1, "started_at": "x"}', "_lock").owner,
            LockInfo(run_id="r", host="h", pid=1, started_at="x").age()) == ("unknown", "unknown")


def test_release_leaves_someone_elses_lock_alone(tmp_path):
    mine = LakeLock(str(tmp_path), "run-A").acquire()
    os.remove(tmp_path / "_lock")
    theirs = LakeLock(str(tmp_path), "run-B").acquire()
    mine.release()
    assert theirs.holder().run_id == "run-B"
    theirs.release()


# -- whole runs with stand-in job modules -----------------------------------------------------------

PEOPLE = T.StructType([T.StructField("id", T.LongType()), T.StructField("name", T.StringType())])


@pytest.fixture()
def ctx(tmp_path, conf_dir) -> JobContext:
    lake_root = str(tmp_path / "lake")
    return JobContext(conf_dir=conf_dir, profile=Profile("local", lake_root, {}), lake_root=lake_root,
                      run_id="run-1")


@pytest.fixture()
def fake_jobs(monkeypatch):
    """Register stand-in job modules and point the runner's step table at them.

    ``fake_jobs(land=fn, ...)``: step ``land`` calls ``fn(spark, ctx, lake=...)`` (the registry's other
    parameters are dropped; what each real job gets is tested above); steps not named have no module.
    The received parameters are kept in ``received[step]``.
    """
    received: dict[str, dict] = {}

    def install(**runs):
        steps = []
        for step in runner.STEPS:
            module_name = f"tests_fake_jobs.{step.name}"
            if step.name in runs:
                def run(spark, ctx, _fn=runs[step.name], _step=step.name, **params):
                    received[_step] = params
                    return _fn(spark, ctx, lake=params["lake"])
                monkeypatch.setitem(sys.modules, module_name, _module(module_name, run))
            else:
                module_name = f"tests_fake_jobs.absent_{step.name}"  # not importable: a missing job
            steps.append(dataclasses.replace(step, module=module_name))
        monkeypatch.setattr(runner, "STEPS", tuple(steps))
        return received

    return install


def _write_people(rows):
    def run(spark, ctx, *, lake):
        lake.write(spark.createDataFrame(rows, PEOPLE), "people", "overwrite", metadata={"run_id": ctx.run_id})
    return run


def test_crashed_step_fails_the_run_and_leaves_the_previous_version_readable(spark, ctx, fake_jobs):
    from cdp.lake import Lake

    lake = Lake(spark, ctx.lake_root)
    good = [(1, "ann"), (2, "bo")]
    fake_jobs(land=_write_people(good))
    first = runner.run(spark, ctx, only=["land"], report=False, lake=lake)
    assert first.status == "ok"
    assert first.steps[0].versions == {"people": 0} and first.steps[0].rows_out == 2

    def crash_mid_write(spark, ctx, *, lake):
        broken = (spark.range(1, 4).withColumn("name", F.when(F.col("id") == 3, F.raise_error(F.lit("boom")))
                                               .otherwise(F.lit("new")))
                  .select("id", "name"))
        lake.write(broken, "people", "overwrite")

    fake_jobs(land=_write_people(good), standardize=crash_mid_write, stitch=_write_people([(9, "never")]))
    second = runner.run(spark, ctx.__class__(**{**ctx.__dict__, "run_id": "run-2"}), from_step="standardize",
                        to_step="stitch", report=False, lake=lake)

    assert second.status == "failed" and second.failed_step == "standardize"
    assert [(s.step, s.status) for s in second.steps] == [("standardize", "failed"), ("stitch", "not_run")]
    assert "boom" in second.steps[0].error and second.steps[0].versions == {}
    assert lake.version("people") == 0
    assertDataFrameEqual(lake.read("people"), spark.createDataFrame(good, PEOPLE))
    recorded = (lake.read("runs").filter(F.col("run_id") == "run-2")
                .select("step", "status", F.col("error").contains("boom").alias("has_error")))
    assertDataFrameEqual(recorded, spark.createDataFrame(
        [("standardize", "failed", True), ("stitch", "not_run", None), ("run", "failed", True)],
        "step string, status string, has_error boolean"))
    assert not Path(ctx.lake_root, "_lock").exists()


def test_a_run_refuses_to_start_while_another_holds_the_lock(spark, ctx, fake_jobs):
    from cdp.lake import Lake

    lake = Lake(spark, ctx.lake_root)
    fake_jobs(land=_write_people([(1, "ann")]))
    holder = LakeLock(lake.root, "run-elsewhere").acquire()
    try:
        with pytest.raises(LakeLocked, match="locked by run run-elsewhere"):
            runner.run(spark, ctx, only=["land"], report=False, lake=lake)
    finally:
        holder.release()
    assert lake.tables() == []  # nothing ran, not even the runs record
    assert isinstance(LakeLocked("x"), JobFailed)  # so `cdp run` exits 1 with the message


def test_missing_job_is_skipped_with_a_reason_unless_asked_for_with_only(spark, ctx, fake_jobs):
    from cdp.lake import Lake

    lake = Lake(spark, ctx.lake_root)
    fake_jobs(land=_write_people([(1, "ann")]))  # every other step's module is absent
    summary = runner.run(spark, ctx, to_step="stitch", report=False, lake=lake)
    assert [(s.step, s.status) for s in summary.steps] == [
        ("land", "ok"), ("standardize", "skipped"), ("stitch", "skipped")]
    assert summary.status == "ok"
    assert "module tests_fake_jobs.absent_standardize is not installed" in summary.steps[1].detail

    # asked for with --only: the run fails and `cdp run` exits 1
    parser = base_parser("run")
    runner._add_arguments(parser)
    args = parser.parse_args(["--only", "stitch", "--no-report"])
    assert runner._run_from_args(spark, ctx.__class__(**{**ctx.__dict__, "run_id": "run-3"}), args) == 1
    explicit = lake.read("runs").filter(F.col("run_id") == "run-3").select("step", "status", "error")
    assertDataFrameEqual(explicit, spark.createDataFrame(
        [("stitch", "failed", "step stitch: module tests_fake_jobs.absent_stitch is not installed"),
         ("run", "failed", "step stitch: module tests_fake_jobs.absent_stitch is not installed")],
        "step string, status string, error string"))


def test_train_runs_only_when_due_or_forced(spark, ctx, fake_jobs):
    from cdp.lake import Lake

    lake = Lake(spark, ctx.lake_root)
    trained: list[str] = []

    def train(spark, ctx, *, lake):
        trained.append(ctx.run_id)

    received = fake_jobs(train=train)
    sys.modules["tests_fake_jobs.train"].training_due = lambda ctx: (False, "champions are fresh")
    skipped = runner.run(spark, ctx, from_step="train", to_step="train", report=False, lake=lake)
    assert [(s.step, s.status, s.detail) for s in skipped.steps] == [
        ("train", "skipped", "not due: champions are fresh")]
    forced = runner.run(spark, ctx.__class__(**{**ctx.__dict__, "run_id": "run-4"}), from_step="train",
                        to_step="train", train=True, as_of="2025-07-01", report=False, lake=lake)
    assert forced.steps[0].status == "ok" and trained == ["run-4"]
    assert received["train"] == {"lake": lake, "end": date(2025, 7, 1)}
    sys.modules["tests_fake_jobs.train"].training_due = lambda ctx: (True, "no champion for cdp_churn")
    due = runner.run(spark, ctx.__class__(**{**ctx.__dict__, "run_id": "run-5"}), only=None, from_step="train",
                     to_step="train", report=False, lake=lake)
    assert (due.steps[0].status, due.steps[0].detail, trained) == (
        "ok", f"{registry.STEPS[5].does} (due: no champion for cdp_churn)", ["run-4", "run-5"])


def test_rows_written_counts_what_the_commits_after_a_version_added(spark, lake):
    two = spark.createDataFrame([(1, "ann"), (2, "bo")], PEOPLE)
    one = spark.createDataFrame([(3, "cy")], PEOPLE)
    lake.write(two, "people")
    lake.write(one, "people", "append")
    assert (runner.rows_written(lake, "people", 0), inventory.table_rows(lake, "people")) == (1, 3)
    assert (inventory.list_tables(lake), inventory.table_versions(lake)) == (["people"], {"people": 1})
    lake.write(one, "people", "overwrite")
    assert runner.rows_written(lake, "people", 0) == 1
    assert runner.rows_written(lake, "people", None) == 1  # a table new to the step: all its rows
