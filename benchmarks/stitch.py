"""Connected components at scale: the Spark engine next to scipy on the same edges, node by node.

    python benchmarks/stitch.py                              # 1M, 10M and 20M edges
    python benchmarks/stitch.py --edges 1000000 --memory 8g  # one size

For each size it builds an identity-like graph (many components of 1-20 identifiers, plus a few of
3k-100k; node ids are random 64-bit values, like the identifier hashes), writes the edges and nodes
as Parquet, then times, in the same process:

* ``scipy``: read the Parquet, relabel the 64-bit ids to 0..n-1, ``scipy.sparse.csgraph.connected_components``,
  label every node by its component's smallest node (one core, all in memory);
* ``spark``: ``cdp.identity.components.connected_components`` from the Parquet to labels written as
  Parquet (session start excluded).

and checks that both give every node the same label. Goal (issue 3): Spark within 10x of scipy at
10M edges, with no step collecting the edge list to the driver.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers must use this venv

LARGE_COMPONENTS = (100_000, 30_000, 10_000, 3_000)
EDGES_PER_NODE = 1.5


def identity_like_graph(edge_count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes and undirected edges: a random recursive tree per component plus extra in-component edges.

    Returns (nodes, a, b) as int64 arrays; single-node components are isolated nodes.
    """
    rng = np.random.default_rng(seed)
    node_count = int(edge_count / EDGES_PER_NODE)
    small = rng.integers(1, 21, size=node_count // 8)
    sizes = np.concatenate([np.array(LARGE_COMPONENTS if edge_count >= 1_000_000 else (3_000,)), small])
    sizes = sizes[np.cumsum(sizes) <= node_count]
    total = int(sizes.sum())
    start_of = np.repeat(np.cumsum(sizes) - sizes, sizes)
    size_of = np.repeat(sizes, sizes)
    position = np.arange(total) - start_of
    in_tree = position > 0
    tree_a = np.flatnonzero(in_tree)
    tree_b = start_of[in_tree] + (rng.random(len(tree_a)) * position[in_tree]).astype(np.int64)
    extra = max(edge_count - len(tree_a), 0)
    candidates = np.flatnonzero(size_of > 1)
    extra_a = rng.choice(candidates, extra)
    extra_b = start_of[extra_a] + (rng.random(extra) * size_of[extra_a]).astype(np.int64)
    ids = np.unique(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=int(total * 1.01),
                                 dtype=np.int64))
    ids = rng.permutation(ids)[:total]
    if len(ids) < total:
        raise RuntimeError("not enough distinct random ids; raise the oversampling")
    a = ids[np.concatenate([tree_a, extra_a])]
    b = ids[np.concatenate([tree_b, extra_b])]
    shuffle = rng.permutation(len(a))
    return ids, a[shuffle], b[shuffle]


def scipy_labels(edges_path: Path, nodes_path: Path) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    timings = {}
    started = time.perf_counter()
    edges = pq.read_table(edges_path)
    nodes = pq.read_table(nodes_path).column("node").to_numpy()
    a, b = edges.column("a").to_numpy(), edges.column("b").to_numpy()
    ids, index = np.unique(np.concatenate([nodes, a, b]), return_inverse=True)
    n_nodes, n_edges = len(nodes), len(a)
    graph = coo_matrix((np.ones(n_edges, dtype=np.int8),
                        (index[n_nodes:n_nodes + n_edges], index[n_nodes + n_edges:])), shape=(len(ids), len(ids)))
    timings["scipy_prepare_s"] = time.perf_counter() - started
    started_cc = time.perf_counter()
    _, labels = connected_components(graph, directed=False)
    timings["scipy_csgraph_s"] = time.perf_counter() - started_cc
    _, first = np.unique(labels, return_index=True)  # ids are sorted: first = smallest
    smallest = ids[first][labels]
    timings["scipy_total_s"] = time.perf_counter() - started
    return timings, ids, smallest


def spark_labels(spark, edges_path: Path, nodes_path: Path, out: Path, edges_per_partition: int) -> float:
    from cdp.identity.components import connected_components

    started = time.perf_counter()
    labels = connected_components(spark.read.parquet(str(nodes_path)), spark.read.parquet(str(edges_path)),
                                  engine="dataframe", edges_per_partition=edges_per_partition)
    labels.write.mode("overwrite").parquet(str(out))
    return time.perf_counter() - started


def measure(spark, edge_count: int, workdir: Path, seed: int, edges_per_partition: int) -> dict[str, float]:
    figures: dict[str, float] = {"edges": edge_count}
    started = time.perf_counter()
    nodes, a, b = identity_like_graph(edge_count, seed)
    edges_path, nodes_path = workdir / f"edges-{edge_count}.parquet", workdir / f"nodes-{edge_count}.parquet"
    pq.write_table(pa.table({"a": a, "b": b}), edges_path, row_group_size=1 << 20)
    pq.write_table(pa.table({"node": nodes}), nodes_path, row_group_size=1 << 20)
    figures["nodes"] = len(nodes)
    figures["generate_s"] = time.perf_counter() - started
    del nodes, a, b

    scipy_timings, ids, expected = scipy_labels(edges_path, nodes_path)
    figures.update(scipy_timings)
    figures["components"] = len(np.unique(expected))

    out = workdir / f"labels-{edge_count}.parquet"
    figures["spark_s"] = spark_labels(spark, edges_path, nodes_path, out, edges_per_partition)

    got = pq.read_table(out).sort_by("node")
    got_nodes, got_labels = got.column("node").to_numpy(), got.column("component").to_numpy()
    figures["nodes_compared"] = len(got_nodes)
    if len(got_nodes) != len(ids) or not np.array_equal(got_nodes, ids):
        figures["nodes_disagreeing"] = len(np.setxor1d(got_nodes, ids))  # missing or unexpected nodes
    else:
        figures["nodes_disagreeing"] = int((got_labels != expected).sum())
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, nargs="+", default=[1_000_000, 10_000_000, 20_000_000])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--memory", default="12g", help="spark.driver.memory (local mode: executors live in the driver)")
    parser.add_argument("--edges-per-partition", type=int, default=4_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("cdp.identity.components").setLevel(logging.INFO)

    from pyspark.sql import functions as F

    from cdp.runtime.config import Profile
    from cdp.runtime.session import build_session

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdp-bench-stitch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spark = build_session(Profile("bench", str(workdir), {
        "spark.master": "local[*]", "spark.driver.memory": args.memory, "spark.sql.shuffle.partitions": "8",
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}), "cdp-bench-stitch")
    # Warm up the JVM and the Python workers (with numpy and scipy imported) on a tiny graph: session
    # and worker start are not part of the figure, as interpreter start is not part of scipy's.
    from cdp.identity.components import connected_components
    tiny_nodes = spark.range(100).select(F.col("id").alias("node"))
    tiny_edges = spark.range(99).select(F.col("id").alias("a"), (F.col("id") + 1).alias("b"))
    connected_components(tiny_nodes, tiny_edges, engine="dataframe").count()
    rows = []
    try:
        for edge_count in args.edges:
            figures = measure(spark, edge_count, workdir, args.seed, args.edges_per_partition)
            figures["spark_over_scipy"] = figures["spark_s"] / figures["scipy_total_s"]
            figures["spark_over_csgraph"] = figures["spark_s"] / figures["scipy_csgraph_s"]
            rows.append(figures)
            print(f"{edge_count:>11,} edges {int(figures['nodes']):>11,} nodes {int(figures['components']):>10,} components | "
                  f"scipy {figures['scipy_total_s']:6.1f} s (csgraph alone {figures['scipy_csgraph_s']:5.1f} s) | "
                  f"spark {figures['spark_s']:6.1f} s = {figures['spark_over_scipy']:5.1f}x scipy | "
                  f"nodes compared {int(figures['nodes_compared']):,}, disagreeing {int(figures['nodes_disagreeing'])}",
                  flush=True)
    finally:
        spark.stop()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(row["nodes_disagreeing"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
