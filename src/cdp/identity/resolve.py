"""Identity resolution end to end, pure: identifier observations (+ previous state) in, outputs out.

Stages: classify observations, build edges, flag *direct* hubs (:func:`cdp.identity.graph.direct_hubs`),
connected components over the remaining (candidate) edges, quarantine of oversized components, then
inside components that break a limit: hubs through trusted links and limit splits
(:func:`cdp.identity.limits.enforce_limits`), then stable ids (:func:`cdp.identity.stable_ids.assign_stable_ids`).

Full mode recomputes every component. Incremental mode recomputes only the *region* touched by
changes: the previous components that hold an endpoint of a candidate edge that appeared,
disappeared or changed its weight, or a candidate identifier that appeared or disappeared (became or
stopped being a direct hub), plus every new identifier. Such a region is closed under the current
candidate edges (an unchanged candidate edge lies inside one previous component), so every other
component is unchanged and keeps its previous rows, and its identifiers found shared inside the
component stay shared; the result equals a full recompute from the same previous state (tested).

The previous run's candidate graph is rebuilt from what it published: its direct hubs follow from
its identity_graph (same rule, same config: a config change forces a full run); its candidate
identifiers are its unshared identity_map rows plus the identifiers it found shared inside a
component (an endpoint of a candidate edge without an unshared row), which belong to the component
of their unshared neighbours and keep the reason written in identity_graph.

Edges and direct hub flags are one aggregation over all observations in both modes (they are linear
and decide what changed); the iterative parts (components, hubs inside components, limit splits,
ids) run on the region only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdp.identity.components import connected_components
from cdp.identity.config import IdentityConfig
from cdp.identity.graph import (
    VALID,
    build_edges,
    build_nodes,
    candidate_edges,
    classify_identifiers,
    direct_hubs,
    flag_shared_identifiers,
    node_collisions,
    node_id,
    record_identifiers,
    type_priority,
)
from cdp.identity.limits import enforce_limits, quarantine_oversized
from cdp.identity.stable_ids import assign_stable_ids

logger = logging.getLogger(__name__)

ACTIVE = "active"
SHARED_ENDPOINT = "shared_endpoint"
DROPPED_LIMIT = "dropped_limit"
QUARANTINED = "quarantined"

IDENTITY_MAP_COLUMNS = ("id_type", "id_value", "customer_id", "is_shared", "updated_run", "created_run",
                        "component_id")
GRAPH_COLUMNS = ("a", "a_type", "a_value", "b", "b_type", "b_value", "priority", "n_records", "n_sources",
                 "sources", "first_seen", "last_seen", "first_source", "first_record_id", "rule", "status",
                 "status_reason")
# The edge attributes that decide components and splits: a change in any of them touches the component.
_EDGE_STATE = ("a", "b", "priority", "n_records", "last_seen")


@dataclass(frozen=True)
class PreviousState:
    """What the last stitch published (empty frames on a first run)."""

    identity_map: DataFrame
    identity_graph: DataFrame
    quarantine: DataFrame
    issued_ids: DataFrame  # customer_id: every id ever issued (from identity_history)


@dataclass(frozen=True)
class StitchResult:
    identity_map: DataFrame
    identity_graph: DataFrame
    customer_records: DataFrame
    identity_history: DataFrame
    quarantine: DataFrame
    observations: DataFrame
    region_nodes: DataFrame  # node, id_type, id_value, priority: the identifiers recomputed this run


def anonymous_customer_id(source: F.Column, record_id: F.Column) -> F.Column:
    """The customer of a record whose identifiers are all shared, blocked or invalid: ``a`` + hash."""
    return F.concat(F.lit("a"), F.substring(F.sha2(F.concat_ws("\u001f", source, record_id), 256), 1, 20))


def _changed_nodes(current: DataFrame, previous: DataFrame) -> DataFrame:
    """node: in one set but not the other (both have a ``node`` column)."""
    cur, prev = current.select("node").distinct(), previous.select("node").distinct()
    return cur.subtract(prev).unionByName(prev.subtract(cur))


@dataclass(frozen=True)
class _PreviousCandidates:
    nodes: DataFrame  # node, component_id: every candidate identifier of the previous run
    edges: DataFrame  # _EDGE_STATE columns: the previous run's candidate edges
    shared_inside: DataFrame  # node, component_id, shared_reason: hubs it found inside components


def _previous_candidates(previous: PreviousState, config: IdentityConfig) -> _PreviousCandidates:
    """The previous run's candidate graph, rebuilt from its identity_map and identity_graph (module docstring)."""
    graph = previous.identity_graph
    hubs = direct_hubs(graph, config).select(F.col("node").alias("hub"))
    edges = (graph.join(hubs.withColumnRenamed("hub", "a"), on="a", how="left_anti")
             .join(hubs.withColumnRenamed("hub", "b"), on="b", how="left_anti"))
    unshared = (previous.identity_map.filter(~F.col("is_shared"))
                .select(node_id("id_type", "id_value").alias("node"), "component_id"))
    # An identifier shared inside a component has an unshared higher-priority neighbour, and the edge
    # between them names only its endpoint as shared: "<type> is shared: <reason>".
    ends = (edges.select(F.col("a").alias("node"), F.col("a_type").alias("id_type"), F.col("b").alias("other"),
                         "status_reason")
            .unionByName(edges.select(F.col("b").alias("node"), F.col("b_type").alias("id_type"),
                                      F.col("a").alias("other"), "status_reason")))
    shared_inside = (ends.join(unshared.select(F.col("node").alias("other"), "component_id"), on="other", how="inner")
                     .join(unshared.select("node"), on="node", how="left_anti")
                     .filter(F.col("status_reason").startswith(F.concat(F.col("id_type"), F.lit(" is shared: "))))
                     .groupBy("node")
                     .agg(F.min("component_id").alias("component_id"),
                          F.min(F.expr("substring(status_reason, length(id_type) + 13)")).alias("shared_reason")))
    nodes = unshared.unionByName(shared_inside.select("node", "component_id"))
    return _PreviousCandidates(nodes=nodes, edges=edges.select(*_EDGE_STATE), shared_inside=shared_inside)


def _touched_components(candidates: DataFrame, candidate_nodes: DataFrame, before: _PreviousCandidates) -> DataFrame:
    """component_id of every previous component whose candidate identifiers or edges changed."""
    now = candidates.select(*_EDGE_STATE)
    changed_edges = now.subtract(before.edges).unionByName(before.edges.subtract(now))
    endpoints = (changed_edges.select(F.col("a").alias("node"))
                 .unionByName(changed_edges.select(F.col("b").alias("node")))
                 .unionByName(_changed_nodes(candidate_nodes, before.nodes)))
    return before.nodes.join(endpoints, on="node", how="left_semi").select("component_id").distinct()


def resolve_identities(
    identifiers: DataFrame,
    config: IdentityConfig,
    run_id: str,
    *,
    previous: PreviousState | None = None,
    mode: Literal["full", "incremental"] = "full",
) -> StitchResult:
    """Stitch identifier observations into customers.

    Args:
        identifiers: ``silver_identifiers`` rows.
        config: identity configuration.
        run_id: this run's id (written to changed rows and history).
        previous: what the previous run published; ``None`` on a first run.
        mode: ``full`` recomputes all components, ``incremental`` only the touched region.

    Returns:
        A :class:`StitchResult` of lazily defined DataFrames (identity_map has
        :data:`IDENTITY_MAP_COLUMNS`, identity_graph :data:`GRAPH_COLUMNS`).
    """
    spark = identifiers.sparkSession
    observations = classify_identifiers(identifiers, config).localCheckpoint(eager=True)
    # Nodes and edges both aggregate the records' identifiers: computed once, kept only until both
    # are built (it is about as large as the observations).
    per_record = record_identifiers(observations).persist(StorageLevel.MEMORY_AND_DISK)
    all_nodes = build_nodes(per_record).localCheckpoint(eager=True)
    collisions = node_collisions(all_nodes).limit(5).collect()
    if collisions:
        per_record.unpersist()
        raise ValueError(f"identifier hash collision (rename or block one of them): {[r.identifiers for r in collisions]}")

    edges = build_edges(per_record).localCheckpoint(eager=True)
    per_record.unpersist()
    nodes = flag_shared_identifiers(all_nodes, edges, config).localCheckpoint(eager=True)
    candidates = candidate_edges(edges, nodes).localCheckpoint(eager=True)
    unshared = nodes.filter(~F.col("is_shared")).select("node", "id_type", "id_value", "priority")
    direct = nodes.filter("is_shared").select("node", "shared_reason")

    incremental = mode == "incremental" and previous is not None
    kept_shared = None
    if incremental:
        assert previous is not None
        before = _previous_candidates(previous, config)
        touched = _touched_components(candidates, unshared, before).localCheckpoint(eager=True)
        region_nodes = (unshared.join(before.nodes, on="node", how="left")
                        .join(touched.withColumn("touched", F.lit(True)), on="component_id", how="left")
                        .filter(F.col("component_id").isNull() | F.col("touched"))
                        .select("node", "id_type", "id_value", "priority"))
        prev_unshared = previous.identity_map.filter(~F.col("is_shared"))
        kept_map = prev_unshared.join(touched, on="component_id", how="left_anti")
        kept_shared = (before.shared_inside.join(touched, on="component_id", how="left_anti")
                       .select("node", "shared_reason"))
        region_previous = prev_unshared.join(touched, on="component_id", how="left_semi")
        kept_quarantine = previous.quarantine.join(touched.withColumnRenamed("component_id", "component"),
                                                   on="component", how="left_anti")
    else:
        region_nodes = unshared
        kept_map = None
        region_previous = (previous.identity_map if previous is not None
                           else spark.createDataFrame([], "id_type string, id_value string, customer_id string, "
                                                          "is_shared boolean, created_run string"))
        kept_quarantine = None
    region_nodes = region_nodes.localCheckpoint(eager=True)
    region_edges = candidates.join(region_nodes.select(F.col("node").alias("a")), on="a", how="left_semi")

    components = connected_components(region_nodes, region_edges, engine=config.engine,
                                      checkpoint_interval=config.checkpoint_interval,
                                      max_iterations=config.max_iterations,
                                      reliable_checkpoints=config.reliable_checkpoints)
    labelled = region_nodes.join(components, on="node", how="inner").localCheckpoint(eager=True)
    quarantine = quarantine_oversized(labelled, region_edges, config.max_component_size, run_id).localCheckpoint(eager=True)
    quarantined = quarantine.select("component")
    regular = labelled.join(quarantined, on="component", how="left_anti")
    split_clusters, dropped, shared_inside = enforce_limits(regular.select("node", "id_type", "component"),
                                                            region_edges, config)
    clusters = (split_clusters
                .unionByName(labelled.join(quarantined, on="component", how="left_semi")
                             .select("node", "component", F.col("node").alias("cluster")))
                .join(labelled.select("node", "id_type", "id_value", "priority"), on="node", how="inner")
                .localCheckpoint(eager=True))
    shared_nodes = direct.unionByName(shared_inside.select("node", "shared_reason"))
    if kept_shared is not None:
        shared_nodes = shared_nodes.unionByName(kept_shared)
    shared_nodes = shared_nodes.localCheckpoint(eager=True)

    # Why a cluster was cut off from the rest of its component, for the history's reasons.
    shared_types = shared_inside.join(labelled.select("node", "id_type"), on="node", how="inner")
    shared_notes = (region_edges.select("a", "b").unionByName(region_edges.select(F.col("b").alias("a"),
                                                                                  F.col("a").alias("b")))
                    .join(shared_types.select(F.col("node").alias("a"), "id_type", "shared_reason"), on="a",
                          how="inner")
                    .join(clusters.select(F.col("node").alias("b"), "cluster"), on="b", how="inner")
                    .select("cluster", F.concat(F.col("id_type"), F.lit(" is shared: "), F.col("shared_reason"))
                            .alias("note")))
    notes = (dropped.join(clusters.select(F.col("node").alias("a"), "cluster"), on="a", how="inner")
             .select("cluster", F.col("reason").alias("note"))
             .unionByName(dropped.join(clusters.select(F.col("node").alias("b"), "cluster"), on="b", how="inner")
                          .select("cluster", F.col("reason").alias("note")))
             .unionByName(shared_notes)
             .unionByName(clusters.join(quarantined, on="component", how="left_semi")
                          .select("cluster", F.lit("component quarantined as oversized").alias("note"))))
    issued = previous.issued_ids if previous is not None else None
    assigned, history = assign_stable_ids(clusters.select("id_type", "id_value", "priority", "cluster"),
                                          region_previous, run_id, taken_ids=issued, cluster_notes=notes)

    prev_rows = (region_previous.filter(~F.col("is_shared"))
                 .select("id_type", "id_value", F.col("customer_id").alias("prev_customer"),
                         F.col("is_shared").alias("prev_shared"), F.col("updated_run").alias("prev_updated"))
                 if previous is not None else None)
    region_map = (assigned.join(clusters.select("id_type", "id_value", F.col("component").alias("component_id")),
                                on=["id_type", "id_value"], how="inner")
                  .select("id_type", "id_value", "customer_id", F.lit(False).alias("is_shared"), "created_run",
                          "component_id"))
    region_map = _carry_updated_run(region_map, prev_rows, run_id, ["id_type", "id_value"])
    unshared_map = region_map if kept_map is None else kept_map.select(*IDENTITY_MAP_COLUMNS).unionByName(region_map)
    unshared_map = unshared_map.localCheckpoint(eager=True)

    customer_records = _customer_records(observations, unshared_map, config).localCheckpoint(eager=True)
    shared_map = _shared_rows(observations, shared_nodes, customer_records, unshared_map, previous, run_id)
    identity_map = unshared_map.unionByName(shared_map).select(*IDENTITY_MAP_COLUMNS)

    all_quarantine = quarantine if kept_quarantine is None else kept_quarantine.unionByName(quarantine)
    region_dropped = dropped
    if incremental:
        assert previous is not None
        outside = (previous.identity_graph.filter(F.col("status") == DROPPED_LIMIT)
                   .join(region_nodes.select(F.col("node").alias("a")), on="a", how="left_anti")
                   .select("a", "b", F.col("status_reason").alias("reason")))
        region_dropped = dropped.unionByName(outside)
    identity_graph = _graph_with_status(edges, shared_nodes, unshared_map, all_quarantine, region_dropped)
    return StitchResult(identity_map=identity_map, identity_graph=identity_graph, customer_records=customer_records,
                        identity_history=history, quarantine=all_quarantine, observations=observations,
                        region_nodes=region_nodes)


def _carry_updated_run(rows: DataFrame, previous: DataFrame | None, run_id: str, keys: list[str]) -> DataFrame:
    """updated_run: the previous value when the row is unchanged, else this run."""
    if previous is None:
        return rows.withColumn("updated_run", F.lit(run_id)).select(*IDENTITY_MAP_COLUMNS)
    joined = rows.join(previous, on=keys, how="left")
    unchanged = ((F.col("prev_customer") == F.col("customer_id")) & (F.col("prev_shared") == F.col("is_shared")))
    return (joined.withColumn("updated_run", F.when(F.coalesce(unchanged, F.lit(False)), F.col("prev_updated"))
                              .otherwise(F.lit(run_id)))
            .select(*IDENTITY_MAP_COLUMNS))


def _customer_records(observations: DataFrame, unshared_map: DataFrame, config: IdentityConfig) -> DataFrame:
    """source, record_id, customer_id: the customer of each record's highest-priority unshared identifier.

    Ties between identifiers of equal priority go to the smaller type, then the smaller value. The
    unshared identifiers are ranked once in that order (a sort of the map), so a record's choice is
    the min of a long: one hash aggregation over all observations, which also lists the records
    without an unshared valid identifier; those get an anonymous customer (:func:`anonymous_customer_id`).
    """
    ranked = (unshared_map.select("id_type", "id_value", "customer_id", type_priority(config).alias("priority"))
              .orderBy(F.col("priority").desc(), "id_type", "id_value")
              # after a global sort, monotonically increasing ids follow the sort order
              .select(node_id("id_type", "id_value").alias("node"), "customer_id",
                      F.monotonically_increasing_id().alias("rank"))
              .localCheckpoint(eager=True))
    # A row whose value is blocked or invalid there (junk raw text) names no customer, even when the
    # same value is valid elsewhere: its join key is null.
    best = (observations.select("source", "record_id", F.when(F.col("status") == VALID, F.col("node")).alias("node"))
            .join(ranked.select("node", "rank"), on="node", how="left")
            .groupBy("source", "record_id").agg(F.min("rank").alias("rank")))
    return (best.join(ranked.select("rank", "customer_id"), on="rank", how="left")
            .select("source", "record_id",
                    F.coalesce("customer_id", anonymous_customer_id(F.col("source"), F.col("record_id")))
                    .alias("customer_id")))


def _shared_rows(observations: DataFrame, shared_nodes: DataFrame, customer_records: DataFrame,
                 unshared_map: DataFrame, previous: PreviousState | None, run_id: str) -> DataFrame:
    """One identity_map row per shared identifier (shared_nodes: node) and customer whose records carry it."""
    created = unshared_map.groupBy("customer_id").agg(F.min("created_run").alias("created_run"))
    shared = (observations.filter(F.col("status") == VALID)
              .join(shared_nodes.select("node"), on="node", how="left_semi")
              .join(customer_records, on=["source", "record_id"], how="inner")
              .join(created, on="customer_id", how="inner")  # anonymous record customers are left out
              .select("id_type", "id_value", "customer_id", F.lit(True).alias("is_shared"), "created_run",
                      F.lit(None).cast("long").alias("component_id"))
              .distinct())
    prev_rows = None
    if previous is not None:
        prev_rows = (previous.identity_map.filter("is_shared")
                     .select("id_type", "id_value", "customer_id", F.col("customer_id").alias("prev_customer"),
                             F.col("is_shared").alias("prev_shared"), F.col("updated_run").alias("prev_updated")))
    return _carry_updated_run(shared, prev_rows, run_id, ["id_type", "id_value", "customer_id"])


def _graph_with_status(edges: DataFrame, shared_nodes: DataFrame, unshared_map: DataFrame, quarantine: DataFrame,
                       dropped: DataFrame) -> DataFrame:
    """Every edge with its status: active, shared_endpoint, quarantined or dropped_limit (+ reason).

    shared_nodes: node, shared_reason of every shared identifier (direct hubs and hubs inside components).
    """
    shared = shared_nodes.select("node", "shared_reason")
    owners = unshared_map.select(node_id("id_type", "id_value").alias("node"), "customer_id", "component_id")
    quarantined = quarantine.select(F.col("component").alias("a_component"), F.lit(True).alias("in_quarantine"))
    status_inputs = (edges
                     .join(shared.select(F.col("node").alias("a"), F.col("shared_reason").alias("a_shared")), on="a",
                           how="left")
                     .join(shared.select(F.col("node").alias("b"), F.col("shared_reason").alias("b_shared")), on="b",
                           how="left")
                     .join(owners.select(F.col("node").alias("a"), F.col("customer_id").alias("a_customer"),
                                         F.col("component_id").alias("a_component")), on="a", how="left")
                     .join(owners.select(F.col("node").alias("b"), F.col("customer_id").alias("b_customer")), on="b",
                           how="left")
                     .join(quarantined, on="a_component", how="left")
                     .join(dropped.withColumnRenamed("reason", "drop_reason"), on=["a", "b"], how="left"))
    shared_reason = F.concat_ws("; ", F.when(F.col("a_shared").isNotNull(),
                                             F.concat(F.col("a_type"), F.lit(" is shared: "), F.col("a_shared"))),
                                F.when(F.col("b_shared").isNotNull(),
                                       F.concat(F.col("b_type"), F.lit(" is shared: "), F.col("b_shared"))))
    status = (F.when(F.col("a_shared").isNotNull() | F.col("b_shared").isNotNull(), F.lit(SHARED_ENDPOINT))
              .when(F.coalesce(F.col("in_quarantine"), F.lit(False)), F.lit(QUARANTINED))
              .when(F.col("a_customer") != F.col("b_customer"), F.lit(DROPPED_LIMIT))
              .otherwise(F.lit(ACTIVE)))
    reason = (F.when(status == SHARED_ENDPOINT, shared_reason)
              .when(status == QUARANTINED, F.lit("component quarantined as oversized"))
              .when(status == DROPPED_LIMIT, F.coalesce(F.col("drop_reason"), F.lit("endpoints in different customers"))))
    return status_inputs.select(*[c for c in GRAPH_COLUMNS if c not in ("status", "status_reason")],
                                status.alias("status"), reason.alias("status_reason"))
