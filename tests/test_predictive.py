"""Predictive tags on a real shop: training on whatever data it has, NULL-safe features, the models as
defined (Gamma-Gamma on repeat transactions, convergence checks), promotion against a baseline, and
the CDNOW data set of the BG/NBD paper run through the pipeline's own functions."""
from __future__ import annotations

import importlib.resources
import io
import shutil
import textwrap
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.features import FeatureConfig, build_features, prepare_sources, purchase_labels
from cdp.features import schemas as S
from cdp.features.build import FeatureInputs
from cdp.runtime.config import JobContext, Profile
from cdp.tagging.clv import CLV_INPUTS, NotConverged, fit_gamma_gamma_checked
from cdp.tagging.predictive import (
    RecencyBaseline,
    clv_arrays,
    fit_clv,
    promotion,
    revenue_gini,
    trainable,
    usable_features,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


# -- training on whatever the shop has ------------------------------------------------------------

def test_usable_features_drops_all_null_and_constant_columns_and_says_why():
    train = pd.DataFrame({
        "orders_count_365d": [1.0, 3.0, 0.0, 2.0],
        "days_since_last_visit": [None, None, None, None],     # no web events: null for everyone
        "beh_sessions_30d": [0.0, 0.0, 0.0, 0.0],             # counts are 0 without activity
        "prof_age": [31.0, None, None, None],                 # one value, but missing elsewhere: informative
        "label": [1, 0, 1, 0],
    })
    kept, dropped = usable_features(train, ["orders_count_365d", "days_since_last_visit", "beh_sessions_30d",
                                            "prof_age"])
    assert kept == ["orders_count_365d", "prof_age"]
    assert dropped == {"days_since_last_visit": "null for every customer",
                       "beh_sessions_30d": "constant (0 for every customer)"}


def test_trainable_names_the_population_or_label_shortfall():
    frame = pd.DataFrame({"label": [1] * 5 + [0] * 95})
    assert trainable("purchase", frame, frame, {}) == (
        "too few labels of one class in the training window: 5 positive, 95 negative, fewer than "
        "min_class_count 10")
    assert trainable("purchase", frame, frame, {"min_class_count": 5}) is None
    assert trainable("churn", frame.head(30), frame, {}) == (
        "population too small: 30 customers to train on and 100 to evaluate on, fewer than min_population 50")
    one_timers = pd.DataFrame({"orders_days_lifetime": [1] * 60, "label": [0.0] * 60})
    assert trainable("clv", one_timers, one_timers, {}) == (
        "too few customers with repeat purchases to fit Gamma-Gamma: 0, fewer than min_repeat_customers 10")


# -- the models as defined ------------------------------------------------------------------------

def test_gamma_gamma_refuses_a_fit_that_does_not_converge():
    # every repeat customer spends exactly the same: no spread, so p and q run off to infinity
    x = np.array([1.0, 2.0, 3.0, 1.0, 4.0, 2.0])
    with pytest.raises(NotConverged, match=r"Gamma-Gamma: a parameter runs away to the bound"):
        fit_gamma_gamma_checked(x, np.full(6, 30.0))
    with pytest.raises(NotConverged, match=r"needs at least 3 customers with repeat purchases, has 2"):
        fit_gamma_gamma_checked(np.array([1.0, 0.0, 2.0]), np.array([10.0, np.nan, 12.0]))


def test_clv_inputs_average_the_repeat_days_only_and_follow_the_age_convention():
    frame = pd.DataFrame({
        "orders_days_lifetime": [3, 1, 0],
        "days_since_first_order": [100, 10, None],
        "days_since_last_order": [20, 10, None],
        "orders_revenue_lifetime": [70.0, 15.0, 0.0],
        "orders_first_day_revenue": [10.0, 15.0, None],
    })
    x, t_x, T_as_of, m = clv_arrays(frame, "as_of")
    assert x.tolist() == [2.0, 0.0, 0.0] and t_x.tolist() == [80.0, 0.0, 0.0]
    assert T_as_of.tolist() == [100.0, 10.0, 0.0]
    assert m[0] == 30.0 and np.isnan(m[1]) and np.isnan(m[2])  # (70 - 10) / 2 repeat days
    assert clv_arrays(frame, "last_day")[2].tolist() == [99.0, 9.0, 0.0]


# -- promotion that means something ---------------------------------------------------------------

def test_classifier_promoted_only_when_it_beats_baseline_and_champion_on_auc_and_log_loss():
    model = {"auc": 0.80, "log_loss": 0.40}
    assert promotion("churn", model, {"auc": 0.70, "log_loss": 0.45}, None) == (
        True, "beats the baseline (AUC 0.8000 vs 0.7000, log loss 0.4000 vs 0.4500); no champion yet")
    # a better ranking with worse probabilities is not better
    assert promotion("churn", model, {"auc": 0.70, "log_loss": 0.39}, None)[0] is False
    verdict, why = promotion("churn", model, {"auc": 0.70, "log_loss": 0.45}, {"auc": 0.81, "log_loss": 0.38})
    assert verdict is False and why.startswith("beats the baseline") and "but not the champion (AUC 0.8000 vs 0.8100" in why


def test_clv_judged_on_total_calibration_and_revenue_ranking_not_on_error():
    baseline = {"calibration_ratio": 1.6, "revenue_gini": 0.5}      # past average over-predicts
    model = {"calibration_ratio": 1.05, "revenue_gini": 0.45}
    # within the band while the baseline is outside it: promoted even with a lower Gini
    assert promotion("clv", model, baseline, None)[0] is True
    # predicting zero for everyone: calibration 0, far outside the band, never promoted
    assert promotion("clv", {"calibration_ratio": 0.0, "revenue_gini": 0.0}, baseline, None)[0] is False
    calibrated_baseline = {"calibration_ratio": 0.95, "revenue_gini": 0.5}
    assert promotion("clv", model, calibrated_baseline, None) == (
        False, "does not beat the baseline (calibration 1.050 vs 0.950 (band 0.8-1.25), revenue Gini 0.4500 vs 0.5000)")


def test_revenue_gini_is_one_for_the_perfect_ranking_and_zero_for_a_constant():
    actual = np.array([0.0, 0.0, 100.0, 0.0, 50.0])
    assert revenue_gini(actual, actual) == pytest.approx(1.0)
    assert revenue_gini(actual, np.full(5, 7.0)) == pytest.approx(0.0)
    assert revenue_gini(actual, -actual) < 0  # the worst ranking


def test_recency_baseline_is_the_smoothed_label_rate_of_the_recency_bin():
    train = pd.DataFrame({"days_since_last_order": [1.0, 2.0, 50.0, 60.0, None, None],
                          "label": [1, 1, 0, 0, 0, 1]})
    baseline = RecencyBaseline(train, bins=2)  # one edge at the median recency (26 days)
    # bin rate with one pseudo-observation at the overall rate 0.5: (2 + 0.5) / 3, (0 + 0.5) / 3, (1 + 0.5) / 3
    scored = baseline.predict(pd.DataFrame({"days_since_last_order": [3.0, 80.0, None]}))
    assert scored.tolist() == pytest.approx([2.5 / 3, 0.5 / 3, 1.5 / 3])


# -- no silent NULLs in features ------------------------------------------------------------------

def test_null_status_orders_count_in_features_and_labels(spark):
    """An order whose status nobody mapped is still an order: the shipped feature filters and the
    labels leave out cancelled orders only, never NULL ones."""
    from cdp.runtime.config import parse_file

    config = parse_file(CONF / "features.yaml", FeatureConfig.from_dict).only(
        ["orders_count_lifetime", "orders_revenue_lifetime", "orders_days_lifetime", "orders_first_day_revenue"])
    at = datetime(2024, 3, 1, 10)
    orders = spark.createDataFrame([
        ("o1", "shop", "r1", at, "online", None, None, 40.0, 0.0, None, None, "CNY"),
        ("o2", "shop", "r2", at.replace(hour=18), "online", None, None, 60.0, 0.0, None, None, "CNY"),
        ("o3", "shop", "r3", at.replace(day=5), "online", None, "cancelled", 99.0, 0.0, None, None, "CNY"),
        ("o4", "shop", "r4", at.replace(day=9), "online", None, "paid", 25.0, 0.0, None, None, "CNY"),
    ], S.ORDERS)
    records = spark.createDataFrame([("shop", f"r{i}", "c1") for i in range(1, 5)], S.CUSTOMER_RECORDS)
    profile = spark.createDataFrame([("c1", None, None, None, None, None, None, None)], S.CUSTOMER_PROFILE)
    empty = {name: spark.createDataFrame([], schema) for name, schema in
             (("order_lines", S.ORDER_LINES), ("returns", S.RETURNS), ("events", S.EVENTS), ("consent", S.CONSENT))}
    inputs = FeatureInputs(orders=orders, customer_records=records, customer_profile=profile, **empty)
    features = build_features(inputs, config, date(2024, 4, 1))
    expected = spark.createDataFrame(
        [("c1", date(2024, 4, 1), 3, 125.0, 2, 100.0)],
        T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("as_of", T.DateType()),
                      T.StructField("orders_count_lifetime", T.LongType(), False),
                      T.StructField("orders_revenue_lifetime", T.DoubleType()),
                      T.StructField("orders_days_lifetime", T.LongType(), False),
                      T.StructField("orders_first_day_revenue", T.DoubleType())]))
    assertDataFrameEqual(features.select(expected.columns), expected, checkRowOrder=False)
    labels = purchase_labels(orders, records, date(2024, 3, 1), 30)
    assertDataFrameEqual(labels, spark.createDataFrame([("c1", 3, 125.0)],
                                                       "customer_id string, label_orders long, label_revenue double"))
    # the prepared orders carry what was paid on each order's day: the first day's two orders, 100
    prepared = prepare_sources(inputs, date(2024, 4, 1))["orders"]
    assert {r["order_id"]: r["_day_total"] for r in prepared.collect()} == \
        {"o1": 100.0, "o2": 100.0, "o3": None, "o4": 25.0}


# -- CDNOW through the pipeline -------------------------------------------------------------------

CDNOW_SOURCES = """
sources:
  cdnow:
    description: the CDNOW sample (2,357 customers) as a shop's orders export
    path: cdnow/*.csv
    format: csv
    timezone: UTC
    record_id: order_no
    event_time: ordered_on
    fields:
      order_no: {type: string, required: true}
      customer_no: {type: string, required: true}
      ordered_on: {type: timestamp, format: "yyyyMMdd", required: true}
      cds: int
      dollars: {type: double, required: true}
    identifiers:
      - {type: order_id, field: order_no}
      - {type: member_id, field: customer_no}
    orders:
      order_id: order_no
      order_time: ordered_on
      total_amount: dollars
      status: {value: paid}
      channel: {value: online}
      currency: {value: USD}
"""


def _cdnow_export(folder: Path) -> int:
    """The CDNOW sample as a raw orders export: one CSV line per transaction. Returns the lines."""
    text = (importlib.resources.files("lifetimes") / "datasets" / "CDNOW_sample.txt").read_text()
    # lifetimes.datasets imports pkg_resources (gone in setuptools >= 82): the file is read directly
    rows = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, dtype={0: str, 2: str},
                       names=["customer", "sample_id", "date", "cds", "dollars"])
    export = pd.DataFrame({"order_no": [f"T{i:05d}" for i in range(len(rows))],
                           "customer_no": "CD" + rows["customer"], "ordered_on": rows["date"],
                           "cds": rows["cds"], "dollars": rows["dollars"]})
    (folder / "cdnow").mkdir(parents=True)
    export.to_csv(folder / "cdnow" / "transactions.csv", index=False)
    return len(export)


@pytest.mark.slow
def test_cdnow_sample_through_the_pipeline_reproduces_the_published_parameters(spark, lake, tmp_path):
    from cdp.jobs.features import build_snapshot, load_feature_config
    from cdp.jobs.land import run as land
    from cdp.jobs.standardize import run as standardize
    from cdp.jobs.stitch import run as stitch

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "sources.yaml").write_text(textwrap.dedent(CDNOW_SOURCES))
    for name in ("identity.yaml", "features.yaml", "quality.yaml"):
        shutil.copy(CONF / name, conf / name)
    ctx = JobContext(conf_dir=conf, profile=Profile("test", lake.root), lake_root=lake.root, run_id="cdnow")
    raw = tmp_path / "raw"
    assert _cdnow_export(raw) == 6919
    land(spark, ctx, raw=str(raw), lake=lake)
    standardize(spark, ctx, lake=lake)
    stitch(spark, ctx, lake=lake)
    assert lake.read("customer_profile").count() == 2357

    # the paper's calibration: 39 weeks, 1997-01-01 to 1997-09-30; a snapshot as of 1997-10-01
    # holds exactly that, and the paper's T counts to its last day (age_convention: last_day)
    config = load_feature_config(ctx).only(list(CLV_INPUTS))
    frame = build_snapshot(spark, lake, config, date(1997, 10, 1)).select(*CLV_INPUTS).toPandas()
    model, checks = fit_clv(frame, 365, "last_day")
    weekly_alpha = model.bgnbd.alpha / 7  # the paper's time unit is the week
    fitted = {"r": model.bgnbd.r, "alpha": weekly_alpha, "a": model.bgnbd.a, "b": model.bgnbd.b,
              "p": model.gamma_gamma.p, "q": model.gamma_gamma.q, "v": model.gamma_gamma.v}
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "v": 15.44}
    assert fitted == pytest.approx(published, rel=0.01)
    assert checks["gamma_gamma"].agreeing >= 2 and checks["bgnbd"].gradient < 1e-4
    x, _, _, _ = clv_arrays(frame, "last_day")
    assert int((x > 0).sum()) == 946  # the paper's 946 customers with repeat purchases


@pytest.mark.parametrize(("key", "value", "message"), [
    ("age_convention", "paper", r"p\.yaml: models\.clv\.age_convention: 'paper' is not as_of \| last_day"),
    ("calibration_band", [1.2, 1.5], r"p\.yaml: models\.clv\.calibration_band: expected \[low, high\]"),
])
def test_clv_settings_are_checked_when_the_catalogue_loads(key, value, message):
    from cdp.tagging import CatalogueError, parse_file

    data = {"models": {"clv": {"task": "clv", "horizon_days": 365, key: value}}, "tags": []}
    with pytest.raises(CatalogueError, match=message):
        parse_file("p.yaml", data, {})
