"""The one helper for local vs remote paths and the one for MLflow's store (no Spark)."""
from __future__ import annotations

import os

import pytest

from cdp.lake import paths
from cdp.runtime import mlflow as mlflow_store


@pytest.mark.parametrize(("uri", "local"), [
    ("/data/lake", True), ("lake", True), ("file:///data/lake", True), ("~/lake", True),
    ("s3a://bucket/lake", False), ("abfss://c@acct.dfs.core.windows.net/lake", False), ("hdfs://nn/lake", False),
])
def test_is_local_by_scheme(uri, local):
    assert paths.is_local(uri) is local


def test_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [paths.normalize_root(r) for r in ("lake", "file:///data/lake", "s3a://bucket/lake/")] == [
        f"{tmp_path}/lake", "/data/lake", "s3a://bucket/lake"]
    assert paths.normalize_root("~/lake") == os.path.expanduser("~/lake")
    with pytest.raises(ValueError, match="s3a://bucket/lake is not a local path"):
        paths.local_path("s3a://bucket/lake")


def test_spark_and_delta_rs_spellings():
    assert [paths.spark_path("/data/t"), paths.spark_path("s3a://b/t")] == ["file:///data/t", "s3a://b/t"]
    assert [paths.delta_rs_uri("s3a://b/t"), paths.delta_rs_uri("/data/t")] == ["s3://b/t", "/data/t"]


def test_mlflow_store_is_the_lake_sqlite_file_unless_the_environment_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    lake = f"file://{tmp_path}/lake"
    own = f"sqlite:///{tmp_path}/lake/mlflow.db"
    assert (mlflow_store.lake_store_uri(lake), mlflow_store.tracking_uri(lake), mlflow_store.registry_uri(lake)) == (
        own, own, own)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert (mlflow_store.tracking_uri(lake), mlflow_store.registry_uri(lake)) == (
        "http://tracking:5000", "http://tracking:5000")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "databricks-uc")
    assert mlflow_store.registry_uri(lake) == "databricks-uc"
    assert mlflow_store.lake_store_uri(lake) == own  # the lake's own store does not follow the environment


def test_configure_points_mlflow_at_the_store_and_returns_the_artifact_root(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    artifacts = mlflow_store.configure(str(tmp_path / "lake"))
    assert (artifacts, mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (
        f"file://{tmp_path}/lake/mlflow-artifacts", f"sqlite:///{tmp_path}/lake/mlflow.db",
        f"sqlite:///{tmp_path}/lake/mlflow.db")
    assert (tmp_path / "lake").is_dir()
