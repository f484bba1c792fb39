"""Measurement against the generator's truth: the engage functions on generated campaign sends.

The frames are built by ``benchmarks/measure_coverage.py`` (the coverage benchmark over 40 seeds);
these tests run it on one small folder exactly, and on a few seeds for coverage (slow).
"""
from __future__ import annotations

import importlib.util
import sys
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.synthetic import GenerateParams, generate

_BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "measure_coverage.py"


def _benchmark():
    """The benchmark script as a module (benchmarks/ is scripts, not a package)."""
    if "measure_coverage" not in sys.modules:
        spec = importlib.util.spec_from_file_location("measure_coverage", _BENCHMARK)
        module = importlib.util.module_from_spec(spec)
        sys.modules["measure_coverage"] = module  # its dataclasses resolve their module by name
        spec.loader.exec_module(module)
    return sys.modules["measure_coverage"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("truth") / "raw"
    generate(GenerateParams(out=out, customers=600, seed=11, end=date(2025, 6, 30), chunk_size=300, workers=1))
    return out


def test_measured_outcomes_are_the_potential_outcomes_the_truth_records(spark, generated):
    """Treatment members convert exactly when Y1 says, control members when Y0 says: the measurement reads
    the generated orders as the generator meant them (window bounds, cancelled orders, time zones)."""
    campaigns = _benchmark().campaign_outcomes(spark, generated)
    assert len(campaigns) == 4
    measured = expected = None
    for campaign, outcomes, truth in campaigns:  # compared as one frame: one Spark job, not four
        message = F.lit(campaign["message_id"]).alias("message_id")
        ours = outcomes.select(message, "customer_id", "in_control", "converted")
        theirs = truth.select(message, "customer_id", "in_control", F.when(F.col("in_control"), F.col(
            "converted_without")).otherwise(F.col("converted_with")).alias("converted"))
        measured = ours if measured is None else measured.unionByName(ours)
        expected = theirs if expected is None else expected.unionByName(theirs)
    assertDataFrameEqual(measured, expected)


@pytest.mark.slow
def test_the_95_percent_interval_contains_the_true_lift_in_most_seeds(spark, tmp_path):
    bench = _benchmark()
    measured = [m for seed in range(1, 5) for m in bench.measure_seed(spark, seed, 3000, tmp_path)]
    covered = sum(m.covered for m in measured)
    # 16 intervals at a nominal 95 %: fewer than 13 covering would happen with probability < 1 %
    assert len(measured) == 16 and covered >= 13, [(m.seed, m.message_id, m.true_abs_lift, m.measured) for m in measured if not m.covered]
