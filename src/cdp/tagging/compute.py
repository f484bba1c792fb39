"""Compute every tag of the catalogue over a feature snapshot, in few Spark passes.

1. one aggregation for the population statistics of all algorithm instances (RFM edges, median
   inter-purchase time, tertiles, co-purchase counts);
2. k-means instances score with their registered clustering (a Column expression), or fit one on a
   sample of the snapshot (their own jobs) when none is registered;
3. one projection for all algorithmic, predictive and rule tags (rules are ordered in dependency
   levels that Spark collapses into a single Project).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.tagging.algorithms import REGISTRY
from cdp.tagging.catalogue import SPARK_TYPES, Algorithm, Catalogue, Tag
from cdp.tagging.clusters import Clustering
from cdp.tagging.validate import dependency_order

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
                 scorers: Mapping[str, Scorer] | None = None,
                 clusterings: Mapping[str, Clustering] | None = None) -> tuple[DataFrame, TagRunInfo]:
    """Add one column per tag to the feature snapshot.

    Input: features_daily rows of one ``as_of`` (customer_id, as_of, features). ``scorers``: for each
    predictive model named by a tag, a function from the model's feature columns to its score column.
    ``clusterings``: the registered clustering of each k-means instance; an instance without one is
    fitted on this snapshot.
    Output: customer_id, as_of and one column per tag (catalogue order, typed by value_type).
    """
    info = TagRunInfo()
    instances = used_algorithms(catalogue)
    stats_exprs: list[Column] = []
    for name, algo in instances.items():
        impl = REGISTRY[algo.type]
        stats_exprs += impl.stats(_prefix(name), algo.params, lists, f"{algo.file}: algorithms.{name}")
    if stats_exprs:
        row = features.agg(*stats_exprs).first()
        info.stats = row.asDict() if row is not None else {}
    algo_columns: dict[str, Column] = {}
    for name, algo in instances.items():
        impl = REGISTRY[algo.type]
        where = f"{algo.file}: algorithms.{name}"
        if hasattr(impl, "fit"):
            clustering = (clusterings or {}).get(name)
            fitted_here = clustering is None
            if clustering is None:
                clustering = impl.fit(features, algo.params, lists, where)
            info.kmeans[name] = {**clustering.summary(), "fitted_in_run": fitted_here}
            algo_columns.update(impl.scored_columns(_prefix(name), clustering))
        else:
            outputs = impl.columns(_prefix(name), algo.params, lists, info.stats, where)
            algo_columns.update({f"{_prefix(name)}{out}": column for out, column in outputs.items()})
    tagged = features.withColumns(algo_columns) if algo_columns else features
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


def used_algorithms(catalogue: Catalogue) -> dict[str, Algorithm]:
    """The algorithm instances some tag reads, in catalogue order."""
    used = {t.algorithm for t in catalogue.of_kind("algorithmic")}
    return {name: algo for name, algo in catalogue.algorithms.items() if name in used}


def clustering_instances(catalogue: Catalogue) -> dict[str, Algorithm]:
    """The k-means instances some tag reads: each is fitted by ``cdp train`` and registered under its name."""
    return {name: algo for name, algo in used_algorithms(catalogue).items() if hasattr(REGISTRY[algo.type], "fit")}


def _predictive_column(tag: Tag, catalogue: Catalogue, scorers: Mapping[str, Scorer]) -> Column:
    spec = catalogue.models[tag.model or ""]
    scorer = scorers.get(spec.name)
    if scorer is None:
        raise ValueError(f"{tag.where()}: no scorer for model {spec.name!r}")
    score = scorer([F.col(f) for f in tag.inputs])
    return F.when(F.expr(spec.population), score).cast(SPARK_TYPES[tag.value_type])


def tag_versions(catalogue: Catalogue, model_versions: Mapping[str, str],
                 cluster_versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """tag -> ``def:<hash>`` (rule, algorithmic) or ``model:<name>/<version>`` (predictive, and the
    outputs of a k-means instance scored with a registered clustering: ``cluster_versions``)."""
    out: dict[str, str] = {}
    for tag in catalogue.tags:
        if tag.kind == "predictive":
            out[tag.name] = f"model:{tag.model}/{model_versions.get(tag.model or '', 'unknown')}"
        elif tag.kind == "algorithmic" and tag.algorithm in (cluster_versions or {}):
            out[tag.name] = f"model:{tag.algorithm}/{(cluster_versions or {})[tag.algorithm or '']}"
        else:
            out[tag.name] = catalogue.version(tag)
    return out


def _java_double(value: float) -> str:
    """One double in Java's computerized scientific layout (1.0E7, -2.5E-4), or NaN / Infinity."""
    import math

    import numpy as np

    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    mantissa, exponent = np.format_float_scientific(value, unique=True, trim="-").split("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}E{int(exponent)}"


def double_strings(values: Any) -> Any:
    """An Arrow double array as strings the way Spark's ``CAST(x AS STRING)`` writes them: Java's
    ``Double.toString`` layout (5.0, 0.001, 1.0E7, 1.0E-4, 0.0, NaN, Infinity) with the shortest
    digits that read back as the same double (Java 19 and later; Java 17 may print a longer form
    of some values). Nulls stay null."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    text = values.cast(pa.string())  # shortest digits; whole numbers without '.0', Arrow's exponents
    number = values.fill_null(0.0).to_numpy(zero_copy_only=False)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    magnitude = np.abs(number)
    with np.errstate(invalid="ignore"):
        plain = (magnitude >= 1e-3) & (magnitude < 1e7)
    whole = pc.invert(pc.match_substring(text, ".")).fill_null(False).to_numpy(zero_copy_only=False)
    text = pc.if_else(pa.array(plain & whole), pc.binary_join_element_wise(text, ".0", ""), text)
    zero = number == 0
    text = pc.if_else(pa.array(zero & valid), pa.array(np.where(np.signbit(number), "-0.0", "0.0")), text)
    scientific = valid & ~plain & ~zero
    if scientific.any():
        text = pc.replace_with_mask(text, pa.array(scientific),
                                    pa.array([_java_double(float(v)) for v in number[scientific]], pa.string()))
    return text


def _value_strings(column: Any, value_type: str) -> Any:
    import pyarrow as pa

    if value_type == "double":
        return double_strings(column)
    return column.cast(pa.string())  # a kept boolean is 'true'; ints print as in Spark


def _long_rows(names: Sequence[str], value_types: Sequence[str], kinds: Sequence[str], versions: Sequence[str],
               computed_at: datetime, run_id: str) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Arrow function over (customer_id, as_of, each tag in catalogue order) -> rows of
    ``TAGS_LONG_SCHEMA``: one per value carried (not null, not false), values as strings."""
    def rows(batches: Iterator[Any]) -> Iterator[Any]:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(TAGS_LONG_SCHEMA, timezone="UTC")  # sessions run in UTC (cdp.runtime.session)
        name_of, kind_of, version_of = pa.array(names), pa.array(kinds), pa.array(versions)
        computed = pa.array([computed_at], schema.field("computed_at").type)
        run = pa.array([run_id], pa.string())
        for batch in batches:
            customer_id, as_of = batch.column(0), batch.column(1)
            ids, positions, values, dates = [], [], [], []
            for i, value_type in enumerate(value_types):
                column = batch.column(i + 2)
                keep = pc.fill_null(column, False) if value_type == "boolean" else pc.is_valid(column)
                kept = pc.filter(customer_id, keep)
                if not len(kept):
                    continue
                ids.append(kept)
                dates.append(pc.filter(as_of, keep))
                positions.append(np.full(len(kept), i, dtype=np.int32))
                values.append(_value_strings(pc.filter(column, keep), value_type))
            if not ids:
                continue
            index = pa.array(np.concatenate(positions))
            first = pa.array(np.zeros(len(index), dtype=np.int32))
            yield pa.RecordBatch.from_arrays([
                pa.concat_arrays(ids), name_of.take(index), pa.concat_arrays(values), kind_of.take(index),
                version_of.take(index), computed.take(first), pa.concat_arrays(dates), run.take(first)],
                schema=schema)
    return rows


@dataclass(frozen=True)
class ArrowTransform:
    """An Arrow function from some columns of a table to rows of ``schema``.

    ``apply(df)`` runs it with ``DataFrame.mapInArrow``. A job may instead feed it the table's
    batches as the tasks read them (``Lake.arrow_scan``) and write its output straight to Parquet
    (``Lake.write_arrow``): for a wide table, Spark's reader builds a row of every column and
    converts it back to Arrow, the larger part of the cost.
    """

    columns: tuple[str, ...]
    batches: Callable[[Iterator[Any]], Iterator[Any]]
    schema: T.StructType

    def apply(self, df: DataFrame) -> DataFrame:
        return df.select(*[F.col(f"`{c}`") for c in self.columns]).mapInArrow(self.batches, self.schema)


def long_transform(catalogue: Catalogue, versions: Mapping[str, str], computed_at: datetime,
                   run_id: str) -> ArrowTransform:
    """tags_wide -> tags_long as an :class:`ArrowTransform`: one row per customer and tag value carried
    (null and false values are left out), with the columns of ``TAGS_LONG_SCHEMA``: customer_id,
    tag, value string (as Spark's ``CAST(value AS STRING)``), kind, version, computed_at, as_of,
    run_id. Each tag's carried values are kept batch by batch with Arrow's kernels.
    """
    tags = catalogue.tags
    return ArrowTransform(("customer_id", "as_of", *[t.name for t in tags]),
                          _long_rows([t.name for t in tags], [t.value_type for t in tags], [t.kind for t in tags],
                                     [versions[t.name] for t in tags], computed_at, run_id), TAGS_LONG_SCHEMA)


def to_long(wide: DataFrame, catalogue: Catalogue, versions: Mapping[str, str], computed_at: datetime,
            run_id: str) -> DataFrame:
    """tags_long as a DataFrame: :func:`long_transform` applied to ``wide``."""
    return long_transform(catalogue, versions, computed_at, run_id).apply(wide)


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
    # why a tag has no values this run when it is not the data's doing (a predictive tag whose model
    # has no champion: the last training outcome), else null
    T.StructField("note", T.StringType()),
])


TAG_PROFILE_SCHEMA = T.StructType([
    T.StructField("tag", T.StringType()), T.StructField("as_of", T.DateType()),
    T.StructField("customers", T.LongType()), T.StructField("covered", T.LongType()),
    T.StructField("coverage", T.DoubleType()), T.StructField("true_count", T.LongType()),
    T.StructField("distinct_values", T.LongType()), T.StructField("min", T.DoubleType()),
    T.StructField("mean", T.DoubleType()), T.StructField("p50", T.DoubleType()),
    T.StructField("max", T.DoubleType()), T.StructField("top_values", T.MapType(T.StringType(), T.LongType())),
])

# what each partition of tags_wide reports: per tag one statistics row (value null), and per string or
# int tag one row per distinct value with its count (n)
_PARTIAL_PROFILE_SCHEMA = T.StructType([
    T.StructField("i", T.IntegerType()), T.StructField("value", T.StringType()), T.StructField("n", T.LongType()),
    T.StructField("rows", T.LongType()), T.StructField("covered", T.LongType()), T.StructField("total", T.DoubleType()),
    T.StructField("min", T.DoubleType()), T.StructField("max", T.DoubleType()), T.StructField("as_of", T.DateType()),
])

TOP_VALUES = 20


def _partial_profile(value_types: Sequence[str]) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """mapInArrow function over (as_of, tag columns in catalogue order) -> ``_PARTIAL_PROFILE_SCHEMA``.

    Each column is summarised with Arrow's vectorised kernels, batch by batch; a partition's value
    counts are merged with an Arrow group-by, so memory follows its distinct values, not its rows.
    """
    def profile(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.compute as pc
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(_PARTIAL_PROFILE_SCHEMA)
        rows, as_of = 0, None
        covered = [0] * len(value_types)
        total = [0.0] * len(value_types)
        low: list[float | None] = [None] * len(value_types)
        high: list[float | None] = [None] * len(value_types)
        counts: dict[int, list[Any]] = {}
        for batch in batches:
            if batch.num_rows == 0:
                continue
            rows += batch.num_rows
            if as_of is None:
                as_of = pc.min(batch.column(0)).as_py()
            for i, value_type in enumerate(value_types):
                column = batch.column(i + 1)
                covered[i] += len(column) - column.null_count
                if value_type == "boolean":
                    total[i] += pc.sum(column).as_py() or 0
                    continue
                if value_type in ("int", "double"):
                    extremes = pc.min_max(column).as_py()
                    if extremes["min"] is not None:
                        total[i] += pc.sum(column.cast(pa.float64())).as_py()
                        low[i] = extremes["min"] if low[i] is None else min(low[i], extremes["min"])
                        high[i] = extremes["max"] if high[i] is None else max(high[i], extremes["max"])
                if value_type in ("int", "string"):
                    counts.setdefault(i, []).append(pc.value_counts(column.drop_null().cast(pa.string())))
        if rows == 0:
            return
        index = list(range(len(value_types)))
        yield pa.RecordBatch.from_pydict({
            "i": index, "value": [None] * len(index), "n": [None] * len(index), "rows": [rows] * len(index),
            "covered": covered, "total": total, "min": low, "max": high, "as_of": [as_of] * len(index)},
            schema=schema)
        for i, parts in counts.items():
            batches_of_counts = [pa.RecordBatch.from_struct_array(p) for p in parts if len(p)]
            if not batches_of_counts:
                continue
            by_value = pa.Table.from_batches(batches_of_counts).group_by("values").aggregate([("counts", "sum")])
            size = by_value.num_rows
            yield from pa.table({
                "i": [i] * size, "value": by_value.column("values"), "n": by_value.column("counts_sum"),
                "rows": [None] * size, "covered": [None] * size, "total": [None] * size, "min": [None] * size,
                "max": [None] * size, "as_of": [None] * size}, schema=schema).to_batches()
    return profile


def tag_profile(wide: DataFrame, catalogue: Catalogue, top_n: int = TOP_VALUES, *,
                apply_arrow: Callable[[ArrowTransform], DataFrame] | None = None) -> DataFrame:
    """Per tag of tags_wide: customers, covered, coverage, true count (booleans), distinct values,
    min / mean / p50 / max (int and double tags; ``mean`` of a boolean is its true share, as the
    quality gates compare it) and the ``top_n`` most frequent values (booleans: the true count; string
    and int tags: exact counts; none for doubles).

    One pass summarises each partition's columns with Arrow (``mapInArrow``): the JVM's row-wise
    aggregation of hundreds of columns, or of an unpivot into one row per customer and tag, was three
    to four times slower. The partitions' summaries are merged by Spark; a second pass over the int
    and double columns alone gives their medians (and the doubles' distinct counts, approximate to
    about 1%). The result is small and returned as a local frame (``TAG_PROFILE_SCHEMA``), so the
    quality gates and :func:`tag_stats` share one profile of the table.

    ``apply_arrow`` runs the summary's :class:`ArrowTransform` over the table (default: over
    ``wide`` with ``mapInArrow``); a job may have the tasks read the table's files instead
    (``Lake.arrow_scan``), which at 660 columns is several times cheaper than Spark's reader.
    """
    from pyspark.sql import Window

    spark = wide.sparkSession
    tags = catalogue.tags
    if not tags:
        return spark.createDataFrame([], TAG_PROFILE_SCHEMA)
    value_types = [t.value_type for t in tags]
    summary = ArrowTransform(("as_of", *[t.name for t in tags]), _partial_profile(value_types),
                             _PARTIAL_PROFILE_SCHEMA)
    partial = summary.apply(wide) if apply_arrow is None else apply_arrow(summary)
    merged = partial.groupBy("i", "value").agg(
        F.sum("n").alias("n"), F.sum("rows").alias("rows"), F.sum("covered").alias("covered"),
        F.sum("total").alias("total"), F.min("min").alias("min"), F.max("max").alias("max"),
        F.min("as_of").alias("as_of"))
    by_tag = Window.partitionBy("i")
    # per tag: its statistics row first, then its values by count (ties by value)
    ranked = merged.select("*", F.count("value").over(by_tag).alias("distinct_values"), F.row_number().over(
        by_tag.orderBy(F.col("value").isNull().desc(), F.col("n").desc(), F.col("value"))).alias("rank"))
    per_tag: dict[int, dict[str, Any]] = {}
    top: dict[int, dict[str, int]] = {}
    for row in ranked.where(F.col("rank") <= top_n + 1).collect():
        if row["value"] is None:
            per_tag[row["i"]] = row.asDict()
        else:
            top.setdefault(row["i"], {})[row["value"]] = int(row["n"])
    # medians of the numeric tags (and distinct counts of the doubles), a pass over their columns alone
    numeric = [(i, t) for i, t in enumerate(tags) if t.value_type in ("int", "double")]
    if numeric and per_tag:
        medians = ", ".join(f"named_struct('i', {i}, 'x', CAST(`{t.name}` AS DOUBLE))" for i, t in numeric)
        for row in (wide.select(F.expr(f"inline(array({medians}))")).groupBy("i")
                    .agg(F.percentile_approx("x", 0.5, 1000).alias("p50"),
                         F.approx_count_distinct("x", 0.01).alias("approx_distinct")).collect()):
            per_tag[row["i"]].update(row.asDict())  # every tag with a median row has its main row
    first = per_tag.get(0)  # none when tags_wide is empty
    customers, as_of = (int(first["rows"]), first["as_of"]) if first else (0, None)
    rows = []
    for i, tag in enumerate(tags):
        stats = per_tag.get(i) or {}
        covered = int(stats.get("covered") or 0)
        numeric_tag = tag.value_type in ("int", "double")
        total = float(stats.get("total") or 0)
        true_count = int(total) if tag.value_type == "boolean" else None

        def stat(key: str, stats: Any = stats, numeric_tag: bool = numeric_tag) -> float | None:
            return float(stats[key]) if numeric_tag and stats.get(key) is not None else None

        # the mean of a boolean is its true share
        mean = total / covered if tag.value_type != "string" and covered else None
        if tag.value_type == "boolean":
            distinct = int(total > 0) + int(covered - total > 0)
            top_values: dict[str, int] | None = {"true": int(total)} if total else {}
        elif tag.value_type == "double":
            distinct, top_values = int(stats.get("approx_distinct") or 0), None
        else:
            distinct, top_values = int(stats.get("distinct_values") or 0), top.get(i, {})
        rows.append((tag.name, as_of, customers, covered, covered / customers if customers else None, true_count,
                     distinct, stat("min"), mean, stat("p50"), stat("max"), top_values))
    return spark.createDataFrame(rows, TAG_PROFILE_SCHEMA)


def profile_from_tag_stats(stats: DataFrame) -> DataFrame:
    """tag_stats rows of one run -> tag, coverage, mean as :func:`tag_profile` gives them (a boolean's
    mean is its true share), for the drift gate's previous version."""
    true_share = F.when(F.col("covered") > 0, F.col("true_count") / F.col("covered"))
    return stats.select("tag", "coverage", F.when(F.col("value_type") == "boolean", true_share)
                        .otherwise(F.col("mean")).cast("double").alias("mean"))


def tag_stats(wide: DataFrame, catalogue: Catalogue, versions: Mapping[str, str], computed_at: datetime,
              run_id: str, profile: DataFrame | None = None, notes: Mapping[str, str] | None = None) -> DataFrame:
    """Coverage and distribution per tag, from :func:`tag_profile` of tags_wide (or ``profile``, when
    the caller already has it); ``notes``: tag -> why it has no values (the ``note`` column).

    Output: the columns of ``TAG_STATS_SCHEMA`` (one row per tag).
    """
    tags = catalogue.tags
    if not tags:
        return wide.sparkSession.createDataFrame([], TAG_STATS_SCHEMA)
    by_tag = {row["tag"]: row for row in (profile if profile is not None else tag_profile(wide, catalogue)).collect()}
    rows = []
    for tag in tags:
        p = by_tag[tag.name]
        numeric = tag.value_type in ("int", "double")
        rows.append((run_id, computed_at, p["as_of"], tag.name, tag.kind, tag.value_type, versions[tag.name],
                     p["customers"], p["covered"], p["coverage"], p["true_count"], p["distinct_values"],
                     p["top_values"], p["min"], p["mean"] if numeric else None, p["p50"], p["max"],
                     (notes or {}).get(tag.name)))
    return wide.sparkSession.createDataFrame(rows, TAG_STATS_SCHEMA)
