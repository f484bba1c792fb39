"""Predictive models against their baselines on generated data: what each model scores on its evaluation
window, what the simple baseline scores on the same window, whether it was promoted, and how many
customers its tag covers.

    python benchmarks/predictive.py --customers 100000 [--orders-only] [--lake DIR] [--driver-memory 8g]

Runs ``cdp run --to tag --train`` in this process on a freshly generated lake. ``--orders-only`` first
removes every raw source but the orders (and the product catalogue their lines refer to): the shop of
issue 30, which has no web events, CRM, e-mail or service data. Then it reads, from the lake's MLflow
store, each predictive model's last training run (``eval_*`` against ``baseline_eval_*`` metrics, the
promotion verdict or the reason the model was skipped) and, from ``tag_stats``, each predictive tag's
coverage and note. The figures are printed as a Markdown table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from cdp.jobs import run as pipeline
from cdp.jobs.entry import setup_logging
from cdp.lake import BACKEND_SETTING
from cdp.runtime.config import JobContext, Profile
from cdp.runtime.mlflow import client as mlflow_client
from cdp.runtime.session import build_session
from cdp.synthetic import DEFAULT_END

# the raw folders an orders-only shop keeps: its orders and the catalogue their lines name
ORDERS_ONLY = {"orders", "products"}
# metric shown per task, in order: the ones promotion reads first
METRICS = {"classifier": ("auc", "log_loss", "brier", "lift_top_decile", "base_rate", "n"),
           "clv": ("calibration_ratio", "revenue_gini", "spearman", "top_decile_revenue_share", "n")}


def keep_only(raw: Path, sources: set[str]) -> list[str]:
    """Remove every raw source folder not in ``sources``; return the removed ones."""
    removed = sorted(p.name for p in raw.iterdir() if p.is_dir() and p.name not in sources and p.name != "_truth")
    for name in removed:
        shutil.rmtree(raw / name)
    return removed


def orders_only_conf(conf_dir: Path, out: Path) -> Path:
    """A copy of the configuration whose sources.yaml declares only the orders-only shop's sources,
    as that shop's own configuration would."""
    import yaml

    shutil.copytree(conf_dir, out)
    path = out / "sources.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["sources"] = {name: source for name, source in config["sources"].items()
                         if source["path"].split("/")[0] in ORDERS_ONLY}
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


def _dropped(names: str) -> str:
    """How many inputs the model dropped, and the first few of them."""
    listed = [n for n in names.split(",") if n and n != "none"]
    return f"{len(listed)}: {', '.join(listed[:4])}{', ...' if len(listed) > 4 else ''}" if listed else "none"


def model_rows(lake: str) -> list[dict[str, str]]:
    """Each predictive model's most recent training run: task, verdict and metrics against the baseline."""
    client = mlflow_client(lake)
    rows = []
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        if not runs or "task" not in runs[0].data.params or runs[0].data.params["task"] == "kmeans":
            continue
        run = runs[0]
        task = "clv" if run.data.params["task"] == "clv" else "classifier"
        tags, metrics = run.data.tags, run.data.metrics
        verdict = ("skipped: " + tags.get("skipped_reason", "")) if tags.get("skipped") == "true" else (
            f"promoted={tags.get('promoted')}: {tags.get('promotion', '')}")
        figures = []
        for name in METRICS[task]:
            model, base = metrics.get(f"eval_{name}"), metrics.get(f"baseline_eval_{name}")
            if model is None:
                continue
            figures.append(f"{name} {model:.4g}" + (f" (baseline {base:.4g})" if base is not None else ""))
        rows.append({"model": experiment.name.removeprefix("cdp-"), "task": task, "verdict": verdict[:160],
                     "metrics": "; ".join(figures),
                     "dropped": _dropped(run.data.params.get("dropped_features", ""))})
    return sorted(rows, key=lambda row: row["model"])


def coverage_rows(spark, lake: str) -> list[tuple[str, float, str]]:
    """Each predictive tag's coverage and note in the last tag run's ``tag_stats``."""
    from pyspark.sql import functions as F

    from cdp.lake import Lake

    stats = Lake(spark, lake).read("tag_stats")
    last = stats.agg(F.max("computed_at")).first()[0]
    chosen = stats.where((F.col("computed_at") == last) & (F.col("kind") == "predictive"))
    return [(r["tag"], r["coverage"], r["note"] or "") for r in chosen.orderBy("tag").collect()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--orders-only", action="store_true", help="keep only the orders (and products) sources")
    parser.add_argument("--lake", help="lake folder (default: a temp folder, removed at the end)")
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--shuffle-partitions", default="8")
    parser.add_argument("--backend", default="embedded", choices=("embedded", "delta-spark"),
                        help="lake backend (default: the embedded one, which needs no jars)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    setup_logging(args.verbose)
    logging.getLogger("cdp.jobs.run").setLevel(logging.INFO)
    logging.getLogger("cdp.jobs.train").setLevel(logging.INFO)

    work = Path(args.lake).parent if args.lake else Path(tempfile.mkdtemp(prefix="cdp-predictive-"))
    lake, raw = args.lake or str(work / "lake"), work / "raw"
    ctx = pipeline.context(lake)
    if args.orders_only:
        ctx = pipeline.context(lake, conf=str(orders_only_conf(Path(ctx.conf_dir), work / "conf")))
    profile = Profile(ctx.profile.name, lake, {**ctx.profile.spark, "spark.driver.memory": args.driver_memory,
                                               "spark.sql.shuffle.partitions": args.shuffle_partitions,
                                               "spark.ui.showConsoleProgress": "false",
                                               BACKEND_SETTING: args.backend})
    ctx = JobContext(conf_dir=ctx.conf_dir, profile=profile, lake_root=lake, run_id=ctx.run_id)
    as_of = (date.fromisoformat(DEFAULT_END) + timedelta(days=1)).isoformat()
    spark = build_session(profile, "cdp-benchmark-predictive")
    started = time.perf_counter()
    try:
        generated = pipeline.run(spark, ctx, customers=args.customers, seed=args.seed, raw=str(raw),
                                 to_step="generate", report=False)
        if generated.status != "ok":
            print(f"generate failed: {generated.failed_step}", file=sys.stderr)
            return 1
        if args.orders_only:
            print(f"orders-only shop: removed raw sources {', '.join(keep_only(raw, ORDERS_ONLY))}", flush=True)
        summary = pipeline.run(spark, ctx, raw=str(raw), as_of=as_of, from_step="land", to_step="tag",
                               train=True, report=False)
        seconds = time.perf_counter() - started
        shop = "orders-only shop" if args.orders_only else "every source"
        print(f"\npredictive models at {args.customers:,} customers ({shop}), as of {as_of}: run "
              f"{summary.status} in {seconds:.0f} s")
        if summary.status != "ok":
            print(f"failed step: {summary.failed_step}", file=sys.stderr)
            return 1
        print("\n| model | task | evaluation window: model (baseline) | verdict | inputs dropped |")
        print("|---|---|---|---|---|")
        for row in model_rows(lake):
            print(f"| {row['model']} | {row['task']} | {row['metrics']} | {row['verdict']} | {row['dropped']} |")
        print("\n| predictive tag | coverage | note |")
        print("|---|---|---|")
        for tag, coverage, note in coverage_rows(spark, lake):
            print(f"| {tag} | {coverage:.1%} | {note} |")
    finally:
        spark.stop()
        if not args.lake:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
