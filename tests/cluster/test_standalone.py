"""The whole pipeline spark-submitted to a real standalone master and worker on loopback, the package
shipped as a wheel, then the published audience checked through the lake (``run_standalone.sh``).

The run starts in the background when the session's first test starts (``standalone_run`` in
tests/conftest.py) and this test, collected after every other one, waits for it. Its folder stays
in the session's temp folder, ``<basetemp>/standalone-cluster``, with a ``passed`` marker when the
run and the check succeeded: the notebooks (tests/test_notebooks.py) then read that lake instead of
building one of their own.
"""
from __future__ import annotations

import pytest

PASSED_MARKER = "passed"  # tests/test_notebooks.py names it too

pytestmark = pytest.mark.cluster


def test_whole_pipeline_publishes_an_audience_on_a_standalone_cluster(standalone_run):
    assert standalone_run is not None, "the session did not start the cluster run (tests/conftest.py)"
    returncode = standalone_run.wait()
    tail = "\n".join(standalone_run.log.read_text(errors="replace").splitlines()[-120:])
    script = "run_standalone.sh"
    assert returncode is not None, f"{script} timed out:\n{tail}"
    assert returncode == 0, f"{script} exited {returncode}:\n{tail}"
    assert "cluster test passed" in tail
    (standalone_run.work / PASSED_MARKER).write_text(f"{standalone_run.log}\n", encoding="utf-8")
