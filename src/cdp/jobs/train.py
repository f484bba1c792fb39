"""``cdp train``: train the predictive tag models on as-of snapshots with an honest time split, and
fit the k-means behaviour clusters.

For a model with horizon h and data up to ``end`` (exclusive):
    T_eval = end - h, T_train = T_eval - h
    train: features as of T_train, labels from [T_train, T_eval)
    eval:  features as of T_eval,  labels from [T_eval, end)      (a later, unseen window)
Parameters and metrics go to MLflow; the model is registered and gets the alias ``champion`` only if
it beats the current champion re-scored on the same evaluation snapshot.

A k-means instance (``type: kmeans`` in conf/tags) is fitted on the snapshot as of ``end`` and
registered under its name; it takes the alias only if its silhouette beats the champion's on the same
sample by at least ``min_silhouette_gain`` (default 0.01), so that cluster numbers and names do not
change from run to run for noise.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from datetime import date, timedelta
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.features import FeatureConfig, purchase_labels
from cdp.jobs.entry import JobFailed, job_main
from cdp.jobs.features import build_snapshot, load_feature_config, parse_date, read_inputs
from cdp.jobs.tags import load_catalogue, parse_catalogue
from cdp.lake import Lake
from cdp.runtime.config import ConfigError, JobContext
from cdp.tagging import Algorithm, Clustering, ClusterModel, ModelSpec, clustering_instances
from cdp.tagging.algorithms import REGISTRY
from cdp.tagging.clusters import aligned_to, fit_sample, silhouette_of
from cdp.tagging.predictive import (
    ClvModel,
    classification_metrics,
    fit_classifier,
    fit_clv,
    labelled_snapshot,
    primary_metric,
    regression_metrics,
    snapshot_features,
)

logger = logging.getLogger(__name__)

ALIAS = "champion"
MIN_SILHOUETTE_GAIN = 0.01  # a refit clustering replaces the champion only when this much better


def configure_mlflow(lake_root: str) -> str:
    """Tracking and registry URI: $MLFLOW_TRACKING_URI (and $MLFLOW_REGISTRY_URI), else
    ``sqlite:///<lake>/mlflow.db``. Returns the artifact root for new experiments,
    ``<lake>/mlflow-artifacts``: a sqlite store would otherwise write ./mlruns wherever the job runs.

    An object-store lake (``s3a://``) cannot hold the sqlite file: it needs $MLFLOW_TRACKING_URI;
    artifacts then go beside a local sqlite database, or to $MLFLOW_ARTIFACT_ROOT (default
    ``s3://<lake>/mlflow-artifacts``) with a tracking server."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    root = lake_root[len("file://"):] if lake_root.startswith("file://") else lake_root
    if "://" not in root:
        root = os.path.abspath(root)
        os.makedirs(root, exist_ok=True)
    elif not os.environ.get("MLFLOW_TRACKING_URI"):
        # sqlite needs a local file: an object-store lake keeps its models with a tracking server
        raise ConfigError(f"lake {lake_root}: MLflow cannot keep its database in an object store; set "
                          "MLFLOW_TRACKING_URI (a tracking server, or sqlite:///<local path>/mlflow.db)")
    else:
        tracking = os.environ["MLFLOW_TRACKING_URI"]
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or tracking)
        if tracking.startswith("sqlite:///"):
            # artifacts beside the local database; a tracking server keeps its own artifact store
            return "file://" + os.path.join(os.path.dirname(os.path.abspath(tracking[len("sqlite:///"):])),
                                            "mlflow-artifacts")
        # a tracking server: MLflow's own S3 artifact store speaks s3://, not Hadoop's s3a://
        bucket_root = "s3://" + root.split("://", 1)[1] if root.startswith(("s3a://", "s3n://")) else root
        return os.environ.get("MLFLOW_ARTIFACT_ROOT") or f"{bucket_root}/mlflow-artifacts"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    return f"{root}/mlflow-artifacts" if "://" in root else f"file://{root}/mlflow-artifacts"


def _experiment(name: str, artifact_root: str) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    return mlflow.create_experiment(name, artifact_location=f"{artifact_root}/{name}")


def alias_version(name: str, alias: str) -> str | None:
    """The version of registered model ``name`` that carries ``alias``, or None (no such model or alias).
    Load that version (``models:/<name>/<version>``), not the alias, so that what is used is what is
    recorded even if the alias moves meanwhile."""
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - registry has no such model or alias
        return None


def training_due(ctx: JobContext) -> tuple[bool, str]:
    """Training is due while a model of the catalogue (each predictive model, each k-means instance a
    tag reads) has no version carrying its alias. Reads the catalogue without validating it: no Spark.
    """
    catalogue = parse_catalogue(ctx, load_feature_config(ctx))
    configure_mlflow(ctx.lake_root)
    aliases = {name: ALIAS for name in catalogue.models}
    aliases.update({t.model: t.alias for t in catalogue.of_kind("predictive") if t.model})
    aliases.update({name: str(algo.params.get("alias", ALIAS)) for name, algo in clustering_instances(catalogue).items()})
    missing = [f"{name}@{alias}" for name, alias in aliases.items() if alias_version(name, alias) is None]
    if missing:
        return True, f"no version with the alias for {', '.join(missing)}"
    return False, f"every model ({', '.join(aliases)}) has a version with its alias; pass --train to retrain"


def data_end(lake: Lake) -> date:
    """The day after the latest order: labels can be observed up to there."""
    latest = lake.read("silver_orders").agg(F.max("order_time")).first()[0]
    if latest is None:
        raise JobFailed("train: silver_orders is empty")
    return latest.date() + timedelta(days=1)


def _to_pandas(df: DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """The labelled snapshot (sampled down to ``max_rows``) in customer_id order: a model's fit (its
    validation split, for one) must not depend on the order Spark happens to return rows in."""
    total = df.count()
    if total > max_rows:
        df = df.sample(fraction=min(1.0, 1.2 * max_rows / total), seed=seed).limit(max_rows)
    return df.toPandas().sort_values("customer_id", kind="stable").reset_index(drop=True)


def eval_horizon(spec: ModelSpec) -> int:
    """Days of the label window a model is trained and evaluated on."""
    return int(spec.params.get("eval_horizon_days", spec.horizon_days))


def split_dates(end: date, horizon_days: int) -> tuple[date, date]:
    t_eval = end - timedelta(days=horizon_days)
    return t_eval - timedelta(days=horizon_days), t_eval


def evaluate(model: Any, spec: ModelSpec, frame: pd.DataFrame) -> dict[str, float]:
    """Metrics of a fitted model (ProbabilityModel or ClvModel) on a labelled snapshot."""
    if isinstance(model, ClvModel):
        return regression_metrics(frame["label"].to_numpy(), model.expected(frame, eval_horizon(spec)))
    return classification_metrics(frame["label"].to_numpy(), model.predict(None, frame))


def _champion_metrics(spec: ModelSpec, frame: pd.DataFrame) -> tuple[str | None, dict[str, float]]:
    import mlflow

    version = alias_version(spec.name, ALIAS)
    if version is None:
        return None, {}
    champion = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}").unwrap_python_model()
    return version, evaluate(champion, spec, frame)


def train_model(spark: SparkSession, lake: Lake, config: FeatureConfig, spec: ModelSpec, end: date,
                snapshots: dict[date, DataFrame], artifact_root: str, run_id: str, max_rows: int,
                seed: int = 7) -> dict[str, Any]:
    """Train, evaluate on the later window, log, register, promote if better. Returns the outcome."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    horizon = eval_horizon(spec)
    t_train, t_eval = split_dates(end, horizon)
    inputs = read_inputs(spark, lake)
    frames = {}
    for label_name, as_of in (("train", t_train), ("eval", t_eval)):
        if as_of not in snapshots:
            snapshots[as_of] = build_snapshot(spark, lake, config, as_of).cache()
        labels = purchase_labels(inputs.orders, inputs.customer_records, as_of, horizon)
        frames[label_name] = _to_pandas(labelled_snapshot(snapshots[as_of], labels, spec), max_rows, seed)
    train, test = frames["train"], frames["eval"]
    if len(train) < 50 or len(test) < 50:
        raise JobFailed(f"train {spec.name}: too few customers in the population (train {len(train)}, "
                        f"eval {len(test)}); generate more data or move --as-of")
    features = list(spec.inputs)
    if spec.task == "clv":
        model: Any = fit_clv(train, spec.horizon_days)
    else:
        if train["label"].nunique() < 2:
            raise JobFailed(f"train {spec.name}: the training label has one class only")
        model = fit_classifier(train, features, dict(spec.params), seed)
    metrics = evaluate(model, spec, test)
    train_metrics = evaluate(model, spec, train)
    metric, higher = primary_metric(spec.task)
    client = MlflowClient()
    champion_version, champion_metrics = _champion_metrics(spec, test)
    new_value, old_value = metrics[metric], champion_metrics.get(metric)
    better = old_value is None or (not math.isnan(new_value) and (
        new_value > old_value if higher else new_value < old_value))
    mlflow.set_experiment(experiment_id=_experiment(f"cdp-{spec.name}", artifact_root))
    with mlflow.start_run(run_name=f"{spec.name}-{run_id}") as run:
        mlflow.log_params({"task": spec.task, "horizon_days": spec.horizon_days, "eval_horizon_days": horizon,
                           "train_as_of": t_train.isoformat(), "eval_as_of": t_eval.isoformat(),
                           "data_end": end.isoformat(), "population": spec.population,
                           "n_features": len(features), "train_rows": len(train), "eval_rows": len(test),
                           "cdp_run_id": run_id, **{f"param_{k}": v for k, v in spec.params.items()}})
        if spec.task == "clv":
            mlflow.log_params({"bgnbd_" + k: round(v, 6) for k, v in vars(model.bgnbd).items()})
            mlflow.log_params({"gg_" + k: round(v, 6) for k, v in vars(model.gamma_gamma).items()})
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items() if not math.isnan(v)})
        mlflow.log_metrics({f"train_{k}": v for k, v in train_metrics.items() if not math.isnan(v)})
        if old_value is not None and not math.isnan(old_value):
            mlflow.log_metric(f"champion_eval_{metric}", old_value)
        example = test[features].head(5).astype("float64")
        signature = infer_signature(example, model.predict(None, example))
        info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature,
                                       input_example=example, registered_model_name=spec.name)
        version = str(info.registered_model_version)
        client.set_model_version_tag(spec.name, version, f"eval_{metric}", str(new_value))
        client.set_model_version_tag(spec.name, version, "eval_as_of", t_eval.isoformat())
        if better:
            client.set_registered_model_alias(spec.name, ALIAS, version)
        mlflow.set_tag("promoted", str(better))
    logger.info("train %s: eval %s %.4f (champion v%s: %s) -> version %s %s", spec.name, metric, new_value,
                champion_version, old_value, version, "promoted to @champion" if better else "kept as challenger")
    return {"model": spec.name, "version": version, "promoted": better, "metric": metric, "value": new_value,
            "champion_version": champion_version, "champion_value": old_value, "metrics": metrics,
            "train_as_of": t_train.isoformat(), "eval_as_of": t_eval.isoformat(), "mlflow_run": run.info.run_id}


def registered_clustering(name: str, alias: str) -> tuple[str | None, Clustering | None]:
    """The version of k-means instance ``name`` carrying ``alias`` and its clustering, or (None, None)."""
    import mlflow

    version = alias_version(name, alias)
    if version is None:
        return None, None
    return version, mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().clustering


def train_clustering(algo: Algorithm, snapshot: DataFrame, as_of: date, lists: Any, artifact_root: str,
                     run_id: str) -> dict[str, Any]:
    """Fit a k-means instance on the snapshot, log, register, promote if its silhouette beats the
    champion's on the same sample. Returns the outcome (the keys of :func:`train_model`'s)."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    impl = REGISTRY[algo.type]
    params = algo.params
    try:
        clustering = impl.fit(snapshot, params, lists, f"{algo.file}: algorithms.{algo.name}")
    except ValueError as exc:
        raise JobFailed(f"train {algo.name}: {exc}") from exc
    alias = str(params.get("alias", ALIAS))
    champion_version, champion = registered_clustering(algo.name, alias)
    old_value = None
    if champion is not None and champion.features == clustering.features:
        # the sample is drawn by a hash of customer_id: the same customers the new fit was chosen on
        sample = fit_sample(snapshot, int(params.get("sample_rows", 50000)), int(params.get("seed", 42)))
        old_value = round(silhouette_of(champion, sample), 4)
    elif champion is not None:
        logger.warning("train %s: the champion (v%s) clusters other features %s; the new fit replaces it",
                       algo.name, champion_version, list(champion.features))
    clustering = aligned_to(clustering, champion)  # the champion's numbers for the clusters that persist
    gain = float(params.get("min_silhouette_gain", MIN_SILHOUETTE_GAIN))
    better = champion_version is None or old_value is None or clustering.silhouette >= old_value + gain
    client = MlflowClient()
    mlflow.set_experiment(experiment_id=_experiment(f"cdp-{algo.name}", artifact_root))
    with mlflow.start_run(run_name=f"{algo.name}-{run_id}") as run:
        mlflow.log_params({"task": "kmeans", "as_of": as_of.isoformat(), "features": ",".join(clustering.features),
                           "k": clustering.k, "k_candidates": ",".join(map(str, clustering.silhouettes)),
                           "sample_rows": clustering.sample_rows, "names": ",".join(clustering.names),
                           "min_silhouette_gain": gain, "cdp_run_id": run_id,
                           "numbered_after_version": champion_version if old_value is not None else "none",
                           **{f"param_{k}": v for k, v in params.items() if k not in ("features", "labels")}})
        mlflow.log_metrics({"silhouette": clustering.silhouette,
                            **{f"silhouette_k{k}": v for k, v in clustering.silhouettes.items()}})
        if old_value is not None:
            mlflow.log_metric("champion_silhouette", old_value)
        model = ClusterModel(clustering)
        example = snapshot.select(*clustering.features).limit(5).toPandas().astype("float64")
        info = mlflow.pyfunc.log_model(name="model", python_model=model,
                                       signature=infer_signature(example, model.predict(None, example)),
                                       input_example=example, registered_model_name=algo.name)
        version = str(info.registered_model_version)
        client.set_model_version_tag(algo.name, version, "silhouette", str(clustering.silhouette))
        client.set_model_version_tag(algo.name, version, "as_of", as_of.isoformat())
        if better:
            client.set_registered_model_alias(algo.name, alias, version)
        mlflow.set_tag("promoted", str(better))
    logger.info("train %s: k=%d silhouette %.4f by k %s (champion v%s: %s) -> version %s %s", algo.name,
                clustering.k, clustering.silhouette, dict(clustering.silhouettes), champion_version, old_value,
                version, "promoted to @" + alias if better else "kept as challenger")
    return {"model": algo.name, "version": version, "promoted": better, "metric": "silhouette",
            "value": clustering.silhouette, "champion_version": champion_version, "champion_value": old_value,
            "metrics": {"silhouette": clustering.silhouette, "k": float(clustering.k)},
            "train_as_of": as_of.isoformat(), "eval_as_of": as_of.isoformat(), "mlflow_run": run.info.run_id,
            "clusters": list(clustering.names)}


def run(spark: SparkSession, ctx: JobContext, end: date | None = None, models: list[str] | None = None,
        max_rows: int = 200_000) -> list[dict[str, Any]]:
    config = load_feature_config(ctx)
    catalogue = load_catalogue(spark, ctx, config)
    lake = Lake(spark, ctx.lake_root)
    artifact_root = configure_mlflow(ctx.lake_root)
    end = end or data_end(lake)
    clusterings = clustering_instances(catalogue)
    both = sorted(set(clusterings) & set(catalogue.models))
    if both:
        raise JobFailed(f"train: {both} name both a predictive model and a k-means instance; the registry "
                        "holds one model per name")
    wanted = models or [*catalogue.models, *clusterings]
    unknown = [m for m in wanted if m not in catalogue.models and m not in clusterings]
    if unknown:
        raise JobFailed(f"train: unknown models {unknown}; known: {sorted([*catalogue.models, *clusterings])}")
    predictive = [m for m in wanted if m in catalogue.models]
    clusters = [m for m in wanted if m in clusterings]
    # Every model's train and eval snapshot in one pass over the inputs (rows keyed by as_of), cached
    # once; each model reads its dates' slices. Models keep their own split dates. The clusterings
    # are fitted as of the end of the data.
    dates = sorted({d for name in predictive for d in split_dates(end, eval_horizon(catalogue.models[name]))}
                   | ({end} if clusters else set()))
    # Only the features the models and their populations read (and what those derive from): the
    # snapshot is cached whole, so nothing else would be pruned from its aggregations.
    feature_names = {f.name for f in config.features}
    lists = config.lists
    config = config.only([*(c for name in predictive for c in snapshot_features(catalogue.models[name], feature_names)),
                          *(f for name in clusters for f in REGISTRY[clusterings[name].type].inputs(
                              clusterings[name].params, lists, clusterings[name].name))])
    logger.info("train: %d features for %d models, %d snapshot dates", len(config.public_features()),
                len(wanted), len(dates))
    combined = build_snapshot(spark, lake, config, dates).cache()
    snapshots: dict[date, DataFrame] = {d: combined.where(F.col("as_of") == F.lit(d)) for d in dates}
    results = [train_model(spark, lake, config, catalogue.models[name], end, snapshots, artifact_root,
                           ctx.run_id, max_rows) for name in predictive]
    results += [train_clustering(clusterings[name], snapshots[end], end, lists, artifact_root, ctx.run_id)
                for name in clusters]
    combined.unpersist()
    return results


def main(argv: list[str] | None = None) -> int:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--as-of", type=parse_date, default=None,
                            help="end of observed data (exclusive; default: the day after the latest order)")
        parser.add_argument("--model", action="append",
                            help="train only this model or k-means instance (repeatable)")
        parser.add_argument("--max-rows", type=int, default=200_000, help="max customers per snapshot sample")

    def run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
        run(spark, ctx, args.as_of, args.model, args.max_rows)
        return 0

    return job_main("train", argv, run_from_args, add,
                    description="train and register the predictive tag models and the k-means clusterings")


if __name__ == "__main__":
    sys.exit(main())
