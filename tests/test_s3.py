"""The lake and the raw exports in object storage: a real S3 server (MinIO) on loopback.

The session's shared raw exports (tests/pipelines.py) are uploaded to a bucket and ``cdp run --lake
s3a://cdp/lake --raw s3a://cdp/raw`` runs in its own process, as users run it (Spark through S3A with
the hadoop-aws jars, delta-rs committing to the bucket, the land tasks reading raw files through
pyarrow.fs). It goes as far as ``stitch`` (land, standardize, stitch): the tables published there
must equal the session's reference run on local disk (same raw data, same run id; the reference is
shared with the backend, Connect and erasure comparisons, so no local run of its own). Then ``cdp
forget`` erases a person from the bucket lake and no object under it holds any spelling of the
person's identifiers.

The server is MinIO, built with ``go install`` by ``.ci/run``; the jars come from ``jars/pom.xml``.
Where either is absent the module skips and says which (``.ci/run`` installs both).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pipelines import (
    AS_OF,
    CLOCK_COLUMNS,
    RUN_ID,
    a_logged_identifier,
    cdp_command,
    child_env,
    choose_person,
    find_spellings,
    forget_arguments,
    spellings,
    timed,
)
from pyspark.testing import assertDataFrameEqual

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
JARS = REPO / "jars" / "lib"
HADOOP_AWS = "hadoop-aws-3.5.0.jar"
BUCKET = "cdp"
# The run stops after this step: features, train, tag and audiences take tens of minutes more on the
# shared 2-core machines (land alone took 246 s at a load average of 41), and what object storage
# changes (listing, fingerprinting and reading raw files, commits, reads) is all exercised by then.
LAST_STEP = "stitch"
# Tables compared with the reference lake: the bronze tables land wrote and what stitch published.
COMPARED = ("bronze_crm_members", "bronze_orders", "bronze_events", "identity_map", "customer_records",
            "customer_profile")


def _minio_binary() -> str | None:
    for candidate in (os.environ.get("CDP_MINIO"), shutil.which("minio"),
                      str(Path.home() / "go" / "bin" / "minio")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """The AWS environment a client of this server needs (credentials only: the endpoint comes
        from the profile, so both places the settings are read from are exercised)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def store(self):
        from cdp.lake.storage import ObjectStore

        return ObjectStore(access_key=self.access_key, secret_key=self.secret_key, endpoint=self.endpoint)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """MinIO on a free loopback port with a temp data dir and one bucket; stopped at the end."""
    binary = _minio_binary()
    if binary is None:
        pytest.skip("MinIO is not installed: .ci/run builds it (go install github.com/minio/minio@...), "
                    "or set CDP_MINIO to its path")
    data = tmp_path_factory.mktemp("minio-data")
    port, console = _free_port(), _free_port()
    server = S3Server(f"http://127.0.0.1:{port}", "cdp-test-" + secrets.token_hex(4), secrets.token_hex(16))
    env = {**os.environ, "MINIO_ROOT_USER": server.access_key, "MINIO_ROOT_PASSWORD": server.secret_key,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
    log = (tmp_path_factory.mktemp("minio-log") / "minio.log").open("w")
    process = subprocess.Popen([binary, "server", str(data), "--address", f"127.0.0.1:{port}",
                                "--console-address", f"127.0.0.1:{console}", "--quiet"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{server.endpoint}/minio/health/live", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"MinIO did not start (exit {process.poll()}); see {log.name}")
            time.sleep(0.3)
        server.store().pyarrow(allow_bucket_creation=True).create_dir(BUCKET)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _jars() -> list[Path]:
    jars = sorted(JARS.glob("*.jar"))
    if not any(jar.name == HADOOP_AWS for jar in jars):
        pytest.skip(f"{HADOOP_AWS} is not in {JARS}: run `mvn -q -f jars/pom.xml dependency:copy-dependencies` "
                    "(.ci/run does)")
    return jars


@dataclass(frozen=True)
class Runs:
    server: S3Server
    reference_lake: Path
    s3_lake: str
    common: list[str]  # --conf and --profile of every command
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def pipeline_runs(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory, conf_dir: Path, e2e_raw: Path,
                  reference_run) -> Runs:
    """The session's raw exports through ``cdp run`` on the S3 server, beside the reference lake."""
    from pyarrow import fs as pafs

    jars = _jars()
    work = tmp_path_factory.mktemp("s3-pipeline")
    conf = work / "conf"
    shutil.copytree(conf_dir, conf)
    (conf / "profiles" / "s3test.yaml").write_text("\n".join([
        f"lake: s3a://{BUCKET}/lake",
        "spark:",
        "  spark.master: local[2]",
        "  spark.driver.memory: 3g",
        "  spark.sql.shuffle.partitions: \"4\"",
        "  spark.ui.enabled: \"false\"",
        "  spark.sql.session.timeZone: UTC",
        "  spark.sql.parquet.outputTimestampType: TIMESTAMP_MICROS",
        f"  spark.jars: \"{','.join(str(j) for j in jars)}\"",
        # delta-spark is among the jars; the reference lake it is compared with is embedded (delta-rs)
        "  spark.cdp.lake.backend: embedded",
        f"  spark.hadoop.fs.s3a.endpoint: {s3_server.endpoint}",
        "  spark.hadoop.fs.s3a.path.style.access: \"true\"",
        ""]))
    log = work / "cdp.log"
    # credentials only from the server (no AWS_* of this machine); MLflow in the bucket lake (stitch
    # trains nothing, so nothing is written there)
    env = {key: value for key, value in child_env(None).items() if not key.startswith("AWS_")}
    env.update(s3_server.env())
    common = ["--conf", str(conf), "--profile", "s3test"]
    bucket = s3_server.store().pyarrow()
    pafs.copy_files(str(e2e_raw), f"{BUCKET}/raw", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=bucket)
    s3_lake = f"s3a://{BUCKET}/lake"
    with timed(f"S3 run (--to {LAST_STEP})"):
        cdp_command(["run", *common, "--lake", s3_lake, "--raw", f"s3a://{BUCKET}/raw", "--as-of", AS_OF,
                     "--run-id", RUN_ID, "--to", LAST_STEP, "--no-report"], env, log)
    return Runs(s3_server, reference_run.lake_root, s3_lake, common, env, log)


def test_a_command_locks_an_s3_lake_at_the_endpoint_its_profile_names(s3_server, conf_dir, monkeypatch):
    """A job run on its own (`cdp forget`, `cdp land`, ...) takes the lake's lock before its Spark
    session starts: the lock goes to the server the profile names, not to AWS (`cdp forget` on the
    bucket lake failed so, resolving cdp.s3.us-east-1.amazonaws.com)."""
    from pyarrow import fs as pafs

    from cdp.jobs.entry import lake_lock
    from cdp.runtime.config import JobContext, Profile

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    root = f"s3a://{BUCKET}/lock-test"
    profile = Profile(name="s3test", lake=root, spark={"spark.hadoop.fs.s3a.endpoint": s3_server.endpoint,
                                                       "spark.hadoop.fs.s3a.path.style.access": "true"})
    bucket, path = s3_server.store().pyarrow(), f"{BUCKET}/lock-test/_lock"
    with lake_lock(JobContext(conf_dir=conf_dir, profile=profile, lake_root=root, run_id="lock-1"), "forget"):
        assert bucket.get_file_info(path).type == pafs.FileType.File
    assert bucket.get_file_info(path).type == pafs.FileType.NotFound


def _frame(spark, uri: str, storage_options: dict[str, str] | None = None):
    """A table read with delta-rs (no Spark S3A in this process), as a Spark DataFrame."""
    from deltalake import DeltaTable

    table = DeltaTable(uri.replace("s3a://", "s3://"), storage_options=storage_options).to_pyarrow_table()
    kept = [name for name in table.column_names if name not in CLOCK_COLUMNS]
    return spark.createDataFrame(table.select(kept))


def test_the_pipeline_on_s3_publishes_the_same_tables_as_on_local_disk(spark, pipeline_runs):
    options = pipeline_runs.server.store().delta_rs()
    for name in COMPARED:
        on_s3 = _frame(spark, f"{pipeline_runs.s3_lake}/{name}", options)
        local = _frame(spark, str(pipeline_runs.reference_lake / name))
        assert local.count() > 0, f"{name} is empty on local disk: the comparison would prove nothing"
        assertDataFrameEqual(on_s3, local, checkRowOrder=False)
    # the raw files were landed from the bucket: the load log names their s3a URIs
    log = _frame(spark, f"{pipeline_runs.s3_lake}/load_log", options).select("path").collect()
    assert log and all(row["path"].startswith(f"s3a://{BUCKET}/raw/") for row in log)


def test_forget_on_s3_leaves_no_object_that_holds_the_person(pipeline_runs, e2e_raw):
    """Runs after the comparison above: it erases a person from the bucket lake."""
    person = choose_person(e2e_raw)
    wanted = spellings(person, e2e_raw)
    bucket, prefix = pipeline_runs.server.store().pyarrow(), f"{BUCKET}/lake"
    before = find_spellings(prefix, wanted, bucket)
    assert any(hit.startswith("identity_map/") for hit in before), before
    # The search reads the Delta logs in the bucket: a value their statistics hold is found there (the
    # person's own values are no file's min or max at this size, so they are not in any log).
    logged = a_logged_identifier(f"{prefix}/identity_map", "id_value", bucket)
    assert any(hit.startswith("_delta_log/") for hit in find_spellings(f"{prefix}/identity_map", {logged}, bucket))
    with timed("S3 forget"):
        cdp_command(["forget", *pipeline_runs.common, "--lake", pipeline_runs.s3_lake, *forget_arguments(person),
                     "--run-id", "req-s3", "--request-id", "req-s3"], pipeline_runs.env, pipeline_runs.log)
    assert find_spellings(prefix, wanted, bucket) == []
