"""Kill ``cdp run`` anywhere, lose nothing: SIGKILL at chosen points, re-run, compare with an uninterrupted run.

One generated lake (``cdp.synthetic``, 120 customers) is built once by a plain ``cdp run`` (run ``r0``,
the only one that trains models) on the embedded backend; a *reference* copy of it gets the raw files
that arrive later from uninterrupted runs: ``r1`` through the step the chain's last crash is in
(``--to audiences``), then a plain ``r2``. Then, on another copy of the base lake, the chain:

* each run of the chain is a ``cdp run`` subprocess killed with SIGKILL (process group: the driver and
  its JVM) by ``CDP_CRASH_AT`` at one of the 13 points of :data:`CRASH_POINTS`: before, between and
  after the commits of land, stitch and audiences, and inside every other step. All of them are run
  ``r1``, as a scheduler retrying the same run would do; each one starts at the step of the previous
  crash (``--from``), so every step before it has committed exactly once. A raw file arrives after the
  first crash; another one arrives before the last run: a plain ``cdp run`` (``r2``) that must recover
  by itself;
* the runs alternate between the two Delta backends (:func:`chain_backend`; embedded only where the
  delta-spark jars were never fetched). So in each multi-table step (land, stitch, audiences)
  delta-spark is killed between its own commits and also restores what a killed embedded run left
  (``restoreToVersion``), and the embedded backend the reverse, at the cost of one chain instead of
  two (a second chain, with its own base and reference runs, would cost about three more pipeline runs
  than the CI budget has). The backends write the same rows and continue each other's tables
  (tests/test_lake.py), as a lake moved between a laptop and a cluster does.

Every published table of the recovered lake must then equal the reference's: ids, identity history,
audience change events, load log and bronze rows included. Wall-clock columns (``*_at`` timestamps
stamped when a row is written), the raw folder's absolute path and Delta version numbers (a dead run's
commits use some up: ``publish_version`` is compared as the order of an audience's publishes) are left out.

The runs use a profile for tiny data written next to a copy of ``conf/`` (:func:`write_profiles`): two
cores, two shuffle partitions, a 2 GB driver (the local profile asks for 8 GB, more than a shared CI
machine should grant; the chain's first attempt lost a JVM to the out-of-memory killer), and the
backend named per run.

:func:`test_a_run_killed_in_land_and_stitch_on_both_backends_recovers_to_an_uninterrupted_runs_tables` is
the default run's share of the chain (which, with the erasure test, stays under the ``crash_chain``
marker: about 8 pipeline runs, over CI's budget): three of its kill points, in land and stitch, the
steps with several commits before any model, killed on both backends in turn, on a base and a
reference of its own that run only through stitch (no model is trained).

:func:`test_forgetting_one_person_leaves_every_other_customer_as_they_were` erases, on delta-spark
(``merge ... whenMatchedDelete``), a person whose orders were refunded from a copy of the base lake,
re-runs the pipeline, and compares every other customer's orders, returns, features and tags.
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
import yaml
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.lake import COMMITS_TABLE, CRASH_ENV, Lake
from cdp.runtime.jars import absent_reason, has_delta_spark, local_jars

pytestmark = pytest.mark.slow

AS_OF = "2025-07-01"
CUSTOMERS, SEED, CHUNK = 120, 7, 50
CONF = Path(__file__).resolve().parents[1] / "conf"
# Raw files held back from the first run, in the order they arrive.
ARRIVES_BEFORE_FIRST_CRASH = ("crm/members_delta_00001.csv", "orders/2025-04/part-00001.jsonl")
ARRIVES_AFTER_FIRST_CRASH = ("crm/members_delta_00002.csv", "events/2025-04/part-00002.jsonl")
ARRIVES_BEFORE_RECOVERY = ("crm/members_full_00002.csv", "orders/2025-04/part-00002.jsonl")
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
# Spark settings for tiny data (as tests/conftest.py's session), on top of conf/profiles/local.yaml
TINY_DATA_SETTINGS = {
    "spark.master": "local[2]",
    "spark.driver.memory": "2g",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
}
# the jars are absent only where `cdp jars fetch` never ran (CI fetches them)
needs_delta_spark = pytest.mark.skipif(not has_delta_spark(local_jars()), reason=absent_reason())


def write_profiles(conf: Path) -> None:
    """A copy of conf/ with one profile per backend, ``tiny-<backend>``: the local profile for tiny data."""
    shutil.copytree(CONF, conf)
    local = yaml.safe_load((CONF / "profiles" / "local.yaml").read_text(encoding="utf-8"))
    for backend in ("embedded", "delta-spark"):
        spark = {**local["spark"], **TINY_DATA_SETTINGS, "spark.cdp.lake.backend": backend}
        (conf / "profiles" / f"tiny-{backend}.yaml").write_text(
            yaml.safe_dump({**local, "spark": spark}), encoding="utf-8")


def cdp(root: Path, backend: str, *args: str, crash_at: str | None = None,
        timeout: int = 3600) -> subprocess.CompletedProcess:
    """A ``cdp`` command in its own process group (so a kill takes its JVM too), MLflow in the lake."""
    env = {k: v for k, v in os.environ.items()
           if k not in (CRASH_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    if crash_at:
        env[CRASH_ENV] = crash_at
    command = [sys.executable, "-m", "cdp.jobs.cli", args[0], "--conf", str(root / "conf"),
               "--profile", f"tiny-{backend}", *args[1:]]
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


def cdp_run(lake: Path, raw: Path, run_id: str, *extra: str, backend: str = "embedded",
            crash_at: str | None = None) -> subprocess.CompletedProcess:
    """``cdp run`` of the lake's copy (``<root>/<copy>/lake``) on ``backend``, no HTML report."""
    return cdp(lake.parents[1], backend, "run", "--lake", str(lake), "--raw", str(raw), "--as-of", AS_OF,
               "--run-id", run_id, "--no-report", *extra, crash_at=crash_at)


def arrive(held: Path, raw: Path, files: tuple[str, ...]) -> None:
    for relative in files:
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(held / relative, raw / relative)


def generate_base(root: Path, *run_args: str) -> Path:
    """``<root>/base``: the generated raw files minus the held-back ones (in ``<root>/held``), and a lake
    after one uninterrupted run r0 (embedded) over them, with ``run_args`` (e.g. ``--to stitch``)."""
    write_profiles(root / "conf")
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
    done = cdp_run(root / "base" / "lake", root / "base" / "raw", "r0", *run_args)
    assert done.returncode == 0, done.stdout[-5000:]
    return root


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake after one uninterrupted run (r0, embedded) over the raw files minus the held-back ones."""
    return generate_base(tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="module")
def reference(spark, first_run: Path) -> Path:
    """The base lake continued by uninterrupted runs: r1 (with the files the chains get during r1) up to
    the chains' last crashed step, then a plain r2 with the last files."""
    lake, raw = copy_of(first_run, "reference")
    held = first_run / "held"
    arrive(held, raw, ARRIVES_BEFORE_FIRST_CRASH + ARRIVES_AFTER_FIRST_CRASH)
    done = cdp_run(lake, raw, "r1", "--to", LAST_COMMITTED_STEP)
    assert done.returncode == 0, done.stdout[-5000:]
    arrive(held, raw, ARRIVES_BEFORE_RECOVERY)
    done = cdp_run(lake, raw, "r2")
    assert done.returncode == 0, done.stdout[-5000:]
    # the chains compare audiences and their change events: audiences must have members
    changes = {row["change"] for row in Lake(spark, str(lake)).read("audience_changes").collect()}
    assert "entered" in changes, "no audience has members: comparing audiences would prove nothing"
    return lake


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


def assert_same_results(spark, expected_root: Path, got_root: Path) -> None:
    """Every published table of the two lakes holds the same rows (see :func:`comparable`)."""
    expected_lake, got_lake = Lake(spark, str(expected_root)), Lake(spark, str(got_root))
    expected_tables = [t for t in expected_lake.tables() if t not in NOT_RESULTS and not t.startswith("_")]
    got_tables = [t for t in got_lake.tables() if t not in NOT_RESULTS and not t.startswith("_")]
    assert got_tables == expected_tables
    for table in expected_tables:
        expected, got = comparable(expected_lake.read(table)), comparable(got_lake.read(table))
        try:
            assertDataFrameEqual(got, expected)
        except AssertionError as exc:
            raise AssertionError(f"table {table} differs from the uninterrupted run's:\n{exc}") from exc


def rows_by_customer(lake: Lake) -> dict[str, DataFrame]:
    """Each customer's orders and returns (through the order's record), features and tags, comparable
    between runs (wall-clock columns and run ids left out)."""
    records = lake.read("customer_records")
    orders = lake.read("silver_orders").join(records, on=["source", "record_id"], how="inner")
    returns = lake.read("silver_returns").join(
        orders.select("order_id", "customer_id"), on="order_id", how="inner")
    return {"orders": comparable(orders), "returns": comparable(returns),
            "features": comparable(lake.read("features_daily")).drop("run_id"),
            "tags": comparable(lake.read("tags_wide")).drop("run_id")}


@needs_delta_spark
@pytest.mark.crash_chain
def test_forgetting_one_person_leaves_every_other_customer_as_they_were(spark, first_run):
    """`cdp forget` on delta-spark (merge-delete by hashed keys) of a person whose orders were refunded:
    every other customer's orders, returns, features and tags are as they were; after a run through tag
    (silver rebuilt from bronze, ids stitched again, features recomputed) their orders, returns and
    features still are. Their tags then may not be: algorithmic tags cut the population at its own
    quintiles, tertiles and medians (rfm_*, price_sensitivity, lifecycle_stage, and the rules that read
    them), which move when a buyer leaves it."""
    lake_root, raw = copy_of(first_run, "forget")
    before = rows_by_customer(Lake(spark, str(first_run / "base" / "lake")))
    refunded = (before["returns"].groupBy("customer_id").agg(F.count(F.lit(1)).alias("returns"))
                .orderBy(F.desc("returns"), "customer_id").first())
    assert refunded is not None, "nobody's orders were refunded: the test would prove nothing"
    person = refunded["customer_id"]
    others = {name: frame.filter(F.col("customer_id") != person) for name, frame in before.items()}

    forgot = cdp(first_run, "delta-spark", "forget", "--lake", str(lake_root), "--customer-id", person,
                 "--run-id", "f1")
    assert forgot.returncode == 0, forgot.stdout[-5000:]
    after_forget = rows_by_customer(Lake(spark, str(lake_root)))
    for name, expected in others.items():
        assert after_forget[name].filter(F.col("customer_id") == person).count() == 0, name
        try:
            assertDataFrameEqual(after_forget[name], expected)
        except AssertionError as exc:
            raise AssertionError(f"{name} of other customers changed by cdp forget:\n{exc}") from exc

    rerun = cdp_run(lake_root, raw, "r3", "--to", "tag", backend="delta-spark")  # what the rows come from
    assert rerun.returncode == 0, rerun.stdout[-5000:]
    after_rerun = rows_by_customer(Lake(spark, str(lake_root)))
    for name in ("orders", "returns", "features"):
        expected = others[name]
        try:
            assertDataFrameEqual(after_rerun[name], expected)
        except AssertionError as exc:
            raise AssertionError(f"{name} of other customers changed by the run after cdp forget:\n{exc}") from exc


def kill_in_turn(crashed: Path, raw: Path, held: Path, points: list[tuple[tuple[str, str, str], str]],
                 *run_args: str) -> list[str]:
    """Run ``r1`` on the lake ``crashed`` once per ``((step, when, table), backend)`` of ``points``, each
    killed there and started at the step of the previous kill (``--from``); the files that arrive after
    the first crash arrive after the first kill. Returns the ``--from`` of the last kill's step."""
    resume_from: list[str] = []
    for number, ((step, when, table), backend) in enumerate(points):
        point = f"{step}:{when}:{table}"
        killed = cdp_run(crashed, raw, "r1", *resume_from, *run_args, backend=backend, crash_at=point)
        assert killed.returncode == -signal.SIGKILL and f"{CRASH_ENV}={point}: killing" in killed.stdout, (
            f"run meant to die at {point} on {backend} ended with {killed.returncode}:\n{killed.stdout[-5000:]}")
        assert f"[{backend} backend]" in killed.stdout
        if number == 0:
            arrive(held, raw, ARRIVES_AFTER_FIRST_CRASH)
        resume_from = ["--from", step]
    return resume_from


def chain_backend(number: int) -> str:
    """The backend of the chain's run ``number`` (0: the first killed run; len(CRASH_POINTS): the recovery):
    the two alternate, so each one restores what the other left at every point of the chain."""
    if not has_delta_spark(local_jars()):
        return "embedded"
    return ("embedded", "delta-spark")[number % 2]


@pytest.mark.crash_chain
def test_a_run_killed_anywhere_recovers_to_what_an_uninterrupted_run_publishes(spark, first_run, reference):
    held = first_run / "held"
    crashed, crashed_raw = copy_of(first_run, "crashed")
    arrive(held, crashed_raw, ARRIVES_BEFORE_FIRST_CRASH)
    kill_in_turn(crashed, crashed_raw, held, [(point, chain_backend(n)) for n, point in enumerate(CRASH_POINTS)])
    arrive(held, crashed_raw, ARRIVES_BEFORE_RECOVERY)
    recovered = cdp_run(crashed, crashed_raw, "r2", backend=chain_backend(len(CRASH_POINTS)))
    assert recovered.returncode == 0, recovered.stdout[-5000:]
    # the recovering run found the dead run's lock and writes, and said what it did with them
    assert "breaking stale lock" in recovered.stdout
    assert_same_results(spark, reference, crashed)


# The default run's share of the chain: three of its kill points in the steps with several commits
# before the models (land, stitch), on both backends, each restoring what the other left dead.
QUICK_LAST_STEP = "stitch"
QUICK_CRASH_POINTS = (
    (("land", "before", "load_log"), "embedded"),              # bronze and quarantine, no load log
    (("stitch", "after", "identity_history"), "delta-spark"),  # all but identity_map published
    (("stitch", "before", COMMITS_TABLE), "embedded"),         # every publish, no step record
)


@needs_delta_spark
@pytest.mark.crash_chain  # about 3 pipeline runs (35 min at load 13): opt-in with the chain
def test_a_run_killed_in_land_and_stitch_on_both_backends_recovers_to_an_uninterrupted_runs_tables(
        spark, tmp_path):
    """The chain's kills between the commits of land and stitch, in the default run (the chain runs
    every step: about 8 pipeline runs, over CI's share): runs through stitch only, so no model is
    trained. The first kill is on the embedded backend, the second on delta-spark (it restores the
    embedded run's dead land writes with ``restoreToVersion`` and dies between stitch's publishes),
    the third on embedded (delta-rs restores delta-spark's dead stitch writes); a file arrives after
    the first kill. The recovering run (delta-spark) breaks the dead run's lock, and every table equals
    an uninterrupted run's over the same files."""
    root = generate_base(tmp_path, "--to", QUICK_LAST_STEP)
    held = root / "held"
    reference, reference_raw = copy_of(root, "reference")
    arrive(held, reference_raw, ARRIVES_BEFORE_FIRST_CRASH + ARRIVES_AFTER_FIRST_CRASH)
    done = cdp_run(reference, reference_raw, "r1", "--to", QUICK_LAST_STEP)
    assert done.returncode == 0, done.stdout[-5000:]

    crashed, crashed_raw = copy_of(root, "crashed")
    arrive(held, crashed_raw, ARRIVES_BEFORE_FIRST_CRASH)
    resume_from = kill_in_turn(crashed, crashed_raw, held, list(QUICK_CRASH_POINTS), "--to", QUICK_LAST_STEP)
    recovered = cdp_run(crashed, crashed_raw, "r1", *resume_from, "--to", QUICK_LAST_STEP, backend="delta-spark")
    assert recovered.returncode == 0, recovered.stdout[-5000:]
    assert "breaking stale lock" in recovered.stdout
    assert_same_results(spark, reference, crashed)


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

