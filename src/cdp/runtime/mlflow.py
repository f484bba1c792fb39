"""Where MLflow keeps runs and models: the one place every job, the report and the tests ask.

``$MLFLOW_TRACKING_URI`` (and ``$MLFLOW_REGISTRY_URI``, else the tracking URI) when set; otherwise a
SQLite store in the lake, ``sqlite:///<lake>/mlflow.db``, with artifacts under
``<lake>/mlflow-artifacts`` (a SQLite store would otherwise write ``./mlruns`` wherever the job runs).
"""
from __future__ import annotations

import os
from typing import Any

from cdp.lake.paths import is_local, local_path
from cdp.runtime.config import ConfigError

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


class ObjectStoreLake(ConfigError):
    """An object-store lake without $MLFLOW_TRACKING_URI: SQLite cannot live in a bucket."""


def configure(lake_root: str) -> str:
    """Point the ``mlflow`` module at the lake's store and registry; return the artifact root for new
    experiments (``<lake>/mlflow-artifacts``, as a URI).

    An object-store lake (``s3a://``) cannot hold the SQLite file: it needs $MLFLOW_TRACKING_URI;
    artifacts then go beside a local SQLite database, or to $MLFLOW_ARTIFACT_ROOT (default
    ``s3://<lake>/mlflow-artifacts``) with a tracking server."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    root = _root(lake_root)
    if is_local(lake_root):
        os.makedirs(root, exist_ok=True)
    elif not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ObjectStoreLake(f"lake {lake_root}: MLflow cannot keep its database in an object store; set "
                              "MLFLOW_TRACKING_URI (a tracking server, or sqlite:///<local path>/mlflow.db)")
    mlflow.set_tracking_uri(tracking_uri(lake_root))
    mlflow.set_registry_uri(registry_uri(lake_root))
    if is_local(lake_root):
        return f"file://{root}/{ARTIFACTS_DIR}"
    tracking = tracking_uri(lake_root)
    if tracking.startswith("sqlite:///"):
        # artifacts beside the local database; a tracking server keeps its own artifact store
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(tracking[len("sqlite:///"):])), ARTIFACTS_DIR)
    # a tracking server: MLflow's own S3 artifact store speaks s3://, not Hadoop's s3a://
    bucket_root = "s3://" + root.split("://", 1)[1] if root.startswith(("s3a://", "s3n://")) else root
    return os.environ.get("MLFLOW_ARTIFACT_ROOT") or f"{bucket_root}/{ARTIFACTS_DIR}"
