"""One Spark session for the whole test run, plus per-test hygiene."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The shared end-to-end runs (one raw folder, each pipeline once), read by every comparison test.
from pipelines import TIMINGS, cli_conf, connect_run, delta_spark_run, e2e_raw, reference_run  # noqa: F401
from pyspark.sql import SparkSession

from cdp.lake import BACKEND_SETTING
from cdp.runtime.jars import local_jars
from cdp.runtime.session import jar_settings

# No network here: MLflow must not phone home or draw progress bars in test logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Python workers must run this interpreter (with pandas, pyarrow, phonenumbers), not the system python3.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


# The delta-spark jars fetched by `cdp jars fetch` (.ci/run fetches them): when present the session
# starts with them and the Delta extension, so both lake backends run here. Tests that build a Lake
# without naming a backend get the one in CDP_TEST_LAKE_BACKEND (default embedded, the backend every
# job test was written on); the lake contract, equality and interop tests name both explicitly.
FETCHED_JARS = local_jars()
TEST_LAKE_BACKEND = os.environ.get("CDP_TEST_LAKE_BACKEND", "embedded")


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("warehouse")
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    builder = SparkSession.builder
    for key, value in jar_settings({}, FETCHED_JARS).items():  # spark.jars, Delta extension and catalog
        builder = builder.config(key, value)
    session = (
        builder.master("local[2]")  # two cores on CI; also exercises real shuffles
        .appName("cdp-tests")
        .config("spark.sql.shuffle.partitions", "2")  # tiny data: 200 partitions would only add overhead
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")  # no port binding, faster start
        .config("spark.python.sql.dataFrameDebugging.enabled", "false")  # as cdp.runtime.session: no call-site capture per Column
        .config("spark.ui.showConsoleProgress", "false")  # keep test logs readable
        .config("spark.sql.session.timeZone", "UTC")  # expected values are written in UTC
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # readable by delta-rs
        .config("spark.sql.warehouse.dir", str(warehouse))  # never litter the repo
        .config("spark.driver.memory", "2g")
        .config("spark.sql.adaptive.enabled", "false")  # deterministic partition counts in tests
        .config("spark.sql.codegen.wholeStage", "false")  # tiny data: compiling generated code costs more than it saves
        .config("spark.databricks.delta.snapshotPartitions", "2")  # delta-spark: 50 tasks per log replay otherwise
        .config(BACKEND_SETTING, TEST_LAKE_BACKEND)
        .getOrCreate()
    )
    session.sparkContext.setCheckpointDir(str(checkpoints))  # connected components checkpoint here
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _clean_spark_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Clear cache and temp views after each test that used Spark, so tests cannot leak into each other."""
    yield
    if "spark" in request.fixturenames:
        session = request.getfixturevalue("spark")
        session.catalog.clearCache()
        for table in session.catalog.listTables():
            if table.isTemporary:
                session.catalog.dropTempView(table.name)


@pytest.fixture(autouse=True)
def _mlflow_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own MLflow tracking store in a temp folder."""
    from cdp.runtime.mlflow import lake_store_uri

    store = lake_store_uri(str(tmp_path))  # the store a lake at tmp_path would get
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store)


@pytest.fixture()
def lake(spark: SparkSession, tmp_path: Path):
    """A fresh, empty lake on the session's backend (CDP_TEST_LAKE_BACKEND, default embedded)."""
    from cdp.lake import Lake

    return Lake(spark, str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "conf"


# --- the standalone-cluster run (tests/cluster/, marker `cluster`) -----------------------------------
# It spark-submits the whole pipeline to its own master and worker: minutes of mostly fixed cost
# (JVM starts, planning, small jobs). It starts in the background when the session's first test
# starts and runs while the other tests do; the cluster test, collected last, waits for it and
# checks it, and the notebooks, last of all, read the lake it built.
STANDALONE_SCRIPT = Path(__file__).resolve().parent / "cluster" / "run_standalone.sh"
STANDALONE_DIR = "standalone-cluster"  # under the session's base temp; tests/test_notebooks.py names it too
STANDALONE_TIMEOUT_SECONDS = 40 * 60  # a hung cluster must not hang CI; a normal run takes a few minutes
_LAST = ("cluster", "notebooks")  # markers of the tests that run after all others, in this order


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What each shared end-to-end run cost (tests/pipelines.py), for the CI budget."""
    if TIMINGS:
        terminalreporter.write_sep("-", "shared end-to-end runs (tests/pipelines.py)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {name}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every other test first, then the cluster test, then the notebooks (stable within each group)."""
    def rank(item: pytest.Item) -> int:
        return next((i + 1 for i, marker in enumerate(_LAST) if item.get_closest_marker(marker)), 0)

    items.sort(key=rank)


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 60) -> None:
    """SIGTERM a process group started with ``start_new_session=True``; SIGKILL it after ``grace_seconds``."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class StandaloneRun:
    """``run_standalone.sh`` as a background process group, its output in ``log``."""

    def __init__(self, work: Path, log: Path):
        self.work, self.log = work, log
        # The script's own settings, not the per-test MLflow store: the run keeps its models in the lake.
        env = {key: value for key, value in os.environ.items()
               if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        env.update(PYTHON=sys.executable, CDP_CLUSTER_DIR=str(work))
        self.started = time.monotonic()
        with log.open("w") as output:
            self.process = subprocess.Popen(["bash", str(STANDALONE_SCRIPT)], stdout=output,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self) -> int | None:
        """The script's exit code, or None when it ran past the timeout (it is then stopped)."""
        remaining = STANDALONE_TIMEOUT_SECONDS - (time.monotonic() - self.started)
        try:
            return self.process.wait(timeout=max(remaining, 1))
        except subprocess.TimeoutExpired:
            self.stop()
            return None
        except BaseException:  # Ctrl-C in pytest: still stop the cluster
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the script's whole process group: spark-submit ends, then its trap stops the daemons."""
        stop_process_group(self.process)


@pytest.fixture(scope="session", autouse=True)
def standalone_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[StandaloneRun | None]:
    """The background cluster run when this session selected the cluster test, else None."""
    if not any(item.get_closest_marker("cluster") for item in request.session.items):
        yield None
        return
    work = tmp_path_factory.getbasetemp() / STANDALONE_DIR
    run = StandaloneRun(work, tmp_path_factory.mktemp("standalone-log") / "run_standalone.log")
    try:
        yield run
    finally:
        run.stop()


# --- the Spark Connect server (marker `connect`) ------------------------------------------------------
# A local Spark Connect server from pyspark's own distribution (its jars folder ships
# spark-connect_2.13-<version>.jar; the wheel has no sbin/start-connect-server.sh, so it is
# spark-submit --class ...SparkConnectServer, which is what that script runs). Started once, on a free
# loopback port, only when the session selected a `connect` test; stopped at the end.
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
CONNECT_START_TIMEOUT_SECONDS = 180


class ConnectServer:
    """``spark-submit`` of the Spark Connect server as a process group; ``url`` is its ``sc://`` address."""

    def __init__(self, work: Path):
        import pyspark

        spark_home = Path(pyspark.__file__).resolve().parent
        self.work = work
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"sc://127.0.0.1:{self.port}"
        self.log = work / "connect-server.log"
        command = [
            str(spark_home / "bin" / "spark-submit"), "--class", CONNECT_SERVER_CLASS,
            "--name", "cdp-tests-connect", "--master", "local[2]",
            # the whole pipeline runs in this driver (tests/pipelines.py: connect_run), as the child runs
            # do in theirs: 2 GB ran out of memory in features
            "--driver-memory", "3g",
            "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
            "--conf", f"spark.connect.grpc.binding.port={self.port}",
            "--conf", "spark.ui.enabled=false",  # no port binding next to the test session's JVM
            "--conf", f"spark.sql.warehouse.dir={work / 'warehouse'}",
            "--conf", f"spark.checkpoint.dir={work / 'checkpoints'}",  # reliable checkpoints over Connect
            "--conf", f"spark.local.dir={work / 'tmp'}",
            # as the local profile: the JIT compiles the huge generated methods of features and tags
            "--conf", "spark.driver.extraJavaOptions=-XX:-DontCompileHugeMethods",
        ]
        # The server's Python workers (mapInArrow, pandas UDFs, MLflow's UDF) run this interpreter.
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_HOME": str(spark_home),
               "SPARK_LOCAL_IP": "127.0.0.1"}
        env.pop("SPARK_REMOTE", None)
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        for script in (spark_home / "bin").iterdir():
            script.chmod(script.stat().st_mode | 0o111)  # pip may drop the execute bits
        with self.log.open("w") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def wait_ready(self) -> None:
        """Return once the gRPC port accepts connections; fail with the server's log otherwise."""
        deadline = time.monotonic() + CONNECT_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Spark Connect server exited ({self.process.returncode}):\n"
                                   f"{self.log.read_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"Spark Connect server not listening after {CONNECT_START_TIMEOUT_SECONDS} s:\n"
                           f"{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        stop_process_group(self.process)


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """A running local Spark Connect server for the `connect` tests (started on first use)."""
    server = ConnectServer(tmp_path_factory.mktemp("connect-server"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
