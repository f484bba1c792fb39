"""Over-merge guards applied to components: quarantine of oversized ones, hubs and splits of limit violators.

A component holding more values of a type than the type's ``limit`` (two member ids) is resolved
inside one grouped task per component, in two steps:

1. **Hubs through the trusted graph.** Identifiers are taken level by level, from the highest
   priority down. At each level, an identifier X looks at the *parts* its higher-priority, unshared
   neighbours belong to, where parts are what the identifiers above X's level form through their own
   links (everything more trusted than X, already resolved). X is **shared** when the parts it would
   join hold, together, more values of some higher-priority type T than ``T.limit``, and at least two
   of them hold T values (so X is what joins them: a violation already inside one part is not X's
   doing). A shared X makes no edges; otherwise X joins those parts. Every X of one level is judged
   against the parts as they stood before that level, so the outcome does not depend on order. This
   is the direct hub rule (:func:`cdp.identity.graph.direct_hubs`) extended to links that pass through
   more trusted identifiers: a device seen with member M1 and with the email of member M2 links
   two member ids, as a device seen with both members would. In a component within its limits no
   union can exceed a limit, so only violating components need this step.
2. **Limit split.** The remaining edges are taken strongest first (highest endpoint priority, most
   records, most recent, then by node ids for determinism) and joined with a union-find; an edge
   that would make a part hold more values of a type than allowed is dropped, with the reason
   written down. So the lowest-priority, weakest edges are the ones dropped, and only as many as
   needed (e.g. two emails typed into one record, each the email of a different member).
"""
from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.identity.config import IdentityConfig

CLUSTER_SCHEMA = T.StructType([
    T.StructField("kind", T.StringType()),  # node | dropped | shared
    T.StructField("node", T.LongType()),
    T.StructField("cluster", T.LongType()),
    T.StructField("a", T.LongType()),
    T.StructField("b", T.LongType()),
    T.StructField("reason", T.StringType()),
])

SHARED_REASON = "reaches %d %s values through more trusted identifiers (limit %d)"


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


class _Parts:
    """Union-find over node ids with per-part counts of identifier types."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.counts: dict[int, dict[str, int]] = {}

    def add(self, node: int, id_type: str) -> None:
        self.parent[node] = node
        self.counts[node] = {id_type: 1}

    def __contains__(self, node: int) -> bool:
        return node in self.parent

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def merged_counts(self, roots: list[int]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for root in roots:
            for id_type, n in self.counts[root].items():
                merged[id_type] = merged.get(id_type, 0) + n
        return merged

    def union(self, root_a: int, root_b: int, merged: dict[str, int] | None = None) -> None:
        if root_a == root_b:
            return
        merged = merged if merged is not None else self.merged_counts([root_a, root_b])
        keep, gone = (root_a, root_b) if root_a < root_b else (root_b, root_a)
        self.parent[gone] = keep
        self.counts[keep] = merged
        del self.counts[gone]


def _shared_through_trusted(nodes: list[int], types: dict[int, str], edges: list[tuple[int, int]],
                            priorities: dict[str, int], limits: dict[str, int]) -> dict[int, str]:
    """Step 1 of the module docstring: node -> reason for every identifier shared through trusted links."""
    priority = {n: priorities[types[n]] for n in nodes}
    higher: dict[int, list[int]] = {n: [] for n in nodes}
    for a, b in edges:
        if priority[a] < priority[b]:
            higher[a].append(b)
        elif priority[b] < priority[a]:
            higher[b].append(a)
    parts = _Parts()
    shared: dict[int, str] = {}
    for level in sorted(set(priority.values()), reverse=True):
        joins: list[tuple[int, list[int]]] = []
        for x in sorted(n for n in nodes if priority[n] == level):
            roots = sorted({parts.find(y) for y in higher[x] if y in parts})
            if len(roots) > 1:
                total = parts.merged_counts(roots)
                over = sorted(t for t, n in total.items()
                              if priorities[t] > level and n > limits[t]
                              and n > max(parts.counts[r].get(t, 0) for r in roots))
                if over:
                    shared[x] = "; ".join(SHARED_REASON % (total[t], t, limits[t]) for t in over)
                    continue
            joins.append((x, roots))
        for x, roots in joins:  # after every decision of the level: all judged on the same parts
            parts.add(x, types[x])
            for root in roots:
                parts.union(parts.find(x), parts.find(root))
    return shared


def _split_component(nodes: pd.DataFrame, edges: pd.DataFrame, limits: dict[str, int],
                     priorities: dict[str, int]) -> pd.DataFrame:
    """Hubs, then a greedy, deterministic split of one component (pandas in, pandas out; see module docstring)."""
    node_ids = [int(n) for n in nodes["node"]]
    types = {int(n): t for n, t in zip(nodes["node"], nodes["id_type"], strict=True)}
    pairs = [(int(a), int(b)) for a, b in zip(edges["a"], edges["b"], strict=True)]
    shared = _shared_through_trusted(node_ids, types, pairs, priorities, limits)

    parts = _Parts()
    for n in node_ids:
        if n not in shared:
            parts.add(n, types[n])
    ordered = edges.assign(
        neg_priority=-edges["priority"], neg_records=-edges["n_records"],
        neg_last=-edges["last_seen_us"],
    ).sort_values(["neg_priority", "neg_records", "neg_last", "a", "b"], kind="mergesort")
    dropped = []
    for a, b in zip(ordered["a"], ordered["b"], strict=True):
        a, b = int(a), int(b)
        if a in shared or b in shared:
            continue
        root_a, root_b = parts.find(a), parts.find(b)
        if root_a == root_b:
            continue
        merged = parts.merged_counts([root_a, root_b])
        over = sorted(t for t, n in merged.items() if n > limits.get(t, n))
        if over:
            dropped.append((a, b, "; ".join(
                f"would join {merged[t]} {t} values (limit {limits[t]})" for t in over)))
            continue
        parts.union(root_a, root_b, merged)
    roots = {n: parts.find(n) for n in node_ids if n not in shared}
    smallest: dict[int, int] = {}
    for n, root in roots.items():
        smallest[root] = min(n, smallest.get(root, n))
    nodes_out, dropped_out, shared_out = list(roots), len(dropped), sorted(shared)
    blank = [None] * (dropped_out + len(shared_out))
    # Built column by column with nullable Int64: rows mixing ints and None would become float64
    # and silently round 64-bit node hashes.
    return pd.DataFrame({
        "kind": ["node"] * len(nodes_out) + ["dropped"] * dropped_out + ["shared"] * len(shared_out),
        "node": pd.array(nodes_out + [None] * dropped_out + shared_out, dtype="Int64"),
        "cluster": pd.array([smallest[roots[n]] for n in nodes_out] + blank, dtype="Int64"),
        "a": pd.array([None] * len(nodes_out) + [a for a, _, _ in dropped] + [None] * len(shared_out), dtype="Int64"),
        "b": pd.array([None] * len(nodes_out) + [b for _, b, _ in dropped] + [None] * len(shared_out), dtype="Int64"),
        "reason": [None] * len(nodes_out) + [reason for _, _, reason in dropped] + [shared[n] for n in shared_out],
    })


def enforce_limits(labelled_nodes: DataFrame, edges: DataFrame,
                   config: IdentityConfig) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Resolve components that hold more values of a type than allowed: hubs first, then splits.

    Args:
        labelled_nodes: node, id_type, component (components not to be split may be excluded by the
            caller, e.g. quarantined ones).
        edges: a, b, priority, n_records, last_seen (candidate edges inside those components).

    Returns:
        (clusters, dropped, shared): clusters is node, component, cluster (the smallest node of the
        part the node ends in; equal to component when nothing was split) for every node that is not
        shared; dropped is a, b, reason for each edge removed to respect a limit; shared is node,
        component, shared_reason for each identifier found shared through trusted links (step 1 of
        the module docstring).
    """
    limits = {t.name: t.limit for t in config.types}
    priorities = {t.name: t.priority for t in config.types}
    violating = violating_components(labelled_nodes, config)
    to_split = labelled_nodes.join(violating.select("component"), on="component", how="left_semi")
    # The edge side gets its own grouping column name: both sides descend from labelled_nodes, and
    # cogroup cannot tell two columns of one lineage apart.
    split_edges = (edges.join(to_split.select(F.col("node").alias("a"), F.col("component").alias("edge_component")),
                              on="a", how="inner")
                   .select("edge_component", "a", "b", "priority", "n_records",
                           F.coalesce(F.unix_micros("last_seen"), F.lit(-(2 ** 62))).alias("last_seen_us")))

    def split(node_frame: pd.DataFrame, edge_frame: pd.DataFrame) -> pd.DataFrame:
        return _split_component(node_frame, edge_frame, limits, priorities)

    result = (to_split.select("component", "node", "id_type").groupBy("component")
              .cogroup(split_edges.groupBy("edge_component"))
              .applyInPandas(split, schema=CLUSTER_SCHEMA))
    result = result.localCheckpoint(eager=True)  # runs the split once; short plans downstream
    split_nodes = result.filter(F.col("kind") == "node").select("node", "cluster")
    dropped = result.filter(F.col("kind") == "dropped").select("a", "b", "reason")
    shared = (result.filter(F.col("kind") == "shared")
              .join(labelled_nodes.select("node", "component"), on="node", how="inner")
              .select("node", "component", F.col("reason").alias("shared_reason")))
    clusters = (labelled_nodes.join(shared.select("node"), on="node", how="left_anti")
                .join(split_nodes, on="node", how="left")
                .select("node", "component", F.coalesce("cluster", "component").alias("cluster")))
    return clusters, dropped, shared
