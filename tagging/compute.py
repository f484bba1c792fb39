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
        # SQL text, one string per tag: building hundreds of Column objects costs a py4j round trip
        # per call (seconds per level); selectExpr parses the whole level on the JVM side.
        tagged = tagged.selectExpr("*", *[f"CAST(({t.sql}\n) AS {SPARK_TYPES[t.value_type]}) AS `{t.name}`"
                                          for t in level])
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
    if not catalogue.tags:
        return wide.sparkSession.createDataFrame([], TAGS_LONG_SCHEMA)
    spark = wide.sparkSession
    entries = []
    for i, tag in enumerate(catalogue.tags):
        column = f"`{tag.name}`"
        text = f"CASE WHEN {column} THEN 'true' END" if tag.value_type == "boolean" else f"CAST({column} AS STRING)"
        entries.append(f"named_struct('i', {i}, 'value', {text})")
    # one SQL expression for the whole catalogue (see compute_tags: Columns cost a round trip each);
    # each entry carries the tag's index only, and a broadcast join adds name, kind and version:
    # building 4-field entries for every tag of every row took twice as long
    metadata = spark.createDataFrame(
        [(i, tag.name, tag.kind, versions[tag.name]) for i, tag in enumerate(catalogue.tags)],
        "i int, tag string, kind string, version string")
    exploded = wide.select("customer_id", "as_of", F.expr(
        f"inline(filter(array({', '.join(entries)}), e -> e.value IS NOT NULL))"))
    return exploded.join(F.broadcast(metadata), on="i").select(
        "customer_id", "tag", "value", "kind", "version", F.lit(computed_at).cast("timestamp").alias("computed_at"),
        "as_of", F.lit(run_id).alias("run_id"))


TAGS_LONG_SCHEMA = T.StructType([
    T.StructField("customer_id", T.StringType()), T.StructField("tag", T.StringType()),
    T.StructField("value", T.StringType()), T.StructField("kind", T.StringType()),
    T.StructField("version", T.StringType()), T.StructField("computed_at", T.TimestampType()),
    T.StructField("as_of", T.DateType()), T.StructField("run_id", T.StringType()),
])

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


TAG_PROFILE_SCHEMA = T.StructType([
    T.StructField("tag", T.StringType()), T.StructField("as_of", T.DateType()),
    T.StructField("customers", T.LongType()), T.StructField("covered", T.LongType()),
    T.StructField("coverage", T.DoubleType()), T.StructField("true_count", T.LongType()),
    T.StructField("distinct_values", T.LongType()), T.StructField("min", T.DoubleType()),
    T.StructField("mean", T.DoubleType()), T.StructField("p50", T.DoubleType()),
    T.StructField("max", T.DoubleType()),
])


def tag_profile(wide: DataFrame, catalogue: Catalogue) -> DataFrame:
    """Per tag of tags_wide: customers, covered, coverage, true count (booleans), distinct values,
    min / mean / p50 / max (int and double tags; ``mean`` of a boolean is its true share, as the
    quality gates compare it).

    tags_wide is unpivoted into (tag index, value) rows and aggregated by tag: a few aggregates over
    one narrow column scale to hundreds of tags, where hundreds of aggregates per row do not. The
    result is small and returned as a local frame (``TAG_PROFILE_SCHEMA``), so the quality gates and
    :func:`tag_stats` can share one pass over the table.
    """
    spark = wide.sparkSession
    tags = catalogue.tags
    if not tags:
        return spark.createDataFrame([], TAG_PROFILE_SCHEMA)
    no_text = "CAST(NULL AS STRING)"
    entries = []
    for i, tag in enumerate(tags):
        column = f"`{tag.name}`"
        text = f"CAST({column} AS STRING)"
        number = f"CAST({column} AS DOUBLE)" if tag.value_type in ("boolean", "int", "double") else "CAST(NULL AS DOUBLE)"
        # a distinct count ('d') of non-boolean tags only: a boolean's follows from its true and false
        # counts, and most tags are boolean
        entries.append(f"named_struct('i', {i}, 'text', {text}, 'x', {number}, "
                       f"'d', {no_text if tag.value_type == 'boolean' else text})")
    # one pass: every row yields one entry per tag, so each tag's row count is the customer count. No
    # typed aggregate (percentile) here: one would move the whole aggregation to the object-hash path
    # with its sort fallback, about three times slower over hundreds of millions of entries.
    per_tag = {row["i"]: row.asDict() for row in wide.select("as_of", F.expr(f"inline(array({', '.join(entries)}))"))
               .groupBy("i").agg(
        F.count(F.lit(1)).alias("rows"), F.first("as_of").alias("as_of"),
        F.count("text").alias("covered"), F.approx_count_distinct("d").alias("distinct_values"),
        F.sum("x").alias("total"), F.min("x").alias("min"), F.avg("x").alias("mean"),
        F.max("x").alias("max")).collect()}
    # medians of the numeric tags, a second pass over their columns alone
    numeric_tags = [(i, t) for i, t in enumerate(tags) if t.value_type in ("int", "double")]
    if numeric_tags and per_tag:
        medians = ", ".join(f"named_struct('i', {i}, 'x', CAST(`{t.name}` AS DOUBLE))" for i, t in numeric_tags)
        for row in (wide.select(F.expr(f"inline(array({medians}))")).groupBy("i")
                    .agg(F.percentile_approx("x", 0.5, 1000).alias("p50")).collect()):
            per_tag[row["i"]]["p50"] = row["p50"]  # every tag with a median row has its main row
    first = per_tag.get(0)  # none when tags_wide is empty
    customers, as_of = (int(first["rows"]), first["as_of"]) if first else (0, None)
    rows = []
    for i, tag in enumerate(tags):
        stats = per_tag.get(i) or {}
        covered = int(stats.get("covered") or 0)
        numeric = tag.value_type in ("int", "double")
        true_count = int(stats.get("total") or 0) if tag.value_type == "boolean" else None

        def stat(key: str, stats: Any = stats, numeric: bool = numeric) -> float | None:
            return float(stats[key]) if numeric and stats.get(key) is not None else None

        # the mean of a boolean's 0/1 value ('x') is its true share
        mean = float(stats["mean"]) if tag.value_type != "string" and stats.get("mean") is not None else None
        rows.append((tag.name, as_of, customers, covered, covered / customers if customers else None, true_count,
                     _distinct_values(tag.value_type, stats, covered), stat("min"), mean, stat("p50"), stat("max")))
    return spark.createDataFrame(rows, TAG_PROFILE_SCHEMA)


def profile_from_tag_stats(stats: DataFrame) -> DataFrame:
    """tag_stats rows of one run -> tag, coverage, mean as :func:`tag_profile` gives them (a boolean's
    mean is its true share), for the drift gate's previous version."""
    true_share = F.when(F.col("covered") > 0, F.col("true_count") / F.col("covered"))
    return stats.select("tag", "coverage", F.when(F.col("value_type") == "boolean", true_share)
                        .otherwise(F.col("mean")).cast("double").alias("mean"))


def tag_stats(wide: DataFrame, long: DataFrame, catalogue: Catalogue, versions: Mapping[str, str],
              computed_at: datetime, run_id: str, top_n: int = 20, profile: DataFrame | None = None) -> DataFrame:
    """Coverage and distribution per tag: :func:`tag_profile` of tags_wide (or ``profile``, when the
    caller already has it) and the most frequent values from tags_long.

    Output: the columns of ``TAG_STATS_SCHEMA`` (one row per tag).
    """
    tags = catalogue.tags
    if not tags:
        return wide.sparkSession.createDataFrame([], TAG_STATS_SCHEMA)
    by_tag = {row["tag"]: row for row in (profile if profile is not None else tag_profile(wide, catalogue)).collect()}
    categorical = [t.name for t in tags if t.value_type != "double"]
    counts = (long.where(F.col("tag").isin(categorical)).groupBy("tag", "value").count().collect()
              if categorical else [])
    top: dict[str, list[tuple[str, int]]] = {}
    for row in counts:
        top.setdefault(row["tag"], []).append((row["value"], int(row["count"])))
    rows = []
    for tag in tags:
        p = by_tag[tag.name]
        numeric = tag.value_type in ("int", "double")
        values = sorted(top.get(tag.name, []), key=lambda kv: (-kv[1], kv[0]))[:top_n]
        rows.append((run_id, computed_at, p["as_of"], tag.name, tag.kind, tag.value_type, versions[tag.name],
                     p["customers"], p["covered"], p["coverage"], p["true_count"], p["distinct_values"],
                     dict(values) if tag.value_type != "double" else None,
                     p["min"], p["mean"] if numeric else None, p["p50"], p["max"]))
    return wide.sparkSession.createDataFrame(rows, TAG_STATS_SCHEMA)


def _distinct_values(value_type: str, stats: Mapping[str, Any], covered: int) -> int:
    """Distinct non-null values of a tag: counted (approximately) for non-boolean tags; for a boolean,
    whether any value is true plus whether any is false."""
    if not stats:
        return 0
    if value_type != "boolean":
        return int(stats["distinct_values"])
    true_count = int(stats["total"] or 0)
    return int(true_count > 0) + int(covered - true_count > 0)
