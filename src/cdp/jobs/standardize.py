"""``cdp standardize``: bronze tables -> the canonical silver tables of docs/ARCHITECTURE.md.

Per source: bronze records are deduplicated on the record id (latest event time wins, then the
latest load and file position), then mapped onto the canonical tables as ``conf/sources.yaml``
declares. Identifiers are normalised with the normaliser that ``conf/identity.yaml`` names for
their type (``types.<type>.normalizer``); values that are not valid after normalisation are left
out of ``silver_identifiers`` and written to ``quarantine`` (stage ``standardize``) with the reason.

Every silver table is overwritten as a whole, so a re-run over the same bronze gives the same
silver (idempotent).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.contracts import schema_of
from cdp.engage import MESSAGES_TABLE, link_responses, response_links
from cdp.identity import IdentityConfig
from cdp.identity.normalize import PRESETS, Normalizer, qualified_column
from cdp.jobs.entry import JobFailed
from cdp.jobs.land import QUARANTINE, QUARANTINE_SCHEMA, load_sources
from cdp.runtime.config import ConfigError, JobContext, parse_file
from cdp.sources import (
    CANONICAL_SCHEMAS,
    SourcesConfig,
    SourceSpec,
    deduplicate,
    map_attributes,
    map_events,
    map_identifiers,
    map_table,
    unmapped_values,
)

logger = logging.getLogger(__name__)

# The silver model's schemas are the lake's table contracts (cdp.contracts), written here as they stand there.
SILVER_SCHEMAS: dict[str, str] = {name: schema_of(name) for name in (
    "silver_identifiers", "silver_customer_attributes", "silver_events", "silver_orders", "silver_order_lines",
    "silver_returns", "silver_consent", "silver_products")}


@dataclass
class StandardizeResult:
    rows: dict[str, int] = field(default_factory=dict)
    invalid_identifiers: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    # per source: rows, missing_id, exact_duplicates, superseded, collision_keys, collision_rows
    duplicates: dict[str, dict[str, int]] = field(default_factory=dict)
    # per source of response events: linked (answer a send of export_messages) and unlinked
    responses: dict[str, dict[str, int]] = field(default_factory=dict)
    # "<source>.<id_type>" -> distinct service-line values kept in silver that link nobody
    non_personal: dict[str, int] = field(default_factory=dict)
    # "<source>.<mapping> <field>" -> {action: values}: values a map does not cover (quarantine, default, drop)
    unmapped: dict[str, dict[str, int]] = field(default_factory=dict)


def load_normalizers(path: Path) -> dict[str, Normalizer]:
    """id_type -> its normaliser (``types.<type>.normalizer`` of ``conf/identity.yaml``, parsed and
    checked by :class:`cdp.identity.IdentityConfig`: an unknown normaliser or option fails here)."""
    return parse_file(path, IdentityConfig.from_dict).normalizers


def check_identifier_types(config: SourcesConfig, normalizers: Mapping[str, Any], sources_file: Path,
                           identity_file: Path) -> None:
    for source in config.sources.values():
        for i, spec in enumerate(source.identifiers):
            if spec.type not in normalizers:
                raise ConfigError(f"{sources_file}: sources.{source.name}.identifiers[{i}].type: "
                                  f"{spec.type!r} is not a type in {identity_file} ({sorted(normalizers)})")


# -- transforms -----------------------------------------------------------------------------------

def _as_normalizers(normalizers: Mapping[str, Normalizer | str]) -> dict[str, Normalizer]:
    return {t: PRESETS[n] if isinstance(n, str) else n for t, n in normalizers.items()}


def normalize_identifiers(raw_ids: DataFrame, normalizers: Mapping[str, Normalizer | str]) -> DataFrame:
    """Raw identifier rows -> the same rows with ``id_value`` (null when invalid) and ``non_personal``.

    ``normalizers``: id_type -> its normaliser (or a preset's name). ``non_personal`` says why a valid
    value belongs to no one person (a toll-free or shared-cost service line), null otherwise: such
    values stay in silver but never link records.

    Spark-expression normalisers apply to every row in one projection. A Python normaliser (the
    phone one) sees each distinct value of its type once, through a lookup joined back to only
    that type's rows. Joining a lookup of every type back to every row cost a sort-merge join of
    all identifier rows plus one scan of all sources per type.

    Input columns: id_type, raw_value, qualifier, plus anything else (kept).
    """
    specs = _as_normalizers(normalizers)
    id_type, raw = F.col("id_type"), F.col("raw_value")
    native = sorted(t for t, n in specs.items() if not n.runs_in_python)
    python_types = sorted(t for t, n in specs.items() if n.runs_in_python)
    # One branch per Spark-expression normaliser (rows of other types: null): one CASE over every
    # type's expressions made a method over the JVM's 64 KB, and the stage ran without code generation.
    known = F.coalesce(id_type.isin(*specs), F.lit(False)) if specs else F.lit(False)
    branches = [raw_ids.filter(id_type == type_name).withColumn("_normalized", specs[type_name].column(raw))
                for type_name in native]
    branches.append(raw_ids.filter(~known).withColumn("_normalized", F.lit(None).cast("string")))
    is_python = F.coalesce(id_type.isin(*python_types), F.lit(False)) if python_types else F.lit(False)
    normalized = reduce(DataFrame.unionByName, branches).withColumn("_non_personal", F.lit(None).cast("string"))
    if python_types:
        python_rows = raw_ids.filter(is_python)
        distinct = python_rows.select("id_type", "raw_value").distinct()
        # one branch per distinct normaliser (not per type): types sharing it share its pass
        types_of: dict[Normalizer, list[str]] = {}
        for type_name in python_types:
            types_of.setdefault(specs[type_name], []).append(type_name)
        branches = []
        for spec, types in types_of.items():
            value = distinct.filter(id_type.isin(*types)).select("id_type", "raw_value",
                                                                 spec.column(raw).alias("_normalized"))
            branches.append(value.withColumn("_non_personal", spec.non_personal_column(F.col("_normalized"))))
        lookup = reduce(DataFrame.unionByName, branches)
        normalized = normalized.unionByName(python_rows.join(lookup, on=["id_type", "raw_value"], how="left"))
    value = qualified_column(F.col("_normalized"), F.col("qualifier"))
    columns = ["id_type", "raw_value", *[c for c in raw_ids.columns if c not in ("id_type", "raw_value")]]
    return (normalized.withColumn("id_value", value)
            .select(*columns, "id_value", F.col("_non_personal").alias("non_personal")))


def silver_identifiers(normalized: DataFrame) -> DataFrame:
    """Valid identifiers, one row per (source, record_id, id_type, id_value); service lines included,
    with ``non_personal`` saying why they link nobody."""
    return (normalized.filter(F.col("id_value").isNotNull())
            .groupBy("source", "record_id", "id_type", "id_value")
            .agg(F.min("raw_value").alias("raw_value"), F.min("observed_at").alias("observed_at"),
                 F.max("non_personal").alias("non_personal"))
            .select("source", "record_id", "id_type", "id_value", "raw_value", "observed_at", "non_personal"))


def invalid_identifiers(normalized: DataFrame, normalizers: Mapping[str, Normalizer | str], now: datetime) -> DataFrame:
    """Identifiers present in the record but invalid after normalisation, as quarantine rows."""
    specs = _as_normalizers(normalizers)
    names = F.create_map(*[item for k, v in sorted(specs.items()) for item in (F.lit(k), F.lit(v.name))])
    return (normalized.filter(F.col("id_value").isNull())
            .select(F.col("source"), F.lit("standardize").alias("stage"), F.lit(None).cast("string").alias("load_id"),
                    F.col("_source_file").alias("file"), F.col("_line").alias("line"),
                    F.col("field"), F.col("raw_value").alias("raw"),
                    F.concat(F.col("field"), F.lit(": invalid "), F.col("id_type"), F.lit(" after normaliser "),
                             F.element_at(names, F.col("id_type")), F.lit(" (record "), F.col("record_id"),
                             F.lit(")")).alias("reason"),
                    F.lit(now).cast("timestamp").alias("quarantined_at")))


def _latest(df: DataFrame, keys: list[str], order: list[Any]) -> DataFrame:
    window = Window.partitionBy(*keys).orderBy(*order)
    return df.withColumn("_rank", F.row_number().over(window)).filter("_rank = 1").drop("_rank")


def _union(frames: list[DataFrame], spark: SparkSession, table: str) -> DataFrame:
    schema = SILVER_SCHEMAS[table]
    if not frames:
        return spark.createDataFrame([], schema)
    return reduce(lambda a, b: a.unionByName(b), frames)


def identifier_rows(records: dict[str, tuple[SourceSpec, DataFrame]]) -> DataFrame | None:
    """Every identifier of every record, raw (one row per record and identifier field); None without any."""
    raw_ids = [map_identifiers(df, spec) for spec, df in records.values() if spec.identifiers]
    return reduce(DataFrame.unionByName, raw_ids) if raw_ids else None


def build_silver(spark: SparkSession, records: dict[str, tuple[SourceSpec, DataFrame]],
                 normalized: DataFrame | None, normalizers: dict[str, str],
                 now: datetime) -> tuple[dict[str, DataFrame], DataFrame]:
    """Deduplicated records per source and their normalised identifiers (:func:`identifier_rows`, normalised)
    -> the silver tables and the invalid-identifier quarantine."""
    tables: dict[str, DataFrame] = {}
    tables["silver_identifiers"] = (silver_identifiers(normalized) if normalized is not None
                                    else spark.createDataFrame([], SILVER_SCHEMAS["silver_identifiers"]))
    quarantine = (invalid_identifiers(normalized, normalizers, now) if normalized is not None
                  else spark.createDataFrame([], QUARANTINE_SCHEMA))

    attributes = [f for spec, df in records.values() for f in map_attributes(df, spec)]
    tables["silver_customer_attributes"] = _union(
        [f.select("source", "record_id", "observed_at", *CANONICAL_SCHEMAS["attributes"]) for f in attributes],
        spark, "silver_customer_attributes")

    events = [f for spec, df in records.values() for f in map_events(df, spec)]
    events_df = _union([f.select(*_columns("silver_events")) for f in events], spark, "silver_events")
    tables["silver_events"] = _latest(
        events_df.filter(F.col("event_type").isNotNull() & F.col("event_time").isNotNull()),
        ["event_id"], [F.col("event_time").desc()])

    orders = [f for spec, df in records.values() for f in map_table(df, spec, "orders")]
    orders_df = _union([f.withColumn("_observed", F.col("observed_at")).select(*_columns("silver_orders"), "_observed")
                        for f in orders], spark, "silver_orders") if orders else \
        spark.createDataFrame([], SILVER_SCHEMAS["silver_orders"] + ", _observed timestamp")
    tables["silver_orders"] = _latest(orders_df.filter(F.col("order_id").isNotNull()), ["order_id"],
                                      [F.col("_observed").desc_nulls_last(), F.col("source"),
                                       F.col("record_id")]).drop("_observed")

    lines = [f for spec, df in records.values() for f in map_table(df, spec, "order_lines")]
    lines_df = _union([f.select(*_columns("silver_order_lines")) for f in lines], spark, "silver_order_lines")
    lines_df = lines_df.withColumn("line_amount", F.coalesce(
        F.col("line_amount"), F.round(F.col("quantity") * F.col("unit_price"), 2)))
    tables["silver_order_lines"] = _latest(
        lines_df.filter(F.col("order_id").isNotNull() & F.col("line_no").isNotNull()),
        ["order_id", "line_no"], [F.col("product_id")])

    returns = [f for spec, df in records.values() for f in map_table(df, spec, "returns")]
    returns_df = _union([f.select(*_columns("silver_returns")) for f in returns], spark, "silver_returns")
    tables["silver_returns"] = _latest(returns_df.filter(F.col("return_id").isNotNull()), ["return_id"],
                                       [F.col("return_time").desc_nulls_last()])

    consent = [f for spec, df in records.values() for f in map_table(df, spec, "consent")]
    tables["silver_consent"] = _union(
        [f.select(*_columns("silver_consent")) for f in consent], spark, "silver_consent"
    ).filter(F.col("granted").isNotNull() & F.col("event_time").isNotNull() & F.col("channel").isNotNull()
             ).dropDuplicates(["source", "record_id", "channel", "event_time"])

    products = [f for spec, df in records.values() for f in map_table(df, spec, "products")]
    products_df = _union([f.select(*_columns("silver_products")) for f in products], spark, "silver_products")
    tables["silver_products"] = _latest(products_df.filter(F.col("product_id").isNotNull()), ["product_id"],
                                        [F.col("name")])
    for name in tables:
        tables[name] = tables[name].select(*_columns(name))
    return tables, quarantine


def apply_suppression(tables: dict[str, DataFrame], suppression: DataFrame) -> dict[str, DataFrame]:
    """Drop every record that carries a suppressed (forgotten) identifier from every silver table.

    Records keyed by ``(source, record_id)`` go; order lines and returns follow their dropped orders.
    ``suppression`` is the ``suppression_list`` table written by ``cdp forget`` (hashed identifiers).
    """
    from cdp.privacy import drop_records, suppressed_records

    blocked = suppressed_records(tables["silver_identifiers"], suppression).persist(StorageLevel.MEMORY_AND_DISK)
    kept = {name: (drop_records(df, blocked).select(*df.columns)
                   if {"source", "record_id"} <= set(df.columns) else df)
            for name, df in tables.items()}
    dropped_orders = (tables["silver_orders"].join(blocked, on=["source", "record_id"], how="left_semi")
                      .select("order_id"))
    for name in ("silver_order_lines", "silver_returns"):
        kept[name] = kept[name].join(dropped_orders, on="order_id", how="left_anti").select(*_columns(name))
    return kept


def _columns(table: str) -> list[str]:
    return [field.name for field in T._parse_datatype_string(SILVER_SCHEMAS[table]).fields]


def _row_count(lake: Any, name: str) -> int:
    """Rows of the table's current version from the Delta log's file statistics (no Spark job)."""
    try:
        from deltalake import DeltaTable

        actions = DeltaTable(lake.uri(name).replace("s3a://", "s3://", 1),
                             storage_options=getattr(lake, "storage_options", None) or None
                             ).get_add_actions(flatten=True)
        counts = actions.column("num_records").to_pylist()
        if all(c is not None for c in counts):
            return int(sum(counts))
    except Exception:  # stats missing or a store delta-rs cannot open: count with Spark instead
        logger.debug("%s: no file statistics, counting with Spark", name)
    return lake.read(name).count()


# -- the job --------------------------------------------------------------------------------------

def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None) -> StandardizeResult:
    """Rebuild every silver table from the bronze tables of all sources in sources.yaml.

    Always all sources: silver tables are overwritten whole, so a subset would drop the others.
    """
    from cdp.lake import Lake

    sources_file, config = load_sources(ctx)
    identity_file = ctx.conf_path("identity.yaml")
    normalizers = load_normalizers(identity_file)
    check_identifier_types(config, normalizers, sources_file, identity_file)
    selected = list(config.sources.values())
    lake = lake or Lake(spark, ctx.lake_root)
    result = StandardizeResult()
    records: dict[str, tuple[SourceSpec, DataFrame]] = {}
    rejected: list[DataFrame] = []
    now = datetime.now(UTC).replace(tzinfo=None)
    resolved_by_source = {}
    for source in selected:
        if not lake.exists(source.bronze_table):
            logger.warning("%s: no bronze table %s yet (run cdp land first); skipped", source.name,
                           source.bronze_table)
            continue
        resolved_by_source[source.name] = (source, deduplicate(lake.read(source.bronze_table), source, now=now))
    # every source's counts in one Spark job (a job per source was a fixed cost of each small run)
    all_counts = [resolved.counts for _, resolved in resolved_by_source.values()]
    counted = ({row["source"]: row.asDict() for row in reduce(DataFrame.unionByName, all_counts).collect()}
               if all_counts else {})
    unmapped = {name: unmapped_values(resolved.records, source).persist(StorageLevel.MEMORY_AND_DISK)
                for name, (source, resolved) in resolved_by_source.items()}
    _count_unmapped(unmapped, result)
    for name, (source, resolved) in resolved_by_source.items():
        counts = counted[name]
        result.duplicates[source.name] = {k: int(v) for k, v in counts.items() if k != "source"}
        _report_duplicates(source, result.duplicates[source.name])
        if source.on_duplicate_key == "error" and counts["collision_keys"]:
            first = resolved.rejected.filter(F.col("reason").startswith("key collision")).first()
            raise JobFailed(f"{sources_file}: sources.{source.name}: {counts['collision_keys']} record id(s) seen "
                            f"with different contents (first: {first['raw']!r} in {first['file']} line {first['line']}); "
                            "on_duplicate_key: error")
        kept, unmapped_rejected = quarantine_unmapped(resolved.records, unmapped[name], now)
        records[source.name] = (source, kept.persist(StorageLevel.MEMORY_AND_DISK))
        rejected.append(resolved.rejected)
        rejected.append(unmapped_rejected)
        result.sources.append(source.name)
    # Normalised once (the phone normaliser is Python) and read three times: silver, quarantine, suppression.
    # The raw rows are cached first: fused into one generated method with every source's explode, the
    # normalisers' expressions exceeded the JVM's 64 KB per method and the stage ran without whole-stage
    # code generation ("Failed to compile the generated Java code", ten stages per run).
    raw_ids = identifier_rows(records)
    normalized = None
    if raw_ids is not None:
        raw_ids = raw_ids.persist(StorageLevel.MEMORY_AND_DISK)
        normalized = normalize_identifiers(raw_ids, normalizers).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        tables, quarantine = build_silver(spark, records, normalized, normalizers, now)
        # channel responses name the send they answer: link them to its audience and publish version
        messages = lake.read(MESSAGES_TABLE) if lake.exists(MESSAGES_TABLE) else None
        tables["silver_events"] = link_responses(tables["silver_events"], messages)
        for frame in rejected:  # records without an id, key collisions: quarantined with the reason
            quarantine = quarantine.unionByName(frame)
        if lake.exists("suppression_list"):
            # a forgotten person must not be re-created by a later load
            tables = apply_suppression(tables, lake.read("suppression_list"))
        metadata = {"run_id": ctx.run_id, "job": "standardize", "sources": ",".join(result.sources)}
        for name, table in tables.items():
            lake.write(table, name, "overwrite", metadata=metadata)
            result.rows[name] = _row_count(lake, name)
        if messages is not None:
            for row in response_links(lake.read("silver_events")).collect():
                result.responses[row["source"]] = {"linked": row["linked"], "unlinked": row["unlinked"]}
                logger.info("%s: %d response events linked to an export, %d name a message no export sent",
                            row["source"], row["linked"], row["unlinked"])
        for row in (lake.read("silver_identifiers").filter(F.col("non_personal").isNotNull())
                    .groupBy("source", "id_type").agg(F.countDistinct("id_value").alias("n")).collect()):
            result.non_personal[f"{row['source']}.{row['id_type']}"] = int(row["n"])
        quarantine = quarantine.persist(StorageLevel.MEMORY_AND_DISK)
        for row in quarantine.groupBy("source", "field").count().collect():
            key = f"{row['source']}.{row['field']}"
            result.invalid_identifiers[key] = row["count"]
        if lake.exists(QUARANTINE):
            lake.write(quarantine, QUARANTINE, "overwrite", replace_where={"stage": "standardize"},
                       metadata=metadata)
        else:
            lake.write(quarantine, QUARANTINE, "append", partition_by=["stage"], metadata=metadata)
        quarantine.unpersist()
    finally:
        for _, deduped in records.values():
            deduped.unpersist()
        if normalized is not None:
            normalized.unpersist()
            raw_ids.unpersist()
        for frame in unmapped.values():
            frame.unpersist()
    for name, count in result.rows.items():
        logger.info("%-28s %10d rows", name, count)
    logger.info("invalid identifiers (quarantined): %d %s", sum(result.invalid_identifiers.values()),
                dict(sorted(result.invalid_identifiers.items())))
    logger.info("service-line identifiers kept in silver, linking nobody: %d %s", sum(result.non_personal.values()),
                dict(sorted(result.non_personal.items())))
    return result


def quarantine_unmapped(records: DataFrame, unmapped: DataFrame, now: datetime) -> tuple[DataFrame, DataFrame]:
    """Records without those holding a value a map does not cover (action ``quarantine``), and the
    quarantine rows (stage ``standardize``) that name field, value and mapping."""
    to_quarantine = unmapped.filter(F.col("action") == "quarantine")
    kept = records.join(to_quarantine.select("record_id").distinct(), on="record_id", how="left_anti")
    rows = to_quarantine.select(
        "source", F.lit("standardize").alias("stage"), F.lit(None).cast("string").alias("load_id"),
        F.col("_source_file").alias("file"), F.col("_line").alias("line"), "field", F.col("value").alias("raw"),
        F.concat(F.col("field"), F.lit(": unmapped value '"), F.col("value"), F.lit("' (map of "), F.col("mapping"),
                 F.lit("; add it to the map, or declare default: or unmapped: drop)")).alias("reason"),
        F.lit(now).cast("timestamp").alias("quarantined_at"))
    return kept.select(*records.columns), rows


def _count_unmapped(unmapped: Mapping[str, DataFrame], result: StandardizeResult) -> None:
    """Values no map covers, per source, mapping, field and action, into ``result.unmapped``: a job per
    source (one union of every source's plan was too large to compile on the standalone cluster)."""
    for name, frame in unmapped.items():
        for row in frame.groupBy("mapping", "field", "action").agg(F.count(F.lit(1)).alias("n")).collect():
            result.unmapped.setdefault(f"{name}.{row['mapping']} {row['field']}", {})[row["action"]] = int(row["n"])
    for name in sorted({key.split(".", 1)[0] for key in result.unmapped}):
        logger.warning("%s: values no map covers (per mapping and field: action -> count): %s", name,
                       {k: v for k, v in sorted(result.unmapped.items()) if k.startswith(f"{name}.")})


def _report_duplicates(source: SourceSpec, counts: dict[str, int]) -> None:
    logger.info("%s: %d bronze rows; %d exact duplicates dropped, %d older versions superseded, %d without a "
                "record id and %d rows of %d colliding record ids quarantined (on_duplicate_key: %s)",
                source.name, counts["rows"], counts["exact_duplicates"], counts["superseded"], counts["missing_id"],
                counts["collision_rows"], counts["collision_keys"], source.on_duplicate_key)


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    run(spark, ctx)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("standardize", argv, _run_from_args,
                    description="bronze -> silver canonical tables")


if __name__ == "__main__":
    sys.exit(main())
