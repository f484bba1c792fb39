"""Every notebook in notebooks/ runs end to end on a small generated lake, so a broken notebook fails CI.

The equivalent of ``pytest --nbmake notebooks/``, but with one lake shared by the notebooks and MLflow
kept in that lake, as in production. When the standalone-cluster test (tests/cluster/test_standalone.py,
which tests/conftest.py runs just before the notebooks) built its lake in this session, the notebooks
read that one; otherwise the first notebook builds a lake through ``cdp run`` and the others reuse it.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
pytestmark = pytest.mark.notebooks
CUSTOMERS = "500"  # as tests/cluster/run_standalone.sh: every model trains, the demo audience has members
# Written by tests/cluster/test_standalone.py: <basetemp>/standalone-cluster/{lake, passed}
CLUSTER_DIR, CLUSTER_PASSED = "standalone-cluster", "passed"


@pytest.fixture(scope="module")
def notebook_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lake the cluster test built and checked in this session, else a fresh one the first notebook builds."""
    cluster_run = tmp_path_factory.getbasetemp() / CLUSTER_DIR
    if (cluster_run / CLUSTER_PASSED).is_file():
        return cluster_run / "lake"
    return tmp_path_factory.mktemp("notebooks") / "lake"


def test_there_are_at_least_three_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS][:3] == ["01_", "02_", "03_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path: Path, notebook_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The kernel inherits this environment: point it at the shared lake and keep MLflow inside the lake
    # (the per-test temp store of conftest would hide the models trained by the first notebook's run).
    monkeypatch.setenv("CDP_NOTEBOOK_LAKE", str(notebook_lake))
    monkeypatch.setenv("CDP_NOTEBOOK_CUSTOMERS", CUSTOMERS)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{str(exc)[-3000:]}")
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert errors == []
