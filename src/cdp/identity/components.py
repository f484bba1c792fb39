"""Connected components of the identity graph, distributed: no step collects the graph to the driver.

Two engines give the same partition (each component labelled by its smallest node):

* ``dataframe``: contraction by local union-find (in the spirit of Walmart's union-find-shuffle):
  each partition contracts its edges with union-find in ``mapInArrow`` (scipy's C code), a
  shuffle by node merges the local roots a node received from different partitions, and only
  those cross-partition links go on to the next round. The graph shrinks geometrically, finished
  components drop out, every round is checkpointed (its lineage cut), and there is one shuffle
  per round;
* ``graphframes``: ``GraphFrame.connectedComponents`` when the GraphFrames JVM package is on the
  classpath (``auto`` picks it then, else ``dataframe``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as csgraph_components

from cdp.connect import (
    checkpoint_dir,
    default_parallelism,
    is_remote,
    num_partitions,
    require_classic,
)

logger = logging.getLogger(__name__)

GRAPHFRAMES_CLASS = "org.graphframes.GraphFrame"
# Rows carried between rounds: kind 0 = (node, root or parent), kind 1 = an edge (a, b).
_ROUND_SCHEMA = "kind byte, a long, b long"
_ROUND_ARROW_SCHEMA = pa.schema([("kind", pa.int8()), ("a", pa.int64()), ("b", pa.int64())])
_BATCH_ROWS = 1 << 20
# Root of a "this node exists" row (never a real local root: those are the smallest of >= 2 nodes).
_PRESENT = np.iinfo(np.int64).max
DEFAULT_EDGES_PER_PARTITION = 4_000_000
BROADCAST_LABELS = 2_000_000  # label rows of a later round small enough to broadcast (16 bytes each)


def graphframes_available(spark: SparkSession) -> bool:
    """True when the GraphFrames JVM classes can be loaded (the Python package alone is not enough).

    Always False through Spark Connect: the client cannot probe the server's classpath, and
    GraphFrames over Connect needs its own server plugin (graphframes-connect), which this project
    neither ships nor has tested; ``auto`` then picks the DataFrame engine.
    """
    if is_remote(spark):
        return False
    try:
        jvm = spark.sparkContext._jvm
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False
    if jvm is None:
        return False
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(GRAPHFRAMES_CLASS, False, loader)
        return True
    except Exception:  # noqa: BLE001 - Py4JJavaError (ClassNotFoundException) or a broken gateway
        return False


def resolve_engine(spark: SparkSession, engine: str) -> str:
    """Turn ``auto | dataframe | graphframes`` into the engine that will run; refuse an absent one.

    Raises:
        ValueError: an unknown engine, or graphframes without its JVM classes.
        ConnectUnsupported: graphframes asked for through Spark Connect.
    """
    if engine == "dataframe":
        return "dataframe"
    if engine == "graphframes":
        # GraphFrames over Connect needs its graphframes-connect server plugin, not set up here
        require_classic(spark, "identity.engine: graphframes")
    available = graphframes_available(spark)
    if engine == "graphframes" and not available:
        raise ValueError(f"engine: graphframes requested but the JVM class {GRAPHFRAMES_CLASS} is not on the "
                         "classpath. GraphFrames for Spark 4 (io.graphframes:graphframes-spark4_2.13) is not "
                         "served by the Maven repository `cdp jars fetch` reads (jars/pom.xml), so it is not "
                         "fetched: put its jar in jars/lib/ (or pass it with --jars), or use engine: dataframe")
    if engine not in ("auto", "graphframes"):
        raise ValueError(f"engine: expected auto, dataframe or graphframes, got {engine!r}")
    return "graphframes" if available else "dataframe"


def _materialize(frame: DataFrame, reliable: bool) -> DataFrame:
    """Compute ``frame`` once and cut its lineage, so later rounds never recompute earlier ones.

    Local checkpoints (executor storage) by default: reliable ones (the checkpoint dir) survive
    executor loss but cost a full write and re-read. Both work through Spark Connect (reliable ones
    need the server's ``spark.checkpoint.dir``).
    """
    if reliable and checkpoint_dir(frame.sparkSession):
        return frame.checkpoint(eager=True)
    return frame.localCheckpoint(eager=True)


def _arrays(batches: Iterator[pa.RecordBatch]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two long columns of a partition's Arrow batches as numpy arrays (None for an empty partition)."""
    firsts, seconds = [], []
    for batch in batches:
        if batch.num_rows:
            firsts.append(batch.column(0).to_numpy(zero_copy_only=False))
            seconds.append(batch.column(1).to_numpy(zero_copy_only=False))
    if not firsts:
        return None
    return np.concatenate(firsts).astype(np.int64, copy=False), np.concatenate(seconds).astype(np.int64, copy=False)


def _batches(kind: np.ndarray, first: np.ndarray, second: np.ndarray) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(first), _BATCH_ROWS):
        stop = start + _BATCH_ROWS
        yield pa.RecordBatch.from_arrays([pa.array(kind[start:stop]), pa.array(first[start:stop]),
                                          pa.array(second[start:stop])], schema=_ROUND_ARROW_SCHEMA)


def _local_components(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Union-find over the edges one partition holds (C speed, via scipy's csgraph).

    Yields every node of the partition with the smallest node of its *local* component
    (kind 0, node, root); each root is listed with itself.
    """
    columns = _arrays(batches)
    if columns is None:
        return
    src, dst = columns
    edge_count = len(src)
    nodes, index = np.unique(np.concatenate([src, dst]), return_inverse=True)
    del src, dst, columns
    adjacency = coo_matrix((np.ones(edge_count, dtype=np.int8), (index[:edge_count], index[edge_count:])),
                           shape=(len(nodes), len(nodes)))
    del index
    _, labels = csgraph_components(adjacency, directed=False)
    del adjacency
    # ``nodes`` is sorted, so the first node met of each local component is its smallest.
    _, first_of_label = np.unique(labels, return_index=True)
    roots = nodes[first_of_label][labels]
    yield from _batches(np.zeros(len(nodes), dtype=np.int8), nodes, roots)


def _contract(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Merge the local roots a node received from different partitions. Input: (kind, node, root), by node.

    A root of ``_PRESENT`` only says the node exists (so nodes without edges get a parent too).

    For each node, its ``parent`` is the smallest root it received. Yields the node's parent
    (kind 0: node, parent) and one edge per other root (kind 1: parent, root): the next round's
    graph, over roots only. A node seen in a single partition yields no edge, so finished
    components drop out of later rounds.
    """
    columns = _arrays(_drop_kind(batches))
    if columns is None:
        return
    node, root = columns
    order = np.lexsort((root, node))
    node, root = node[order], root[order]
    starts = np.flatnonzero(np.r_[True, node[1:] != node[:-1]])
    parent = root[starts]  # rows are sorted by root within a node
    parent = np.where(parent == _PRESENT, node[starts], parent)  # a node no edge touches is its own parent
    parent_of_row = np.repeat(parent, np.diff(np.r_[starts, len(node)]))
    merging = (root != parent_of_row) & (root != _PRESENT)
    edges = np.unique(np.stack([parent_of_row[merging], root[merging]], axis=1), axis=0) if merging.any() \
        else np.empty((0, 2), dtype=np.int64)
    kind = np.r_[np.zeros(len(starts), dtype=np.int8), np.ones(len(edges), dtype=np.int8)]
    yield from _batches(kind, np.r_[node[starts], edges[:, 0]], np.r_[parent, edges[:, 1]])


def _drop_kind(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column(1), batch.column(2)], names=["a", "b"])


def _partitions_for(edge_count: int, edges_per_partition: int) -> int:
    return max(math.ceil(edge_count / edges_per_partition), 1)


def _dataframe_components(nodes: DataFrame, edges: DataFrame, *, max_iterations: int, reliable: bool,
                          edges_per_partition: int) -> DataFrame:
    """Contraction engine: local union-find per partition, then only the roots that span partitions go on.

    Each round (one shuffle): every partition runs union-find over its edges; the (node, local root)
    pairs are shuffled by node; a node's parent is the smallest root it got, and the other roots
    become edges of a much smaller graph of roots for the next round. Rounds shrink the graph
    geometrically (about 10x per round with 2 partitions) and end when no node spans two
    partitions; the last rounds fit one partition. Labels are then resolved back through the
    rounds' parent tables by joins. Nothing is collected to the driver.
    """
    spark = nodes.sparkSession
    parallelism = default_parallelism(spark)
    current = (edges.select(F.col("a").cast("long").alias("a"), F.col("b").cast("long").alias("b"))
               .filter(F.col("a") != F.col("b")))
    edge_count: int | None = None  # unknown before the first round: counting would read the input twice
    all_nodes = nodes.select(F.col("node").cast("long").alias("node"))
    parents: list[DataFrame] = []
    node_counts: list[int] = []
    rounds = 0
    while edge_count is None or edge_count:
        rounds += 1
        if rounds > max_iterations:
            raise RuntimeError(f"connected components did not converge in {max_iterations} rounds "
                               "(raise max_iterations in conf/identity.yaml)")
        if edge_count is None:
            # Round 1 contracts the input's own partitions (file splits or shuffle output, sized
            # by Spark to the data), spread over the cores when there are fewer. Through Spark
            # Connect their number is unknown without a job: the input's partitions are used as
            # they are and the shuffle gets spark.sql.shuffle.partitions, at least one per core.
            known = num_partitions(current)
            if known is None:
                known = int(spark.conf.get("spark.sql.shuffle.partitions"))
                spread = current
            else:
                spread = current if known >= parallelism else current.repartition(parallelism)
            partitions = max(known, parallelism)
        else:  # edges (parent, root): gathering a root's edges in one place contracts them fully
            partitions = _partitions_for(edge_count, edges_per_partition)
            spread = current.repartition(partitions, "b")
        occurrences = spread.mapInArrow(_local_components, _ROUND_SCHEMA)
        if rounds == 1:  # every node gets a parent row, isolated ones too: no join with nodes at the end
            occurrences = occurrences.unionByName(all_nodes.select(
                F.lit(0).cast("byte").alias("kind"), F.col("node").alias("a"), F.lit(int(_PRESENT)).alias("b")))
        contracted = _materialize(occurrences.repartition(partitions, "a").mapInArrow(_contract, _ROUND_SCHEMA),
                                  reliable)
        by_kind = {row["kind"]: row["count"] for row in contracted.groupBy("kind").count().collect()}
        logger.info("connected components round %d: %d partitions -> %d nodes, %d edges left",
                    rounds, partitions, by_kind.get(0, 0), by_kind.get(1, 0))
        parents.append(contracted.filter(F.col("kind") == 0).select(F.col("a").alias("node"),
                                                                     F.col("b").alias("parent")))
        node_counts.append(by_kind.get(0, 0))
        current = contracted.filter(F.col("kind") == 1).select("a", "b")
        edge_count = by_kind.get(1, 0)
    logger.info("connected components (dataframe engine): converged in %d rounds", rounds)
    labels = parents[-1].select("node", F.col("parent").alias("component"))
    for parent, later_nodes in zip(reversed(parents[:-1]), reversed(node_counts[1:]), strict=True):
        later = labels.withColumnRenamed("node", "parent")
        if later_nodes <= BROADCAST_LABELS:  # a bounded table: spare the shuffle of the larger side
            later = F.broadcast(later)
        labels = (parent.join(later, on="parent", how="left")
                  .select("node", F.coalesce("component", "parent").alias("component")))
    return labels


def _graphframes_components(nodes: DataFrame, edges: DataFrame, checkpoint_interval: int,
                            reliable: bool) -> DataFrame:
    from graphframes import GraphFrame

    spark = nodes.sparkSession
    graph = GraphFrame(nodes.select(F.col("node").alias("id")).distinct(),
                       edges.select(F.col("a").alias("src"), F.col("b").alias("dst")))
    labelled = graph.connectedComponents(
        checkpointInterval=checkpoint_interval,
        use_local_checkpoints=not (reliable and checkpoint_dir(spark)),
    )
    # GraphFrames' labels are arbitrary longs: relabel each component by its smallest node, as the
    # DataFrame engine does, so both engines give the same output.
    smallest = labelled.groupBy("component").agg(F.min("id").alias("smallest"))
    return (labelled.join(smallest, on="component", how="inner")
            .select(F.col("id").alias("node"), F.col("smallest").alias("component")))


def connected_components(nodes: DataFrame, edges: DataFrame, *, engine: str = "auto",
                         checkpoint_interval: int = 2, max_iterations: int = 100,
                         reliable_checkpoints: bool = False,
                         edges_per_partition: int = DEFAULT_EDGES_PER_PARTITION) -> DataFrame:
    """Label every node with the smallest node of its connected component.

    Args:
        nodes: at least ``node`` long (isolated nodes are their own component).
        edges: at least ``a`` long, ``b`` long (undirected; endpoints must be in ``nodes``).
        engine: ``auto | dataframe | graphframes``.
        checkpoint_interval: GraphFrames engine: cut the lineage every this many rounds (the
            dataframe engine checkpoints every round; its rounds are few and shrink fast).
        reliable_checkpoints: checkpoint to the SparkContext checkpoint dir (when set) instead of
            local checkpoints.
        edges_per_partition: dataframe engine: edges one task contracts with union-find at once
            (memory per task is about 100 bytes per edge).

    Returns:
        node long, component long.
    """
    chosen = resolve_engine(nodes.sparkSession, engine)
    if chosen == "graphframes":
        logger.info("connected components: GraphFrames engine")
        return _graphframes_components(nodes, edges, checkpoint_interval, reliable_checkpoints)
    return _dataframe_components(nodes, edges, max_iterations=max_iterations, reliable=reliable_checkpoints,
                                 edges_per_partition=edges_per_partition)
