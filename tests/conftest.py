"""One Spark session for the whole test run, plus per-test hygiene."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

# No network here: MLflow must not phone home or draw progress bars in test logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Python workers must run this interpreter (with pandas, pyarrow, phonenumbers), not the system python3.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("warehouse")
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    session = (
        SparkSession.builder.master("local[2]")  # two cores on CI; also exercises real shuffles
        .appName("cdp-tests")
        .config("spark.sql.shuffle.partitions", "2")  # tiny data: 200 partitions would only add overhead
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")  # no port binding, faster start
        .config("spark.python.sql.dataFrameDebugging.enabled", "false")  # as jobs.session: no call-site capture per Column
        .config("spark.ui.showConsoleProgress", "false")  # keep test logs readable
        .config("spark.sql.session.timeZone", "UTC")  # expected values are written in UTC
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # readable by delta-rs
        .config("spark.sql.warehouse.dir", str(warehouse))  # never litter the repo
        .config("spark.driver.memory", "2g")
        .config("spark.sql.adaptive.enabled", "false")  # deterministic partition counts in tests
        .config("spark.sql.codegen.wholeStage", "false")  # tiny data: compiling generated code costs more than it saves
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
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/mlflow.db")


@pytest.fixture()
def lake(spark: SparkSession, tmp_path: Path):
    """A fresh, empty lake on the backend this machine has (embedded here, delta-spark on a cluster)."""
    from jobs.lake import Lake

    return Lake(spark, str(tmp_path / "lake"))


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "conf"
