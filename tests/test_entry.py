"""The `cdp` command's operational surface: --version, exit codes, the lake lock around every writing
command, JSON logs, the console progress bar (no Spark: jobs here are stand-ins)."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cdp.jobs import cli
from cdp.jobs.entry import LAKE_WRITERS, JsonFormatter, job_main, setup_logging
from cdp.runtime.config import ConfigError
from cdp.runtime.errors import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, GateFailed, JobFailed
from cdp.runtime.lock import LakeLock, LockInfo
from cdp.runtime.session import console_settings


def test_version_and_usage(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"cdp {version('cdp-spark')}\n"
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  75  the lake is locked by another run: retry later" in out and "  forget " in out
    assert cli.main(["no-such-job"]) == 2
    assert capsys.readouterr().err.startswith("cdp: unknown job 'no-such-job'")


def test_the_installed_command_prints_its_version():
    done = subprocess.run([str(Path(sys.executable).parent / "cdp"), "--version"], capture_output=True, text=True,
                          check=False)
    assert (done.returncode, done.stdout) == (0, f"cdp {version('cdp-spark')}\n")


def _job(tmp_path, job="land", outcome=None, extra=()):
    """Run a stand-in job through job_main; record whether the lake was locked, and by whom, while it ran."""
    seen = {}

    def run_from_args(spark, ctx, args):
        holder = LakeLock(ctx.lake_root, "probe").holder()
        seen["holder"] = holder
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    code = job_main(job, ["--lake", str(tmp_path), "--run-id", "r-1", *extra], run_from_args, needs_spark=False)
    return code, seen.get("holder")


def test_every_writing_command_holds_the_lock_while_it_runs(tmp_path):
    assert LAKE_WRITERS == {"land", "standardize", "stitch", "features", "train", "tag", "audiences", "journeys",
                            "export", "forget", "measure"}
    for job in sorted(LAKE_WRITERS):
        code, holder = _job(tmp_path, job)
        assert (code, holder.run_id, holder.command) == (EXIT_OK, "r-1", job)
        assert not (tmp_path / "_lock").exists()
    for job in ("tags", "report", "generate"):
        assert _job(tmp_path, job) == (EXIT_OK, None)


@pytest.mark.parametrize(("outcome", "code"), [
    (None, EXIT_OK), (0, EXIT_OK), (1, EXIT_FAILED),
    (JobFailed("step failed"), EXIT_FAILED),
    (GateFailed("quality gate failed, identity_map not published: ..."), EXIT_FAILED),
    (ConfigError("conf/x.yaml: key: bad"), EXIT_USAGE),
])
def test_exit_codes(tmp_path, outcome, code):
    assert _job(tmp_path, "stitch", outcome)[0] == code
    assert not (tmp_path / "_lock").exists()  # released on failure too


def test_a_locked_lake_exits_75_without_running_and_force_unlock_never_breaks_a_live_lock(tmp_path, caplog):
    other = LakeLock(str(tmp_path), "r-other", command="run").acquire()  # this (live) process holds it
    try:
        caplog.set_level(logging.ERROR, logger="cdp")
        assert _job(tmp_path, "features") == (EXIT_LOCKED, None)
        assert "locked by run r-other (cdp run, owner" in caplog.text
        assert _job(tmp_path, "features", extra=["--force-unlock"]) == (EXIT_LOCKED, None)
        assert "still alive; --force-unlock does not break a live run's lock" in caplog.text
    finally:
        other.release()


def test_a_dead_processes_lock_is_broken_by_the_next_command(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    stale = LakeLock(str(tmp_path), "r-dead")
    stale.info = LockInfo(run_id="r-dead", host=stale.info.host, pid=process.pid,
                          started_at="2026-01-01T00:00:00+00:00", owner="etl", command="tag")
    assert stale._try_create()
    code, holder = _job(tmp_path, "tag")  # recovery needs no person: the dead run's lock is broken
    assert (code, holder.run_id) == (EXIT_OK, "r-1")
    assert stale._try_create()
    code, holder = _job(tmp_path, "tag", extra=["--force-unlock"])  # the flag is kept for scripts
    assert (code, holder.run_id) == (EXIT_OK, "r-1")


def test_bad_usage_exits_2(tmp_path):
    with pytest.raises(SystemExit) as exc:
        job_main("land", ["--log-format", "xml"], lambda *a: None, needs_spark=False)
    assert exc.value.code == EXIT_USAGE


def test_json_log_lines():
    record = logging.LogRecord("cdp.jobs.land", logging.WARNING, __file__, 1, "loaded %d files", (3,), None)
    record.created = 1796212800.25  # 2026-12-02T12:00:00.250Z
    assert json.loads(JsonFormatter().format(record)) == {
        "time": "2026-12-02T12:00:00.250+00:00", "level": "WARNING", "logger": "cdp.jobs.land",
        "message": "loaded 3 files"}
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging(log_format="json")
        ours = [h for h in root.handlers if getattr(h, "_cdp", False)]
        assert [type(h.formatter) for h in ours] == [JsonFormatter]
        stream = io.StringIO()
        ours[0].setStream(stream)
        logging.getLogger("cdp.test").info("hello %s", "world")
        assert json.loads(stream.getvalue())["message"] == "hello world"
        setup_logging(log_format="text")  # switching back reuses the handler
        assert [type(h.formatter) for h in root.handlers if getattr(h, "_cdp", False)] == [logging.Formatter]
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def test_console_progress_bar_only_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert console_settings() == {"spark.ui.showConsoleProgress": "false"}
    monkeypatch.setattr(sys, "stdout", Tty())
    assert console_settings() == {"spark.ui.showConsoleProgress": "true"}
