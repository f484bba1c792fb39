"""Algorithmic tags: population statistics (one aggregation for all instances) + per-customer columns.

Each algorithm type declares its outputs (name -> value type) and input features, the aggregate
expressions it needs over the whole feature table (quintile edges, medians, co-occurrence counts),
and the per-customer columns built from those statistics. The tagger computes the statistics of all
instances in one ``agg`` and adds all columns in one projection; k-means alone fits a model.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cdp.tagging.clusters import Clustering, cluster_columns, fit_clustering

logger = logging.getLogger(__name__)

RFM_SEGMENTS = (
    # (segment, R scores, F scores): the standard RFM segment map over recency and frequency scores
    ("champions", (5,), (4, 5)),
    ("loyal_customers", (3, 4), (4, 5)),
    ("potential_loyalists", (4, 5), (2, 3)),
    ("new_customers", (5,), (1,)),
    ("promising", (4,), (1,)),
    ("need_attention", (3,), (3,)),
    ("about_to_sleep", (3,), (1, 2)),
    ("cannot_lose_them", (1, 2), (5,)),
    ("at_risk", (1, 2), (3, 4)),
    ("hibernating", (1, 2), (1, 2)),
)
LIFECYCLE_STAGES = ("prospect", "new", "active", "at_risk", "lapsing", "churned")


def _p(params: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in params:
        raise ValueError(f"{where}: parameter {key!r} is missing")
    return params[key]


def _list_features(params: Mapping[str, Any], lists: Mapping[str, Sequence[Any]], where: str) -> list[tuple[str, str]]:
    """(label, feature) for each item of params.list with params.feature as a template."""
    list_name = _p(params, "list", where)
    if list_name not in lists:
        raise ValueError(f"{where}: unknown list {list_name!r}")
    template = str(_p(params, "feature", where))
    return [(item.slug, template.format(slug=item.slug, value=item.value)) for item in lists[list_name]]


def _edges(stats: Mapping[str, Any], key: str) -> list[float]:
    value = stats.get(key)
    return [float(v) for v in value] if value else []


def _score_up(column: Column, edges: list[float]) -> Column:
    """1 + number of edges strictly below the value (higher value, higher score)."""
    score = F.lit(1)
    for edge in edges:
        score = score + F.when(column > F.lit(edge), 1).otherwise(0)
    return score


class Rfm:
    outputs = {"r_score": "int", "f_score": "int", "m_score": "int", "rfm_cell": "string",
               "rfm_total": "int", "segment": "string"}

    def inputs(self, params, lists, where):
        return [params.get("recency", "rfm_recency_days"), params.get("frequency", "rfm_frequency"),
                params.get("monetary", "rfm_monetary")]

    def stats(self, prefix, params, lists, where):
        recency, frequency, monetary = self.inputs(params, lists, where)
        quantiles = F.array(*[F.lit(q) for q in (0.2, 0.4, 0.6, 0.8)])
        buyer = F.col(recency).isNotNull()
        # edges over buyers only: customers who never bought have no R, F or M position
        return [F.percentile_approx(F.when(buyer, F.col(c)), quantiles, 100000).alias(f"{prefix}{c}")
                for c in (recency, frequency, monetary)]

    def columns(self, prefix, params, lists, stats, where):
        recency, frequency, monetary = self.inputs(params, lists, where)
        buyer = F.col(recency).isNotNull()
        r_edges, f_edges, m_edges = (_edges(stats, f"{prefix}{c}") for c in (recency, frequency, monetary))
        logger.info("RFM quintile edges: R %s, F %s, M %s", r_edges, f_edges, m_edges)
        # recency: fewer days is better, so the score counts edges the value does not exceed
        r = F.when(buyer, F.lit(6) - _score_up(F.col(recency), r_edges) if r_edges else F.lit(3))
        f = F.when(buyer, _score_up(F.col(frequency), f_edges))
        m = F.when(buyer, _score_up(F.col(monetary), m_edges))
        segment = F.lit("prospect")
        for name, r_scores, f_scores in reversed(RFM_SEGMENTS):
            segment = F.when(r.isin(*r_scores) & f.isin(*f_scores), name).otherwise(segment)
        return {"r_score": r, "f_score": f, "m_score": m,
                "rfm_cell": F.when(buyer, F.concat(r.cast("string"), f.cast("string"), m.cast("string"))),
                "rfm_total": r + f + m, "segment": F.when(buyer, segment).otherwise("prospect")}


class Lifecycle:
    outputs = {"stage": "string", "typical_ipt_days": "double"}

    def inputs(self, params, lists, where):
        return ["ipt_mean_days", "days_since_last_order", "days_since_first_order"]

    def stats(self, prefix, params, lists, where):
        return [F.percentile_approx(F.col("ipt_mean_days"), F.lit(0.5), 100000).alias(f"{prefix}median_ipt")]

    def thresholds(self, params, stats, prefix) -> dict[str, float]:
        median = stats.get(f"{prefix}median_ipt")
        base = float(median) if median is not None else float(params.get("default_ipt_days", 60))
        base = max(base, float(params.get("min_ipt_days", 7)))
        return {"base": base,
                "new": base * float(params.get("new_multiple", 1.0)),
                "active": base * float(params.get("active_multiple", 1.5)),
                "at_risk": base * float(params.get("at_risk_multiple", 3.0)),
                "lapsing": base * float(params.get("lapsing_multiple", 5.0))}

    def columns(self, prefix, params, lists, stats, where):
        t = self.thresholds(params, stats, prefix)
        logger.info("lifecycle thresholds (days): typical inter-purchase %.1f, new <= %.1f since first order, "
                    "active <= %.1f, at risk <= %.1f, lapsing <= %.1f, churned beyond", t["base"], t["new"],
                    t["active"], t["at_risk"], t["lapsing"])
        recency, tenure = F.col("days_since_last_order"), F.col("days_since_first_order")
        stage = (F.when(recency.isNull(), "prospect")
                 .when(tenure <= t["new"], "new")
                 .when(recency <= t["active"], "active")
                 .when(recency <= t["at_risk"], "at_risk")
                 .when(recency <= t["lapsing"], "lapsing")
                 .otherwise("churned"))
        return {"stage": stage, "typical_ipt_days": F.lit(t["base"])}


class Argmax:
    """The list item whose feature is largest (ties: first in list order); null when all are <= 0."""

    outputs = {"label": "string", "share": "double"}

    def inputs(self, params, lists, where):
        return [f for _, f in _list_features(params, lists, where)]

    def stats(self, prefix, params, lists, where):
        return []

    def columns(self, prefix, params, lists, stats, where):
        pairs = _list_features(params, lists, where)
        values = [F.coalesce(F.col(f).cast("double"), F.lit(0.0)) for _, f in pairs]
        top = F.greatest(*values) if len(values) > 1 else values[0]
        total = sum(values[1:], values[0])
        label = F.lit(None).cast("string")
        for (slug, _), value in reversed(list(zip(pairs, values, strict=True))):
            label = F.when(value == top, F.lit(slug)).otherwise(label)
        return {"label": F.when(top > 0, label), "share": F.when(top > 0, top / total)}


class PriceSensitivity:
    """Mean of discount share and coupon share over the window, cut at population tertiles of buyers."""

    outputs = {"score": "double", "level": "string"}

    def inputs(self, params, lists, where):
        w = params.get("window", "365d")
        return [f"orders_discount_share_{w}", f"orders_coupon_share_{w}", f"orders_count_{w}"]

    def _score(self, params, lists, where) -> Column:
        discount, coupon, count = self.inputs(params, lists, where)
        return F.when(F.col(count) > 0, (F.coalesce(F.col(discount), F.lit(0.0))
                                         + F.coalesce(F.col(coupon), F.lit(0.0))) / 2)

    def stats(self, prefix, params, lists, where):
        q = F.array(F.lit(1 / 3), F.lit(2 / 3))
        return [F.percentile_approx(self._score(params, lists, where), q, 100000).alias(f"{prefix}tertiles")]

    def columns(self, prefix, params, lists, stats, where):
        score = self._score(params, lists, where)
        edges = _edges(stats, f"{prefix}tertiles") or [0.0, 0.0]
        logger.info("price sensitivity tertile edges: %s", edges)
        level = F.when(score.isNull(), None).when(score <= edges[0], "low").when(score <= edges[1], "medium") \
            .otherwise("high")
        return {"score": score, "level": level}


class NextBestCategory:
    """Cross-sell: the category not yet bought with the highest sum of P(category | bought category)
    over the customer's categories (co-purchase counts over all customers); customers who bought
    nothing get the most bought category; null when they bought every category."""

    outputs = {"category": "string", "score": "double"}

    def inputs(self, params, lists, where):
        return [f for _, f in _list_features(params, lists, where)]

    def stats(self, prefix, params, lists, where):
        pairs = _list_features(params, lists, where)
        bought = {slug: F.when(F.col(f) > 0, 1).otherwise(0) for slug, f in pairs}
        exprs = [F.sum(b).alias(f"{prefix}n_{slug}") for slug, b in bought.items()]
        for (a, ba), (b, bb) in ((x, y) for i, x in enumerate(bought.items()) for y in list(bought.items())[i + 1:]):
            exprs.append(F.sum(ba * bb).alias(f"{prefix}n_{a}__{b}"))
        return exprs

    def columns(self, prefix, params, lists, stats, where):
        pairs = _list_features(params, lists, where)
        slugs = [s for s, _ in pairs]
        n = {s: float(stats.get(f"{prefix}n_{s}") or 0) for s in slugs}

        def both(a: str, b: str) -> float:
            key = f"{prefix}n_{a}__{b}" if slugs.index(a) < slugs.index(b) else f"{prefix}n_{b}__{a}"
            return float(stats.get(key) or 0)

        bought = {s: F.coalesce(F.col(f) > 0, F.lit(False)) for s, f in pairs}
        any_bought = F.lit(False)
        for flag in bought.values():
            any_bought = any_bought | flag
        scores = {}
        for d in slugs:
            terms = [F.when(bought[c], F.lit(both(c, d) / n[c] if n[c] else 0.0)).otherwise(0.0)
                     for c in slugs if c != d]
            affinity = sum(terms[1:], terms[0]) if terms else F.lit(0.0)
            # never-buyers: popularity; others: co-purchase affinity; bought categories excluded
            scores[d] = F.when(bought[d], F.lit(None)).when(~any_bought, F.lit(n[d])).otherwise(affinity)
        values = [F.coalesce(scores[s], F.lit(-1.0)) for s in slugs]
        top = F.greatest(*values)
        label = F.lit(None).cast("string")
        for slug, value in reversed(list(zip(slugs, values, strict=True))):
            label = F.when(value == top, F.lit(slug)).otherwise(label)
        return {"category": F.when(top >= 0, label), "score": F.when(top >= 0, top)}


class KMeansClusters:
    """Behaviour clusters: log1p + standardised features, k-means (Spark ML) fitted on a sample with
    k chosen by silhouette (:mod:`cdp.tagging.clusters`); each cluster is named after its most
    over-represented feature. ``cdp train`` fits and registers the clustering, ``cdp tag`` scores with
    the registered one (or fits one for the run when none is registered)."""

    outputs = {"cluster": "int", "name": "string"}

    def inputs(self, params, lists, where):
        features = _p(params, "features", where)
        if not isinstance(features, list) or len(features) < 2:
            raise ValueError(f"{where}: features must list at least two features")
        return [str(f) for f in features]

    def stats(self, prefix, params, lists, where):
        return []

    def fit(self, df: DataFrame, params, lists, where) -> Clustering:
        k_values = list(range(int(params.get("k_min", 3)), int(params.get("k_max", 8)) + 1))
        try:
            return fit_clustering(df, self.inputs(params, lists, where), params.get("labels") or {}, k_values,
                                  seed=int(params.get("seed", 42)), sample_rows=int(params.get("sample_rows", 50000)),
                                  max_iter=int(params.get("max_iter", 20)))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc

    def scored_columns(self, prefix: str, clustering: Clustering) -> dict[str, Column]:
        return {f"{prefix}{out}": column for out, column in cluster_columns(clustering).items()}


REGISTRY: dict[str, Any] = {
    "rfm": Rfm(),
    "lifecycle": Lifecycle(),
    "argmax": Argmax(),
    "price_sensitivity": PriceSensitivity(),
    "next_best_category": NextBestCategory(),
    "kmeans": KMeansClusters(),
}


def is_finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
