"""The lake and the raw exports in object storage: a real S3 server (MinIO) on loopback.

The pipeline runs twice as users run it, with ``cdp run`` in its own process: once on a local lake
over local raw files, once with ``--lake s3a://cdp/lake --raw s3a://cdp/raw`` (raw files uploaded to
the bucket, Spark through S3A with the hadoop-aws jars, delta-rs committing to the bucket, the land
tasks reading raw files through pyarrow.fs). The runs go as far as ``stitch`` (land, standardize,
stitch): the tables published there must be the same.

The server is MinIO, built with ``go install`` by ``.ci/run``; the jars come from ``jars/pom.xml``.
Where either is absent the module skips and says which (``.ci/run`` installs both).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

REPO = Path(__file__).resolve().parents[1]
JARS = REPO / "jars" / "lib"
HADOOP_AWS = "hadoop-aws-3.5.0.jar"
BUCKET = "cdp"
CUSTOMERS = 150
SEED = 11
END = "2025-06-30"
AS_OF = (date.fromisoformat(END) + timedelta(days=1)).isoformat()
# The runs stop after this step: features, train, tag and audiences take tens of minutes more on the
# shared 2-core machines (land alone took 246 s at a load average of 41), and what object storage
# changes (listing, fingerprinting and reading raw files, commits, reads) is all exercised by then.
LAST_STEP = "stitch"
# Tables compared between the two lakes: the bronze tables land wrote and what stitch published.
COMPARED = ("bronze_crm_members", "bronze_orders", "bronze_events", "identity_map", "customer_records",
            "customer_profile")
# Columns that record when or in which run a row was written, not what it says.
RUN_COLUMNS = {"run_id", "updated_run", "created_run", "computed_at", "updated_at", "published_at", "_ingested_at",
               "loaded_at", "snapshot_at", "created_at"}


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


def _cdp(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as output:
        output.write(f"\n$ cdp {' '.join(args)}\n")
        output.flush()
        status = subprocess.run([sys.executable, "-m", "cdp.jobs.cli", *args], stdout=output,
                                stderr=subprocess.STDOUT, env=env, cwd=log.parent, timeout=1800).returncode
    if status != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        raise AssertionError(f"cdp {' '.join(args)} exited {status}:\n{tail}")


@dataclass(frozen=True)
class Runs:
    server: S3Server
    local_lake: Path
    s3_lake: str
    conf: Path
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def pipeline_runs(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory, conf_dir: Path) -> Runs:
    """The same generated raw exports through ``cdp run``, on local disk and on the S3 server."""
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
        f"  spark.hadoop.fs.s3a.endpoint: {s3_server.endpoint}",
        "  spark.hadoop.fs.s3a.path.style.access: \"true\"",
        ""]))
    log = work / "cdp.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))}
    # one model registry for both runs: the first trains, the second uses the same champions
    env.update(s3_server.env(), PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db", MLFLOW_REGISTRY_URI=f"sqlite:///{work}/mlflow.db",
               MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    common = ["--conf", str(conf), "--profile", "s3test", "--as-of", AS_OF, "--to", LAST_STEP, "--no-report"]
    raw = work / "raw"
    local_lake = work / "lake"
    _cdp(["run", "--lake", str(local_lake), "--raw", str(raw), "--customers", str(CUSTOMERS), "--seed", str(SEED),
          "--end", END, *common], env, log)
    bucket = s3_server.store().pyarrow()
    pafs.copy_files(str(raw), f"{BUCKET}/raw", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=bucket)
    s3_lake = f"s3a://{BUCKET}/lake"
    _cdp(["run", "--lake", s3_lake, "--raw", f"s3a://{BUCKET}/raw", *common], env, log)
    return Runs(s3_server, local_lake, s3_lake, conf, env, log)


def _frame(spark, uri: str, storage_options: dict[str, str] | None = None):
    """A table read with delta-rs (no Spark S3A in this process), as a Spark DataFrame."""
    from deltalake import DeltaTable

    table = DeltaTable(uri.replace("s3a://", "s3://"), storage_options=storage_options).to_pyarrow_table()
    kept = [name for name in table.column_names if name not in RUN_COLUMNS]
    return spark.createDataFrame(table.select(kept))


def test_the_pipeline_on_s3_publishes_the_same_tables_as_on_local_disk(spark, pipeline_runs):
    options = pipeline_runs.server.store().delta_rs()
    for name in COMPARED:
        on_s3 = _frame(spark, f"{pipeline_runs.s3_lake}/{name}", options)
        local = _frame(spark, str(pipeline_runs.local_lake / name))
        assert local.count() > 0, f"{name} is empty on local disk: the comparison would prove nothing"
        assertDataFrameEqual(on_s3, local, checkRowOrder=False)
    # the raw files were landed from the bucket: the load log names their s3a URIs
    log = _frame(spark, f"{pipeline_runs.s3_lake}/load_log", options).select("path").collect()
    assert log and all(row["path"].startswith(f"s3a://{BUCKET}/raw/") for row in log)
