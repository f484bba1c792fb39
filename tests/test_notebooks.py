"""Every notebook in notebooks/ runs end to end on a small generated lake, so a broken notebook fails CI.

The equivalent of ``pytest --nbmake notebooks/``, but with one lake shared by the notebooks and MLflow
kept in that lake, as in production. When the standalone-cluster test (tests/cluster/test_standalone.py,
which tests/conftest.py runs just before the notebooks) built its lake in this session, the notebooks
read that one; otherwise the first notebook builds a lake through ``cdp run`` and the others reuse it.

The notebooks mask personal data unless ``REVEAL_PII = True`` (docs/ARCHITECTURE.md): no executed
output may hold a raw e-mail, phone or WeChat openid of that lake's ``silver_identifiers`` (normalised
``id_value`` and the ``raw_value`` read from the raw files). The same search is shown to find them in
notebook 01 run with ``REVEAL_PII = True``, so it is not blind.
"""
from __future__ import annotations

from collections.abc import Callable
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
PII_TYPES = ("email", "phone", "wechat_openid")
# Shorter values (a broken record's "n/a", "0") would match any output; real e-mails, phones and openids
# are longer, and a masked value (``a***@x.cn``, ``***5678``, ``sha256:…``) never holds one.
MIN_PII_LENGTH = 6
REVEAL = "REVEAL_PII = False"


@pytest.fixture(scope="module")
def notebook_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lake the cluster test built and checked in this session, else a fresh one the first notebook builds."""
    cluster_run = tmp_path_factory.getbasetemp() / CLUSTER_DIR
    if (cluster_run / CLUSTER_PASSED).is_file():
        return cluster_run / "lake"
    return tmp_path_factory.mktemp("notebooks") / "lake"


@pytest.fixture(scope="module")
def lake_pii(notebook_lake: Path) -> Callable[[], dict[str, str]]:
    """The lake's raw PII values (lower case) -> their identifier type, read once the first notebook has
    built the lake (delta-rs reads the table: no second Spark session in this process)."""
    found: dict[str, str] = {}

    def values() -> dict[str, str]:
        if not found:
            from deltalake import DeltaTable

            rows = DeltaTable(str(notebook_lake / "silver_identifiers")).to_pyarrow_table(
                columns=["id_type", "id_value", "raw_value"]).to_pylist()
            for row in rows:
                if row["id_type"] in PII_TYPES:
                    for value in (row["id_value"], row["raw_value"]):
                        if value and len(value.strip()) >= MIN_PII_LENGTH:
                            found[value.strip().lower()] = row["id_type"]
            assert {found[v] for v in found} == set(PII_TYPES), "the generated lake lacks some PII type"
        return found
    return values


def execute(path: Path, lake: Path, work: Path, monkeypatch: pytest.MonkeyPatch, *, reveal_pii: bool = False):
    """Run the notebook on ``lake`` (with ``REVEAL_PII = True`` when asked); the executed notebook."""
    # The kernel inherits this environment: point it at the shared lake and keep MLflow inside the lake
    # (the per-test temp store of conftest would hide the models trained by the first notebook's run).
    monkeypatch.setenv("CDP_NOTEBOOK_LAKE", str(lake))
    monkeypatch.setenv("CDP_NOTEBOOK_CUSTOMERS", CUSTOMERS)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    notebook = nbformat.read(path, as_version=4)
    if reveal_pii:
        parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        assert REVEAL in parameters.source, f"{path.name}: no `{REVEAL}` in its parameters cell"
        parameters.source = parameters.source.replace(REVEAL, "REVEAL_PII = True")
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{str(exc)[-3000:]}")
    return notebook


def shown_pii(notebook, pii: dict[str, str]) -> dict[str, set[str]]:
    """PII type -> the raw values of ``pii`` that some executed output (text, tables, HTML) shows."""
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts.append(str(output.get("text", "")))
            texts += [str(v) for kind, v in output.get("data", {}).items() if kind.startswith("text/")]
    shown = "\n".join(texts).lower()
    found: dict[str, set[str]] = {}
    for value, id_type in pii.items():
        if value in shown:
            found.setdefault(id_type, set()).add(value)
    return found


def test_there_are_at_least_three_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS][:3] == ["01_", "02_", "03_"]


# Notebook 04 runs a second day of the pipeline (land, standardize, stitch, measure) on a copy of the lake:
# 988 s at load 13, run with this file's execute() and PII search on a 500-customer embedded lake (not yet
# on the cluster test's lake). Opt-in with the other runs that cost a full pipeline (pytest -m long_e2e).
LONG_NOTEBOOKS = {"04_build_and_measure_campaign"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.long_e2e) if p.stem in LONG_NOTEBOOKS else p
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs_end_to_end_showing_no_raw_pii(path: Path, notebook_lake: Path, lake_pii, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    notebook = execute(path, notebook_lake, tmp_path, monkeypatch)
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert errors == []
    assert shown_pii(notebook, lake_pii()) == {}


def test_the_pii_search_finds_raw_values_when_a_notebook_reveals_them(notebook_lake: Path, lake_pii, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    """Notebook 01 with ``REVEAL_PII = True`` (the lake is built by now): its customer's raw identifiers
    are found by the search that finds nothing in the masked runs above. Which types the chosen customer
    has depends on the generated lake, so the check is that some are found, e-mail or phone among them."""
    customer_360 = next(p for p in NOTEBOOKS if p.name.startswith("01_"))
    notebook = execute(customer_360, notebook_lake, tmp_path, monkeypatch, reveal_pii=True)
    found = set(shown_pii(notebook, lake_pii()))
    assert found & {"email", "phone"}, f"the revealed notebook shows no raw e-mail or phone (found {found})"
