"""Tag catalogue validation and rule / algorithmic tag values on tiny hand-built feature tables."""
from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import date, datetime

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.features.config import ListItem
from cdp.tagging import (
    CatalogueError,
    Clustering,
    ClusterModel,
    compute_tags,
    merge,
    parse_file,
    profile_from_tag_stats,
    tag_profile,
    tag_stats,
    to_long,
    validate_catalogue,
)
from cdp.tagging.clusters import aligned_to, cluster_columns, fit_clustering, silhouette_of
from cdp.tagging.compute import TAGS_LONG_SCHEMA

AS_OF = date(2024, 3, 1)
LISTS = {"cats": tuple(ListItem.from_dict(v, "cats") for v in ("a", "b", "c"))}


def _features(spark, columns: dict[str, T.DataType], rows: list[tuple]):
    schema = T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("as_of", T.DateType()),
                           *[T.StructField(name, dtype) for name, dtype in columns.items()]])
    return spark.createDataFrame([(row[0], AS_OF, *row[1:]) for row in rows], schema)


def _tag(name, sql, type_="boolean", **extra):
    return {"name": name, "zh": name, "en": name, "description": "d", "category": "c", "kind": "rule",
            "type": type_, "owner": "o", "sql": sql, **extra}


def _catalogue(spark, features, *files):
    catalogue = merge(parse_file(name, data, LISTS) for name, data in files)
    return validate_catalogue(catalogue, features.schema, LISTS, spark)


SPEND = {"orders_revenue_365d": T.DoubleType(), "orders_count_lifetime": T.LongType()}


def test_rule_tags_in_dependency_order_with_templates(spark):
    features = _features(spark, SPEND, [("c1", 12000.0, 5), ("c2", 300.0, 1), ("c3", 0.0, 0)])
    catalogue = _catalogue(spark, features, ("conf/tags/t.yaml", {
        "lists": {"tiers": [{"value": "gold", "min": 10000}, {"value": "bronze", "min": 100}]},
        "tags": [
            _tag("vip_repeat", "vip AND orders_count_lifetime >= 2"),  # uses a tag declared after it
            _tag("vip", "orders_revenue_365d >= 10000"),
            _tag("spend_band", "CASE WHEN orders_revenue_365d = 0 THEN 'none' WHEN vip THEN 'top' ELSE 'some' END",
                 "string"),
        ],
        "templates": [{"for_each": {"t": "tiers"}, **_tag("at_least_{t.slug}", "orders_revenue_365d >= {t.min}")}],
    }))
    assert catalogue.get("vip_repeat").inputs == ("vip", "orders_count_lifetime")
    wide, _ = compute_tags(features, catalogue, LISTS)
    expected = spark.createDataFrame(
        [("c1", AS_OF, True, True, "top", True, True), ("c2", AS_OF, False, False, "some", False, True),
         ("c3", AS_OF, False, False, "none", False, False)],
        "customer_id string, as_of date, vip_repeat boolean, vip boolean, spend_band string, "
        "at_least_gold boolean, at_least_bronze boolean")
    assertDataFrameEqual(wide, expected)


@pytest.mark.parametrize("tags, message", [
    ([_tag("big", "orders_revenue_365 > 1")], r"t.yaml: tag 'big': unknown feature or tag `orders_revenue_365`"),
    ([_tag("big", "orders_revenue_365d >>= 1")], r"t.yaml: tag 'big': SQL does not parse"),
    ([_tag("x", "y"), _tag("y", "z"), _tag("z", "x")], r"t.yaml: tag '.': cycle between tags: "),
    ([_tag("me", "me OR true")], r"t.yaml: tag 'me': cycle between tags: me -> me"),
    ([_tag("big", "orders_revenue_365d * 2")], r"t.yaml: tag 'big': declared type 'boolean' but the SQL returns double"),
    ([_tag("orders_count_lifetime", "true")], r"tag 'orders_count_lifetime': the name is already a feature"),
    ([{**_tag("big", "true"), "kind": "magic"}], r"tag 'big': kind 'magic'"),
    ([{**_tag("big", "true"), "zh": None}], r"tag 'big': required key 'zh' is missing"),
    ([{"name": "r", "zh": "r", "en": "r", "description": "d", "category": "c", "kind": "algorithmic",
       "type": "int", "owner": "o", "algorithm": "nope", "output": "r_score"}], r"tag 'r': unknown algorithm instance"),
])
def test_catalogue_errors_name_file_and_tag(spark, tags, message):
    features = _features(spark, SPEND, [])
    with pytest.raises(CatalogueError, match=message):
        _catalogue(spark, features, ("conf/tags/t.yaml", {"tags": tags}))


def test_duplicate_tag_across_files(spark):
    features = _features(spark, SPEND, [])
    with pytest.raises(CatalogueError, match=r"b.yaml: tag 'vip': also defined in a.yaml"):
        _catalogue(spark, features, ("a.yaml", {"tags": [_tag("vip", "true")]}),
                   ("b.yaml", {"tags": [_tag("vip", "true")]}))


def _algo_tag(name, algorithm, output, type_):
    return {"name": name, "zh": name, "en": name, "description": "d", "category": "c", "kind": "algorithmic",
            "type": type_, "owner": "o", "algorithm": algorithm, "output": output}


def test_rfm_quintile_edges_scores_and_segments(spark):
    rfm = {"rfm_recency_days": T.IntegerType(), "rfm_frequency": T.LongType(), "rfm_monetary": T.DoubleType()}
    # customer i: recency i days, frequency 11 - i orders, monetary 10 * i; c0 never bought
    rows = [(f"c{i:02d}", i, 11 - i, 10.0 * i) for i in range(1, 11)] + [("c00", None, 0, 0.0)]
    features = _features(spark, rfm, rows)
    catalogue = _catalogue(spark, features, ("rfm.yaml", {
        "algorithms": {"rfm": {"type": "rfm"}},
        "tags": [_algo_tag("r", "rfm", "r_score", "int"), _algo_tag("f", "rfm", "f_score", "int"),
                 _algo_tag("m", "rfm", "m_score", "int"), _algo_tag("cell", "rfm", "rfm_cell", "string"),
                 _algo_tag("seg", "rfm", "segment", "string"), _tag("champ", "seg = 'champions'")]}))
    wide, info = compute_tags(features, catalogue, LISTS)
    # quintile edges over the 10 buyers: recency 2,4,6,8; frequency 2,4,6,8; monetary 20,40,60,80
    assert info.stats["_a_rfm__rfm_recency_days"] == [2, 4, 6, 8]
    assert info.stats["_a_rfm__rfm_monetary"] == [20.0, 40.0, 60.0, 80.0]
    expected = spark.createDataFrame([
        ("c01", AS_OF, 5, 5, 1, "551", "champions", True), ("c02", AS_OF, 5, 5, 1, "551", "champions", True),
        ("c03", AS_OF, 4, 4, 2, "442", "loyal_customers", False),
        ("c04", AS_OF, 4, 4, 2, "442", "loyal_customers", False),
        ("c05", AS_OF, 3, 3, 3, "333", "need_attention", False),
        ("c06", AS_OF, 3, 3, 3, "333", "need_attention", False),
        ("c07", AS_OF, 2, 2, 4, "224", "hibernating", False), ("c08", AS_OF, 2, 2, 4, "224", "hibernating", False),
        ("c09", AS_OF, 1, 1, 5, "115", "hibernating", False), ("c10", AS_OF, 1, 1, 5, "115", "hibernating", False),
        ("c00", AS_OF, None, None, None, None, "prospect", False),
    ], "customer_id string, as_of date, r int, f int, m int, cell string, seg string, champ boolean")
    assertDataFrameEqual(wide, expected)


def test_lifecycle_thresholds_from_inter_purchase_time(spark):
    cols = {"ipt_mean_days": T.DoubleType(), "days_since_last_order": T.IntegerType(),
            "days_since_first_order": T.IntegerType()}
    # median inter-purchase time of repeat buyers: 20 days -> new <= 20 since first order,
    # active <= 30 (1.5x), at risk <= 60 (3x), lapsing <= 100 (5x), churned beyond
    features = _features(spark, cols, [
        ("prospect", None, None, None), ("new", None, 15, 20), ("active", 10.0, 30, 400),
        ("at_risk", 20.0, 31, 400), ("lapsing", 30.0, 100, 400), ("churned", None, 101, 400)])
    catalogue = _catalogue(spark, features, ("life.yaml", {
        "algorithms": {"life": {"type": "lifecycle", "new_multiple": 1.0, "active_multiple": 1.5,
                                "at_risk_multiple": 3.0, "lapsing_multiple": 5.0}},
        "tags": [_algo_tag("stage", "life", "stage", "string"), _algo_tag("base", "life", "typical_ipt_days", "double")]}))
    wide, _ = compute_tags(features, catalogue, LISTS)
    expected = spark.createDataFrame([(name, AS_OF, name, 20.0) for name in
                                      ("prospect", "new", "active", "at_risk", "lapsing", "churned")],
                                     "customer_id string, as_of date, stage string, base double")
    assertDataFrameEqual(wide, expected)


def test_preference_next_best_category_and_price_sensitivity(spark):
    cols = {"cat_spend_a": T.DoubleType(), "cat_spend_b": T.DoubleType(), "cat_spend_c": T.DoubleType(),
            "orders_discount_share_365d": T.DoubleType(), "orders_coupon_share_365d": T.DoubleType(),
            "orders_count_365d": T.LongType()}
    features = _features(spark, cols, [
        ("c1", 10.0, 30.0, 0.0, 0.0, 0.0, 2), ("c2", 50.0, 50.0, 0.0, 0.2, 0.2, 1),
        ("c3", 5.0, 0.0, 5.0, 0.4, 0.4, 3), ("c4", 1.0, 0.0, 0.0, None, None, 1),
        ("c5", 0.0, 0.0, 0.0, None, None, 0)])
    catalogue = _catalogue(spark, features, ("pref.yaml", {
        "algorithms": {"pref": {"type": "argmax", "list": "cats", "feature": "cat_spend_{slug}"},
                       "nbc": {"type": "next_best_category", "list": "cats", "feature": "cat_spend_{slug}"},
                       "price": {"type": "price_sensitivity", "window": "365d"}},
        "tags": [_algo_tag("pref", "pref", "label", "string"), _algo_tag("nbc", "nbc", "category", "string"),
                 _algo_tag("nbc_score", "nbc", "score", "double"), _algo_tag("price", "price", "level", "string")]}))
    wide, _ = compute_tags(features, catalogue, LISTS)
    # buyers of a: 4, of b: 2, of c: 1; a&b: 2, a&c: 1, b&c: 0. Price scores 0, 0.2, 0.4, 0 among
    # buyers; tertile edges 0.0 and 0.2.
    expected = spark.createDataFrame([
        ("c1", AS_OF, "b", "c", 0.25, "low"),      # bought a, b: P(c|a) + P(c|b) = 1/4 + 0
        ("c2", AS_OF, "a", "c", 0.25, "medium"),   # tie a = b: first in list order
        ("c3", AS_OF, "a", "b", 0.5, "high"),      # bought a, c: P(b|a) + P(b|c) = 2/4 + 0
        ("c4", AS_OF, "a", "b", 0.5, "low"),       # bought a: P(b|a) = 1/2 beats P(c|a) = 1/4
        ("c5", AS_OF, None, "a", 4.0, None),       # bought nothing: most bought category
    ], "customer_id string, as_of date, pref string, nbc string, nbc_score double, price string")
    assertDataFrameEqual(wide, expected)


def test_kmeans_chooses_k_and_names_clusters(spark):
    cols = {"orders": T.DoubleType(), "views": T.DoubleType()}
    rows = [(f"buyer{i}", 50.0 + i, 0.0) for i in range(4)] + \
           [(f"browser{i}", 0.0, 200.0 + i) for i in range(4)]
    features = _features(spark, cols, rows)
    catalogue = _catalogue(spark, features, ("km.yaml", {
        "algorithms": {"km": {"type": "kmeans", "features": ["orders", "views"], "k_min": 2, "k_max": 3,
                              "labels": {"orders": "buying", "views": "browsing"}}},
        "tags": [_algo_tag("cluster_name", "km", "name", "string")]}))
    wide, info = compute_tags(features, catalogue, LISTS)
    assert info.kmeans["km"]["k"] == 2
    expected = spark.createDataFrame([(c, AS_OF, "high_buying" if c.startswith("buyer") else "high_browsing")
                                      for c, *_ in rows], "customer_id string, as_of date, cluster_name string")
    assertDataFrameEqual(wide, expected)


def test_registered_clustering_scores_by_nearest_centre_without_a_fit(spark):
    # z = (log1p(x) - mean) * scale; orders: log1p(e - 1) = 1, mean 1, scale 2 -> 0; views scale 0 -> 0
    e1 = math.e - 1
    clustering = Clustering(features=("orders", "views"), means=(1.0, 3.0), scales=(2.0, 0.0),
                            centers=((-2.0, 0.0), (0.0, 0.0), (2.0, 0.0), (0.0, 0.0)),
                            names=("low_activity", "high_buying", "high_buying_2", "dup"),
                            silhouettes={4: 0.5}, sample_rows=10)
    cols = {"orders": T.DoubleType(), "views": T.DoubleType()}
    rows = [("c1", e1, 9.0),           # z = (0, 0): centres 1 and 3 tie, the first wins
            ("c2", 0.0, None),         # log1p(0) = 0: z = (-2, 0), centre 0
            ("c3", None, 1.0),         # null counts as 0: centre 0
            ("c4", -5.0, 0.0),         # negative counts as 0: centre 0
            ("c5", math.e ** 2 - 1, 0.0),  # log1p = 2: z = (2, 0), centre 2
            ("c6", math.e ** 1.6 - 1, 0.0)]  # z = (1.2, 0): nearer centre 2 (0.64) than 1 (1.44)
    features = _features(spark, cols, rows)
    catalogue = _catalogue(spark, features, ("km.yaml", {
        "algorithms": {"km": {"type": "kmeans", "features": ["orders", "views"]}},
        "tags": [_algo_tag("cluster", "km", "cluster", "int"), _algo_tag("cluster_name", "km", "name", "string")]}))
    wide, info = compute_tags(features, catalogue, LISTS, clusterings={"km": clustering})
    assert info.kmeans["km"]["fitted_in_run"] is False and info.kmeans["km"]["k"] == 4
    expected = [("c1", 1, "high_buying"), ("c2", 0, "low_activity"), ("c3", 0, "low_activity"),
                ("c4", 0, "low_activity"), ("c5", 2, "high_buying_2"), ("c6", 2, "high_buying_2")]
    assertDataFrameEqual(wide, spark.createDataFrame([(c, AS_OF, k, n) for c, k, n in expected],
                                                     "customer_id string, as_of date, cluster int, cluster_name string"))
    # scored on rows it puts in one cluster, a clustering gets the worst silhouette, not an error
    assert silhouette_of(clustering, features.where("customer_id IN ('c2', 'c3', 'c4')")) == -1.0
    assert -1.0 < silhouette_of(clustering, features) <= 1.0
    # the registered model's numpy predict assigns the same clusters
    frame = features.select("orders", "views").toPandas()
    assert list(ClusterModel(clustering).predict(None, frame)) == [k for _, k, _ in expected]


def test_refit_clusters_keep_the_previous_numbers_where_they_persist():
    def clustering(centers, names, means=(0.0, 0.0), scales=(1.0, 1.0)):
        return Clustering(features=("a", "b"), means=means, scales=scales, centers=centers, names=names,
                          silhouettes={len(centers): 0.5}, sample_rows=100)

    previous = clustering(((0.0, 0.0), (5.0, 0.0), (0.0, 5.0)), ("low", "high_a", "high_b"))
    # the same three clusters, moved a little, fitted in another order, plus a new one; the refit's
    # scaler differs: previous centres are compared in its space (log-space centre (5, 0) is (2.5, -1))
    refit = clustering(((0.1, 4.0), (-1.0, -1.0), (9.0, 9.0), (2.4, -1.1)), ("high_b", "low", "both", "high_a"),
                       means=(0.0, 1.0), scales=(0.5, 1.0))
    aligned = aligned_to(refit, previous)
    assert aligned.names == ("low", "high_a", "high_b", "both")
    assert aligned.centers == ((-1.0, -1.0), (2.4, -1.1), (0.1, 4.0), (9.0, 9.0))
    assert aligned_to(refit, None) == refit
    assert aligned_to(refit, replace(previous, features=("a", "c"))) == refit
    # fewer clusters than before: a match to a number the refit does not have leaves it to the free ones
    two = clustering(((0.0, 5.0), (0.0, 0.0)), ("high_b", "low"))
    assert aligned_to(two, previous).names == ("low", "high_b")
    fewer = clustering(((0.0, 5.1), (5.0, 0.1)), ("high_b", "high_a"))  # previous numbers 2 and 1
    assert aligned_to(fewer, previous).names == ("high_b", "high_a")


def test_fitted_clustering_assigns_as_spark_ml_kmeans(spark):
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    rng = random.Random(5)
    rows = [(f"c{i}", float(rng.choice([0, 2, 40]) + rng.random()), float(rng.choice([0, 10, 300]) * rng.random()),
             None if i % 7 == 0 else float(rng.randint(0, 5))) for i in range(300)]
    features = _features(spark, {"a": T.DoubleType(), "b": T.DoubleType(), "c": T.DoubleType()}, rows)
    clustering = fit_clustering(features, ["a", "b", "c"], {}, [2, 3, 4], seed=3, sample_rows=1000)
    assert clustering.sample_rows == 300 and clustering.k in (2, 3, 4)
    assert clustering.silhouette == max(clustering.silhouettes.values())
    ours = features.select("customer_id", cluster_columns(clustering)["cluster"].alias("k"))
    # Spark ML's own pipeline on the same log1p features, with our scaler and centres
    logged = features.select("customer_id", *[F.log1p(F.greatest(F.coalesce(F.col(c), F.lit(0.0)), F.lit(0.0)))
                                              .alias(c) for c in "abc"])
    raw = VectorAssembler(inputCols=list("abc"), outputCol="raw").transform(logged)
    scaled = StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True).fit(raw).transform(raw)
    model = KMeans(k=clustering.k, seed=3, maxIter=20).fit(scaled)
    assert [v for c in model.clusterCenters() for v in c] == pytest.approx([v for c in clustering.centers for v in c])
    theirs = model.transform(scaled).select("customer_id", F.col("prediction").cast("int").alias("k"))
    assertDataFrameEqual(ours, theirs)


def test_shipped_catalogue_is_valid_and_broad(spark, conf_dir):
    from cdp.features import FeatureConfig, feature_schema
    from cdp.runtime.config import load_yaml
    from cdp.runtime.config import parse_file as parse_config

    config = parse_config(conf_dir / "features.yaml", FeatureConfig.from_dict)
    catalogue = merge(parse_file(str(p), load_yaml(p), config.lists) for p in sorted((conf_dir / "tags").glob("*.yaml")))
    validated = validate_catalogue(catalogue, feature_schema(spark, config), config.lists, spark)
    kinds = {k: len(validated.of_kind(k)) for k in ("rule", "algorithmic", "predictive")}
    assert len(validated.tags) >= 600 and kinds["algorithmic"] >= 20 and kinds["predictive"] == 3
    assert all(t.display_zh and t.display_en and t.description and t.inputs for t in validated.tags)
    assert validated.get("valuable_at_risk").inputs == ("clv_12m", "churn_propensity")


def test_long_form_and_per_tag_statistics(spark):
    features = _features(spark, SPEND, [("c1", 12000.0, 5), ("c2", 300.0, 1), ("c3", 0.0, 0), ("c4", None, 2)])
    catalogue = _catalogue(spark, features, ("conf/tags/t.yaml", {"tags": [
        _tag("vip", "orders_revenue_365d >= 10000"),
        _tag("band", "CASE WHEN orders_revenue_365d > 0 THEN 'buyer' END", "string"),
        _tag("spend", "orders_revenue_365d", "double"),
        _tag("orders", "orders_count_lifetime", "int"),
        _tag("repeat", "orders_count_lifetime > 1"),
        _tag("never", "orders_count_lifetime < 0"),
    ]}))
    wide, _ = compute_tags(features, catalogue, LISTS)
    versions = {t.name: f"def:{t.name}'s" for t in catalogue.tags}  # a quote survives the SQL text
    at = datetime(2024, 3, 1, 6, 0)
    long = to_long(wide, catalogue, versions, at, "r1")
    expected_long = [  # null values and false flags are left out
        ("c1", "vip", "true"), ("c1", "band", "buyer"), ("c1", "spend", "12000.0"), ("c1", "orders", "5"),
        ("c1", "repeat", "true"), ("c2", "band", "buyer"), ("c2", "spend", "300.0"), ("c2", "orders", "1"),
        ("c3", "spend", "0.0"), ("c3", "orders", "0"), ("c4", "orders", "2"), ("c4", "repeat", "true")]
    assertDataFrameEqual(long, spark.createDataFrame(
        [(c, t, v, "rule", f"def:{t}'s", at, AS_OF, "r1") for c, t, v in expected_long], TAGS_LONG_SCHEMA))
    stats_frame = tag_stats(wide, catalogue, versions, at, "r1")
    stats = {r["tag"]: r for r in stats_frame.collect()}
    assert {t: (r["customers"], r["covered"], r["true_count"], r["distinct_values"]) for t, r in stats.items()} == {
        "vip": (4, 3, 1, 2), "band": (4, 2, None, 1), "spend": (4, 3, None, 3), "orders": (4, 4, None, 4),
        "repeat": (4, 4, 2, 2), "never": (4, 4, 0, 1)}
    assert (stats["spend"]["min"], stats["spend"]["mean"], stats["spend"]["p50"], stats["spend"]["max"]) == \
        (0.0, 4100.0, 300.0, 12000.0)
    assert (stats["orders"]["min"], stats["orders"]["mean"], stats["orders"]["p50"], stats["orders"]["max"]) == \
        (0.0, 2.0, 1.0, 5.0)
    assert stats["vip"]["min"] is None and stats["band"]["mean"] is None
    assert stats["band"]["top_values"] == {"buyer": 2} and stats["vip"]["top_values"] == {"true": 1}
    assert stats["spend"]["top_values"] is None and stats["vip"]["coverage"] == 0.75
    assert stats["never"]["top_values"] == {} and stats["orders"]["top_values"] == {"0": 1, "1": 1, "2": 1, "5": 1}
    # the value counts are those of tags_long (booleans: their true values)
    long_counts = {}
    for row in long.where(F.col("tag") != "spend").groupBy("tag", "value").count().collect():
        long_counts.setdefault(row["tag"], {})[row["value"]] = row["count"]
    assert {t: r["top_values"] for t, r in stats.items() if t != "spend" and r["top_values"]} == long_counts
    # the most frequent values first, ties by value
    top_two = {r["tag"]: r["top_values"] for r in tag_profile(wide, catalogue, top_n=2).collect()}
    assert top_two["orders"] == {"0": 1, "1": 1} and top_two["band"] == {"buyer": 2}
    # the profile the quality gates share: a boolean's mean is its true share
    profile = tag_profile(wide, catalogue)
    assert {r["tag"]: r["mean"] for r in profile.collect()} == {
        "vip": 1 / 3, "band": None, "spend": 4100.0, "orders": 2.0, "repeat": 0.5, "never": 0.0}
    assertDataFrameEqual(tag_stats(wide, catalogue, versions, at, "r1", profile=profile), stats_frame)
    # stored tag_stats give the drift gate the same coverage and mean as the profile
    assertDataFrameEqual(profile_from_tag_stats(stats_frame), profile.select("tag", "coverage", "mean"))


def test_double_strings_match_sparks_cast(spark):
    import pyarrow as pa

    from cdp.tagging.compute import double_strings

    values = [0.0, -0.0, 5.0, -3.0, 0.1, 0.1 + 0.2, 12000.0, 1234567.5, 9999999.0, 1e7, 12345678.9, 1e20, 0.001,
              0.00099, 1e-4, -1.25e-7, 0.7781234, 452.68, 2.0 ** 53, float("nan"), float("inf"), float("-inf"), None]
    expected = [row[0] for row in spark.createDataFrame([(v,) for v in values], "x double")
                .selectExpr("CAST(x AS STRING)").collect()]
    assert double_strings(pa.array(values, pa.float64())).to_pylist() == expected
