"""Where MLflow keeps runs and models: the one place every job, the report and the tests ask.

``$MLFLOW_TRACKING_URI`` (and ``$MLFLOW_REGISTRY_URI``, else the tracking URI) when set; otherwise a
SQLite store in the lake, ``sqlite:///<lake>/mlflow.db``, with artifacts under
``<lake>/mlflow-artifacts`` (a SQLite store would otherwise write ``./mlruns`` wherever the job runs).
"""
from __future__ import annotations

import os
from typing import Any

from cdp.lake.paths import is_local, local_path

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlflow-artifacts"


def _root(lake_root: str) -> str:
    return local_path(lake_root) if is_local(lake_root) else str(lake_root).rstrip("/")


def lake_store_uri(lake_root: str) -> str:
    """The lake's own SQLite tracking store, whatever the environment says."""
    return f"sqlite:///{_root(lake_root)}/{STORE_FILE}"


def tracking_uri(lake_root: str) -> str:
    """``$MLFLOW_TRACKING_URI``, else :func:`lake_store_uri`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or lake_store_uri(lake_root)


def registry_uri(lake_root: str) -> str:
    """``$MLFLOW_REGISTRY_URI``, else the tracking URI."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri(lake_root)


def client(lake_root: str) -> Any:
    """An ``MlflowClient`` on the lake's tracking store and registry (no global state touched)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(lake_root), registry_uri=registry_uri(lake_root))


def configure(lake_root: str) -> str:
    """Point the ``mlflow`` module at the lake's store and registry; return the artifact root for new
    experiments (``<lake>/mlflow-artifacts``, as a URI)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    root = _root(lake_root)
    if is_local(lake_root):
        os.makedirs(root, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(lake_root))
    mlflow.set_registry_uri(registry_uri(lake_root))
    return f"file://{root}/{ARTIFACTS_DIR}" if is_local(lake_root) else f"{root}/{ARTIFACTS_DIR}"
