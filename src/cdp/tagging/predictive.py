"""Predictive tag models: training frames with an honest time split, fitting, metrics, MLflow wrappers.

Training and evaluation run on pandas frames collected from (sampled) Spark snapshots; the fitted
models are wrapped as MLflow pyfunc models so ``cdp tag`` scores them with ``spark_udf``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdp.tagging.catalogue import IDENTIFIER, ModelSpec
from cdp.tagging.clv import (
    CLV_INPUTS,
    AgeConvention,
    BgNbd,
    FitDiagnostics,
    GammaGamma,
    fit_bgnbd_checked,
    fit_gamma_gamma_checked,
)

logger = logging.getLogger(__name__)


def snapshot_features(spec: ModelSpec, feature_names: Collection[str]) -> list[str]:
    """The features a model's labelled snapshot reads: its inputs and those its population uses."""
    used = [name for name in IDENTIFIER.findall(spec.population) if name in feature_names]
    return list(dict.fromkeys([*spec.inputs, *used]))


def labelled_snapshot(features: DataFrame, labels: DataFrame, spec: ModelSpec) -> DataFrame:
    """Features as of T joined with what happened in [T, T + horizon): the model's population only.

    Input: a feature snapshot, purchase_labels(...) for the same T and spec.horizon_days.
    Output: customer_id, the model's features, ``label`` (churn: no purchase; purchase: a purchase;
    clv: revenue in the horizon) and ``label_orders``.
    """
    joined = (features.where(F.expr(spec.population))
              .join(labels, on="customer_id", how="left")
              .withColumns({"label_orders": F.coalesce(F.col("label_orders"), F.lit(0)),
                            "label_revenue": F.coalesce(F.col("label_revenue"), F.lit(0.0))}))
    if spec.task == "churn":
        label = (F.col("label_orders") == 0).cast("int")
    elif spec.task == "purchase":
        label = (F.col("label_orders") > 0).cast("int")
    else:
        label = F.col("label_revenue")
    return joined.select("customer_id", *spec.inputs, label.alias("label"), "label_orders")


class ProbabilityModel(mlflow.pyfunc.PythonModel):
    """A fitted classifier returning P(label = 1) for the listed features (nulls become NaN)."""

    def __init__(self, estimator: Any, features: Sequence[str]):
        self.estimator = estimator
        self.features = list(features)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        frame = model_input[self.features].astype("float64")
        return self.estimator.predict_proba(frame)[:, 1]


class ClvModel(mlflow.pyfunc.PythonModel):
    """BG/NBD x Gamma-Gamma: expected revenue over ``horizon_days`` from the CLV_INPUTS features."""

    def __init__(self, bgnbd: BgNbd, gamma_gamma: GammaGamma, horizon_days: int,
                 age_convention: AgeConvention = "as_of"):
        self.bgnbd, self.gamma_gamma, self.horizon_days = bgnbd, gamma_gamma, horizon_days
        self.age_convention = age_convention

    def expected_purchases(self, frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
        x, t_x, T, _ = clv_arrays(frame, getattr(self, "age_convention", "as_of"))
        return np.nan_to_num(self.bgnbd.expected_purchases(horizon_days, x, t_x, T))

    def expected(self, frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
        x, _, _, m = clv_arrays(frame, getattr(self, "age_convention", "as_of"))
        return np.nan_to_num(self.expected_purchases(frame, horizon_days) * self.gamma_gamma.expected_value(x, m))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.expected(model_input, self.horizon_days)


def clv_arrays(frame: pd.DataFrame, age_convention: AgeConvention = "as_of"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD and Gamma-Gamma inputs in days (:mod:`cdp.tagging.clv`): x repeat purchase days, t_x last
    minus first purchase day, T age (``age_convention``), m mean value of the repeat purchase days
    (revenue after the first purchase day / x; NaN when x = 0)."""
    # only the numeric inputs: the frame may also hold customer_id and labels
    f = frame[list(CLV_INPUTS)].astype("float64")
    days = np.nan_to_num(f["orders_days_lifetime"].to_numpy())
    x = np.maximum(days - 1, 0)
    age = np.nan_to_num(f["days_since_first_order"].to_numpy())
    t_x = np.clip(age - np.nan_to_num(f["days_since_last_order"].to_numpy()), 0, None)
    T = np.maximum(age - 1, t_x) if age_convention == "last_day" else age
    repeat_revenue = (np.nan_to_num(f["orders_revenue_lifetime"].to_numpy())
                      - np.nan_to_num(f["orders_first_day_revenue"].to_numpy()))
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(x > 0, repeat_revenue / x, np.nan)
    return x, t_x, T, m


def fit_clv(train: pd.DataFrame, horizon_days: int, age_convention: AgeConvention = "as_of"
            ) -> tuple[ClvModel, dict[str, FitDiagnostics]]:
    """BG/NBD on every customer of ``train``, Gamma-Gamma on those with repeat purchases; raises
    :class:`cdp.tagging.clv.NotConverged` when either fit does not converge."""
    x, t_x, T, m = clv_arrays(train, age_convention)
    bgnbd, bgnbd_check = fit_bgnbd_checked(x, t_x, T)
    gamma_gamma, gg_check = fit_gamma_gamma_checked(x, m)
    return (ClvModel(bgnbd, gamma_gamma, horizon_days, age_convention),
            {"bgnbd": bgnbd_check, "gamma_gamma": gg_check})


# -- training on whatever the shop has ---------------------------------------------------------

def usable_features(train: pd.DataFrame, features: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The features worth fitting on, and why each other one is dropped: null for every customer of
    the training frame, or one value for all of them (no split can use it)."""
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for name in features:
        column = pd.to_numeric(train[name], errors="coerce").astype("float64")
        values = column.dropna()
        if values.empty:
            dropped[name] = "null for every customer"
        elif values.nunique() == 1 and not column.isna().any():
            dropped[name] = f"constant ({values.iloc[0]:g} for every customer)"
        else:
            kept.append(name)
    return kept, dropped


def trainable(task: str, train: pd.DataFrame, test: pd.DataFrame, params: Mapping[str, Any]) -> str | None:
    """Why a model cannot be trained on these frames (None when it can): too few customers in its
    population, or too few of either label among them (``min_population``, ``min_class_count`` in
    the model's params; defaults 50 and 10)."""
    min_population = int(params.get("min_population", 50))
    if len(train) < min_population or len(test) < min_population:
        return (f"population too small: {len(train)} customers to train on and {len(test)} to evaluate on, "
                f"fewer than min_population {min_population}")
    if task == "clv":
        repeaters = int((np.nan_to_num(pd.to_numeric(train["orders_days_lifetime"]).to_numpy()) > 1).sum())
        if repeaters < int(params.get("min_repeat_customers", 10)):
            return (f"too few customers with repeat purchases to fit Gamma-Gamma: {repeaters}, fewer than "
                    f"min_repeat_customers {int(params.get('min_repeat_customers', 10))}")
        return None
    min_class = int(params.get("min_class_count", 10))
    for name, frame in (("training", train), ("evaluation", test)):
        positives = int(frame["label"].sum())
        negatives = len(frame) - positives
        if min(positives, negatives) < min_class:
            return (f"too few labels of one class in the {name} window: {positives} positive, {negatives} "
                    f"negative, fewer than min_class_count {min_class}")
    return None


def fit_classifier(train: pd.DataFrame, features: Sequence[str], params: Mapping[str, Any], seed: int = 7):
    from sklearn.ensemble import HistGradientBoostingClassifier

    estimator = HistGradientBoostingClassifier(
        max_iter=int(params.get("max_iter", 200)), learning_rate=float(params.get("learning_rate", 0.05)),
        max_leaf_nodes=int(params.get("max_leaf_nodes", 31)), l2_regularization=float(params.get("l2", 1.0)),
        early_stopping=True, validation_fraction=0.15, random_state=seed)
    estimator.fit(train[list(features)].astype("float64"), train["label"].astype(int))
    return ProbabilityModel(estimator, features)


# -- baselines ---------------------------------------------------------------------------------

RECENCY = "days_since_last_order"


class RecencyBaseline:
    """P(label = 1) by recency alone: the training label rate of the customer's recency bin (deciles
    of days_since_last_order over the training frame; one bin for customers who never bought),
    with one pseudo-observation at the overall rate so that no bin says 0 or 1."""

    def __init__(self, train: pd.DataFrame, bins: int = 10):
        recency = pd.to_numeric(train[RECENCY], errors="coerce").astype("float64").to_numpy()
        labels = train["label"].astype(float).to_numpy()
        self.overall = float(labels.mean()) if len(labels) else 0.5
        known = recency[~np.isnan(recency)]
        self.edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1])) if len(known) else np.array([])
        codes = self._bins(recency)
        self.rates = {int(code): float((labels[codes == code].sum() + self.overall) / ((codes == code).sum() + 1))
                      for code in np.unique(codes)}

    def _bins(self, recency: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(recency), -1, np.searchsorted(self.edges, np.nan_to_num(recency), side="right"))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        recency = pd.to_numeric(frame[RECENCY], errors="coerce").astype("float64").to_numpy()
        return np.array([self.rates.get(int(code), self.overall) for code in self._bins(recency)])


def past_average_clv(frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """The customer's past average carried forward: lifetime revenue per day since the first purchase
    (at least one day) times the horizon."""
    f = frame[["orders_revenue_lifetime", "days_since_first_order"]].astype("float64")
    per_day = np.nan_to_num(f["orders_revenue_lifetime"].to_numpy()) / np.maximum(
        np.nan_to_num(f["days_since_first_order"].to_numpy()), 1.0)
    return per_day * horizon_days


# -- metrics -----------------------------------------------------------------------------------

def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log loss, Brier, expected calibration error (10 equal-count bins), lift at top decile."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y, p = np.asarray(y, dtype=int), np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    order = np.argsort(-p, kind="stable")
    top = order[: max(1, len(p) // 10)]
    base = y.mean() if len(y) else float("nan")
    bins = np.array_split(np.argsort(p, kind="stable"), 10)
    ece = sum(len(b) * abs(p[b].mean() - y[b].mean()) for b in bins if len(b)) / max(len(p), 1)
    return {"auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan"),
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "brier": float(brier_score_loss(y, p)),
            "ece": float(ece), "lift_top_decile": float(y[top].mean() / base) if base else float("nan"),
            "base_rate": float(base), "n": float(len(y))}


def revenue_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Normalised Gini of the revenue captured when customers are ranked by ``predicted``: 1 when the
    ranking puts the revenue in the order of a perfect ranking, 0 for a random one (ties in
    ``predicted`` share their revenue evenly, so predicting one value for all scores 0)."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    total = actual.sum()
    if len(actual) < 2 or total <= 0:
        return float("nan")

    def area(order_by: np.ndarray) -> float:
        frame = pd.DataFrame({"key": order_by, "revenue": actual})
        # tied scores share their revenue evenly: rank groups, spread their revenue over their size
        groups = frame.groupby("key", sort=True)["revenue"].agg(["sum", "size"]).iloc[::-1]
        per_customer = np.repeat((groups["sum"] / groups["size"]).to_numpy(), groups["size"].to_numpy())
        # the share captured halfway through each customer (midpoint rule): a constant score gives
        # exactly the diagonal's 0.5
        captured = (np.cumsum(per_customer) - per_customer / 2) / total
        return float(captured.mean() - 0.5)

    perfect = area(actual)
    return area(predicted) / perfect if perfect > 0 else float("nan")


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Total calibration (sum predicted / sum actual), ranking (Spearman, normalised revenue Gini,
    share of the revenue in the top predicted decile), MAE for reference (it rewards predicting zero
    when most customers buy nothing in the window: never used to promote)."""
    from scipy.stats import spearmanr

    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    order = np.argsort(-predicted, kind="stable")
    top = order[: max(1, len(order) // 10)]
    total = actual.sum()
    varied = len(actual) > 2 and np.ptp(actual) > 0 and np.ptp(predicted) > 0
    return {"calibration_ratio": float(predicted.sum() / total) if total else float("nan"),
            "spearman": float(spearmanr(actual, predicted).statistic) if varied else float("nan"),
            "revenue_gini": revenue_gini(actual, predicted),
            "top_decile_revenue_share": float(actual[top].sum() / total) if total else float("nan"),
            "mae": float(np.mean(np.abs(actual - predicted))), "actual_total": float(total),
            "predicted_total": float(predicted.sum()), "n": float(len(actual))}


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric, higher_is_better) reported as the model's headline number."""
    return ("auc", True) if task in ("churn", "purchase") else ("revenue_gini", True)


DEFAULT_CALIBRATION_BAND = (0.8, 1.25)


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def beats(task: str, model: Mapping[str, float], other: Mapping[str, float],
          band: tuple[float, float] = DEFAULT_CALIBRATION_BAND) -> tuple[bool, str]:
    """Does ``model`` beat ``other`` (a baseline or the champion) on the same evaluation window?

    Classifiers: a higher AUC and a lower log loss. CLV: its total calibration (sum predicted / sum
    actual) within ``band`` and a higher revenue Gini than ``other`` (or ``other`` outside the band).
    Returns the verdict and the comparison in words."""
    if task in ("churn", "purchase"):
        auc, loss, o_auc, o_loss = model.get("auc"), model.get("log_loss"), other.get("auc"), other.get("log_loss")
        if not (_finite(auc) and _finite(loss)):
            return False, "no AUC / log loss on the evaluation window"
        words = f"AUC {auc:.4f} vs {o_auc:.4f}, log loss {loss:.4f} vs {o_loss:.4f}"
        if not (_finite(o_auc) and _finite(o_loss)):
            return True, words
        return bool(auc > o_auc and loss < o_loss), words
    ratio, gini = model.get("calibration_ratio"), model.get("revenue_gini")
    o_ratio, o_gini = other.get("calibration_ratio"), other.get("revenue_gini")
    low, high = band
    if not (_finite(ratio) and _finite(gini)):
        return False, "no revenue in the evaluation window to judge calibration and ranking"
    words = (f"calibration {ratio:.3f} vs {o_ratio if _finite(o_ratio) else float('nan'):.3f} (band {low}-{high}), "
             f"revenue Gini {gini:.4f} vs {o_gini if _finite(o_gini) else float('nan'):.4f}")
    if not low <= ratio <= high:
        return False, words
    if not (_finite(o_ratio) and _finite(o_gini)) or not low <= o_ratio <= high:
        return True, words
    return bool(gini > o_gini), words


def promotion(task: str, model: Mapping[str, float], baseline: Mapping[str, float],
              champion: Mapping[str, float] | None, band: tuple[float, float] = DEFAULT_CALIBRATION_BAND
              ) -> tuple[bool, str]:
    """Promote only a model that beats both the baseline and the champion (when there is one)."""
    ok, words = beats(task, model, baseline, band)
    if not ok:
        return False, f"does not beat the baseline ({words})"
    if champion:
        ok_champion, words_champion = beats(task, model, champion, band)
        if not ok_champion:
            return False, f"beats the baseline ({words}) but not the champion ({words_champion})"
        return True, f"beats the baseline ({words}) and the champion ({words_champion})"
    return True, f"beats the baseline ({words}); no champion yet"


# -- diagnostics -------------------------------------------------------------------------------

def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of the predicted probability: bin, customers, mean predicted, observed rate."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    rows = [(i + 1, len(idx), float(p[idx].mean()), float(y[idx].mean()))
            for i, idx in enumerate(np.array_split(np.argsort(p, kind="stable"), bins)) if len(idx)]
    return pd.DataFrame(rows, columns=["bin", "customers", "mean_predicted", "observed_rate"])


def lift_by_decile(actual: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """Deciles of the score, highest first: customers, mean score, mean actual (label rate or
    revenue), lift over the overall mean, cumulative share of the actual total."""
    actual, score = np.asarray(actual, dtype=float), np.asarray(score, dtype=float)
    overall, total = actual.mean() if len(actual) else float("nan"), actual.sum()
    rows, captured = [], 0.0
    for i, idx in enumerate(np.array_split(np.argsort(-score, kind="stable"), 10)):
        if not len(idx):
            continue
        captured += actual[idx].sum()
        rows.append((i + 1, len(idx), float(score[idx].mean()), float(actual[idx].mean()),
                     float(actual[idx].mean() / overall) if overall else float("nan"),
                     float(captured / total) if total else float("nan")))
    return pd.DataFrame(rows, columns=["decile", "customers", "mean_score", "mean_actual", "lift", "cumulative_share"])


def purchases_by_frequency(frame: pd.DataFrame, predicted_purchases: np.ndarray, cap: int = 7) -> pd.DataFrame:
    """The papers' check: by calibration-period repeat purchases x (0 .. cap, cap+ pooled), customers,
    mean actual purchases in the evaluation window (``label_orders``) and mean predicted by BG/NBD."""
    x = np.maximum(np.nan_to_num(frame["orders_days_lifetime"].astype("float64").to_numpy()) - 1, 0)
    group = np.minimum(x, cap).astype(int)
    actual = frame["label_orders"].astype("float64").to_numpy()
    rows = [(f"{g}+" if g == cap else str(g), int((group == g).sum()), float(actual[group == g].mean()),
             float(np.asarray(predicted_purchases)[group == g].mean())) for g in range(cap + 1) if (group == g).any()]
    return pd.DataFrame(rows, columns=["repeat_purchases", "customers", "actual_mean", "predicted_mean"])
