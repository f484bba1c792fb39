"""The end-to-end runs every comparison test reads: one tiny raw folder, each pipeline run once.

The expensive part of an end-to-end test is a `cdp run` (minutes, mostly fixed cost per step), so
the session runs each pipeline once and the tests share it:

- ``e2e_raw``: generated raw exports (:data:`CUSTOMERS` persons), never modified (copy it to change it).
- ``reference_run``: `cdp run` on the embedded backend, train and the run report included; its lake
  keeps the MLflow store every other run uses (the same champions, so their tags are comparable, and
  none of them trains again).
- ``delta_spark_run``: the same raw data on the delta-spark backend (no train).
- ``connect_run``: `cdp run --remote sc://...` through the test session's Spark Connect server (no train).

Every run is a child `cdp run` with its own driver (:func:`cdp_run`, the ``e2e-<backend>`` profiles of
:func:`cli_conf`), as users run it: a whole pipeline inside the test session's 2 GB driver, beside
what every other test left there, ran out of memory in features (UNABLE_TO_ACQUIRE_MEMORY). The
tests read the lakes afterwards with the test session's Spark.

Every run uses the run id :data:`RUN_ID`, so two lakes differ only in wall-clock columns. Tests that
change a lake work on a copy (:func:`copy_lake`). Also here, used by several test modules: which
tables are published and how to compare them, the person to erase (from the generator's truth files)
and a byte search of a lake on local disk or in a bucket.

Fixtures are imported into ``tests/conftest.py``; :data:`TIMINGS` is printed at the end of the session.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pyarrow import fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

CUSTOMERS = 400
SEED = 11
END = date(2025, 6, 30)
AS_OF = "2025-07-01"  # the day after the generated history: audiences see recent behaviour
RUN_ID = "e2e-run-1"
# The pipeline without measure (nothing compared reads it); train only in the reference run.
STEPS = ("land", "standardize", "stitch", "features", "train", "tag", "audiences", "export")
STEPS_WITHOUT_TRAIN = tuple(step for step in STEPS if step != "train")
BACKENDS = ("embedded", "delta-spark")
# Wall-clock columns: the only ones two runs of the same data with the same run id may differ in.
CLOCK_COLUMNS = frozenset({"published_at", "exported_at", "computed_at", "changed_at", "added_at", "loaded_at",
                           "_ingested_at", "quarantined_at", "requested_at", "updated_at", "snapshot_at"})
# audience_* tables that are not an audience's members
NOT_AUDIENCES = frozenset({"audience_changes", "audience_stats", "audience_performance"})
TIMINGS: dict[str, float] = {}  # what each shared run cost, printed by conftest at the end
# A folder that keeps the shared runs for later sessions (a local loop over one test file at a time
# builds them once); unset (CI), each session builds them in its temp folder.
SHARED_DIR_VARIABLE = "CDP_E2E_DIR"
_DONE = "finished"  # marker beside a shared run's output: it completed and may be reused


# -- running ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineRun:
    """A finished run: its lake folder, the backend it wrote with and the MLflow store it used."""

    lake_root: Path
    backend: str
    mlflow_uri: str


def context(conf_dir: Path, lake_root: Path, run_id: str):
    from cdp.runtime.config import JobContext, Profile

    return JobContext(conf_dir=conf_dir, profile=Profile(name="local", lake=str(lake_root)),
                      lake_root=str(lake_root), run_id=run_id)


@contextmanager
def on_backend(spark: SparkSession, backend: str) -> Iterator[None]:
    """The session's lake backend set for everything inside (jobs that build their own Lake too)."""
    from cdp.lake import BACKEND_SETTING

    saved = spark.conf.get(BACKEND_SETTING, "auto")
    spark.conf.set(BACKEND_SETTING, backend)
    try:
        yield
    finally:
        spark.conf.set(BACKEND_SETTING, saved)


@contextmanager
def mlflow_store(uri: str | None) -> Iterator[None]:
    """MLflow pointed at ``uri`` (None: the lake's own store, the default users get)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            if uri is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, uri)
        yield


def run_in_session(spark: SparkSession, conf_dir: Path, lake_root: Path, raw: Path, *, backend: str,
                   run_id: str = RUN_ID, steps: Sequence[str] = STEPS_WITHOUT_TRAIN,
                   mlflow_uri: str | None = None, report: bool = False, as_of: str = AS_OF):
    """`cdp run` of ``steps`` in this test session on ``backend`` as of ``as_of``; fails the test unless
    every step is ok."""
    from cdp.jobs import run as runner
    from cdp.lake import Lake

    def fresh_cache(event: str, step: str) -> None:
        # Steps share tables, never cached frames. This session has 2 GB for every test: what earlier
        # steps and tests left cached took the features step's execution memory after a re-delivery
        # (UNABLE_TO_ACQUIRE_MEMORY), so each step starts with nothing cached.
        if event == "start":
            spark.catalog.clearCache()

    with on_backend(spark, backend), mlflow_store(mlflow_uri):
        lake = Lake(spark, str(lake_root), backend=backend)
        summary = runner.run(spark, context(conf_dir, lake_root, run_id), only=list(steps), raw=str(raw),
                             as_of=as_of, report=report, lake=lake, observer=fresh_cache)
    assert summary.status == "ok" and all(s.status == "ok" for s in summary.steps), runner.format_summary(summary)
    return lake, summary


def cdp_run(cli_conf: Path, lake_root: Path, raw: str | Path, *, backend: str, log: Path, run_id: str = RUN_ID,
            steps: Sequence[str] = STEPS_WITHOUT_TRAIN, mlflow_uri: str | None = None, report: bool = False,
            extra_env: Mapping[str, str] | None = None, as_of: str = AS_OF) -> None:
    """`cdp run` of ``steps`` as of ``as_of`` in a child process on ``backend`` (profile ``e2e-<backend>``
    of :func:`cli_conf`), as users run it; fails the test unless it exits 0 (every step ok)."""
    cdp_command(["run", "--conf", str(cli_conf), "--profile", f"e2e-{backend}", "--lake", str(lake_root),
                 "--raw", str(raw), "--as-of", as_of, "--run-id", run_id, "--only", ",".join(steps),
                 *([] if report else ["--no-report"])],
                child_env(mlflow_uri, **(extra_env or {})), log)


def cdp_command(args: Sequence[str], env: Mapping[str, str], log: Path, timeout: int = 3600) -> None:
    """``cdp <args>`` in a child process, as users run it; output appended to ``log``."""
    with log.open("a") as output:
        output.write(f"\n$ cdp {' '.join(args)}\n")
        output.flush()
        status = subprocess.run([sys.executable, "-m", "cdp.jobs.cli", *args], stdout=output,
                                stderr=subprocess.STDOUT, env=dict(env), cwd=log.parent, timeout=timeout).returncode
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise AssertionError(f"cdp {' '.join(args)} exited {status}:\n{tail}")


def child_env(mlflow_uri: str | None, **extra: str) -> dict[str, str]:
    """A child `cdp`'s environment: this interpreter for Python workers, MLflow at ``mlflow_uri``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, **extra)
    if mlflow_uri is not None:
        env.update(MLFLOW_TRACKING_URI=mlflow_uri, MLFLOW_REGISTRY_URI=mlflow_uri)
    return env


def copy_lake(run: PipelineRun, target: Path) -> Path:
    """A copy of a run's lake a test may change (Delta logs address files relative to the table)."""
    shutil.copytree(run.lake_root, target)
    return target


def shared_folder(factory: pytest.TempPathFactory, name: str) -> tuple[Path, bool]:
    """The folder of shared run ``name`` and whether a finished one is there already to reuse."""
    configured = os.environ.get(SHARED_DIR_VARIABLE)
    if not configured:
        return factory.mktemp(name), False
    folder = Path(configured) / name
    if (folder / _DONE).is_file():
        return folder, True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder, False


def mark_finished(folder: Path) -> None:
    (folder / _DONE).write_text("the run in this folder completed; tests/pipelines.py reuses it\n")


@contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    TIMINGS[name] = time.perf_counter() - started


# -- the shared runs (session fixtures, imported by conftest) -------------------------------------

@pytest.fixture(scope="session")
def e2e_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated raw exports of :data:`CUSTOMERS` persons (read-only: copy before changing)."""
    from cdp.synthetic import GenerateParams, generate

    folder, finished = shared_folder(tmp_path_factory, "e2e-raw")
    raw = folder / "raw"
    if not finished:
        with timed("generate"):
            generate(GenerateParams(out=raw, customers=CUSTOMERS, seed=SEED, end=END, chunk_size=CUSTOMERS,
                                    workers=1))
        mark_finished(folder)
    return raw


@pytest.fixture(scope="session")
def reference_run(cli_conf: Path, e2e_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The whole pipeline on the embedded backend, train and run report included; MLflow in the lake."""
    from cdp.runtime.mlflow import lake_store_uri

    folder, finished = shared_folder(tmp_path_factory, "e2e-reference")
    root = folder / "lake"
    if not finished:
        with timed("reference run (embedded, with train and report)"):
            cdp_run(cli_conf, root, e2e_raw, backend="embedded", log=folder / "cdp.log", steps=STEPS, report=True)
        mark_finished(folder)
    return PipelineRun(root, "embedded", lake_store_uri(str(root)))


@pytest.fixture(scope="session")
def delta_spark_run(spark: SparkSession, cli_conf: Path, e2e_raw: Path, reference_run: PipelineRun,
                    tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The same raw data on delta-spark, with the reference's champions (no train)."""
    from cdp.lake import delta_spark_available
    from cdp.runtime.jars import absent_reason, local_jars

    if not delta_spark_available(spark):
        if not local_jars():
            pytest.skip(absent_reason())
        pytest.fail("the jars are fetched but this session cannot load Delta's classes")
    folder, finished = shared_folder(tmp_path_factory, "e2e-delta-spark")
    root = folder / "lake"
    if not finished:
        with timed("delta-spark run (no train)"):
            cdp_run(cli_conf, root, e2e_raw, backend="delta-spark", log=folder / "cdp.log",
                    mlflow_uri=reference_run.mlflow_uri)
        mark_finished(folder)
    return PipelineRun(root, "delta-spark", reference_run.mlflow_uri)


@pytest.fixture(scope="session")
def connect_run(connect_server: Any, conf_dir: Path, e2e_raw: Path, reference_run: PipelineRun,
                tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """`cdp run --remote sc://...` through the session's Connect server (embedded backend: the server
    has no Delta Connect plugins), with the reference's champions (no train)."""
    work, finished = shared_folder(tmp_path_factory, "e2e-connect")
    root = work / "lake"
    if finished:
        return PipelineRun(root, "embedded", reference_run.mlflow_uri)
    with timed("Spark Connect run (no train)"):
        cdp_command(["run", "--remote", connect_server.url, "--conf", str(conf_dir), "--lake", str(root),
                     "--raw", str(e2e_raw), "--as-of", AS_OF, "--run-id", RUN_ID, "--no-report",
                     "--only", ",".join(STEPS_WITHOUT_TRAIN)],
                    child_env(reference_run.mlflow_uri), work / "cdp.log")
    mark_finished(work)
    return PipelineRun(root, "embedded", reference_run.mlflow_uri)


# -- comparing lakes ------------------------------------------------------------------------------

def published_tables(lake: Any) -> list[str]:
    """What users read: identity, profile, features, tags, each audience and each export."""
    audiences = sorted(t for t in lake.tables() if t.startswith(("audience_", "export_")) and t not in NOT_AUDIENCES)
    return ["identity_map", "customer_records", "customer_profile", "features_daily", "tags_wide", *audiences]


def comparable(frame: DataFrame) -> DataFrame:
    """``frame`` without its wall-clock columns."""
    return frame.select(*[F.col(f"`{c}`") for c in frame.columns if c not in CLOCK_COLUMNS])


def export_files(root: Path) -> dict[str, list[dict[str, str]]]:
    """Every export file under ``<lake>/_exports`` as sorted rows (clock columns left out), by relative
    path; manifests are left out (they hold the clock and the checksums of files compared here)."""
    files: dict[str, list[dict[str, str]]] = {}
    base = Path(root, "_exports")
    for path in sorted(base.rglob("*")):
        if not path.is_file() or path.name == "manifest.json":
            continue
        if path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                rows: list[dict[str, Any]] = list(csv.DictReader(handle))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        elif path.suffix == ".parquet":
            rows = pq.read_table(path).to_pylist()
        else:
            rows = [{"bytes": path.read_bytes().hex()}]
        cleaned = [{k: str(v) for k, v in row.items() if k not in CLOCK_COLUMNS} for row in rows]
        files[str(path.relative_to(base))] = sorted(cleaned, key=lambda row: json.dumps(row, sort_keys=True))
    return files


def assert_same_published(left: Any, right: Any) -> list[str]:
    """Every published table of two lakes equal row for row, and their export files; returns the
    tables compared. At least one audience and one export file must have rows, or nothing was shown."""
    tables = published_tables(left)
    assert tables == published_tables(right)
    with_rows = []
    for table in tables:
        expected, actual = comparable(left.read(table)), comparable(right.read(table))
        assert expected.columns == actual.columns, table
        if expected.count():
            with_rows.append(table)
        assertDataFrameEqual(actual, expected)
    members = [t for t in with_rows if t.startswith("audience_")]
    assert {"identity_map", "customer_profile", "features_daily", "tags_wide"} <= set(with_rows), with_rows
    assert members, f"every audience is empty: {tables}"
    exported = export_files(Path(left.root))
    assert any(rows for rows in exported.values()), "no export file has a row"
    assert export_files(Path(right.root)) == exported
    return tables


def engines(lake: Any, table: str) -> set[str]:
    """Which engines committed ``table`` (delta-spark or delta-rs), from each commit's commitInfo."""
    found = set()
    for commit in Path(lake.uri(table), "_delta_log").glob("*.json"):
        for line in commit.read_text(encoding="utf-8").splitlines():
            info = json.loads(line).get("commitInfo") or {}
            text = f"{info.get('engineInfo', '')} {info.get('clientVersion', '')}"
            if info:
                found.add("delta-spark" if "Delta-Lake/" in text else "delta-rs" if "delta-rs" in text else text)
    return found


# -- the person to erase --------------------------------------------------------------------------

def choose_person(raw: Path) -> dict[str, str]:
    """From the generator's truth: the person with the most records among those with an e-mail, a
    phone, a member number, a WeChat unionid and a return."""
    truth = raw / "_truth"
    with (truth / "records.csv").open(encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    with (truth / "persons.csv").open(encoding="utf-8") as handle:
        persons = list(csv.DictReader(handle))
    counts: dict[str, int] = {}
    for row in records:
        counts[row["person_id"]] = counts.get(row["person_id"], 0) + 1
    with_returns = {r["person_id"] for r in records if r["source"] == "returns"}
    eligible = [p for p in persons if p["email"] and p["phone"] and p["member_no"] and p["unionid"]
                and p["person_id"] in with_returns]
    assert eligible, "no generated person has every identifier and a return"
    return max(eligible, key=lambda p: (counts.get(p["person_id"], 0), p["person_id"]))


def spellings(person: Mapping[str, str], raw: Path) -> set[str]:
    """Every spelling of the person's identifiers that the raw files hold (as they appear there)."""
    from cdp.synthetic import format_email, format_phone

    text = "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in sorted(raw.rglob("*"))
                     if p.is_file() and "_truth" not in p.parts)
    national = person["phone"].removeprefix("+86")
    candidates = {person["phone"], person["member_no"], person["unionid"],
                  *(format_email(person["email"], v).strip() for v in range(4)),
                  *(format_phone(national, v).strip() for v in range(8))}
    found = {c for c in candidates if c and c in text}
    assert person["email"] in {c.lower() for c in found} and any(national in c for c in found), found
    return found


def forget_arguments(person: Mapping[str, str]) -> list[str]:
    """`cdp forget`'s arguments for a request naming every identifier the person gave."""
    identifiers = (f"email={person['email']}", f"phone={person['phone']}", f"member_id={person['member_no']}",
                   f"wechat_unionid={person['unionid']}")
    return [argument for identifier in identifiers for argument in ("--identifier", identifier)]


@pytest.fixture(scope="session")
def cli_conf(conf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged conf plus a profile per backend (``e2e-embedded``, ``e2e-delta-spark``) for the
    child `cdp` commands (whole runs and `cdp forget`): two cores and a driver of their own beside the
    test session's JVM. The delta-spark jars reach the child through `cdp jars fetch`'s folder, as
    they reach users' runs (:func:`cdp.runtime.session.build_session`)."""
    conf = tmp_path_factory.mktemp("e2e-conf") / "conf"
    shutil.copytree(conf_dir, conf)
    for backend in BACKENDS:
        (conf / "profiles" / f"e2e-{backend}.yaml").write_text("\n".join([
            "lake: ./lake", "spark:", "  spark.master: local[2]",
            # features of 400 customers needs more than the test session's 2 GB (UNABLE_TO_ACQUIRE_MEMORY)
            "  spark.driver.memory: 3g",
            "  spark.sql.shuffle.partitions: \"2\"", "  spark.ui.enabled: \"false\"",
            "  spark.ui.showConsoleProgress: \"false\"",  # the log beside the lake stays readable
            # as the test session: tiny data, so compiling whole-stage code costs more than it saves,
            # and delta-spark replays a table's log in 2 tasks instead of 50
            "  spark.sql.codegen.wholeStage: \"false\"", "  spark.databricks.delta.snapshotPartitions: \"2\"",
            "  spark.sql.session.timeZone: UTC", "  spark.sql.parquet.outputTimestampType: TIMESTAMP_MICROS",
            f"  spark.cdp.lake.backend: {backend}", ""]))
    # Quality gates take their thresholds by profile name: these profiles get the `local` ones (small
    # generated data swings between runs; tag drift warns). With the strict defaults, the erasure
    # test's re-run failed the tags_drift gate (recommend_apparel's mean 0.004 -> 0.019 over 519 customers).
    quality = yaml.safe_load((conf / "quality.yaml").read_text(encoding="utf-8"))
    quality["profiles"].update({f"e2e-{backend}": quality["profiles"]["local"] for backend in BACKENDS})
    (conf / "quality.yaml").write_text(yaml.safe_dump(quality, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return conf


def cdp_forget(cli_conf: Path, lake_root: Path, backend: str, person: Mapping[str, str], request_id: str) -> None:
    """`cdp forget` of every identifier of ``person`` in a child process on ``backend``, as users run it
    (the command commits its writes as one step of the lake's step commits); log beside the lake."""
    with timed(f"cdp forget on {backend} ({request_id})"):
        cdp_command(["forget", "--conf", str(cli_conf), "--profile", f"e2e-{backend}", "--lake", str(lake_root),
                     "--run-id", request_id, "--request-id", request_id, *forget_arguments(person)],
                    child_env(None), lake_root.parent / f"{request_id}.log")


def erasure_audit(lake: Any, request_id: str) -> dict[str, Any]:
    """The ``privacy_audit`` row of one erasure request."""
    rows = lake.read("privacy_audit").filter(F.col("request_id") == request_id).collect()
    assert len(rows) == 1, rows
    return rows[0].asDict()


# -- searching every byte ---------------------------------------------------------------------------

def a_logged_identifier(table: str | Path, column: str, filesystem: pafs.FileSystem | None = None) -> str:
    """The smallest ``column`` value in the per-file statistics of the table's first commit with any.

    Whether the chosen person's values are some file's min or max (and so in the Delta log) depends
    on the data: at the shared runs' size they are not. That a byte search reads the log does not:
    a value the log's statistics hold must be found there. ``table`` and ``filesystem`` as in
    :func:`find_spellings`.
    """
    filesystem = filesystem or pafs.LocalFileSystem()
    log = f"{str(table).rstrip('/')}/_delta_log"
    commits = sorted(i.path for i in filesystem.get_file_info(pafs.FileSelector(log))
                     if i.type == pafs.FileType.File and i.path.endswith(".json"))
    for commit in commits:
        with filesystem.open_input_stream(commit) as stream:
            lines = stream.read().decode("utf-8").splitlines()
        for line in lines:
            add = json.loads(line).get("add") or {}
            if add.get("stats"):
                return json.loads(add["stats"])["minValues"][column]
    raise AssertionError(f"{table}: no commit with file statistics")


def find_spellings(root: str | Path, wanted: set[str], filesystem: pafs.FileSystem | None = None) -> list[str]:
    """Where under ``root`` any of ``wanted`` occurs (case-insensitive): sorted '<file>: <spelling>'.

    Parquet files (data files, Delta checkpoints) are decoded and every string value scanned (Parquet
    compresses, so raw bytes would prove nothing); every other file (Delta log JSON, reports, exports,
    MLflow's database and artifacts) is read byte for byte. ``filesystem`` is a ``pyarrow.fs`` file
    system (a bucket: ``root`` is then ``bucket/prefix``); default the local disk.
    """
    filesystem = filesystem or pafs.LocalFileSystem()
    base = str(root).rstrip("/")
    needles = sorted({w.lower() for w in wanted})
    hits = []
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        relative = info.path[len(base):].lstrip("/")
        texts: list[str] = []
        if info.path.endswith(".parquet"):
            table = pq.read_table(info.path, filesystem=filesystem)
            for column in table.columns:
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    texts.extend(v for v in column.to_pylist() if v)
                elif pa.types.is_nested(column.type):
                    texts.append(json.dumps(column.to_pylist(), ensure_ascii=False, default=str))
        else:
            with filesystem.open_input_stream(info.path) as stream:
                data = stream.read()
            texts.append(data.decode("utf-8", errors="ignore"))
            # JSON writers may escape non-ASCII (full-width digits); read those files unescaped too
            if relative.endswith((".json", ".jsonl")) or "/_delta_log/" in f"/{relative}":
                texts.append(data.decode("unicode_escape", errors="ignore"))
        for text in texts:
            lowered = text.lower()
            hits.extend(f"{relative}: {n}" for n in needles if n in lowered)
    return sorted(set(hits))
