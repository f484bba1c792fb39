"""Over-merge guards applied to components: quarantine of oversized ones, splitting of limit violators.

A component holding more values of a type than the type's ``limit`` (two member ids) is split inside
one grouped task per component: edges are taken strongest first (highest endpoint priority, most
records, most recent, then by node ids for determinism) and joined with a union-find; an edge that
would make a part hold more values of a type than allowed is dropped, with the reason written down.
So the lowest-priority, weakest edges are the ones dropped, and only as many as needed.
"""
from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from identity.config import IdentityConfig

CLUSTER_SCHEMA = T.StructType([
    T.StructField("kind", T.StringType()),
    T.StructField("node", T.LongType()),
    T.StructField("cluster", T.LongType()),
    T.StructField("a", T.LongType()),
    T.StructField("b", T.LongType()),
    T.StructField("reason", T.StringType()),
])


def component_sizes(labelled_nodes: DataFrame) -> DataFrame:
    """component, size long, type_counts map<string,long> (distinct values per identifier type)."""
    per_type = labelled_nodes.groupBy("component", "id_type").agg(F.count(F.lit(1)).alias("n"))
    return (per_type.groupBy("component")
            .agg(F.sum("n").alias("size"), F.map_from_entries(F.sort_array(F.collect_list(F.struct("id_type", "n"))))
                 .alias("type_counts")))


def quarantine_oversized(labelled_nodes: DataFrame, edges: DataFrame, max_size: int, run_id: str) -> DataFrame:
    """Report components larger than ``max_size``: they are not published as one customer.

    Args:
        labelled_nodes: node, id_type, component.
        edges: a, b (candidate edges).

    Returns:
        component long, size long, type_counts map<string,long>, top_identifiers array<string>
        (the five best-connected identifiers, "type:value (degree)"), reason string, run_id string.
    """
    oversized = component_sizes(labelled_nodes).filter(F.col("size") > max_size)
    degree = (edges.select(F.col("a").alias("node")).unionByName(edges.select(F.col("b").alias("node")))
              .groupBy("node").agg(F.count(F.lit(1)).alias("degree")))
    top = (labelled_nodes.join(oversized.select("component"), on="component", how="left_semi")
           .join(degree, on="node", how="left")
           .groupBy("component")
           .agg(F.slice(F.sort_array(F.collect_list(F.struct(
               (-F.coalesce(F.col("degree"), F.lit(0))).alias("neg_degree"),
               F.concat_ws(":", "id_type", "id_value").alias("identifier")))), 1, 5).alias("top")))
    return (oversized.join(top, on="component", how="left")
            .select("component", "size", "type_counts",
                    F.transform("top", lambda t: F.format_string("%s (%d links)", t["identifier"], -t["neg_degree"]))
                    .alias("top_identifiers"),
                    F.format_string("component of %d identifiers exceeds max_component_size %d; its identifiers "
                                    "are published unlinked until the cause (usually a missing blocked value) is "
                                    "fixed", F.col("size"), F.lit(max_size)).alias("reason"),
                    F.lit(run_id).alias("run_id")))


def violating_components(labelled_nodes: DataFrame, config: IdentityConfig) -> DataFrame:
    """component, violation string: components holding more values of some type than its limit."""
    limits = F.create_map(*[x for t in config.types for x in (F.lit(t.name), F.lit(t.limit))])
    return (labelled_nodes.groupBy("component", "id_type").agg(F.count(F.lit(1)).alias("n"))
            .filter(F.col("n") > limits[F.col("id_type")])
            .groupBy("component")
            .agg(F.concat_ws("; ", F.sort_array(F.collect_list(F.format_string(
                "%d %s values (limit %d)", F.col("n"), F.col("id_type"), limits[F.col("id_type")])))).alias("violation")))


def _split_component(nodes: pd.DataFrame, edges: pd.DataFrame, limits: dict[str, int]) -> pd.DataFrame:
    """Greedy, deterministic split of one component (pandas in, pandas out; see module docstring)."""
    parent = {int(n): int(n) for n in nodes["node"]}
    types = {int(n): t for n, t in zip(nodes["node"], nodes["id_type"], strict=True)}
    counts = {n: {types[n]: 1} for n in parent}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ordered = edges.assign(
        neg_priority=-edges["priority"], neg_records=-edges["n_records"],
        neg_last=-edges["last_seen_us"],
    ).sort_values(["neg_priority", "neg_records", "neg_last", "a", "b"], kind="mergesort")
    dropped = []
    for a, b in zip(ordered["a"], ordered["b"], strict=True):
        root_a, root_b = find(int(a)), find(int(b))
        if root_a == root_b:
            continue
        merged = dict(counts[root_a])
        for id_type, n in counts[root_b].items():
            merged[id_type] = merged.get(id_type, 0) + n
        over = sorted(t for t, n in merged.items() if n > limits.get(t, n))
        if over:
            dropped.append((int(a), int(b), "; ".join(
                f"would join {merged[t]} {t} values (limit {limits[t]})" for t in over)))
            continue
        keep, gone = (root_a, root_b) if root_a < root_b else (root_b, root_a)
        parent[gone] = keep
        counts[keep] = merged
        del counts[gone]
    roots = {n: find(n) for n in parent}
    smallest: dict[int, int] = {}
    for n, root in roots.items():
        smallest[root] = min(n, smallest.get(root, n))
    nodes_out, dropped_out = list(roots), len(dropped)
    # Built column by column with nullable Int64: rows mixing ints and None would become float64
    # and silently round 64-bit node hashes.
    return pd.DataFrame({
        "kind": ["node"] * len(nodes_out) + ["dropped"] * dropped_out,
        "node": pd.array(nodes_out + [None] * dropped_out, dtype="Int64"),
        "cluster": pd.array([smallest[roots[n]] for n in nodes_out] + [None] * dropped_out, dtype="Int64"),
        "a": pd.array([None] * len(nodes_out) + [a for a, _, _ in dropped], dtype="Int64"),
        "b": pd.array([None] * len(nodes_out) + [b for _, b, _ in dropped], dtype="Int64"),
        "reason": [None] * len(nodes_out) + [reason for _, _, reason in dropped],
    })


def enforce_limits(labelled_nodes: DataFrame, edges: DataFrame, config: IdentityConfig) -> tuple[DataFrame, DataFrame]:
    """Split components that hold more values of a type than allowed.

    Args:
        labelled_nodes: node, id_type, component (components not to be split may be excluded by the
            caller, e.g. quarantined ones).
        edges: a, b, priority, n_records, last_seen (candidate edges inside those components).

    Returns:
        (clusters, dropped): clusters is node, component, cluster (the smallest node of the part the
        node ends in; equal to component when nothing was split); dropped is a, b, reason for each
        edge removed to respect a limit.
    """
    limits = {t.name: t.limit for t in config.types}
    violating = violating_components(labelled_nodes, config)
    to_split = labelled_nodes.join(violating.select("component"), on="component", how="left_semi")
    # The edge side gets its own grouping column name: both sides descend from labelled_nodes, and
    # cogroup cannot tell two columns of one lineage apart.
    split_edges = (edges.join(to_split.select(F.col("node").alias("a"), F.col("component").alias("edge_component")),
                              on="a", how="inner")
                   .select("edge_component", "a", "b", "priority", "n_records",
                           F.coalesce(F.unix_micros("last_seen"), F.lit(-(2 ** 62))).alias("last_seen_us")))

    def split(node_frame: pd.DataFrame, edge_frame: pd.DataFrame) -> pd.DataFrame:
        return _split_component(node_frame, edge_frame, limits)

    result = (to_split.select("component", "node", "id_type").groupBy("component")
              .cogroup(split_edges.groupBy("edge_component"))
              .applyInPandas(split, schema=CLUSTER_SCHEMA))
    result = result.localCheckpoint(eager=True)  # runs the split once; short plans downstream
    split_nodes = result.filter(F.col("kind") == "node").select("node", "cluster")
    dropped = result.filter(F.col("kind") == "dropped").select("a", "b", "reason")
    clusters = (labelled_nodes.join(split_nodes, on="node", how="left")
                .select("node", "component", F.coalesce("cluster", "component").alias("cluster")))
    return clusters, dropped
