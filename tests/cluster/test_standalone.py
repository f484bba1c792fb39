"""The whole pipeline spark-submitted to a real standalone master and worker on loopback, the package
shipped as a wheel, then the published audience checked through the lake (``run_standalone.sh``).

The run's folder stays in the session's temp folder, ``<basetemp>/standalone-cluster``, with a
``passed`` marker when the run and the check succeeded: the notebooks (tests/test_notebooks.py) then
read that lake instead of building one of their own.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().with_name("run_standalone.sh")
SHARED_DIR = "standalone-cluster"  # under the session's base temp; tests/test_notebooks.py names it too
PASSED_MARKER = "passed"
TIMEOUT_SECONDS = 40 * 60  # a hung cluster must not hang CI; a normal run takes a few minutes

pytestmark = pytest.mark.cluster


def _stop(process: subprocess.Popen) -> None:
    """Terminate the script's whole process group: spark-submit ends, then the script's trap stops the daemons."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_whole_pipeline_publishes_an_audience_on_a_standalone_cluster(tmp_path_factory: pytest.TempPathFactory,
                                                                      tmp_path: Path):
    work = tmp_path_factory.getbasetemp() / SHARED_DIR
    log = tmp_path / "run_standalone.log"
    # The script's own settings, not the per-test MLflow store of conftest: the run keeps its models in the lake.
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update(PYTHON=sys.executable, CDP_CLUSTER_DIR=str(work))
    with log.open("w") as output:
        process = subprocess.Popen(["bash", str(SCRIPT)], stdout=output, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode = None
        except BaseException:  # Ctrl-C in pytest: still stop the cluster
            _stop(process)
            raise
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-120:])
    assert returncode is not None, f"{SCRIPT.name} timed out after {TIMEOUT_SECONDS} s:\n{tail}"
    assert returncode == 0, f"{SCRIPT.name} exited {returncode}:\n{tail}"
    assert "cluster test passed" in tail
    (work / PASSED_MARKER).write_text(str(log) + "\n", encoding="utf-8")
