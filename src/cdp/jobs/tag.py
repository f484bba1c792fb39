"""``cdp tag``: compute every tag of the catalogue for one feature snapshot.

Publishes ``tags_wide`` behind the ``tags_wide`` and ``tags_drift`` quality gates
(``conf/quality.yaml``), then writes ``tags_long`` (overwritten each run; earlier runs stay readable as Delta
versions) and appends per-tag coverage and distribution to ``tag_stats``. Predictive tags are scored
with the registered model version carrying the alias (``models:/<name>@champion``), and that version
is recorded on every predictive tag value. k-means tags score with the clustering registered under
the instance's name by ``cdp train`` (``models:/<instance>@champion``, its version recorded on their
values the same way); an instance with none is fitted on this snapshot, for this run only.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Collection
from datetime import UTC, date, datetime
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.jobs.entry import JobFailed, as_of_job_main
from cdp.jobs.features import TABLE as FEATURES
from cdp.jobs.features import load_feature_config
from cdp.jobs.tags import load_catalogue
from cdp.jobs.train import alias_version, registered_clustering, registered_status
from cdp.lake import Lake
from cdp.runtime.config import JobContext
from cdp.runtime.gates import publish_with_gates, staging_name
from cdp.runtime.mlflow import configure as configure_mlflow
from cdp.tagging import (
    ArrowTransform,
    Catalogue,
    Clustering,
    clustering_instances,
    compute_tags,
    long_transform,
    profile_from_tag_stats,
    tag_profile,
    tag_stats,
    tag_versions,
)
from cdp.tagging.compute import Scorer

logger = logging.getLogger(__name__)


def model_scorers(spark: SparkSession, catalogue: Catalogue, columns: Collection[str] | None = None
                  ) -> tuple[dict[str, Scorer], dict[str, str], dict[str, str]]:
    """A Spark UDF per predictive model, of the version its alias points to, that version, and why a
    model scores null (model -> reason).

    Models without the alias (``cdp train`` not run, or it skipped the model or did not promote it)
    score null, with a warning and the last training outcome as the reason. The UDF is fed the
    columns the model's signature names, in its order (a champion trained on other inputs than the
    catalogue lists now still gets its own); ``columns`` (the snapshot's) lets a model whose inputs
    are missing score null with a reason instead of failing the run.
    """
    import mlflow.pyfunc
    from mlflow.models import get_model_info

    scorers: dict[str, Scorer] = {}
    versions: dict[str, str] = {}
    reasons: dict[str, str] = {}

    def null(cols: list[Column]) -> Column:
        return F.lit(None).cast("double")

    for tag in catalogue.of_kind("predictive"):
        name = tag.model or ""
        if name in scorers:
            continue
        version = alias_version(name, tag.alias)
        if version is None:
            status = registered_status(name) or "cdp train has not run"
            reasons[name] = f"no version of {name} carries @{tag.alias}; last training: {status}"
            logger.warning("tag: %s; its tags are null", reasons[name])
            scorers[name], versions[name] = null, "none"
            continue
        uri = f"models:/{name}/{version}"
        signature = get_model_info(uri).signature
        inputs = signature.inputs.input_names() if signature is not None else None
        missing = [c for c in inputs or [] if columns is not None and c not in columns]
        if missing:
            reasons[name] = f"{uri} reads {missing}, which the feature snapshot does not hold"
            logger.warning("tag: %s; its tags are null", reasons[name])
            scorers[name], versions[name] = null, version
            continue
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")

        def score(cols: list[Column], udf: Any = udf, inputs: list[str] | None = inputs) -> Column:
            # the model's signature names its inputs; pass those columns in that order, as doubles
            chosen = [F.col(c) for c in inputs] if inputs else cols
            return udf(*[c.cast("double") for c in chosen])

        scorers[name], versions[name] = score, version
        logger.info("tag: scoring %s with models:/%s@%s = version %s", tag.name, name, tag.alias, version)
    return scorers, versions, reasons


def registered_clusterings(catalogue: Catalogue) -> tuple[dict[str, Clustering], dict[str, str]]:
    """The registered clustering of each k-means instance, by its alias, and the version it points to.

    An instance without one (``cdp train`` not run), or whose registered clustering reads other
    features than the catalogue now lists, is left out: compute_tags fits it on the snapshot.
    """
    clusterings: dict[str, Clustering] = {}
    versions: dict[str, str] = {}
    for name, algo in clustering_instances(catalogue).items():
        alias = str(algo.params.get("alias", "champion"))
        version, clustering = registered_clustering(name, alias)
        if clustering is None:
            logger.warning("tag: no clustering with alias %s for %s; fitting one for this run (run `cdp train` "
                           "to keep clusters the same from run to run)", alias, name)
        elif list(clustering.features) != [str(f) for f in algo.params.get("features", [])]:
            logger.warning("tag: models:/%s@%s (version %s) clusters %s, not the catalogue's %s; fitting one "
                           "for this run", name, alias, version, list(clustering.features),
                           list(algo.params.get("features", [])))
        else:
            clusterings[name], versions[name] = clustering, str(version)
            logger.info("tag: %s scores with models:/%s@%s = version %s (k=%d)", name, name, alias, version,
                        clustering.k)
    return clusterings, versions


def previous_tag_profile(lake: Lake) -> DataFrame | None:
    """tag, coverage, mean of the published tags_wide, from the ``tag_stats`` rows of the run that
    wrote it (None when there is no such table or run: the drift gate then computes them)."""
    if not (lake.exists("tags_wide") and lake.exists("tag_stats")):
        return None
    last = lake.read("tags_wide").select("run_id").first()
    if last is None:
        return None
    stats = lake.read("tag_stats").where(F.col("run_id") == F.lit(last["run_id"]))
    return profile_from_tag_stats(stats)  # the drift gate collects it once


def latest_as_of(lake: Lake) -> date:
    latest = lake.read(FEATURES).agg(F.max("as_of")).first()[0]
    if latest is None:
        raise JobFailed("tag: features_daily is empty; run `cdp features` first")
    return latest


def run(spark: SparkSession, ctx: JobContext, as_of: date | None = None, *, lake: Lake | None = None
        ) -> dict[str, Any]:
    """Tag the features_daily snapshot of ``as_of`` (default: the latest) and publish the tag tables."""
    lake = lake or Lake(spark, ctx.lake_root)
    if not lake.exists(FEATURES):
        raise JobFailed("tag: features_daily does not exist; run `cdp features` first")
    as_of = as_of or latest_as_of(lake)
    features = lake.read(FEATURES).where(F.col("as_of") == F.lit(as_of))
    config = load_feature_config(ctx)
    # validate against the stored snapshot's schema: the table is what the tags will read
    catalogue = load_catalogue(spark, ctx, config, schema=features.schema)
    configure_mlflow(ctx.lake_root)
    scorers, model_versions, null_reasons = model_scorers(spark, catalogue, features.columns)
    clusterings, cluster_versions = registered_clusterings(catalogue)
    wide, info = compute_tags(features, catalogue, config.lists, scorers, clusterings)
    computed_at = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    versions = tag_versions(catalogue, model_versions, cluster_versions)
    metadata = {"run_id": ctx.run_id, "job": "tag", "as_of": as_of.isoformat(),
                "models": ",".join(f"{k}/{v}" for k, v in sorted({**model_versions, **cluster_versions}.items()))}
    wide = wide.select("customer_id", "as_of", F.lit(computed_at).cast("timestamp").alias("computed_at"),
                       F.lit(ctx.run_id).alias("run_id"), *[t.name for t in catalogue.tags])
    # Write-audit-publish: coverage and drift against the previous run gate tags_wide; when a gate
    # fails, nothing below is written and every tag table keeps its last good version. The staged
    # table's statistics are computed once, for the gates and for tag_stats (the published table is
    # the staged one); the previous version's come from tag_stats of the run that wrote it.
    profiles: dict[str, DataFrame] = {}

    def scan_staged(summary: ArrowTransform) -> DataFrame:
        return lake.arrow_scan(staging_name("tags_wide"), summary.columns).map(summary.batches, summary.schema)

    def profile_staged(staged: DataFrame) -> dict[str, DataFrame]:
        profiles["staged"] = tag_profile(staged, catalogue, apply_arrow=scan_staged)
        return {"tag_profile": profiles["staged"]}

    previous = previous_tag_profile(lake)
    wide_version = publish_with_gates(lake, wide, "tags_wide", ("tags_wide", "tags_drift"), ctx, metadata=metadata,
                                      inputs={"previous_tag_profile": previous} if previous is not None else None,
                                      candidate_inputs=profile_staged).version
    stored_wide = lake.read("tags_wide")
    # on the embedded backend the tasks read tags_wide's files and write tags_long's with pyarrow:
    # Spark's reader and writer would turn each of 660 columns and each of ~76 long rows per customer
    # into Spark rows (on delta-spark, Spark reads and writes)
    long = long_transform(catalogue, versions, computed_at, ctx.run_id)
    scan = lake.arrow_scan("tags_wide", long.columns)
    long_version = lake.write_arrow(scan.source, "tags_long", scan.feeding(long.batches), long.schema,
                                    mode="overwrite", metadata=metadata)
    notes = {t.name: null_reasons[t.model or ""] for t in catalogue.of_kind("predictive") if t.model in null_reasons}
    stats = tag_stats(stored_wide, catalogue, versions, computed_at, ctx.run_id, profile=profiles["staged"],
                      notes=notes)
    # evolve_schema: tag_stats tables written before the note column existed gain it (older rows null)
    lake.write(stats, "tag_stats", mode="append", metadata=metadata, evolve_schema=True)
    customers = stats.first()["customers"] if catalogue.tags else 0
    logger.info("tag: %d tags for %d customers as of %s -> tags_wide v%s, tags_long v%s; k-means %s",
                len(catalogue.tags), customers, as_of, wide_version, long_version,
                {k: {"k": v["k"], "silhouette": round(v["silhouette"], 3)} for k, v in info.kmeans.items()})
    return {"as_of": as_of.isoformat(), "tags": len(catalogue.tags), "customers": customers,
            "model_versions": model_versions, "null_models": null_reasons, "cluster_versions": cluster_versions,
            "tags_wide_version": wide_version,
            "tags_long_version": long_version, "kmeans": info.kmeans}


def main(argv: list[str] | None = None) -> int:
    return as_of_job_main("tag", argv, run, description="compute every tag in the catalogue",
                          as_of_help="features_daily snapshot to tag (default: the latest)")


if __name__ == "__main__":
    sys.exit(main())
