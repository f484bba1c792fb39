"""Both lake backends end to end: `cdp run` publishes the same tables on delta-spark as on the embedded
backend, and a lake moves between them (a laptop's embedded lake continued on a cluster, and back)
with time travel and `cdp forget` still working.

The runs are the session's shared ones (tests/pipelines.py): the embedded reference and the
delta-spark run of the same raw folder, with the same run id and the same champions. Needs the
delta-spark jars in jars/lib/ (`cdp jars fetch`; .ci/run fetches them); without them it skips, saying so.
"""
from __future__ import annotations

import pytest
from pipelines import (
    BACKENDS,
    assert_same_published,
    cdp_forget,
    choose_person,
    comparable,
    copy_lake,
    engines,
    erasure_audit,
    find_spellings,
    on_backend,
    run_in_session,
    spellings,
    timed,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.lake import Lake
from cdp.privacy import sha256_hex

pytestmark = pytest.mark.slow

NEXT_RUN_ID = "e2e-run-2"
# what the continued run must read as run 1 left it, at run 1's versions, on the other backend
TRAVELLED = ("identity_map", "customer_records", "customer_profile", "features_daily", "tags_wide")
PERSON_TABLES = ("identity_map", "customer_records", "customer_profile", "tags_wide")


@pytest.mark.long_e2e  # a whole delta-spark run (~20 min at load 13): opt-in, see pyproject.toml's markers
def test_both_backends_publish_the_same_tables_row_for_row(spark, reference_run, delta_spark_run):
    embedded = Lake(spark, str(reference_run.lake_root), backend="embedded")
    delta = Lake(spark, str(delta_spark_run.lake_root), backend="delta-spark")
    assert engines(embedded, "identity_map") == {"delta-rs"}
    assert engines(delta, "identity_map") == {"delta-spark"}
    compared = assert_same_published(embedded, delta)
    assert any(t.startswith("export_") for t in compared)


def assert_equal_but_for_run(actual: DataFrame, expected: DataFrame, run_id: str) -> None:
    """Equal row for row, but for wall-clock columns and the columns in which ``actual`` names
    ``run_id`` (a continued run stamps the rows it rewrote)."""
    stamped = [c for c, kind in actual.dtypes if kind == "string"
               and actual.filter(F.col(f"`{c}`") == run_id).limit(1).count()]
    assertDataFrameEqual(comparable(actual).drop(*stamped), comparable(expected).drop(*stamped))


@pytest.mark.interop  # two more whole runs: opt-in (pytest -m interop) to keep CI under its budget
@pytest.mark.parametrize(("first", "second"), [("embedded", "delta-spark"), ("delta-spark", "embedded")])
def test_a_lake_continues_on_the_other_backend_with_time_travel_and_forget(
        request, spark, conf_dir, cli_conf, e2e_raw, tmp_path, first, second):
    built = request.getfixturevalue("reference_run" if first == "embedded" else "delta_spark_run")
    original = Lake(spark, str(built.lake_root), backend=first)
    root = copy_lake(built, tmp_path / "lake")  # the laptop's lake, taken to the cluster (or back)
    versions = {table: Lake(spark, str(root), backend=second).version(table) for table in TRAVELLED}

    with timed(f"continue a {first} lake on {second} (no train)"):
        continued, summary = run_in_session(spark, conf_dir, root, e2e_raw, backend=second, run_id=NEXT_RUN_ID,
                                            mlflow_uri=built.mlflow_uri)

    # run 2 committed with the other engine on top of run 1's versions
    rewritten = {table for step in summary.steps for table in step.versions if table in versions}
    assert {"features_daily", "tags_wide"} <= rewritten, rewritten
    for table in rewritten:
        assert continued.version(table) > versions[table], table
        assert engines(continued, table) == {"delta-rs", "delta-spark"}, table
    # the same raw data again: every published table holds what run 1 published (ids are stable)
    for table in TRAVELLED:
        assert_equal_but_for_run(continued.read(table), original.read(table), NEXT_RUN_ID)
    # time travel across the switch: run 1's versions read on the first backend and on the second
    for backend in BACKENDS:
        with on_backend(spark, backend):
            reread = Lake(spark, str(root), backend=backend)
            for table, version in versions.items():
                assertDataFrameEqual(comparable(reread.read(table, version=version)),
                                     comparable(original.read(table)))
            assertDataFrameEqual(comparable(reread.read("tags_wide")), comparable(continued.read("tags_wide")))

    # `cdp forget` of one person on the second backend; neither backend then finds them, nor does any byte
    person = choose_person(e2e_raw)
    wanted = spellings(person, e2e_raw)
    customers = {row["customer_id"] for row in continued.read("identity_map")
                 .filter(F.col("id_value").isin(person["email"], person["phone"], person["member_no"])).collect()}
    assert customers and find_spellings(root, wanted)
    cdp_forget(cli_conf, root, second, person, "req-backends")
    assert find_spellings(root, wanted) == []
    for backend in BACKENDS:
        with on_backend(spark, backend):
            lake = Lake(spark, str(root), backend=backend)
            assert set(erasure_audit(lake, "req-backends")["subject_hashes"]) == {sha256_hex(c) for c in customers}
            for table in PERSON_TABLES:
                assert lake.read(table).filter(F.col("customer_id").isin(*customers)).count() == 0, (backend, table)
            others = original.read("customer_profile").filter(~F.col("customer_id").isin(*customers))
            assert_equal_but_for_run(lake.read("customer_profile"), others, NEXT_RUN_ID)
            hashed = {row["id_hash"] for row in lake.read("suppression_list").filter(F.col("id_type") == "email")
                      .collect()}
            expected = spark.range(1).select(F.sha2(F.lit(person["email"].lower()), 256)).first()[0]
            assert expected in hashed, backend
