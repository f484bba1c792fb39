"""Kill ``cdp run`` anywhere, lose nothing: SIGKILL at chosen points, re-run, compare with an uninterrupted run.

One generated lake (``cdp.synthetic``, 200 customers) is built once by a plain ``cdp run`` (run ``r0``,
which also trains the models). Then, on a copy of it:

* the *crashed* lake lives through a chain of runs, each a ``cdp run`` subprocess killed with SIGKILL
  (process group: the driver and its JVM) by ``CDP_CRASH_AT`` at one point of :data:`CRASH_POINTS`:
  before, between and after the commits of land, stitch and audiences, and inside every other step.
  All of them are run ``r1``, as a scheduler retrying the same run would do; each one starts at the
  step of the previous crash (``--from``), so every step before it has committed exactly once. A raw
  file arrives after the first crash; another one arrives before the last run: a plain ``cdp run``
  (``r2``) that must recover by itself;
* the *reference* lake gets the same raw files from uninterrupted runs: ``r1`` through the step the
  chain's last crash was in (``--to audiences``), then the plain ``r2``.

Every published table of the two lakes must then be equal: ids, identity history, audience change
events, load log and bronze rows included. Wall-clock columns (``*_at`` timestamps stamped when a row
is written), the raw folder's absolute path and Delta version numbers (a dead run's commits use some
up: ``publish_version`` is compared as the order of an audience's publishes) are left out.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.lake import COMMITS_TABLE, CRASH_ENV, Lake

pytestmark = pytest.mark.slow

AS_OF = "2025-07-01"
CUSTOMERS, SEED, CHUNK = 200, 7, 50
# Raw files held back from the first run, in the order they arrive.
ARRIVES_BEFORE_FIRST_CRASH = ("crm/members_delta_00001.csv", "orders/2025-04/part-00001.jsonl")
ARRIVES_AFTER_FIRST_CRASH = ("crm/members_delta_00002.csv", "events/2025-04/part-00002.jsonl")
ARRIVES_BEFORE_RECOVERY = ("crm/members_delta_00003.csv", "orders/2025-04/part-00002.jsonl")
# (step, before|after, table): in pipeline order. step_commits is the step's commit record.
CRASH_POINTS = (
    ("land", "after", "bronze_crm_members"),       # between commits: one source's bronze
    ("land", "before", "load_log"),                # between commits: bronze and quarantine, no load log
    ("land", "before", COMMITS_TABLE),             # after every commit of the step, before its record
    ("standardize", "after", "silver_identifiers"),
    ("stitch", "before", "identity_graph"),        # gates passed, nothing published
    ("stitch", "after", "identity_history"),       # between: all but identity_map published
    ("stitch", "before", COMMITS_TABLE),           # after every publish
    ("features", "after", "features_daily"),
    ("tag", "after", "tags_wide"),
    ("audiences", "after", "audience_cart_recovery_sms"),  # one audience published, no change events
    ("audiences", "after", "audience_changes"),    # between audiences
    ("audiences", "before", COMMITS_TABLE),        # every audience published
    ("export", "before", COMMITS_TABLE),
)
LAST_COMMITTED_STEP = "audiences"  # the chain's run r1 committed every step up to here
# stamped with the time a row is written: differ between any two runs
WALL_CLOCK = {"_ingested_at", "loaded_at", "quarantined_at", "computed_at", "published_at", "changed_at",
              "exported_at"}
NOT_RESULTS = {"runs", COMMITS_TABLE}  # logs of attempts, not results


def cdp_run(lake: Path, raw: Path, run_id: str, *extra: str, crash_at: str | None = None,
            timeout: int = 3600) -> subprocess.CompletedProcess:
    """``cdp run`` in its own process group (so a kill takes its JVM too), MLflow in the lake."""
    env = {k: v for k, v in os.environ.items()
           if k not in (CRASH_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    if crash_at:
        env[CRASH_ENV] = crash_at
    command = [sys.executable, "-m", "cdp.jobs.cli", "run", "--lake", str(lake), "--raw", str(raw),
               "--as-of", AS_OF, "--run-id", run_id, "--no-report", *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        try:  # whatever is left of the group (a JVM orphaned by the kill)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, process.returncode, output, None)


def arrive(held: Path, raw: Path, files: tuple[str, ...]) -> None:
    for relative in files:
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(held / relative, raw / relative)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake after one uninterrupted run (r0) over the raw files minus the held-back ones."""
    root = tmp_path_factory.mktemp("crash")
    generated = subprocess.run(
        [sys.executable, "-m", "cdp.jobs.cli", "generate", "--out", str(root / "generated"), "--customers",
         str(CUSTOMERS), "--seed", str(SEED), "--chunk-size", str(CHUNK)], capture_output=True, text=True)
    assert generated.returncode == 0, generated.stderr[-3000:]
    shutil.rmtree(root / "generated" / "_truth")
    held = root / "held"
    for relative in ARRIVES_BEFORE_FIRST_CRASH + ARRIVES_AFTER_FIRST_CRASH + ARRIVES_BEFORE_RECOVERY:
        (held / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / "generated" / relative, held / relative)
    (root / "base").mkdir()
    shutil.move(root / "generated", root / "base" / "raw")
    done = cdp_run(root / "base" / "lake", root / "base" / "raw", "r0")
    assert done.returncode == 0, done.stdout[-5000:]
    return root


def copy_of(root: Path, name: str) -> tuple[Path, Path]:
    shutil.copytree(root / "base", root / name, symlinks=True)
    return root / name / "lake", root / name / "raw"


def comparable(frame: DataFrame) -> DataFrame:
    """A table without what differs between any two runs of the same data (see the module docstring)."""
    dropped = [f.name for f in frame.schema.fields
               if f.name in WALL_CLOCK and isinstance(f.dataType, T.TimestampType)]
    if "sha256" in frame.columns and "path" in frame.columns:  # load_log: the raw folder's absolute path
        dropped.append("path")
    frame = frame.drop(*dropped)
    if "publish_version" in frame.columns:
        order = Window.partitionBy(*[c for c in ("audience",) if c in frame.columns]).orderBy("publish_version")
        frame = frame.withColumn("publish_version", F.dense_rank().over(order))
    return frame


@pytest.mark.crash_chain
def test_a_run_killed_anywhere_recovers_to_what_an_uninterrupted_run_publishes(spark, first_run):
    root = first_run
    held = root / "held"

    # the reference: uninterrupted runs over the same raw files
    reference, reference_raw = copy_of(root, "reference")
    arrive(held, reference_raw, ARRIVES_BEFORE_FIRST_CRASH + ARRIVES_AFTER_FIRST_CRASH)
    done = cdp_run(reference, reference_raw, "r1", "--to", LAST_COMMITTED_STEP)
    assert done.returncode == 0, done.stdout[-5000:]
    arrive(held, reference_raw, ARRIVES_BEFORE_RECOVERY)
    done = cdp_run(reference, reference_raw, "r2")
    assert done.returncode == 0, done.stdout[-5000:]

    # the crashed lake: one kill at every point, then a plain run
    crashed, crashed_raw = copy_of(root, "crashed")
    arrive(held, crashed_raw, ARRIVES_BEFORE_FIRST_CRASH)
    resume_from: list[str] = []
    for number, (step, when, table) in enumerate(CRASH_POINTS):
        point = f"{step}:{when}:{table}"
        killed = cdp_run(crashed, crashed_raw, "r1", *resume_from, crash_at=point)
        assert killed.returncode == -signal.SIGKILL and f"{CRASH_ENV}={point}: killing" in killed.stdout, (
            f"run meant to die at {point} ended with {killed.returncode}:\n{killed.stdout[-5000:]}")
        if number == 0:
            arrive(held, crashed_raw, ARRIVES_AFTER_FIRST_CRASH)
        resume_from = ["--from", step]
    arrive(held, crashed_raw, ARRIVES_BEFORE_RECOVERY)
    recovered = cdp_run(crashed, crashed_raw, "r2")
    assert recovered.returncode == 0, recovered.stdout[-5000:]

    expected_lake, got_lake = Lake(spark, str(reference)), Lake(spark, str(crashed))
    expected_tables = [t for t in expected_lake.tables() if t not in NOT_RESULTS and not t.startswith("_")]
    got_tables = [t for t in got_lake.tables() if t not in NOT_RESULTS and not t.startswith("_")]
    assert got_tables == expected_tables
    for table in expected_tables:
        expected, got = comparable(expected_lake.read(table)), comparable(got_lake.read(table))
        try:
            assertDataFrameEqual(got, expected)
        except AssertionError as exc:
            raise AssertionError(f"table {table} differs from the uninterrupted run's:\n{exc}") from exc
    # the recovering run found the dead run's lock and writes, and said what it did with them
    assert "breaking stale lock" in recovered.stdout


def test_land_killed_between_its_commits_then_rerun_with_a_new_file_loads_everything_once(spark, tmp_path):
    """The drill of issue 26: killed after the bronze commits, before the load log; a file arrives."""
    from test_land import ORDERS, context, make_conf, write_raw

    from cdp.jobs.land import run as land

    raw, conf = write_raw(tmp_path / "raw"), make_conf(tmp_path)
    shutil.copytree(Path(__file__).resolve().parents[1] / "conf" / "profiles", conf / "profiles")
    crashed = tmp_path / "crashed"
    command = [sys.executable, "-m", "cdp.jobs.cli", "land", "--conf", str(conf), "--lake", str(crashed),
               "--raw", str(raw)]
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    killed = subprocess.run([*command, "--run-id", "r1"], env={**env, CRASH_ENV: "land:before:load_log"},
                            capture_output=True, text=True, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (raw / "orders" / "2024-04.jsonl").write_text(ORDERS[0].replace("SO1", "SO9") + "\n", encoding="utf-8")
    rerun = subprocess.run([*command, "--run-id", "r2"], env=env, capture_output=True, text=True,
                           start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    reference = Lake(spark, str(tmp_path / "reference"))  # the same files landed in one uninterrupted run
    land(spark, replace(context(conf, reference.root), run_id="r2"), raw=str(raw), lake=reference)
    got = Lake(spark, str(crashed))
    tables = ["bronze_catalogue", "bronze_members", "bronze_shop_orders", "load_log", "quarantine"]
    assert [t for t in got.tables() if t not in NOT_RESULTS] == tables
    for table in tables:
        assertDataFrameEqual(comparable(got.read(table)), comparable(reference.read(table)))
    # what the load log says was loaded is what bronze and quarantine hold, file by file
    log = got.read("load_log").select("file", "raw_records", "bronze_rows", "quarantined_rows")
    assertDataFrameEqual(log, spark.createDataFrame([
        ("orders/2024-03.jsonl", 7, 2, 5), ("orders/2024-04.jsonl", 1, 1, 0), ("crm/members.csv", 4, 2, 2),
        ("products/catalogue.parquet", 3, 1, 2)],
        "file string, raw_records long, bronze_rows long, quarantined_rows long"))
