"""Compute every tag of the catalogue over a feature snapshot, in few Spark passes.

1. one aggregation for the population statistics of all algorithm instances (RFM edges, median
   inter-purchase time, tertiles, co-purchase counts);
2. k-means instances fit on a sample (their own jobs) and add two columns by projection;
3. one projection for all algorithmic, predictive and rule tags (rules are ordered in dependency
   levels that Spark collapses into a single Project).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tagging.algorithms import REGISTRY
from tagging.catalogue import SPARK_TYPES, Catalogue, Tag
from tagging.validate import dependency_order

logger = logging.getLogger(__name__)

# model name -> function building the score column from the model's feature columns
Scorer = Callable[[list[Column]], Column]


@dataclass
class TagRunInfo:
    """What a tag computation decided: algorithm statistics and k-means choices, per instance."""

    stats: dict[str, Any] = field(default_factory=dict)
    kmeans: dict[str, dict[str, Any]] = field(default_factory=dict)


def _prefix(instance: str) -> str:
    return f"_a_{instance}__"


def compute_tags(features: DataFrame, catalogue: Catalogue, lists: Mapping[str, Sequence[Any]],
                 scorers: Mapping[str, Scorer] | None = None) -> tuple[DataFrame, TagRunInfo]:
    """Add one column per tag to the feature snapshot.

    Input: features_daily rows of one ``as_of`` (customer_id, as_of, features). ``scorers``: for each
    predictive model named by a tag, a function from the model's feature columns to its score column.
    Output: customer_id, as_of and one column per tag (catalogue order, typed by value_type).
    """
    info = TagRunInfo()
    used = {t.algorithm for t in catalogue.of_kind("algorithmic")}
    instances = {name: algo for name, algo in catalogue.algorithms.items() if name in used}
    stats_exprs: list[Column] = []
    for name, algo in instances.items():
        impl = REGISTRY[algo.type]
        stats_exprs += impl.stats(_prefix(name), algo.params, lists, f"{algo.file}: algorithms.{name}")
    if stats_exprs:
        row = features.agg(*stats_exprs).first()
        info.stats = row.asDict() if row is not None else {}
    tagged = features
    for name, algo in instances.items():
        impl = REGISTRY[algo.type]
        if hasattr(impl, "fit_transform"):
            tagged, info.kmeans[name] = impl.fit_transform(tagged, _prefix(name), algo.params, lists,
                                                          f"{algo.file}: algorithms.{name}")
    algo_columns: dict[str, Column] = {}
    for name, algo in instances.items():
        impl = REGISTRY[algo.type]
        if not hasattr(impl, "fit_transform"):
            outputs = impl.columns(_prefix(name), algo.params, lists, info.stats, f"{algo.file}: algorithms.{name}")
            algo_columns.update({f"{_prefix(name)}{out}": column for out, column in outputs.items()})
    tagged = tagged.withColumns(algo_columns) if algo_columns else tagged
    level0: dict[str, Column] = {}
    for tag in catalogue.of_kind("algorithmic"):
        level0[tag.name] = F.col(f"{_prefix(tag.algorithm or '')}{tag.output}").cast(SPARK_TYPES[tag.value_type])
    for tag in catalogue.of_kind("predictive"):
        level0[tag.name] = _predictive_column(tag, catalogue, scorers or {})
    tagged = tagged.withColumns(level0) if level0 else tagged
    for level in dependency_order({t.name: t for t in catalogue.tags}):
        tagged = tagged.withColumns({t.name: F.expr(t.sql or "").cast(SPARK_TYPES[t.value_type]) for t in level})
    return tagged.select("customer_id", "as_of", *[t.name for t in catalogue.tags]), info


def _predictive_column(tag: Tag, catalogue: Catalogue, scorers: Mapping[str, Scorer]) -> Column:
    spec = catalogue.models[tag.model or ""]
    scorer = scorers.get(spec.name)
    if scorer is None:
        raise ValueError(f"{tag.where()}: no scorer for model {spec.name!r}")
    score = scorer([F.col(f) for f in tag.inputs])
    return F.when(F.expr(spec.population), score).cast(SPARK_TYPES[tag.value_type])


def tag_versions(catalogue: Catalogue, model_versions: Mapping[str, str]) -> dict[str, str]:
    """tag -> ``def:<hash>`` (rule, algorithmic) or ``model:<name>/<version>`` (predictive)."""
    out: dict[str, str] = {}
    for tag in catalogue.tags:
        if tag.kind == "predictive":
            out[tag.name] = f"model:{tag.model}/{model_versions.get(tag.model or '', 'unknown')}"
        else:
            out[tag.name] = catalogue.version(tag)
    return out


def to_long(wide: DataFrame, catalogue: Catalogue, versions: Mapping[str, str], computed_at: datetime,
            run_id: str) -> DataFrame:
    """tags_long: one row per customer and tag value carried (null and false values are left out).

    Output: customer_id, tag, value string, kind, version, computed_at, as_of, run_id.
    """
    entries = []
    for tag in catalogue.tags:
        value = F.col(tag.name)
        text = F.when(value, F.lit("true")) if tag.value_type == "boolean" else value.cast("string")
        entries.append(F.struct(F.lit(tag.name).alias("tag"), text.alias("value"), F.lit(tag.kind).alias("kind"),
                                F.lit(versions[tag.name]).alias("version")))
    exploded = wide.select("customer_id", "as_of", F.explode(
        F.filter(F.array(*entries), lambda e: e["value"].isNotNull())).alias("t"))
    return exploded.select("customer_id", F.col("t.tag").alias("tag"), F.col("t.value").alias("value"),
                           F.col("t.kind").alias("kind"), F.col("t.version").alias("version"),
                           F.lit(computed_at).cast("timestamp").alias("computed_at"), "as_of",
                           F.lit(run_id).alias("run_id"))


TAG_STATS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType()), T.StructField("computed_at", T.TimestampType()),
    T.StructField("as_of", T.DateType()), T.StructField("tag", T.StringType()),
    T.StructField("kind", T.StringType()), T.StructField("value_type", T.StringType()),
    T.StructField("version", T.StringType()), T.StructField("customers", T.LongType()),
    T.StructField("covered", T.LongType()), T.StructField("coverage", T.DoubleType()),
    T.StructField("true_count", T.LongType()), T.StructField("distinct_values", T.LongType()),
    T.StructField("top_values", T.MapType(T.StringType(), T.LongType())),
    T.StructField("min", T.DoubleType()), T.StructField("mean", T.DoubleType()),
    T.StructField("p50", T.DoubleType()), T.StructField("max", T.DoubleType()),
])


def tag_stats(wide: DataFrame, long: DataFrame, catalogue: Catalogue, versions: Mapping[str, str],
              computed_at: datetime, run_id: str, top_n: int = 20) -> DataFrame:
    """Coverage and distribution per tag: one aggregation over tags_wide, one over tags_long.

    Output: the columns of ``TAG_STATS_SCHEMA`` (one row per tag).
    """
    exprs: list[Column] = [F.count(F.lit(1)).alias("_n"), F.first("as_of").alias("_as_of")]
    for i, tag in enumerate(catalogue.tags):
        col = F.col(tag.name)
        exprs += [F.count(col).alias(f"c{i}"), F.approx_count_distinct(col).alias(f"d{i}")]
        if tag.value_type == "boolean":
            exprs.append(F.sum(F.when(col, 1).otherwise(0)).alias(f"t{i}"))
        if tag.value_type in ("int", "double"):
            exprs += [F.min(col).cast("double").alias(f"min{i}"), F.avg(col).alias(f"mean{i}"),
                      F.percentile_approx(col, 0.5, 1000).cast("double").alias(f"p{i}"),
                      F.max(col).cast("double").alias(f"max{i}")]
    totals = wide.agg(*exprs).first().asDict()
    categorical = [t.name for t in catalogue.tags if t.value_type != "double"]
    counts = (long.where(F.col("tag").isin(categorical)).groupBy("tag", "value").count().collect()
              if categorical else [])
    top: dict[str, list[tuple[str, int]]] = {}
    for row in counts:
        top.setdefault(row["tag"], []).append((row["value"], int(row["count"])))
    rows = []
    customers = int(totals["_n"])
    for i, tag in enumerate(catalogue.tags):
        covered = int(totals[f"c{i}"])
        values = sorted(top.get(tag.name, []), key=lambda kv: (-kv[1], kv[0]))[:top_n]
        rows.append((run_id, computed_at, totals["_as_of"], tag.name, tag.kind, tag.value_type, versions[tag.name],
                     customers, covered, covered / customers if customers else None,
                     int(totals[f"t{i}"] or 0) if tag.value_type == "boolean" else None,
                     int(totals[f"d{i}"]), dict(values) if tag.value_type != "double" else None,
                     totals.get(f"min{i}"), totals.get(f"mean{i}"), totals.get(f"p{i}"), totals.get(f"max{i}")))
    return wide.sparkSession.createDataFrame(rows, TAG_STATS_SCHEMA)
