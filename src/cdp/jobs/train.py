"""``cdp train``: train the predictive tag models on as-of snapshots with an honest time split, and
fit the k-means behaviour clusters.

For a model with horizon h and data up to ``end`` (exclusive):
    T_eval = end - h, T_train = T_eval - h
    train: features as of T_train, labels from [T_train, T_eval)
    eval:  features as of T_eval,  labels from [T_eval, end)      (a later, unseen window)
Each model trains on what the shop has: features null or constant for every customer of its training
frame are dropped (MLflow params ``dropped_features`` and ``dropped.<feature>``, and the log line);
a model whose population or labels are too small, or whose fit does not converge, is skipped with
the reason (MLflow run tag ``skipped_reason``, registered-model tag ``cdp_status``, which ``cdp tag``
writes to ``tag_stats.note`` of its tags) and the run goes on with the others.

Parameters, metrics and diagnostics (``diagnostics/*.csv``: calibration curves, lift by decile,
actual vs predicted purchases by calibration-period frequency) go to MLflow with a simple baseline's
metrics on the same evaluation window (recency-only for churn and purchase, the customer's past
average for CLV). The model is registered and gets the alias ``champion`` only if it beats both the
baseline and the current champion re-scored on that window (:func:`cdp.tagging.predictive.promotion`:
classifiers on AUC and log loss, CLV on total calibration within a band and the revenue Gini).

A k-means instance (``type: kmeans`` in conf/tags) is fitted on the snapshot as of ``end`` and
registered under its name; it takes the alias only if its silhouette beats the champion's on the same
sample by at least ``min_silhouette_gain`` (default 0.01), so that cluster numbers and names do not
change from run to run for noise.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.features import FeatureConfig, purchase_labels
from cdp.jobs.entry import JobFailed, job_main, parse_date
from cdp.jobs.features import build_snapshot, load_feature_config, read_inputs
from cdp.jobs.tags import load_catalogue, parse_catalogue
from cdp.lake import Lake
from cdp.runtime.config import JobContext
from cdp.runtime.mlflow import configure as configure_mlflow
from cdp.tagging import Algorithm, Clustering, ClusterModel, ModelSpec, clustering_instances
from cdp.tagging.algorithms import REGISTRY
from cdp.tagging.clusters import aligned_to, fit_sample, silhouette_of
from cdp.tagging.clv import NotConverged
from cdp.tagging.predictive import (
    DEFAULT_CALIBRATION_BAND,
    ClvModel,
    RecencyBaseline,
    calibration_curve,
    classification_metrics,
    fit_classifier,
    fit_clv,
    labelled_snapshot,
    lift_by_decile,
    past_average_clv,
    primary_metric,
    promotion,
    purchases_by_frequency,
    regression_metrics,
    snapshot_features,
    trainable,
    usable_features,
)

logger = logging.getLogger(__name__)

ALIAS = "champion"
STATUS_TAG = "cdp_status"  # registered-model tag: the last training outcome, in words
MIN_SILHOUETTE_GAIN = 0.01  # a refit clustering replaces the champion only when this much better


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


def baseline_scores(spec: ModelSpec, train: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """The simple baseline's predictions on ``frame``: recency-only for churn and purchase (fitted on
    ``train``), the customer's past average for CLV."""
    if spec.task == "clv":
        return past_average_clv(frame, eval_horizon(spec))
    return RecencyBaseline(train).predict(frame)


def baseline_metrics(spec: ModelSpec, train: pd.DataFrame, frame: pd.DataFrame) -> dict[str, float]:
    scores = baseline_scores(spec, train, frame)
    if spec.task == "clv":
        return regression_metrics(frame["label"].to_numpy(), scores)
    return classification_metrics(frame["label"].to_numpy(), scores)


def diagnostics(model: Any, spec: ModelSpec, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables a data scientist checks, on the evaluation window: CLV, actual vs predicted purchases by
    calibration-period repeat purchases (the BG/NBD paper's figure) and revenue lift by decile of the
    model and of the baseline; classifiers, calibration curves and lift by decile of both."""
    actual = test["label"].astype("float64").to_numpy()
    baseline = baseline_scores(spec, train, test)
    if isinstance(model, ClvModel):
        return {"purchases_by_frequency": purchases_by_frequency(test, model.expected_purchases(test, eval_horizon(spec))),
                "lift_by_decile_model": lift_by_decile(actual, model.expected(test, eval_horizon(spec))),
                "lift_by_decile_baseline": lift_by_decile(actual, baseline)}
    scores = model.predict(None, test)
    return {"calibration_curve_model": calibration_curve(actual, scores),
            "calibration_curve_baseline": calibration_curve(actual, baseline),
            "lift_by_decile_model": lift_by_decile(actual, scores),
            "lift_by_decile_baseline": lift_by_decile(actual, baseline)}


def _champion_metrics(spec: ModelSpec, frame: pd.DataFrame) -> tuple[str | None, dict[str, float]]:
    import mlflow

    version = alias_version(spec.name, ALIAS)
    if version is None:
        return None, {}
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}").unwrap_python_model()
        return version, evaluate(champion, spec, frame)
    except Exception as exc:  # noqa: BLE001 - a champion that cannot score today's inputs cannot be compared
        logger.warning("train %s: the champion (version %s) cannot be re-scored on the evaluation window (%s); "
                       "a model that beats the baseline replaces it", spec.name, version, exc)
        return version, {}


def _set_status(name: str, status: str) -> None:
    """Record the last training outcome on the registered model (``cdp tag`` reports it for a model
    without a champion); registers the name when nothing was ever registered under it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    client.set_registered_model_tag(name, STATUS_TAG, status[:5000])


def registered_status(name: str) -> str | None:
    """The last training outcome recorded on registered model ``name`` (None when none is)."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_registered_model(name).tags.get(STATUS_TAG)
    except Exception:  # noqa: BLE001 - no such registered model
        return None


def train_model(spark: SparkSession, lake: Lake, config: FeatureConfig, spec: ModelSpec, end: date,
                snapshots: dict[date, DataFrame], artifact_root: str, run_id: str, max_rows: int,
                seed: int = 7) -> dict[str, Any]:
    """Train, evaluate on the later window beside the baseline and the champion, log, register, promote
    if it beats both. A model the data cannot support (population or labels too small, no usable
    feature, a fit that does not converge) is skipped with the reason: logged to MLflow, recorded on
    the registered model, returned; the run goes on. Returns the outcome."""
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
    features = list(spec.inputs)
    outcome: dict[str, Any] = {"model": spec.name, "version": None, "promoted": False, "skipped": None,
                               "train_as_of": t_train.isoformat(), "eval_as_of": t_eval.isoformat(),
                               "train_rows": len(train), "eval_rows": len(test), "dropped_features": {}}
    params = {"task": spec.task, "horizon_days": spec.horizon_days, "eval_horizon_days": horizon,
              "train_as_of": t_train.isoformat(), "eval_as_of": t_eval.isoformat(), "data_end": end.isoformat(),
              "population": spec.population, "train_rows": len(train), "eval_rows": len(test), "cdp_run_id": run_id,
              **{f"param_{k}": v for k, v in spec.params.items()}}
    mlflow.set_experiment(experiment_id=_experiment(f"cdp-{spec.name}", artifact_root))
    reason = trainable(spec.task, train, test, spec.params)
    model: Any = None
    checks: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    kept = features
    if reason is None:
        try:
            if spec.task == "clv":
                model, checks = fit_clv(train, spec.horizon_days, str(spec.params.get("age_convention", "as_of")))
            else:
                kept, dropped = usable_features(train, features)
                if dropped:
                    logger.warning("train %s: dropped %d of %d features: %s", spec.name, len(dropped), len(features),
                                   "; ".join(f"{k} ({v})" for k, v in dropped.items()))
                if not kept:
                    reason = "no usable feature: every input is null or constant in the training window"
                else:
                    model = fit_classifier(train, kept, dict(spec.params), seed)
        except NotConverged as exc:
            reason = f"fit refused, not registered: {exc}"
    outcome["dropped_features"] = dropped
    params.update({"n_features": len(kept), "dropped_features": ",".join(dropped) or "none",
                   **{f"dropped.{k}": v for k, v in dropped.items()}})
    if reason is not None:
        with mlflow.start_run(run_name=f"{spec.name}-{run_id}") as run:
            mlflow.log_params(params)
            mlflow.set_tags({"skipped": "true", "skipped_reason": reason[:5000], "promoted": "False"})
        _set_status(spec.name, f"not trained in run {run_id}: {reason}")
        logger.warning("train %s: skipped, %s", spec.name, reason)
        return {**outcome, "skipped": reason, "mlflow_run": run.info.run_id, "metrics": {}, "baseline_metrics": {}}
    metrics = evaluate(model, spec, test)
    train_metrics = evaluate(model, spec, train)
    base = baseline_metrics(spec, train, test)
    metric, _ = primary_metric(spec.task)
    champion_version, champion_metrics = _champion_metrics(spec, test)
    band_param = spec.params.get("calibration_band", DEFAULT_CALIBRATION_BAND)
    band = (float(band_param[0]), float(band_param[1]))
    promote, why = promotion(spec.task, metrics, base, champion_metrics or None, band)
    client = MlflowClient()
    tables = diagnostics(model, spec, train, test)
    with mlflow.start_run(run_name=f"{spec.name}-{run_id}") as run:
        mlflow.log_params(params)
        if spec.task == "clv":
            mlflow.log_params({"age_convention": model.age_convention, "calibration_band": f"{band[0]}-{band[1]}"})
            mlflow.log_params({"bgnbd_" + k: round(v, 6) for k, v in vars(model.bgnbd).items()})
            mlflow.log_params({"gg_" + k: round(v, 6) for k, v in vars(model.gamma_gamma).items()})
            for part, check in checks.items():
                mlflow.log_metrics({f"fit_{part}_gradient": check.gradient, f"fit_{part}_negll": check.negll,
                                    f"fit_{part}_agreeing_starts": float(check.agreeing),
                                    f"fit_{part}_start_spread": check.spread})
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items() if not math.isnan(v)})
        mlflow.log_metrics({f"train_{k}": v for k, v in train_metrics.items() if not math.isnan(v)})
        mlflow.log_metrics({f"baseline_eval_{k}": v for k, v in base.items() if not math.isnan(v)})
        mlflow.log_metrics({f"champion_eval_{k}": v for k, v in champion_metrics.items() if not math.isnan(v)})
        for table_name, table in tables.items():
            mlflow.log_text(table.to_csv(index=False), f"diagnostics/{table_name}.csv")
        example = test[features].head(5).astype("float64")
        signature = infer_signature(example, model.predict(None, example))
        info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature,
                                       input_example=example, registered_model_name=spec.name)
        version = str(info.registered_model_version)
        client.set_model_version_tag(spec.name, version, f"eval_{metric}", str(metrics[metric]))
        client.set_model_version_tag(spec.name, version, "eval_as_of", t_eval.isoformat())
        client.set_model_version_tag(spec.name, version, "promotion", why[:5000])
        if promote:
            client.set_registered_model_alias(spec.name, ALIAS, version)
        mlflow.set_tags({"promoted": str(promote), "promotion": why[:5000]})
    _set_status(spec.name, f"version {version} of run {run_id} {'promoted' if promote else 'not promoted'}: {why}")
    logger.info("train %s: eval %s %.4f, baseline %.4f (champion v%s: %s) -> version %s %s: %s; features dropped: %s",
                spec.name, metric, metrics[metric], base.get(metric, float("nan")), champion_version,
                champion_metrics.get(metric), version, "promoted to @champion" if promote else "kept as challenger",
                why, ", ".join(f"{k} ({v})" for k, v in dropped.items()) or "none")
    return {**outcome, "version": version, "promoted": promote, "promotion": why, "metric": metric,
            "value": metrics[metric], "champion_version": champion_version,
            "champion_value": champion_metrics.get(metric), "metrics": metrics, "baseline_metrics": base,
            "champion_metrics": champion_metrics, "diagnostics": tables, "mlflow_run": run.info.run_id,
            "fit": {part: vars(check) for part, check in checks.items()},
            "parameters": ({**vars(model.bgnbd), **vars(model.gamma_gamma)} if spec.task == "clv" else {})}


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
    except ValueError as exc:  # too few customers for the k tried: the data's shape, not a bug
        logger.warning("train %s: skipped, %s", algo.name, exc)
        return {"model": algo.name, "version": None, "promoted": False, "skipped": str(exc), "metric": "silhouette",
                "metrics": {}, "train_as_of": as_of.isoformat(), "eval_as_of": as_of.isoformat()}
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
        max_rows: int = 200_000, *, lake: Lake | None = None) -> list[dict[str, Any]]:
    """Train (every, or the named) predictive model and k-means instance on data before ``end``
    (default: the day after the latest order); promote a challenger that beats its champion."""
    config = load_feature_config(ctx)
    catalogue = load_catalogue(spark, ctx, config)
    lake = lake or Lake(spark, ctx.lake_root)
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
