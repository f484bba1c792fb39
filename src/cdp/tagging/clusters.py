"""k-means behaviour clusters: fitted with Spark ML, kept as plain numbers, scored as Column expressions.

A fit (``fit_clustering``) standardises log1p of the features, fits Spark ML's KMeans on a sample for
each candidate k and keeps the k with the best silhouette. The result, a :class:`Clustering`, holds
what scoring needs: the scaler's means and scales, the centres and the cluster names. ``cdp train``
registers it in MLflow (:class:`ClusterModel`) and ``cdp tag`` scores with the version carrying the
alias, so a customer's cluster means the same thing from one daily run to the next until a refit
beats it. Scoring (``cluster_columns``) is one Column expression per output, inside the tag projection:
no Spark ML transform and no job of its own.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

logger = logging.getLogger(__name__)

PARALLEL_FITS = 8  # k-means fits (one per candidate k) running at the same time
SAMPLE_BUCKETS = 1_000_000  # the fit sample keeps customers whose hash falls in the first buckets


@dataclass(frozen=True)
class Clustering:
    """A fitted clustering: z = (log1p(max(feature, 0)) - mean) * scale, nearest centre wins.

    ``scales`` are 1 / standard deviation, 0 where the deviation is 0 (as Spark's StandardScaler);
    ``silhouettes`` maps each candidate k to its silhouette on the fit sample.
    """

    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    centers: tuple[tuple[float, ...], ...]
    names: tuple[str, ...]
    silhouettes: Mapping[int, float]
    sample_rows: int

    @property
    def k(self) -> int:
        return len(self.centers)

    @property
    def silhouette(self) -> float:
        return self.silhouettes[self.k]

    def summary(self) -> dict[str, Any]:
        return {"k": self.k, "silhouette": self.silhouette, "silhouettes": dict(self.silhouettes),
                "names": list(self.names), "sample_rows": self.sample_rows}


def _log_features(features: Sequence[str]) -> list[Column]:
    """log1p of each feature, nulls and negatives as 0."""
    return [F.log1p(F.greatest(F.coalesce(F.col(f).cast("double"), F.lit(0.0)), F.lit(0.0))) for f in features]


def _standardised(clustering: Clustering) -> list[Column]:
    return [(x - F.lit(mean)) * F.lit(scale) if scale != 0 else F.lit(0.0)
            for x, mean, scale in zip(_log_features(clustering.features), clustering.means, clustering.scales,
                                      strict=True)]


def cluster_columns(clustering: Clustering) -> dict[str, Column]:
    """``cluster`` (int, 0-based: the nearest centre, the first on a tie, as Spark ML's KMeans) and
    ``name`` of each customer, from the feature columns."""
    z = _standardised(clustering)
    distances = [sum(((zi - F.lit(ci)) ** 2 for zi, ci in zip(z, center, strict=True)), F.lit(0.0))
                 for center in clustering.centers]
    squared = F.array(*distances)
    cluster = (F.array_position(squared, F.array_min(squared)) - 1).cast("int")
    name = F.element_at(F.array(*[F.lit(n) for n in clustering.names]), cluster + 1)
    return {"cluster": cluster, "name": name}


def cluster_names(centers: Sequence[Sequence[float]], labels: Sequence[str]) -> list[str]:
    """Name each cluster after its largest standardised centre coordinate (``high_<feature>``), or
    ``low_activity`` when every coordinate is below the mean; duplicates get a suffix."""
    names: list[str] = []
    for center in centers:
        top = max(range(len(center)), key=lambda i: center[i])
        name = f"high_{labels[top]}" if center[top] > 0 else "low_activity"
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def fit_sample(features: DataFrame, sample_rows: int, seed: int) -> DataFrame:
    """About ``sample_rows`` customers chosen by a hash of customer_id and the seed: the same customers
    whatever the table's file layout or partitioning (``DataFrame.sample`` draws per partition)."""
    total = features.count()
    if total <= sample_rows:
        return features
    buckets = int(SAMPLE_BUCKETS * sample_rows / total)
    return features.where(F.pmod(F.xxhash64(F.col("customer_id"), F.lit(seed)), F.lit(SAMPLE_BUCKETS)) < buckets)


def fit_clustering(features: DataFrame, names: Sequence[str], labels: Mapping[str, str], k_values: Sequence[int],
                   *, seed: int = 42, sample_rows: int = 50_000, max_iter: int = 20) -> Clustering:
    """Fit k-means (Spark ML) for each k in ``k_values`` on a sample and keep the best silhouette.

    Input: a feature snapshot with customer_id and the ``names`` columns. ``labels`` name features in
    the cluster names (default: the feature name).
    """
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.util import inheritable_thread_target

    sample = fit_sample(features, sample_rows, seed).select(array_to_vector(F.array(*_log_features(names))).alias("raw"))
    scaler = StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True).fit(sample)
    sample_vec = scaler.transform(sample).select("features").cache()
    n_sample = sample_vec.count()
    candidates = [k for k in k_values if k < n_sample]
    if not candidates:
        sample_vec.unpersist()
        raise ValueError(f"not enough customers ({n_sample}) for k-means with k in {list(k_values)}")
    evaluator = ClusteringEvaluator(featuresCol="features", predictionCol="prediction")

    @inheritable_thread_target(features.sparkSession)  # the fits' jobs keep the caller's job group
    def fit(k: int) -> tuple[float, Any]:
        model = KMeans(k=k, seed=seed, maxIter=max_iter).fit(sample_vec)
        return evaluator.evaluate(model.transform(sample_vec)), model

    # One fit per k, side by side: each is a chain of small jobs on the cached sample, bound by job
    # scheduling more than by the cores. Each fit is seeded and independent of the others.
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(candidates), PARALLEL_FITS))) as pool:
            fitted = dict(zip(candidates, pool.map(fit, candidates), strict=True))
    finally:
        sample_vec.unpersist()
    best_k = candidates[0]
    for k in candidates:  # ascending k: a tie keeps the smaller k
        if fitted[k][0] > fitted[best_k][0] + 1e-9:
            best_k = k
    centers = [tuple(float(v) for v in c) for c in fitted[best_k][1].clusterCenters()]
    std = scaler.std.toArray()
    return Clustering(features=tuple(names), means=tuple(float(m) for m in scaler.mean.toArray()),
                      scales=tuple(float(1.0 / s) if s != 0 else 0.0 for s in std), centers=tuple(centers),
                      names=tuple(cluster_names(centers, [labels.get(f, f) for f in names])),
                      silhouettes={k: round(fitted[k][0], 4) for k in candidates}, sample_rows=n_sample)


def aligned_to(new: Clustering, previous: Clustering | None) -> Clustering:
    """``new`` with its clusters renumbered after ``previous``'s: centres are matched one to one (the
    matching with the least total squared distance, in ``new``'s standardised space) and a matched
    cluster takes its match's number when that number exists (< new.k); the others take the numbers
    left, in their order. So a refit does not renumber the clusters that persist, and an audience on
    ``behaviour_cluster = 2`` keeps its meaning. Unchanged when ``previous`` clusters other features.
    """
    if previous is None or previous.features != new.features:
        return new
    from scipy.optimize import linear_sum_assignment

    def in_new_space(center: Sequence[float]) -> np.ndarray:
        logged = [c / s + m if s != 0 else m for c, s, m in zip(center, previous.scales, previous.means, strict=True)]
        return np.array([(x - m) * s for x, m, s in zip(logged, new.means, new.scales, strict=True)])

    old_centers = [in_new_space(c) for c in previous.centers]
    cost = np.array([[float(((np.array(c) - o) ** 2).sum()) for o in old_centers] for c in new.centers])
    number: dict[int, int] = {}
    for index, old in zip(*linear_sum_assignment(cost), strict=True):
        if old < new.k:
            number[int(index)] = int(old)
    free = iter(sorted(set(range(new.k)) - set(number.values())))
    for index in range(new.k):
        if index not in number:
            number[index] = next(free)
    order = sorted(range(new.k), key=lambda index: number[index])
    return Clustering(features=new.features, means=new.means, scales=new.scales,
                      centers=tuple(new.centers[i] for i in order), names=tuple(new.names[i] for i in order),
                      silhouettes=new.silhouettes, sample_rows=new.sample_rows)


def silhouette_of(clustering: Clustering, features: DataFrame) -> float:
    """The silhouette of ``clustering``'s assignment of the ``features`` rows, in its own standardised
    space: how a registered clustering does on a sample another fit was chosen on. -1 (the worst)
    when it puts every row in one cluster."""
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.functions import array_to_vector

    scored = features.select(array_to_vector(F.array(*_standardised(clustering))).alias("features"),
                             cluster_columns(clustering)["cluster"].cast("double").alias("prediction")).cache()
    try:
        if scored.select("prediction").distinct().limit(2).count() < 2:
            return -1.0  # every row in one cluster: no silhouette (Spark's evaluator refuses), the worst
        return float(ClusteringEvaluator(featuresCol="features", predictionCol="prediction").evaluate(scored))
    finally:
        scored.unpersist()


class ClusterModel(mlflow.pyfunc.PythonModel):
    """A registered clustering: ``predict`` returns the 0-based cluster of each row of raw features
    (the same assignment as :func:`cluster_columns`, in numpy); ``clustering`` holds the numbers."""

    def __init__(self, clustering: Clustering):
        self.clustering = clustering

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        c = self.clustering
        x = np.log1p(np.maximum(np.nan_to_num(model_input[list(c.features)].astype("float64").to_numpy()), 0.0))
        z = np.where(np.array(c.scales) != 0, (x - np.array(c.means)) * np.array(c.scales), 0.0)
        squared = ((z[:, None, :] - np.array(c.centers)[None, :, :]) ** 2).sum(axis=2)
        return squared.argmin(axis=1).astype("int32")
