"""Identity resolution end to end on hand-built graphs: guards, stable ids across runs, incremental = full."""
from __future__ import annotations

import hashlib
from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.identity import (
    IdentityConfig,
    PreviousState,
    assign_stable_ids,
    classify_identifiers,
    resolve_identities,
)
from cdp.identity.resolve import _customer_records
from cdp.runtime.config import parse_file

SILVER = ("source string, record_id string, id_type string, id_value string, raw_value string, "
          "observed_at timestamp")
MAP = "id_type string, id_value string, customer_id string, is_shared boolean"
RECORDS = "source string, record_id string, customer_id string"


@pytest.fixture(scope="module")
def config(conf_dir) -> IdentityConfig:
    return parse_file(conf_dir / "identity.yaml", IdentityConfig.from_dict)


def cid(key: str, salt: int = 0) -> str:
    """The id contract: c + 20 hex of sha256("<type>:<value>#<salt>") of the key identifier."""
    return "c" + hashlib.sha256(f"{key}#{salt}".encode()).hexdigest()[:20]


def anon(source: str, record_id: str) -> str:
    return "a" + hashlib.sha256(f"{source}\u001f{record_id}".encode()).hexdigest()[:20]


def record(source: str, record_id: str, day: int, *identifiers: tuple[str, str]) -> list[tuple]:
    seen = datetime(2026, 1, day)
    return [(source, record_id, id_type, value, value, seen) for id_type, value in identifiers]


def silver(spark, *records: list[tuple]):
    return spark.createDataFrame([row for rows in records for row in rows], SILVER)


def published(spark, frame):
    """The frame's rows as a new local frame, as the job reads the previous state back from the lake.

    Chaining in-memory plans from run to run would also chain Spark's size estimates (a checkpoint
    keeps the estimate of the plan it came from, and a join multiplies them): after two runs they
    have a million digits and planning alone takes hours.
    """
    return spark.createDataFrame(frame.collect(), frame.schema)


def previous_state(spark, result) -> PreviousState:
    history = result.identity_history
    issued = (history.select("customer_id").filter(F.col("customer_id").isNotNull())
              .unionByName(history.select(F.explode("old_ids").alias("customer_id"))))
    return PreviousState(identity_map=published(spark, result.identity_map),
                         identity_graph=published(spark, result.identity_graph),
                         quarantine=published(spark, result.quarantine),
                         issued_ids=published(spark, issued))


def test_stable_ids_on_splits_and_merges(spark):
    """Largest part keeps the id, a tie goes to the most trusted identifier, the oldest id survives a merge."""
    previous = spark.createDataFrame([
        ("member_id", "M1", "cX", False, "r1"), ("email", "e1", "cX", False, "r1"),
        ("email", "e2", "cX", False, "r1"), ("cookie_id", "k1", "cX", False, "r1"),
        ("member_id", "M9", "cW", False, "r1"), ("email", "e9a", "cW", False, "r1"), ("email", "e9b", "cW", False, "r1"),
        ("email", "y1", "cA", False, "r2"), ("email", "z1", "cZ", False, "r1"),
        ("device_id", "d1", "cX", True, "r1"),  # shared rows never decide ids
    ], "id_type string, id_value string, customer_id string, is_shared boolean, created_run string")
    priority = {"member_id": 100, "email": 60, "cookie_id": 20}
    clusters = spark.createDataFrame([
        (t, v, priority[t], c) for t, v, c in [
            # X splits 2 / 2: the part holding M1 keeps cX although the other part is larger overall
            ("member_id", "M1", 1), ("email", "e1", 1),
            ("email", "e2", 2), ("cookie_id", "k1", 2), ("cookie_id", "k2", 2), ("cookie_id", "k3", 2),
            # W splits 1 / 2: the larger part keeps cW although the other holds its member id
            ("member_id", "M9", 3), ("email", "e9a", 4), ("email", "e9b", 4),
            # A (issued in r2) and Z (issued in r1) merge: Z is older and survives though "cA" < "cZ"
            ("email", "y1", 5), ("email", "z1", 5),
        ]], "id_type string, id_value string, priority int, cluster long")
    assigned, history = assign_stable_ids(clusters, previous, "r3")
    e2, m9 = cid("email:e2"), cid("member_id:M9")
    assertDataFrameEqual(assigned.select("cluster", "customer_id", "created_run").distinct(), spark.createDataFrame(
        [(1, "cX", "r1"), (2, e2, "r3"), (3, m9, "r3"), (4, "cW", "r1"), (5, "cZ", "r1")],
        "cluster long, customer_id string, created_run string"))
    assert {(r.event, r.customer_id, tuple(r.old_ids)) for r in history.collect()} == {
        ("split", e2, ("cX",)), ("split", m9, ("cW",)), ("merge", "cZ", ("cA",))}


def test_guards_on_a_hand_built_graph(spark, config):
    """A shared family iPad, a junk phone, two member ids in one chain, a star, anonymous records."""
    ids = silver(
        spark,
        # person 1: a star around M001 (email, phone, cookie via email)
        record("crm", "c1", 1, ("member_id", "M001"), ("email", "p1@x.com"), ("phone", "+8613912340001")),
        record("web", "w1", 2, ("email", "p1@x.com"), ("cookie_id", "ck-p1-0001")),
        # a family iPad used by person 1 and person 2: shared, joins nobody
        record("app", "a1", 3, ("member_id", "M001"), ("device_id", "dev-ipad-family")),
        record("app", "a2", 3, ("member_id", "M002"), ("device_id", "dev-ipad-family")),
        record("crm", "c2", 1, ("member_id", "M002"), ("phone", "+8613912340002")),
        record("app", "a3", 4, ("device_id", "dev-ipad-family")),  # only a shared id: anonymous
        # a junk phone typed by two cashiers: blocked, never an edge
        record("pos", "p1", 5, ("member_id", "M003"), ("phone", "+8613800000000")),
        record("pos", "p2", 5, ("member_id", "M004"), ("phone", "+8613800000000")),
        # a chain M005 - email - phone - M006: the email is seen with M005 and, through the more
        # trusted phone, with M006: it links two member ids, so it is shared (joins nobody)
        record("crm", "c5", 6, ("member_id", "M005"), ("email", "five@x.com")),
        record("web", "w5", 1, ("email", "five@x.com"), ("phone", "+8613912340005")),
        record("pos", "p6", 7, ("phone", "+8613912340005"), ("member_id", "M006")),
        # M007 - email - email - M008: neither email reaches two member ids through more trusted
        # identifiers; the component holds two member ids and is split by dropping the weakest,
        # lowest-priority edge (email-email, oldest)
        record("crm", "c7", 6, ("member_id", "M007"), ("email", "seven@x.com")),
        record("web", "w7", 1, ("email", "seven@x.com"), ("email", "eight@x.com")),
        record("crm", "c8", 7, ("member_id", "M008"), ("email", "eight@x.com")),
        record("web", "w9", 8, ("email", None)),  # normalisation failed: anonymous
    )
    result = resolve_identities(ids, config, "r1")

    m1, m2, m3, m4, m5, m6, m7, m8 = (cid(f"member_id:M00{i}") for i in range(1, 9))
    expected_map = spark.createDataFrame([
        ("member_id", "M001", m1, False), ("email", "p1@x.com", m1, False), ("phone", "+8613912340001", m1, False),
        ("cookie_id", "ck-p1-0001", m1, False), ("device_id", "dev-ipad-family", m1, True),
        ("member_id", "M002", m2, False), ("phone", "+8613912340002", m2, False),
        ("device_id", "dev-ipad-family", m2, True),
        ("member_id", "M003", m3, False), ("member_id", "M004", m4, False),
        ("member_id", "M005", m5, False), ("email", "five@x.com", m5, True), ("email", "five@x.com", m6, True),
        ("member_id", "M006", m6, False), ("phone", "+8613912340005", m6, False),
        ("member_id", "M007", m7, False), ("email", "seven@x.com", m7, False),
        ("member_id", "M008", m8, False), ("email", "eight@x.com", m8, False),
    ], MAP)
    assertDataFrameEqual(result.identity_map.select("id_type", "id_value", "customer_id", "is_shared"), expected_map)

    expected_records = spark.createDataFrame([
        ("crm", "c1", m1), ("web", "w1", m1), ("app", "a1", m1), ("app", "a2", m2), ("crm", "c2", m2),
        ("app", "a3", anon("app", "a3")), ("pos", "p1", m3), ("pos", "p2", m4), ("crm", "c5", m5),
        ("web", "w5", m6), ("pos", "p6", m6), ("crm", "c7", m7),
        ("web", "w7", m8),  # two emails of equal priority: the smaller value decides
        ("crm", "c8", m8), ("web", "w9", anon("web", "w9")),
    ], RECORDS)
    assertDataFrameEqual(result.customer_records, expected_records)

    statuses = {(frozenset([(r.a_type, r.a_value), (r.b_type, r.b_value)])): (r.status, r.status_reason)
                for r in result.identity_graph.collect()}
    assert statuses[frozenset([("member_id", "M001"), ("device_id", "dev-ipad-family")])] == (
        "shared_endpoint", "device_id is shared: linked to 2 member_id values (limit 1)")
    five_shared = ("shared_endpoint",
                   "email is shared: reaches 2 member_id values through more trusted identifiers (limit 1)")
    assert statuses[frozenset([("email", "five@x.com"), ("phone", "+8613912340005")])] == five_shared
    assert statuses[frozenset([("email", "five@x.com"), ("member_id", "M005")])] == five_shared
    assert statuses[frozenset([("phone", "+8613912340005"), ("member_id", "M006")])] == ("active", None)
    assert statuses[frozenset([("email", "seven@x.com"), ("email", "eight@x.com")])] == (
        "dropped_limit", "would join 2 member_id values (limit 1)")
    assert statuses[frozenset([("member_id", "M001"), ("email", "p1@x.com")])] == ("active", None)
    assert not any(("phone", "+8613800000000") in pair for pair in statuses)  # blocked: no edge at all
    assert len(statuses) == 13

    history = {(r.event, r.customer_id, tuple(r.old_ids)) for r in result.identity_history.collect()}
    assert history == {("new", m, ()) for m in (m1, m2, m3, m4, m5, m6, m7, m8)}
    assert result.quarantine.count() == 0


def test_ids_survive_merges_and_splits_and_incremental_equals_full(spark, config):
    run1 = [
        record("web", "x2", 1, ("email", "b@x.com"), ("cookie_id", "ck-bbbbbb")),                 # B
        record("crm", "x3", 1, ("member_id", "MC01"), ("email", "c@x.com")),                       # C
        record("web", "x4", 1, ("email", "c@x.com"), ("device_id", "dev-cccc-0001")),
        record("app", "x5", 1, ("device_id", "dev-cccc-0001"), ("cookie_id", "ck-cccccc")),
    ]
    run2 = [record("crm", "x1", 2, ("member_id", "MA02"), ("email", "a@x.com"))]                  # A
    run3 = [
        record("web", "x6", 3, ("email", "a@x.com"), ("cookie_id", "ck-bbbbbb")),  # merges A and B
        record("app", "x7", 3, ("member_id", "MD01"), ("device_id", "dev-cccc-0001")),  # device now shared
    ]
    first = resolve_identities(silver(spark, *run1), config, "r1")
    b, c = cid("email:b@x.com"), cid("member_id:MC01")
    second = resolve_identities(silver(spark, *run1, *run2), config, "r2", previous=previous_state(spark, first),
                                mode="incremental")
    a = cid("member_id:MA02")
    assert a < b  # so keeping b below proves "oldest wins", not "smallest wins"
    state = previous_state(spark, second)
    incremental = resolve_identities(silver(spark, *run1, *run2, *run3), config, "r3", previous=state,
                                     mode="incremental")
    full = resolve_identities(silver(spark, *run1, *run2, *run3), config, "r3", previous=state, mode="full")

    # Only the touched components were recomputed: A, B and C's plus the new MD01; nothing else existed,
    # so all 9 identifiers (MA02, a@, b@, ck-bbbbbb, MC01, c@, the device, ck-cccccc, MD01).
    assert incremental.region_nodes.count() == 9

    d, c_cookie = cid("member_id:MD01"), cid("cookie_id:ck-cccccc")
    # The device now reaches MD01 directly and MC01 through the more trusted c@x.com: two member ids,
    # so it is shared. C's identifiers without it fall into {MC01, c@} and {ck-cccccc}.
    expected_map = spark.createDataFrame([
        ("member_id", "MA02", b, False), ("email", "a@x.com", b, False),          # merged: oldest (B) survives
        ("email", "b@x.com", b, False), ("cookie_id", "ck-bbbbbb", b, False),
        ("member_id", "MC01", c, False), ("email", "c@x.com", c, False),          # split: largest part keeps C
        ("cookie_id", "ck-cccccc", c_cookie, False),                              # the other part is new
        ("member_id", "MD01", d, False),
        # a shared identifier is attached to every customer whose records carry it: x4 (c@ -> C),
        # x5 (ck-cccccc -> the split-off part) and x7 (MD01 -> D)
        ("device_id", "dev-cccc-0001", c, True), ("device_id", "dev-cccc-0001", c_cookie, True),
        ("device_id", "dev-cccc-0001", d, True),
    ], MAP)
    for result in (incremental, full):
        assertDataFrameEqual(result.identity_map.select("id_type", "id_value", "customer_id", "is_shared"),
                             expected_map)
    history = {(r.event, r.customer_id, tuple(r.old_ids)) for r in incremental.identity_history.collect()}
    assert history == {("merge", b, (a,)), ("split", c_cookie, (c,)), ("new", d, ())}

    # incremental = full, table by table
    assertDataFrameEqual(incremental.identity_map, full.identity_map)
    assertDataFrameEqual(incremental.customer_records, full.customer_records)
    assertDataFrameEqual(incremental.identity_graph, full.identity_graph)
    assertDataFrameEqual(incremental.identity_history, full.identity_history)
    assertDataFrameEqual(incremental.quarantine, full.quarantine)
    # created_run: B was issued in r1, A in r2; the merged customer keeps B's
    created = {r.customer_id: r.created_run for r in incremental.identity_map.select("customer_id", "created_run")
               .distinct().collect()}
    assert created == {b: "r1", c: "r1", c_cookie: "r3", d: "r3"}
    reasons = {r.reason for r in incremental.identity_history.filter(F.col("event") == "split").collect()}
    assert reasons == {"split off: device_id is shared: reaches 2 member_id values through more trusted "
                       "identifiers (limit 1)"}

    # A later run that touches nothing of C's component recomputes only the new identifiers, keeps the
    # device shared (with its reason) and still equals a full recompute.
    run4 = [record("crm", "x8", 4, ("member_id", "ME01"), ("email", "e@x.com"))]
    state = previous_state(spark, incremental)
    incremental4 = resolve_identities(silver(spark, *run1, *run2, *run3, *run4), config, "r4", previous=state,
                                      mode="incremental")
    full4 = resolve_identities(silver(spark, *run1, *run2, *run3, *run4), config, "r4", previous=state, mode="full")
    assert incremental4.region_nodes.count() == 2
    e = cid("member_id:ME01")
    expected_map4 = expected_map.unionByName(spark.createDataFrame(
        [("member_id", "ME01", e, False), ("email", "e@x.com", e, False)], MAP))
    for result in (incremental4, full4):
        assertDataFrameEqual(result.identity_map.select("id_type", "id_value", "customer_id", "is_shared"),
                             expected_map4)
    assertDataFrameEqual(incremental4.identity_map, full4.identity_map)
    assertDataFrameEqual(incremental4.customer_records, full4.customer_records)
    assertDataFrameEqual(incremental4.identity_graph, full4.identity_graph)
    assertDataFrameEqual(incremental4.identity_history, full4.identity_history)
    assert {(r.event, r.customer_id) for r in incremental4.identity_history.collect()} == {("new", e)}
    device_edges = incremental4.identity_graph.filter(F.col("a_type").eqNullSafe("device_id")
                                                      | F.col("b_type").eqNullSafe("device_id"))
    assert {(r.status, r.status_reason) for r in device_edges.collect()} == {
        ("shared_endpoint", "device_id is shared: reaches 2 member_id values through more trusted identifiers "
                            "(limit 1)")}


def test_each_record_goes_to_its_most_trusted_unshared_identifier(spark, config):
    observations = classify_identifiers(silver(
        spark,
        record("crm", "r1", 1, ("email", "b@x.com"), ("member_id", "M1")),    # member_id outranks email
        record("web", "r2", 1, ("email", "b@x.com"), ("email", "a@x.com")),   # a tie: the smaller value
        record("web", "r3", 1, ("email", "test@test.com")),                    # blocked only: anonymous
        record("app", "r4", 1, ("device_id", "shared-tablet"), ("cookie_id", "cookie-0001")),
        record("app", "r5", 1, ("device_id", "shared-tablet")),                # shared only: anonymous
        [("web", "r6", "email", "b@x.com", "N/A", datetime(2026, 1, 1))],      # junk raw text here: anonymous
    ), config)
    unshared_map = spark.createDataFrame([
        ("member_id", "M1", "C1"), ("email", "b@x.com", "C1"), ("email", "a@x.com", "C9"),
        ("cookie_id", "cookie-0001", "C4"),
    ], "id_type string, id_value string, customer_id string")
    records = _customer_records(observations, unshared_map, config)
    assertDataFrameEqual(records, spark.createDataFrame(
        [("crm", "r1", "C1"), ("web", "r2", "C9"), ("web", "r3", anon("web", "r3")), ("app", "r4", "C4"),
         ("app", "r5", anon("app", "r5")), ("web", "r6", anon("web", "r6"))], RECORDS))
