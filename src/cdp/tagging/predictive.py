"""Predictive tag models: training frames with an honest time split, fitting, metrics, MLflow wrappers.

Training and evaluation run on pandas frames collected from (sampled) Spark snapshots; the fitted
models are wrapped as MLflow pyfunc models so ``cdp tag`` scores them with ``spark_udf``.
"""
from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdp.tagging.catalogue import IDENTIFIER, ModelSpec
from cdp.tagging.clv import BgNbd, GammaGamma, fit_bgnbd, fit_gamma_gamma

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

    def __init__(self, bgnbd: BgNbd, gamma_gamma: GammaGamma, horizon_days: int):
        self.bgnbd, self.gamma_gamma, self.horizon_days = bgnbd, gamma_gamma, horizon_days

    def expected(self, frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
        x, t_x, T, m = clv_arrays(frame)
        purchases = self.bgnbd.expected_purchases(horizon_days, x, t_x, T)
        value = self.gamma_gamma.expected_value(x, m)
        return np.nan_to_num(purchases * value)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return self.expected(model_input, self.horizon_days)


def clv_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD inputs in days: x repeat purchase days, t_x last minus first purchase, T age, m mean value."""
    columns = ["orders_days_lifetime", "days_since_first_order", "days_since_last_order",
               "orders_revenue_lifetime", "orders_count_lifetime"]
    # only the numeric inputs: the frame may also hold customer_id and labels
    f = frame[columns].astype("float64")
    x = np.maximum(np.nan_to_num(f["orders_days_lifetime"].to_numpy()) - 1, 0)
    T = np.nan_to_num(f["days_since_first_order"].to_numpy())
    t_x = np.clip(T - np.nan_to_num(f["days_since_last_order"].to_numpy()), 0, None)
    m = (f["orders_revenue_lifetime"] / f["orders_count_lifetime"].replace(0, np.nan)).to_numpy()
    return x, t_x, T, m


def fit_classifier(train: pd.DataFrame, features: Sequence[str], params: dict[str, Any], seed: int = 7):
    from sklearn.ensemble import HistGradientBoostingClassifier

    estimator = HistGradientBoostingClassifier(
        max_iter=int(params.get("max_iter", 200)), learning_rate=float(params.get("learning_rate", 0.05)),
        max_leaf_nodes=int(params.get("max_leaf_nodes", 31)), l2_regularization=float(params.get("l2", 1.0)),
        early_stopping=True, validation_fraction=0.15, random_state=seed)
    estimator.fit(train[list(features)].astype("float64"), train["label"].astype(int))
    return ProbabilityModel(estimator, features)


def fit_clv(train: pd.DataFrame, horizon_days: int) -> ClvModel:
    x, t_x, T, m = clv_arrays(train)
    return ClvModel(fit_bgnbd(x, t_x, T), fit_gamma_gamma(x, m), horizon_days)


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


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    order = np.argsort(-predicted, kind="stable")
    top = order[: max(1, len(order) // 10)]
    share = actual[top].sum() / actual.sum() if actual.sum() else float("nan")
    return {"mae": float(np.mean(np.abs(actual - predicted))),
            "spearman": float(spearmanr(actual, predicted).statistic) if len(actual) > 2 else float("nan"),
            "top_decile_revenue_share": float(share), "actual_mean": float(actual.mean()),
            "predicted_mean": float(predicted.mean()), "n": float(len(actual))}


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric, higher_is_better) deciding promotion."""
    return ("auc", True) if task in ("churn", "purchase") else ("mae", False)
