"""``cdp stitch``: silver identifiers -> identity graph, customer ids, identity map, golden profile.

Reads ``silver_identifiers`` and ``silver_customer_attributes`` and the previous run's identity
tables; writes ``identity_graph``, ``identity_map``, ``customer_records``, ``identity_history``
(appended), ``identity_quarantine`` and ``customer_profile``. Incremental by default: only the
components touched by changed data are recomputed; ``--full`` recomputes everything (the ids are
carried from the previous identity map either way). A change of the identity configuration that
decides components (types, limits, blocked values, quarantine size) forces a full recompute.

Write-audit-publish: ``identity_map`` and ``customer_profile`` are staged (``_staging_<table>``)
and validated with their suites of ``conf/quality.yaml`` (no customer over a type limit, no customer
with two member ids, merge rate and component sizes within bounds of the published version, unique
customers in the profile) before anything is published. If either gate fails, no identity table is
written: the last good versions stay current (they are consistent with each other), the reports are
in ``<lake>/_reports/quality/<run_id>/`` and the job exits non-zero.

The published tables become current together, when the step's commit record is written (``cdp run``
after the step, or ``cdp stitch`` run on its own when it returns): a run killed between two publishes
leaves nothing a reader or the next run's incremental state sees.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.identity import IdentityConfig, PreviousState, build_profile, resolve_identities
from cdp.identity.graph import NON_PERSONAL
from cdp.identity.resolve import DROPPED_LIMIT, GRAPH_COLUMNS, IDENTITY_MAP_COLUMNS
from cdp.jobs.entry import JobFailed, job_main
from cdp.lake import Lake
from cdp.runtime.config import JobContext, parse_file
from cdp.runtime.gates import audit, load_quality_config, staging_name

logger = logging.getLogger(__name__)

IDENTITY_MAP = "identity_map"
IDENTITY_GRAPH = "identity_graph"
CUSTOMER_RECORDS = "customer_records"
IDENTITY_HISTORY = "identity_history"
IDENTITY_QUARANTINE = "identity_quarantine"
CUSTOMER_PROFILE = "customer_profile"
FINGERPRINT_KEY = "identity_config"
# Gated tables and their suites in conf/quality.yaml, audited together before anything is published.
GATES = ((IDENTITY_MAP, "identity_map"), (CUSTOMER_PROFILE, "customer_profile"))

ATTRIBUTES_SCHEMA = ("source string, record_id string, observed_at timestamp, name string, gender string, "
                     "birth_date date, city string, province string, city_tier int, member_level string, "
                     "member_since date")
_EMPTY_SCHEMAS = {
    IDENTITY_MAP: "id_type string, id_value string, customer_id string, is_shared boolean, updated_run string, "
                  "created_run string, component_id long",
    IDENTITY_GRAPH: "a long, a_type string, a_value string, b long, b_type string, b_value string, priority int, "
                    "n_records long, n_sources int, sources array<string>, first_seen timestamp, "
                    "last_seen timestamp, first_source string, first_record_id string, rule string, "
                    "status string, status_reason string",
    IDENTITY_QUARANTINE: "component long, size long, type_counts map<string,bigint>, top_identifiers array<string>, "
                         "reason string, run_id string",
}


@dataclass(frozen=True)
class StitchSummary:
    run_id: str
    mode: str
    customers: int
    identifiers: int
    recomputed_identifiers: int
    new_customers: int
    merges: int
    splits: int
    retired: int
    shared_identifiers: int
    dropped_edges: int
    quarantined_components: int
    # valid values that link nobody (service lines: types.<type>.normalizer.personal_types), never nodes
    non_personal_identifiers: int = 0


def _read_or_empty(spark: SparkSession, lake: Lake, name: str) -> DataFrame:
    if lake.exists(name):
        return lake.read(name)
    return spark.createDataFrame([], _EMPTY_SCHEMAS[name])


def _previous_fingerprint(lake: Lake) -> str | None:
    if not lake.exists(IDENTITY_MAP):
        return None
    for commit in lake.history(IDENTITY_MAP, limit=1):
        # Both backends put custom commit metadata at the top level of a history entry.
        return commit.get(FINGERPRINT_KEY)
    return None


def load_previous_state(spark: SparkSession, lake: Lake) -> PreviousState | None:
    """The last published identity state, or None before the first stitch."""
    if not lake.exists(IDENTITY_MAP):
        return None
    if lake.exists(IDENTITY_HISTORY):
        history = lake.read(IDENTITY_HISTORY)
        issued = (history.select(F.col("customer_id")).filter(F.col("customer_id").isNotNull())
                  .unionByName(history.select(F.explode("old_ids").alias("customer_id"))))
    else:
        issued = spark.createDataFrame([], "customer_id string")
    return PreviousState(
        identity_map=lake.read(IDENTITY_MAP),
        identity_graph=_read_or_empty(spark, lake, IDENTITY_GRAPH),
        quarantine=_read_or_empty(spark, lake, IDENTITY_QUARANTINE),
        issued_ids=issued,
    )


def audit_identity_tables(lake: Lake, ctx: JobContext, candidates: dict[str, DataFrame],
                          config: IdentityConfig) -> dict[str, DataFrame]:
    """Stage and validate every gated table; return the staged frames, or raise if any gate fails.

    Each candidate is written to ``_staging_<table>`` and validated as read back (what is validated is
    exactly what gets published), against the published ``<table>`` for relative bounds. Every suite
    runs, so every report is written, before a failure is raised.

    Raises:
        JobFailed: a blocking expectation failed; the message names it and the report paths.
    """
    quality = load_quality_config(ctx)
    params = {IDENTITY_MAP: {"identity_type_counts": {"limits": {t.name: t.limit for t in config.types}}}}
    staged: dict[str, DataFrame] = {}
    failures: list[str] = []
    for table, suite in GATES:
        lake.write(candidates[table], staging_name(table), mode="overwrite",
                   metadata={"run_id": ctx.run_id, "stage_of": table})
        staged[table] = lake.read(staging_name(table))
        result, report = audit(lake, staged[table], table, suite, ctx, params=params.get(table), config=quality)
        if result.success:
            logger.info("%s: gate %s passed (%d expectations), report %s", table, suite, len(result.outcomes), report)
        else:
            logger.error("%s: quality gate %s failed; report %s", table, suite, report)
            failures.append(f"{result.summary()} (report: {report})")
    if failures:
        raise JobFailed("identity quality gates failed, no identity table published (the last good versions stay "
                        "current): " + "; ".join(failures))
    return staged


def run(spark: SparkSession, ctx: JobContext, *, lake: Lake | None = None,
        mode: Literal["auto", "full", "incremental"] = "auto", config: IdentityConfig | None = None) -> StitchSummary:
    """Stitch the lake's silver identifiers into customers and publish the identity tables behind gates.

    ``mode``: ``auto`` is incremental when a previous identity map made with the same identity
    configuration exists, else full; ``full`` recomputes every component.

    Raises:
        JobFailed: silver_identifiers is missing, or a quality gate failed (nothing published).
    """
    if config is None:
        config = parse_file(ctx.conf_path("identity.yaml"), IdentityConfig.from_dict)
    logger.info("identity config %s: %d identifier types, engine %s, max component size %d",
                config.fingerprint(), len(config.types), config.engine, config.max_component_size)
    lake = lake or Lake(spark, ctx.lake_root)
    if not lake.exists("silver_identifiers"):
        raise JobFailed(f"silver_identifiers does not exist in the lake at {ctx.lake_root}: run cdp standardize first")
    identifiers = lake.read("silver_identifiers")

    previous = load_previous_state(spark, lake)
    chosen = mode
    if previous is None:
        chosen = "full"
    elif mode in ("auto", "incremental"):
        before = _previous_fingerprint(lake)
        if before != config.fingerprint():
            logger.info("identity config changed (%s -> %s): full recompute", before, config.fingerprint())
            chosen = "full"
        else:
            chosen = "incremental"
    logger.info("stitch run %s: %s", ctx.run_id, chosen)

    result = resolve_identities(identifiers, config, ctx.run_id, previous=previous,
                                mode="full" if chosen == "full" else "incremental")
    identity_map = result.identity_map.select(*IDENTITY_MAP_COLUMNS).localCheckpoint(eager=True)
    identity_graph = result.identity_graph.select(*GRAPH_COLUMNS).localCheckpoint(eager=True)
    history = result.identity_history.localCheckpoint(eager=True)
    quarantine = result.quarantine.localCheckpoint(eager=True)

    attributes = (lake.read("silver_customer_attributes") if lake.exists("silver_customer_attributes")
                  else spark.createDataFrame([], ATTRIBUTES_SCHEMA))
    profile = build_profile(attributes, result.observations, result.customer_records, identity_map, config)

    staged = audit_identity_tables(lake, ctx, {IDENTITY_MAP: identity_map, CUSTOMER_PROFILE: profile}, config)

    commit = {"run_id": ctx.run_id, "job": "stitch", "mode": chosen}
    lake.write(identity_graph, IDENTITY_GRAPH, mode="overwrite", metadata=commit)
    lake.write(result.customer_records, CUSTOMER_RECORDS, mode="overwrite", metadata=commit)
    lake.write(quarantine, IDENTITY_QUARANTINE, mode="overwrite", metadata=commit)
    lake.write(staged[CUSTOMER_PROFILE], CUSTOMER_PROFILE, mode="overwrite",
               metadata={**commit, "quality_suite": "customer_profile"})
    lake.write(history, IDENTITY_HISTORY, mode="append", metadata=commit)
    # The step commits as a whole (cdp.lake step commits): until the runner's commit record names
    # these versions, readers and the next run's incremental state stay on the previous run's tables,
    # and a re-run after a crash restores identity_history before appending (no event kept twice).
    # The identity map is stamped with the config that produced it.
    lake.write(staged[IDENTITY_MAP], IDENTITY_MAP, mode="overwrite",
               metadata={**commit, "quality_suite": "identity_map", FINGERPRINT_KEY: config.fingerprint()})

    events = {row["event"]: row["n"] for row in history.groupBy("event").agg(F.count(F.lit(1)).alias("n")).collect()}
    graph_counts = {row["status"]: row["n"] for row in
                    identity_graph.groupBy("status").agg(F.count(F.lit(1)).alias("n")).collect()}
    summary = StitchSummary(
        run_id=ctx.run_id,
        mode=chosen,
        customers=result.customer_records.select("customer_id").distinct().count(),
        identifiers=identity_map.filter(~F.col("is_shared")).count(),
        recomputed_identifiers=result.region_nodes.count(),
        new_customers=events.get("new", 0),
        merges=events.get("merge", 0),
        splits=events.get("split", 0),
        retired=events.get("retire", 0),
        shared_identifiers=identity_map.filter("is_shared").select("id_type", "id_value").distinct().count(),
        dropped_edges=graph_counts.get(DROPPED_LIMIT, 0),
        quarantined_components=quarantine.count(),
        non_personal_identifiers=result.observations.filter(F.col("status") == NON_PERSONAL)
        .select("id_type", "id_value").distinct().count(),
    )
    logger.info("stitch: %s", ", ".join(f"{k}={v}" for k, v in asdict(summary).items()))
    if summary.quarantined_components:
        logger.warning("stitch: %d oversized components quarantined (see table %s)",
                       summary.quarantined_components, IDENTITY_QUARANTINE)
    return summary


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true",
                        help="recompute every component (ids are still carried from the previous run)")


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    run(spark, ctx, mode="full" if args.full else "auto")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main("stitch", argv, _run_from_args, _add_arguments,
                    description="identity graph -> customer ids, identity map, golden profile")


if __name__ == "__main__":
    sys.exit(main())
