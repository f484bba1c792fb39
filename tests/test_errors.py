"""Errors a person can act on: a full disk, a damaged Delta log and a missing table end a step with
one line naming the step and the table, exit code 1 and a `runs` row; the traceback only with --verbose."""
from __future__ import annotations

import errno
import logging
import subprocess
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual
from test_run import fake_jobs  # noqa: F401 - the fixture

from cdp.jobs import run as runner
from cdp.jobs.entry import base_parser
from cdp.runtime.config import JobContext, Profile

PEOPLE = T.StructType([T.StructField("id", T.LongType()), T.StructField("name", T.StringType())])


def make_ctx(lake_root: Path, conf_dir: Path, run_id: str = "run-1") -> JobContext:
    return JobContext(conf_dir=conf_dir, profile=Profile("local", str(lake_root), {}), lake_root=str(lake_root),
                      run_id=run_id)


def run_cli(spark, ctx: JobContext, *argv: str) -> int:
    """``cdp run ARGV`` as the command line calls it (exit code), in this test's session."""
    parser = base_parser("run")
    runner._add_arguments(parser)
    return runner._run_from_args(spark, ctx, parser.parse_args(list(argv)))


def _write_people(spark, ctx, *, lake):
    lake.write(spark.createDataFrame([(1, "ann"), (2, "bo")], PEOPLE), "people", "overwrite")


def _write_big(spark, ctx, *, lake):
    # random hex compresses poorly: about 12 MB of strings, more than the 2 MB disk holds
    rows = (spark.range(200_000).select(F.col("id"), F.sha2(F.col("id").cast("string"), 256).alias("name"))
            .coalesce(1))  # one writing task: when it fails, no other task still holds space
    lake.write(rows, "big", "overwrite")


def _read_silver(spark, ctx, *, lake):
    lake.read("silver_identifiers").count()


def assert_one_line_failure(caplog, step: str, message: str) -> None:
    """Exactly one error line for the step, holding ``message``; no traceback unless at DEBUG."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and f"{step} failed" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert message in line and "\n" not in line, line
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not any(r.exc_info for r in shown), "a traceback was logged without --verbose"
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG), "--verbose would show no traceback"


def runs_rows(spark, lake, run_id: str):
    return (lake.read("runs").filter(F.col("run_id") == run_id)
            .select("step", "status", F.split(F.col("error"), ":").getItem(0).alias("error")))


def test_a_truncated_delta_log_fails_the_step_naming_the_table(spark, tmp_path, conf_dir, fake_jobs, caplog):  # noqa: F811
    from cdp.lake import Lake

    ctx = make_ctx(tmp_path / "lake", conf_dir)
    lake = Lake(spark, ctx.lake_root)
    fake_jobs(land=_write_people, standardize=_write_people)
    assert runner.run(spark, ctx, only=["land"], report=False, lake=lake).status == "ok"
    last = sorted((tmp_path / "lake" / "people" / "_delta_log").glob("*.json"))[-1]
    last.write_text(last.read_text()[:40])  # a commit cut short, as a crash or a full disk leaves it

    caplog.set_level(logging.DEBUG, logger="cdp")
    assert run_cli(spark, make_ctx(tmp_path / "lake", conf_dir, "run-2"), "--only", "standardize", "--no-report") == 1
    assert_one_line_failure(caplog, "standardize", "table people: its Delta log at ")
    assertDataFrameEqual(runs_rows(spark, lake, "run-2"), spark.createDataFrame(
        [("standardize", "failed", "CorruptTable"), ("run", "failed", "CorruptTable")],
        "step string, status string, error string"))


def test_a_missing_table_fails_the_step_naming_the_table(spark, tmp_path, conf_dir, fake_jobs, caplog):  # noqa: F811
    ctx = make_ctx(tmp_path / "lake", conf_dir)
    fake_jobs(stitch=_read_silver)
    caplog.set_level(logging.DEBUG, logger="cdp")
    assert run_cli(spark, ctx, "--only", "stitch", "--no-report") == 1
    assert_one_line_failure(caplog, "stitch", "table 'silver_identifiers' does not exist in the lake")


def test_a_full_disk_fails_the_step_naming_the_table(spark, tmp_path, conf_dir, fake_jobs, caplog,  # noqa: F811
                                                    monkeypatch):
    """The lake's storage runs out while a step commits (ENOSPC injected at delta-rs's commit)."""
    from cdp.lake import Lake
    from cdp.lake.embedded import EmbeddedBackend

    commit = EmbeddedBackend._commit_folder

    def no_space_for_people(self, uri, *args, **kwargs):
        if uri.endswith("/people"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return commit(self, uri, *args, **kwargs)

    ctx = make_ctx(tmp_path / "lake", conf_dir)
    lake = Lake(spark, ctx.lake_root)
    fake_jobs(land=_write_people)
    monkeypatch.setattr(EmbeddedBackend, "_commit_folder", no_space_for_people)
    caplog.set_level(logging.DEBUG, logger="cdp")
    assert run_cli(spark, ctx, "--only", "land", "--no-report") == 1
    assert_one_line_failure(caplog, "land", "table people: disk full while writing ")
    assert not lake.exists("people")
    assertDataFrameEqual(runs_rows(spark, lake, "run-1"), spark.createDataFrame(
        [("land", "failed", "DiskFull"), ("run", "failed", "DiskFull")],
        "step string, status string, error string"))


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root and permission to mount; the injected test above runs everywhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); ENOSPC is injected in the test above")
    yield mount
    # lazy: a failed Spark task may still hold a deleted file open on it
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_fails_the_step_in_one_line(spark, tiny_disk, conf_dir, fake_jobs, caplog):  # noqa: F811
    """Spark's failed task keeps its deleted file open, so the disk stays full: the runs row cannot
    be written either, and that too is one line, not a traceback."""
    from cdp.lake import Lake

    ctx = make_ctx(tiny_disk / "lake", conf_dir)
    lake = Lake(spark, ctx.lake_root)
    fake_jobs(features=_write_big)
    caplog.set_level(logging.DEBUG, logger="cdp")
    assert run_cli(spark, ctx, "--only", "features", "--no-report") == 1
    assert_one_line_failure(caplog, "features", "table big: disk full while writing ")
    assert not lake.exists("big")
    unrecorded = [r.getMessage() for r in caplog.records if "could not be recorded" in r.getMessage()]
    if lake.exists("runs"):
        assertDataFrameEqual(runs_rows(spark, lake, "run-1"), spark.createDataFrame(
            [("features", "failed", "DiskFull"), ("run", "failed", "DiskFull")],
            "step string, status string, error string"))
    else:
        assert len(unrecorded) == 2 and all("table runs: disk full" in m and "\n" not in m for m in unrecorded)
