"""Classification, edges with provenance, hub detection and limit splits on tiny frames."""
from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.identity import (
    IdentityConfig,
    build_edges,
    build_nodes,
    classify_identifiers,
    flag_shared_identifiers,
    record_identifiers,
)
from cdp.identity.graph import combined_patterns, node_collisions
from cdp.identity.limits import enforce_limits
from cdp.runtime.config import parse_file

SILVER = ("source string, record_id string, id_type string, id_value string, raw_value string, "
          "observed_at timestamp")
T1, T2 = datetime(2026, 1, 1), datetime(2026, 2, 1)


@pytest.fixture(scope="module")
def config(conf_dir) -> IdentityConfig:
    return parse_file(conf_dir / "identity.yaml", IdentityConfig.from_dict)


def test_classify_blocks_junk_and_invalid_values(spark, config):
    rows = [
        ("pos", "1", "phone", "+8613800000000", "138-0000-0000", T1),   # on the blocked list
        ("pos", "2", "phone", "+8613912345678", "N/A", T1),             # raw text is junk
        ("pos", "3", "phone", "+8613988888888", "13988888888", T1),     # blocked pattern: 8 equal digits
        ("web", "4", "email", "test@test.com", "TEST@test.com", T1),
        ("web", "5", "email", None, "not an email", T1),                 # normaliser gave up
        ("web", "6", "email", "ok@x.com", "", T1),                      # empty raw is fine
        ("app", "7", "device_id", "00000000-0000-0000-0000-000000000000", "0000", T1),
        ("app", "8", "fax", "123", "123", T1),
        ("crm", "9", "member_id", "M 1", "M 1", T1),                    # fails the member_id pattern
        ("crm", "10", "member_id", "M0001", "m0001", T1),
        ("web", "11", "email", "ok@x.com", None, T1),                   # no raw text at all
        ("web", "12", "phone", "+8613800000000", "138-0000-0000", T2),  # rows 1 and 12: one identifier,
        ("web", "13", "email", None, "not an email", T2),                # both rows kept, same status
    ]
    classified = classify_identifiers(spark.createDataFrame(rows, SILVER), config)
    expected = spark.createDataFrame([
        ("1", "blocked"), ("2", "blocked"), ("3", "blocked"), ("4", "blocked"), ("5", "invalid"), ("6", "valid"),
        ("7", "blocked"), ("8", "unknown_type"), ("9", "invalid"), ("10", "valid"), ("11", "valid"),
        ("12", "blocked"), ("13", "invalid"),
    ], "record_id string, status string")
    assertDataFrameEqual(classified.select("record_id", "status"), expected)
    reasons = {r.record_id: (r.priority, r.status_reason) for r in classified.collect()}
    assert reasons["12"] == reasons["1"] == (70, "value is on the blocked list")
    assert reasons["13"] == (60, "empty value")
    assert reasons["8"] == (None, "id_type not in conf/identity.yaml types: fax")


@pytest.mark.parametrize("patterns, text, expected", [
    (("^abc$", "(?i)^xyz$"), "XYZ", True),       # a flag applies to its own pattern
    (("(?i)^xyz$", "^abc$"), "ABC", False),      # ... and not to the patterns joined after it
    (("^(a)\\1$", "^(b)\\1$"), "bb", True),       # backreferences keep their own group numbers
    (("^(x)y$", "^(a)\\1$"), "aa", True),
    (("^(x)y$", "^(a)\\1$"), "ab", False),
    (("^a|b$", "^c$"), "xb", True),              # an alternation inside one pattern stays whole
    (("^[0\\-\\s]*$", "^q$"), "0-0", True),
    ((), "anything", False),
])
def test_combined_patterns_match_what_the_patterns_match_one_by_one(spark, patterns, text, expected):
    combined = combined_patterns(patterns)
    assert len(combined) <= len(patterns)
    frame = spark.createDataFrame([(text,)], "value string")
    one_by_one = [frame.select(F.col("value").rlike(p)).first()[0] for p in patterns]
    together = [frame.select(F.col("value").rlike(p)).first()[0] for p in combined]
    assert any(one_by_one) == expected
    assert any(together) == expected


def test_shipped_block_patterns_run_as_two_regexes_per_phone_text(config):
    phone = next(t for t in config.types if t.name == "phone")
    patterns = config.blocked.patterns + phone.blocked.patterns
    assert len(patterns) == 4
    # the placeholder pattern with a backreference runs on its own, the other three as one
    assert combined_patterns(patterns) == (
        "|".join(f"(?:{p})" for p in patterns if "\\1" not in p), next(p for p in patterns if "\\1" in p))


def test_edges_carry_provenance_and_hubs_are_flagged(spark, config):
    rows = [
        ("crm", "r1", "member_id", "MEM1", "MEM1", T1), ("crm", "r1", "email", "e@x.com", "e@x.com", T1),
        ("web", "r2", "member_id", "MEM1", "MEM1", T2), ("web", "r2", "email", "e@x.com", "e@x.com", T2),
        # a store tablet seen with four members: shared; with one member only it would not be
        *[("app", f"t{i}", "device_id", "store-tablet-1", "store-tablet-1", T1) for i in range(4)],
        *[("app", f"t{i}", "member_id", f"MEM{i + 2}", f"MEM{i + 2}", T1) for i in range(4)],
        ("app", "t9", "device_id", "own-phone-9", "own-phone-9", T1), ("app", "t9", "member_id", "MEM9", "MEM9", T1),
    ]
    per_record = record_identifiers(classify_identifiers(spark.createDataFrame(rows, SILVER), config))
    edges = build_edges(per_record)
    m1_email = edges.filter((F.col("a_value").isin("MEM1", "e@x.com")) & F.col("b_value").isin("MEM1", "e@x.com"))
    assertDataFrameEqual(
        m1_email.select("priority", "n_records", "n_sources", "sources", "first_seen", "last_seen", "first_source",
                        "first_record_id", "rule"),
        spark.createDataFrame([(60, 2, 2, ["crm", "web"], T1, T2, "crm", "r1", "same_record")],
                              "priority int, n_records long, n_sources int, sources array<string>, "
                              "first_seen timestamp, last_seen timestamp, first_source string, "
                              "first_record_id string, rule string"))
    flagged = flag_shared_identifiers(build_nodes(per_record), edges, config)
    assertDataFrameEqual(
        flagged.filter("is_shared").select("id_type", "id_value", "shared_reason"),
        spark.createDataFrame([("device_id", "store-tablet-1", "linked to 4 member_id values (limit 1)")],
                              "id_type string, id_value string, shared_reason string"))


def test_nodes_count_each_record_once_and_hash_collisions_are_found(spark, config):
    rows = [
        ("crm", "r1", "email", "e@x.com", "e@x.com", T1), ("crm", "r1", "email", "e@x.com", "E@X.COM", T2),
        ("web", "r2", "email", "e@x.com", "e@x.com", T2), ("web", "r2", "phone", "+8613912340001", "13912340001", T1),
        ("web", "r3", "email", "test@test.com", "test@test.com", T1),   # blocked: not a node
    ]
    per_record = record_identifiers(classify_identifiers(spark.createDataFrame(rows, SILVER), config))
    assert per_record.count() == 3  # e@x.com twice in r1 is one row
    nodes = build_nodes(per_record)
    assertDataFrameEqual(
        nodes.select("id_type", "id_value", "priority", "n_records", "first_seen", "last_seen"),
        spark.createDataFrame([("email", "e@x.com", 60, 2, T1, T2), ("phone", "+8613912340001", 70, 1, T1, T1)],
                              "id_type string, id_value string, priority int, n_records long, first_seen timestamp, "
                              "last_seen timestamp"))
    assert node_collisions(nodes).count() == 0
    clashing = spark.createDataFrame([(7, "email", "a@x.com"), (7, "phone", "+8613912345678"), (8, "email", "b@x.com")],
                                     "node long, id_type string, id_value string")
    assertDataFrameEqual(node_collisions(clashing), spark.createDataFrame(
        [(7, ["email:a@x.com", "phone:+8613912345678"])], "node long, identifiers array<string>"))


LABELS = "node long, id_type string, component long"
EDGES = "a long, b long, priority int, n_records long, last_seen timestamp"
CLUSTERS = "node long, component long, cluster long"
DROPPED = "a long, b long, reason string"
SHARED = "node long, component long, shared_reason string"


def test_hub_through_more_trusted_identifiers_is_shared(spark, config):
    # One component: M1 - phone - email - M2, plus a cookie on the email. The email is seen with M2
    # and, through the more trusted phone, with M1: it links two member ids, so it is shared, and
    # nothing else needs to go. Node ids above 2**53 catch any float round trip in the pandas step.
    n = 2 ** 62
    labelled = spark.createDataFrame(
        [(n + 1, "member_id", n), (n + 2, "phone", n), (n + 3, "email", n), (n + 4, "member_id", n),
         (n + 5, "cookie_id", n),
         (10, "email", 10), (11, "member_id", 10)],   # a component within limits is left alone
        LABELS)
    edges = spark.createDataFrame(
        [(n + 1, n + 2, 70, 3, T2), (n + 2, n + 3, 60, 1, T1), (n + 3, n + 4, 60, 2, T2), (n + 3, n + 5, 20, 1, T2),
         (10, 11, 60, 1, T1)],
        EDGES)
    clusters, dropped, shared = enforce_limits(labelled, edges, config)
    assertDataFrameEqual(clusters, spark.createDataFrame(
        [(n + 1, n, n + 1), (n + 2, n, n + 1), (n + 4, n, n + 4), (n + 5, n, n + 5), (10, 10, 10), (11, 10, 10)],
        CLUSTERS))
    assertDataFrameEqual(dropped, spark.createDataFrame([], DROPPED))
    assertDataFrameEqual(shared, spark.createDataFrame(
        [(n + 3, n, "reaches 2 member_id values through more trusted identifiers (limit 1)")], SHARED))


def test_limit_split_drops_weakest_lowest_priority_edges(spark, config):
    # M1 - e1 - e2 - M2 (two emails seen in one record) plus a cookie on e1: neither email reaches
    # two member ids through more trusted identifiers, so the weakest edge is dropped instead.
    labelled = spark.createDataFrame(
        [(1, "member_id", 1), (2, "email", 1), (3, "email", 1), (4, "member_id", 1), (5, "cookie_id", 1)], LABELS)
    edges = spark.createDataFrame(
        [(1, 2, 60, 3, T2), (2, 3, 60, 1, T1), (3, 4, 60, 2, T2), (2, 5, 20, 1, T2)], EDGES)
    clusters, dropped, shared = enforce_limits(labelled, edges, config)
    assertDataFrameEqual(clusters, spark.createDataFrame(
        [(1, 1, 1), (2, 1, 1), (5, 1, 1), (3, 1, 3), (4, 1, 3)], CLUSTERS))
    assertDataFrameEqual(dropped, spark.createDataFrame([(2, 3, "would join 2 member_id values (limit 1)")], DROPPED))
    assertDataFrameEqual(shared, spark.createDataFrame([], SHARED))


def test_a_violation_inside_one_part_is_split_not_blamed_on_the_joiner(spark, config):
    # M1 holds four phones (limit 3). A device seen with one of those phones and with a lone email
    # adds no phone to M1's part, so it is not a hub; the weakest phone edge is dropped instead.
    labelled = spark.createDataFrame(
        [(1, "member_id", 1), (2, "phone", 1), (3, "phone", 1), (4, "phone", 1), (5, "phone", 1),
         (6, "email", 1), (7, "device_id", 1)], LABELS)
    edges = spark.createDataFrame(
        [(1, 2, 70, 3, T2), (1, 3, 70, 2, T2), (1, 4, 70, 2, T1), (1, 5, 70, 1, T1), (2, 7, 30, 2, T2),
         (6, 7, 30, 1, T2)], EDGES)
    clusters, dropped, shared = enforce_limits(labelled, edges, config)
    assertDataFrameEqual(clusters, spark.createDataFrame(
        [(1, 1, 1), (2, 1, 1), (3, 1, 1), (4, 1, 1), (6, 1, 1), (7, 1, 1), (5, 1, 5)], CLUSTERS))
    assertDataFrameEqual(dropped, spark.createDataFrame([(1, 5, "would join 4 phone values (limit 3)")], DROPPED))
    assertDataFrameEqual(shared, spark.createDataFrame([], SHARED))
