"""Connected components: both engines against hand-made graphs and a plain union-find."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.testing import assertDataFrameEqual

from cdp.identity.components import connected_components, graphframes_available, resolve_engine

NODES = "node long"
EDGES = "a long, b long"
LABELS = "node long, component long"


def union_find_labels(nodes: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    parent = {n: n for n in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    smallest: dict[int, int] = {}
    for n in nodes:
        root = find(n)
        smallest[root] = min(smallest.get(root, n), n)
    return {n: smallest[find(n)] for n in nodes}


def run_engine(spark, nodes, edges, engine="dataframe", edges_per_partition=4_000_000):
    node_frame = spark.createDataFrame([(n,) for n in nodes], NODES)
    edge_frame = spark.createDataFrame(edges, EDGES)
    return connected_components(node_frame, edge_frame, engine=engine, checkpoint_interval=2,
                                edges_per_partition=edges_per_partition)


def test_chain_star_cycle_and_isolated_nodes(spark):
    chain = [(50, 40), (40, 30), (30, 20), (20, 10)]  # a long path, listed from the far end
    star = [(100, 7), (7, 101), (7, 102), (103, 7)]  # every edge touches the centre
    cycle = [(-5, 60), (60, 61), (61, -5)]  # negative hashes occur: ordering must be signed
    edges = chain + star + cycle + [(99, 99)]  # a self loop is not an edge
    nodes = [10, 20, 30, 40, 50, 7, 100, 101, 102, 103, -5, 60, 61, 99, 1000]
    expected = spark.createDataFrame(
        [(n, 10) for n in (10, 20, 30, 40, 50)] + [(n, 7) for n in (7, 100, 101, 102, 103)]
        + [(n, -5) for n in (-5, 60, 61)] + [(99, 99), (1000, 1000)], LABELS)
    assertDataFrameEqual(run_engine(spark, nodes, edges), expected)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14)), max_size=18))
def test_dataframe_engine_agrees_with_union_find(spark, edges):
    nodes = list(range(15))
    expected = union_find_labels(nodes, edges)
    rows = run_engine(spark, nodes, edges).collect()
    assert {r.node: r.component for r in rows} == expected


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(-20, 20), st.integers(-20, 20)), min_size=1, max_size=40))
def test_contraction_over_many_partitions_and_rounds_agrees_with_union_find(spark, edges):
    # Six edges per partition: components span partitions, so roots must be merged across rounds.
    nodes = list(range(-20, 21))
    rows = run_engine(spark, nodes, edges, edges_per_partition=6).collect()
    assert {r.node: r.component for r in rows} == union_find_labels(nodes, edges)


def test_long_chain_split_over_partitions(spark):
    # A path of 60 nodes, edges interleaved, 8 edges per partition: several rounds of contraction.
    order = list(range(60))
    edges = [(order[i], order[i + 1]) for i in range(59)]
    edges = edges[1::2] + edges[::2]
    rows = run_engine(spark, order, edges, edges_per_partition=8).collect()
    assert {r.component for r in rows} == {0} and len(rows) == 60


def test_engines_give_the_same_partition(spark):
    if not graphframes_available(spark):
        pytest.skip("GraphFrames JVM classes (org.graphframes.GraphFrame) are not on this classpath: its "
                    "jar for Spark 4 is not served on Maven Central (jars/pom.xml lists the coordinates tried)")
    nodes = list(range(30))
    edges = [(i, (i * 7 + 3) % 30) for i in range(0, 30, 2)]
    assertDataFrameEqual(run_engine(spark, nodes, edges, "graphframes"), run_engine(spark, nodes, edges))


def test_engine_choice(spark):
    assert resolve_engine(spark, "dataframe") == "dataframe"
    if graphframes_available(spark):
        assert resolve_engine(spark, "auto") == "graphframes"
    else:
        assert resolve_engine(spark, "auto") == "dataframe"
        with pytest.raises(ValueError, match="engine: graphframes requested"):
            resolve_engine(spark, "graphframes")


def test_union_find_reference_itself():
    assert union_find_labels([1, 2, 3, 4], [(4, 3), (2, 1)]) == {1: 1, 2: 1, 3: 3, 4: 3}
