"""``cdp features --as-of YYYY-MM-DD``: the customer feature snapshot, one partition of features_daily."""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.features import FeatureConfig, FeatureInputs, build_features
from cdp.features.schemas import INPUT_SCHEMAS
from cdp.jobs.entry import JobFailed, as_of_job_main
from cdp.lake import Lake
from cdp.runtime.config import JobContext, parse_file

logger = logging.getLogger(__name__)

TABLE = "features_daily"
REQUIRED = ("customer_profile", "customer_records")


def load_feature_config(ctx: JobContext) -> FeatureConfig:
    return parse_file(ctx.conf_path("features.yaml"), FeatureConfig.from_dict)


def read_inputs(spark: SparkSession, lake: Lake) -> FeatureInputs:
    """The input tables, projected to the columns the features read. Optional silver tables that do
    not exist yet (a lake without consent or returns) are read as empty, with a warning."""
    tables: dict[str, DataFrame] = {}
    for name, schema in INPUT_SCHEMAS.items():
        if not lake.exists(name):
            if name in REQUIRED:
                raise JobFailed(f"features: input table {name!r} does not exist; run `cdp stitch` first")
            logger.warning("features: table %s does not exist; its features will be 0 / null", name)
            tables[name] = spark.createDataFrame([], schema)
            continue
        df = lake.read(name)
        missing = [f.name for f in schema.fields if f.name not in df.columns]
        if missing:
            raise JobFailed(f"features: table {name!r} lacks columns {missing} (contract: docs/ARCHITECTURE.md)")
        tables[name] = df.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])
    return FeatureInputs.from_tables(tables)


def warn_unknown_categories(lake: Lake, config: FeatureConfig) -> None:
    if not lake.exists("silver_products") or "categories" not in config.lists:
        return
    known = {item.slug for item in config.lists["categories"]}
    found = {r[0] for r in lake.read("silver_products").select(
        F.regexp_replace(F.lower(F.trim("category")), "[^a-z0-9]+", "_")).distinct().collect() if r[0]}
    if found - known:
        logger.warning("features: catalogue categories %s are not in conf/features.yaml lists.categories; "
                       "their spend counts in totals but has no category features", sorted(found - known))


def build_snapshot(spark: SparkSession, lake: Lake, config: FeatureConfig,
                   as_of: date | Sequence[date]) -> DataFrame:
    """The feature snapshot of one date, or of several dates in one pass (rows keyed by as_of)."""
    return build_features(read_inputs(spark, lake), config, as_of)


def run(spark: SparkSession, ctx: JobContext, as_of: date | None = None, *, lake: Lake | None = None
        ) -> dict[str, Any]:
    """Write the feature snapshot as of ``as_of`` (default: today) into its partition of features_daily."""
    as_of = as_of or datetime.now(UTC).date()
    config = load_feature_config(ctx)
    lake = lake or Lake(spark, ctx.lake_root)
    warn_unknown_categories(lake, config)
    snapshot = build_snapshot(spark, lake, config, as_of)
    version = lake.write(snapshot, TABLE, mode="overwrite", partition_by=["as_of"],
                         replace_where={"as_of": as_of},
                         metadata={"run_id": ctx.run_id, "job": "features", "as_of": as_of.isoformat()})
    rows = lake.read(TABLE).where(F.col("as_of") == F.lit(as_of)).count()
    logger.info("features: %d customers x %d features as of %s -> %s v%s", rows,
                len(config.public_features()), as_of, TABLE, version)
    return {"as_of": as_of.isoformat(), "customers": rows, "features": len(config.public_features()),
            "version": version}


def main(argv: list[str] | None = None) -> int:
    return as_of_job_main("features", argv, run, description="customer feature snapshot as of a date",
                          as_of_help="snapshot date: only data before its midnight UTC is used (default: today)")


if __name__ == "__main__":
    sys.exit(main())
