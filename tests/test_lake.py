"""Lake contract: the same tests on every backend this machine has.

The delta-spark leg runs on the jars `cdp jars fetch` put in jars/lib/ (the test session loads them
and the Delta extension); only where they were never fetched does it skip, saying so. The embedded
leg (delta-rs commits, Spark reads and writes the files) always runs, in the same session.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from cdp.lake import Lake, LakeError, SchemaMismatch, TableNotFound, UnsupportedTable, delta_spark_available
from cdp.runtime.jars import absent_reason, jars_dir, local_jars

PEOPLE = T.StructType([
    T.StructField("customer_id", T.StringType()),
    T.StructField("city", T.StringType()),
    T.StructField("spend", T.DoubleType()),
    T.StructField("seen_at", T.TimestampType()),
])


def _people(spark, rows):
    return spark.createDataFrame(rows, PEOPLE)


T0 = datetime(2024, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
ALICE = ("c1", "Shanghai", 10.0, T0)
BOB = ("c2", "Beijing", 20.5, T0)
CAROL = ("c3", "上海 / Pudong", None, None)


@pytest.fixture(params=["embedded", "delta-spark"])
def any_lake(request, spark, tmp_path):
    if request.param == "delta-spark" and not delta_spark_available(spark):
        if not local_jars():
            pytest.skip(absent_reason())
        pytest.fail(f"the delta-spark jars are in {jars_dir()} but the session cannot load Delta's classes")
    return Lake(spark, str(tmp_path / "lake"), backend=request.param)


def test_append_then_read_returns_all_rows(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    any_lake.write(_people(spark, [BOB, CAROL]), "people")
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [ALICE, BOB, CAROL]))
    assert any_lake.version("people") == 1


def test_overwrite_replaces_content_and_keeps_history(any_lake, spark):
    any_lake.write(_people(spark, [ALICE, BOB]), "people")
    any_lake.write(_people(spark, [CAROL]), "people", mode="overwrite")
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [CAROL]))
    assertDataFrameEqual(any_lake.read("people", version=0), _people(spark, [ALICE, BOB]))


def test_partition_replace_touches_only_named_partitions(any_lake, spark):
    rows = [ALICE, BOB, ("c4", "Beijing", 1.0, T0)]
    any_lake.write(_people(spark, rows), "people", partition_by=["city"])
    any_lake.write(_people(spark, [("c9", "Beijing", 99.0, T0)]), "people", mode="overwrite",
                   replace_where={"city": "Beijing"})
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [ALICE, ("c9", "Beijing", 99.0, T0)]))


def test_partition_replace_refuses_rows_outside_the_partition(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people", partition_by=["city"])
    with pytest.raises(LakeError, match="outside replace_where"):
        any_lake.write(_people(spark, [BOB]), "people", mode="overwrite", replace_where={"city": "Shanghai"})
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [ALICE]))


def test_partition_values_with_nulls_spaces_and_slashes_round_trip(any_lake, spark):
    rows = [ALICE, CAROL, ("c5", None, 3.0, T0)]
    any_lake.write(_people(spark, rows), "people", partition_by=["city"])
    assertDataFrameEqual(any_lake.read("people"), _people(spark, rows))
    assert any_lake.read("people").columns == PEOPLE.fieldNames()


def test_merge_upserts_on_keys(any_lake, spark):
    any_lake.write(_people(spark, [ALICE, BOB]), "people")
    result = any_lake.merge(_people(spark, [("c2", "Beijing", 30.0, T0), CAROL]), "people", ["customer_id"])
    assert (result.inserted, result.updated, result.deleted) == (1, 1, 0)
    assertDataFrameEqual(any_lake.read("people"),
                         _people(spark, [ALICE, ("c2", "Beijing", 30.0, T0), CAROL]))


def test_merge_with_delete_unmatched_makes_target_equal_source(any_lake, spark):
    any_lake.write(_people(spark, [ALICE, BOB]), "people")
    result = any_lake.merge(_people(spark, [CAROL]), "people", ["customer_id"], delete_unmatched=True)
    assert (result.inserted, result.deleted) == (1, 2)
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [CAROL]))


def test_merge_into_missing_table_creates_it(any_lake, spark):
    result = any_lake.merge(_people(spark, [ALICE]), "people", ["customer_id"])
    assert result.inserted == 1
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [ALICE]))


def test_delete_removes_matching_rows_and_counts_them(any_lake, spark):
    any_lake.write(_people(spark, [ALICE, BOB, CAROL]), "people")
    assert any_lake.delete("people", "customer_id IN ('c1', 'c3')") == 2
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [BOB]))


def test_time_travel_reads_every_version(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    any_lake.write(_people(spark, [BOB]), "people")
    any_lake.delete("people", "customer_id = 'c1'")
    assertDataFrameEqual(any_lake.read("people", version=0), _people(spark, [ALICE]))
    assertDataFrameEqual(any_lake.read("people", version=1), _people(spark, [ALICE, BOB]))
    assertDataFrameEqual(any_lake.read("people", version=2), _people(spark, [BOB]))


def test_idempotent_rerun_with_same_app_version_writes_nothing(any_lake, spark):
    first = any_lake.write(_people(spark, [ALICE]), "people", app_id="land:crm", app_version=1)
    again = any_lake.write(_people(spark, [ALICE]), "people", app_id="land:crm", app_version=1)
    later = any_lake.write(_people(spark, [BOB]), "people", app_id="land:crm", app_version=2)
    assert (first, again, later) == (0, None, 1)
    assert any_lake.app_version("people", "land:crm") == 2
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [ALICE, BOB]))


def test_failed_write_commits_nothing_and_leaves_last_version(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    failing = _people(spark, [BOB]).withColumn(
        "city", F.when(F.col("customer_id") == "c2", F.raise_error(F.lit("source broke"))).otherwise(F.col("city")))
    with pytest.raises(Exception, match="source broke"):
        any_lake.write(failing, "people", mode="overwrite")
    assert any_lake.version("people") == 0
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [ALICE]))


def test_append_with_new_column_is_refused_unless_evolving(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    wider = _people(spark, [BOB]).withColumn("tier", F.lit(2))
    with pytest.raises(SchemaMismatch, match="tier"):
        any_lake.write(wider, "people")
    any_lake.write(wider, "people", evolve_schema=True)
    wider_schema = T.StructType([*PEOPLE.fields, T.StructField("tier", T.IntegerType())])
    expected = spark.createDataFrame([(*ALICE, None), (*BOB, 2)], wider_schema)
    assertDataFrameEqual(any_lake.read("people"), expected)


def test_append_with_changed_type_is_refused(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    with pytest.raises(SchemaMismatch, match="spend"):
        any_lake.write(_people(spark, [BOB]).withColumn("spend", F.col("spend").cast("string")), "people")


def test_empty_table_reads_with_its_schema(any_lake, spark):
    any_lake.write(spark.createDataFrame([], PEOPLE), "people", partition_by=["city"])
    empty = any_lake.read("people")
    assert empty.count() == 0
    assert [f.name for f in empty.schema] == PEOPLE.fieldNames()


def test_missing_table_raises_table_not_found(any_lake):
    with pytest.raises(TableNotFound, match="nope"):
        any_lake.read("nope")
    assert not any_lake.exists("nope")


def test_history_keeps_commit_metadata(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people", metadata={"run_id": "r1", "job": "land"})
    any_lake.write(_people(spark, [BOB]), "people", metadata={"run_id": "r2", "job": "land"})
    history = any_lake.history("people")
    assert [entry["version"] for entry in history] == [1, 0]
    assert [entry["run_id"] for entry in history] == ["r2", "r1"]


def test_vacuum_makes_old_versions_unreadable(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    any_lake.write(_people(spark, [BOB]), "people", mode="overwrite")
    any_lake.vacuum("people", retention_hours=0)
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [BOB]))
    with pytest.raises(Exception):  # noqa: B017 - the files of version 0 are gone
        any_lake.read("people", version=0).collect()


def test_a_step_that_expires_history_commits_what_readers_can_still_read(any_lake, spark):
    """cdp forget deletes, then expires the log before a checkpoint: its step commit must name the
    version after that, or every reader pinned by the commit log asks for a version whose log is gone."""
    any_lake.ensure_commit_log("run-1")
    any_lake.write(_people(spark, [ALICE, BOB]), "people")
    any_lake.commit("land", "run-1")
    any_lake.delete("people", "customer_id = 'c1'")
    any_lake.expire_history("people")
    committed = any_lake.commit("forget", "erasure-1")
    assert committed == {"people": any_lake.version("people")}
    fresh = Lake(spark, any_lake.root, backend=any_lake.backend)  # a later process: reads the commit log
    assertDataFrameEqual(fresh.read("people"), _people(spark, [BOB]))
    # only the current version's data files are left on disk (the deleted row's file is vacuumed)
    table_dir = Path(any_lake.uri("people"))
    on_disk = sorted(str(f) for f in table_dir.rglob("*.parquet") if "_delta_log" not in f.parts)
    current = sorted(uri.removeprefix("file://") for uri in DeltaTable(str(table_dir)).file_uris())
    assert on_disk == current and len(current) >= 1


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _hashed(spark, schema: str, *rows: tuple[str, ...]):
    """A key frame for ``Lake.erase``: per row, the lower-case hex SHA-256 of each value."""
    return spark.createDataFrame([tuple(_sha256(value) for value in row) for row in rows], schema)


@pytest.mark.parametrize("partition_by", [[], ["city"]], ids=["unpartitioned", "partitioned"])
def test_erase_deletes_exactly_the_rows_matching_hashed_keys(any_lake, spark, partition_by):
    """cdp forget's path: embedded rewrites the touched partitions, delta-spark merges whenMatchedDelete."""
    dave = ("c4", "Beijing", 5.0, T0)
    any_lake.write(_people(spark, [ALICE, BOB, CAROL, dave]), "people", partition_by=partition_by)
    by_id = _hashed(spark, "customer_id string", ("c1",), ("c404",))
    # two columns at once; the same key twice, once with an upper-case hash (both match one row)
    by_city_and_id = spark.createDataFrame(
        [(_sha256("Beijing"), _sha256("c4")), (_sha256("Beijing").upper(), _sha256("c4")),
         (_sha256("Nowhere"), _sha256("c2"))], "city string, customer_id string")
    deleted = any_lake.erase("people", [by_id, by_city_and_id], metadata={"run_id": "erasure-1"})
    assert deleted == 2
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [BOB, CAROL]))
    assertDataFrameEqual(any_lake.read("people", version=0), _people(spark, [ALICE, BOB, CAROL, dave]))
    # audited like any write (delta-spark: one merge, so one commit, per key frame)
    assert {entry.get("run_id") for entry in any_lake.history("people") if entry["version"] > 0} == {"erasure-1"}
    # nobody left to erase, nothing to delete: no commit, and no other commit's count
    assert any_lake.erase("people", [by_id], metadata={"run_id": "erasure-2"}) == 0
    assert any_lake.delete("people", "customer_id = 'c1'") == 0
    assertDataFrameEqual(any_lake.read("people"), _people(spark, [BOB, CAROL]))


@pytest.mark.parametrize("partition_by", [[], ["city"]], ids=["unpartitioned", "partitioned"])
def test_a_dead_steps_writes_are_restored_by_the_next_steps_first_write(any_lake, spark, partition_by):
    """The rollback of a step that died or failed to publish: every kind of write it made (append,
    merge with delete, erase, delete, a schema change) is undone by one restore of the committed
    version before the next step writes, which then reads as if the dead step had never run."""
    dave = ("c4", "Hangzhou", 5.0, T0)
    any_lake.ensure_commit_log("r1")
    any_lake.write(_people(spark, [ALICE, BOB]), "people", partition_by=partition_by, metadata={"run_id": "r1"})
    assert any_lake.commit("land", "r1") == {"people": 0}

    dead = Lake(spark, any_lake.root, backend=any_lake.backend)
    dead.write(_people(spark, [CAROL]), "people")
    merged = dead.merge(_people(spark, [("c2", "Beijing", 99.0, T0), CAROL]), "people", ["customer_id"],
                        delete_unmatched=True)
    assert (merged.updated, merged.deleted) == (2, 1)
    assert dead.erase("people", [_hashed(spark, "customer_id string", ("c3",))]) == 1
    assert dead.delete("people", "customer_id = 'c2'") == 1
    dead.write(_people(spark, [dave]).withColumn("tier", F.lit(2)), "people", evolve_schema=True)
    dead_latest = dead.version("people")  # 5 (embedded: 6, the new column is a commit of its own)
    dead.abandon()  # died: no commit record

    reader = Lake(spark, any_lake.root, backend=any_lake.backend)  # another process, meanwhile
    assertDataFrameEqual(reader.read("people"), _people(spark, [ALICE, BOB]))
    assert reader.version("people") == 0

    next_step = Lake(spark, any_lake.root, backend=any_lake.backend)
    next_step.write(_people(spark, [dave]), "people", metadata={"run_id": "r2"})  # the dead column is gone
    assertDataFrameEqual(next_step.read("people"), _people(spark, [ALICE, BOB, dave]))
    # one version restores version 0, the next appends
    assert next_step.commit("land", "r2") == {"people": dead_latest + 2}
    fresh = Lake(spark, any_lake.root, backend=any_lake.backend)
    assertDataFrameEqual(fresh.read("people"), _people(spark, [ALICE, BOB, dave]))
    assertDataFrameEqual(fresh.read("people", version=dead_latest + 1), _people(spark, [ALICE, BOB]))
    latest, restore = fresh.history("people", limit=2)
    assert (latest["run_id"], restore["operation"]) == ("r2", "RESTORE")


def test_tables_lists_what_was_written(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "people")
    any_lake.write(_people(spark, [BOB]), "orders")
    assert any_lake.tables() == ["orders", "people"]


def test_table_is_readable_by_deltalake_directly(any_lake, spark):
    any_lake.write(_people(spark, [ALICE, BOB, CAROL]), "people", partition_by=["city"])
    arrow = DeltaTable(any_lake.uri("people")).to_pyarrow_table()
    by_id = {row["customer_id"]: row for row in arrow.to_pylist()}
    assert set(by_id) == {"c1", "c2", "c3"}
    assert by_id["c3"]["city"] == "上海 / Pudong"
    assert by_id["c1"]["seen_at"] == T0  # microseconds survive: TIMESTAMP_MICROS, not INT96


def test_table_is_readable_by_duckdb_delta_reader(any_lake, spark):
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("duckdb_ext", reason="duckdb-ext-delta ships DuckDB's delta extension offline")
    import duckdb_ext

    any_lake.write(_people(spark, [ALICE, BOB]), "people", partition_by=["city"])
    extension = glob.glob(os.path.join(list(duckdb_ext.__path__)[0], "extensions", f"v{duckdb.__version__}",
                                       "*", "delta.duckdb_extension"))
    if not extension:
        pytest.skip(f"no delta extension shipped for duckdb {duckdb.__version__}")
    connection = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    connection.execute(f"LOAD '{extension[0]}'")
    rows = connection.execute(
        f"SELECT customer_id, city, spend FROM delta_scan('{any_lake.uri('people')}') ORDER BY 1").fetchall()
    assert rows == [("c1", "Shanghai", 10.0), ("c2", "Beijing", 20.5)]


def test_table_written_by_deltalake_is_readable_by_the_lake(lake, spark, tmp_path):
    import pyarrow as pa

    data = pa.table({"customer_id": ["a", "b"], "n": pa.array([1, 2], pa.int64()),
                     "day": [date(2024, 1, 1), date(2024, 1, 2)]})
    write_deltalake(lake.uri("external"), data, partition_by=["day"])
    expected = spark.createDataFrame([("a", 1, date(2024, 1, 1)), ("b", 2, date(2024, 1, 2))],
                                     "customer_id string, n long, day date")
    assertDataFrameEqual(lake.read("external"), expected)


def test_embedded_writes_real_delta_with_file_statistics(lake, spark):
    lake.write(_people(spark, [ALICE, BOB]), "people")
    log_files = sorted(Path(lake.uri("people"), "_delta_log").glob("*.json"))
    actions = [json.loads(line) for line in log_files[0].read_text().splitlines()]
    adds = [action["add"] for action in actions if "add" in action]
    assert any("protocol" in action for action in actions) and any("metaData" in action for action in actions)
    stats = [json.loads(add["stats"]) for add in adds]
    assert sum(s["numRecords"] for s in stats) == 2
    with_rows = [s for s in stats if s["numRecords"]]
    assert min(s["minValues"]["customer_id"] for s in with_rows) == "c1"
    assert max(s["maxValues"]["spend"] for s in with_rows) == 20.5
    assert min(s["minValues"]["seen_at"] for s in with_rows) == "2024-03-01T08:30:15.123Z"
    assert max(s["maxValues"]["seen_at"] for s in with_rows) == "2024-03-01T08:30:15.124Z"


def test_embedded_writes_wide_tables_through_arrow_with_the_same_rows_and_statistics(lake, spark, monkeypatch):
    """Writes of ARROW_WRITE_MIN_COLUMNS columns or more go through pyarrow: the same rows and types come
    back (timestamps, dates, arrays, maps, nulls), the idempotent-run check holds, the files carry their
    statistics, partitions land in Spark's folders, and a failed task commits nothing."""
    from cdp.lake import backend, embedded

    extra = {"tier": F.lit(2), "born": F.lit(date(1990, 3, 5)), "tags": F.array(F.lit("a"), F.lit(None).cast("string")),
             "attrs": F.create_map(F.lit("k"), F.col("city")), "flag": F.col("spend") > 15}
    wide = _people(spark, [ALICE, BOB, CAROL]).repartition(2).withColumns(extra)
    narrow = wide.select(*PEOPLE.fieldNames())
    monkeypatch.setattr(embedded, "ARROW_WRITE_MIN_COLUMNS", len(wide.columns))
    arrow_jobs = []
    real_writer = embedded.parquet_file_writer
    monkeypatch.setattr(embedded, "parquet_file_writer", lambda *a, **k: arrow_jobs.append(a) or real_writer(*a, **k))
    lake.write(wide, "wide", app_id="tag:run", app_version=1)
    assert len(arrow_jobs) == 1
    assertDataFrameEqual(lake.read("wide"), wide)
    assert lake.read("wide").schema == backend.as_nullable(wide.schema)
    assert lake.write(wide, "wide", app_id="tag:run", app_version=1) is None  # same run again: nothing
    stats = pa.table(DeltaTable(lake.uri("wide")).get_add_actions(flatten=True)).to_pylist()
    assert sum(s["num_records"] for s in stats) == 3
    assert min(s["min.seen_at"] for s in stats) == datetime(2024, 3, 1, 8, 30, 15, 123000, tzinfo=UTC)
    lake.write(narrow, "narrow")  # fewer columns: Spark's writer
    assert len(arrow_jobs) == 1
    # partitioned: Spark's column=value folders (a null, a slash), the partition column out of the files
    with_null_city = wide.unionByName(_people(spark, [("c4", None, 5.0, T0)]).withColumns(extra))
    lake.write(with_null_city, "wide_by_city", partition_by=["city"])
    lake.write(wide.where("customer_id = 'c2'").withColumn("tier", F.lit(3)), "wide_by_city", mode="overwrite",
               replace_where={"city": "Beijing"})
    assert len(arrow_jobs) == 3
    assertDataFrameEqual(lake.read("wide_by_city"), with_null_city.withColumn(
        "tier", F.when(F.col("city") == "Beijing", 3).otherwise(F.col("tier"))))
    folders = {Path(f).parent.name for f in DeltaTable(lake.uri("wide_by_city")).file_uris()}
    assert folders == {"city=Shanghai", "city=Beijing", "city=上海 %2F Pudong", "city=__HIVE_DEFAULT_PARTITION__"}
    assert "city" not in pa.parquet.read_schema(DeltaTable(lake.uri("wide_by_city")).file_uris()[0].removeprefix("file://")).names
    failing = wide.withColumn("city", F.when(F.col("customer_id") == "c2", F.raise_error(F.lit("tags broke")))
                              .otherwise(F.col("city")))
    with pytest.raises(Exception, match="tags broke"):
        lake.write(failing, "wide", mode="overwrite")
    assert lake.version("wide") == 0
    assertDataFrameEqual(lake.read("wide"), wide)


def test_partitioned_tables_read_back_columns_with_backticks_in_their_names(any_lake, spark, monkeypatch):
    from cdp.lake import embedded

    schema = T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("even", T.BooleanType()),
                           T.StructField("odd`name`", T.IntegerType())])
    rows = spark.createDataFrame([("c1", True, 1), ("c2", False, None)], schema)
    any_lake.write(rows, "odd", partition_by=["even"])
    assertDataFrameEqual(any_lake.read("odd"), rows)
    # wide enough for the embedded backend's Arrow writer, which leaves such names to Spark's
    monkeypatch.setattr(embedded, "ARROW_WRITE_MIN_COLUMNS", 3)
    any_lake.write(rows, "odd_arrow", partition_by=["even"])
    assertDataFrameEqual(any_lake.read("odd_arrow"), rows)


def test_column_names_with_spaces_round_trip_on_embedded_and_are_refused_by_name_on_delta_spark(any_lake, spark):
    rows = spark.createDataFrame([("c1", 1)], "customer_id string, `spend total` int")
    if any_lake.backend == "delta-spark":  # Delta without column mapping forbids them; say which column
        with pytest.raises(SchemaMismatch, match="spend total"):
            any_lake.write(rows, "spaced")
        assert not any_lake.exists("spaced")
    else:
        any_lake.write(rows, "spaced")
        assertDataFrameEqual(any_lake.read("spaced"), rows)


def test_embedded_refuses_tables_with_deletion_vectors(lake, spark):
    import pyarrow as pa

    write_deltalake(lake.uri("dv"), pa.table({"a": [1]}),
                    configuration={"delta.enableDeletionVectors": "true"})
    table = DeltaTable(lake.uri("dv"))
    if "deletionVectors" not in set(table.protocol().reader_features or []):
        pytest.skip("this deltalake version does not enable deletion vectors on create")
    with pytest.raises(UnsupportedTable, match="deletion"):
        lake.read("dv")


def test_invalid_table_name_is_refused(lake, spark):
    with pytest.raises(LakeError, match="invalid table name"):
        lake.write(spark.createDataFrame([Row(a=1)]), "../escape")


def test_copy_overwrite_publishes_a_table_as_one_independent_commit(any_lake, spark):
    any_lake.write(_people(spark, [ALICE]), "published", metadata={"run_id": "r0"})
    any_lake.write(_people(spark, [BOB, CAROL]), "staged")
    version = any_lake.copy_overwrite("staged", "published", metadata={"run_id": "r1"})
    assert version == 1 and any_lake.history("published")[0]["run_id"] == "r1"
    assertDataFrameEqual(any_lake.read("published"), _people(spark, [BOB, CAROL]))
    assertDataFrameEqual(any_lake.read("published", version=0), _people(spark, [ALICE]))
    # the copy owns its files: overwriting and vacuuming the source leaves it whole
    any_lake.write(_people(spark, [ALICE]), "staged", mode="overwrite")
    any_lake.vacuum("staged", retention_hours=0)
    assertDataFrameEqual(any_lake.read("published"), _people(spark, [BOB, CAROL]))
    # into a new table, and from a partitioned source (rows read and written)
    any_lake.write(_people(spark, [ALICE, CAROL]), "by_city", partition_by=["city"])
    any_lake.copy_overwrite("by_city", "fresh")
    assertDataFrameEqual(any_lake.read("fresh"), _people(spark, [ALICE, CAROL]))
    with pytest.raises(TableNotFound):
        any_lake.copy_overwrite("nowhere", "fresh")


def test_embedded_copy_overwrite_copies_files_with_statistics(lake, spark):
    lake.write(_people(spark, [ALICE, BOB]), "staged")
    lake.copy_overwrite("staged", "published")
    source, copied = DeltaTable(lake.uri("staged")), DeltaTable(lake.uri("published"))
    assert sorted(os.path.basename(u).split("-", 1)[1] for u in copied.file_uris()) == \
        sorted(os.path.basename(u) for u in source.file_uris())
    assert all(u.startswith(lake.uri("published")) for u in copied.file_uris())
    stats = pa.table(copied.get_add_actions(flatten=True)).to_pylist()
    assert sum(s["num_records"] for s in stats) == 2


VISITS = T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("visit", T.IntegerType()),
                       T.StructField("seen_at", T.TimestampType())])


def _unpivot_spend():
    """Arrow function: one row per whole 10 of spend (an unpivot: more rows out than in). Made in a
    function so that it is pickled by value: Spark's Python workers cannot import the test module."""
    def visits(batches):
        import numpy as np
        import pyarrow as pa

        for batch in batches:
            ids, spend, seen = batch.column(0), batch.column(2).fill_null(0).to_numpy(), batch.column(3)
            counts = (spend // 10).astype(np.int64)
            index = pa.array(np.repeat(np.arange(len(spend)), counts))
            visit = np.concatenate([np.arange(1, c + 1) for c in counts]) if len(counts) else np.array([])
            yield pa.RecordBatch.from_arrays([ids.take(index), pa.array(visit.astype(np.int32)), seen.take(index)],
                                             names=["customer_id", "visit", "seen_at"])
    return visits


_visits_per_spend = _unpivot_spend()


def test_write_arrow_commits_the_rows_of_map_in_arrow(any_lake, spark):
    people = _people(spark, [ALICE, BOB, CAROL, ("c4", "Beijing", 35.0, T0)])
    version = any_lake.write_arrow(people, "visits", _visits_per_spend, VISITS, mode="overwrite",
                                   metadata={"run_id": "r1"})
    expected = spark.createDataFrame([("c1", 1, T0), ("c2", 1, T0), ("c2", 2, T0), ("c4", 1, T0), ("c4", 2, T0),
                                      ("c4", 3, T0)], VISITS)
    assert version == 0 and any_lake.history("visits")[0]["run_id"] == "r1"
    assertDataFrameEqual(any_lake.read("visits"), expected)
    assertDataFrameEqual(any_lake.read("visits"), people.mapInArrow(_visits_per_spend, VISITS))
    # append adds a version; overwrite replaces the rows; older versions stay readable
    any_lake.write_arrow(_people(spark, [ALICE]), "visits", _visits_per_spend, VISITS)
    assert any_lake.read("visits").count() == 7
    any_lake.write_arrow(_people(spark, [BOB]), "visits", _visits_per_spend, VISITS, mode="overwrite")
    assertDataFrameEqual(any_lake.read("visits"), spark.createDataFrame([("c2", 1, T0), ("c2", 2, T0)], VISITS))
    assertDataFrameEqual(any_lake.read("visits", version=0), expected)
    # a source that makes no rows commits an empty version
    assert any_lake.write_arrow(_people(spark, [CAROL]), "visits", _visits_per_spend, VISITS, mode="overwrite") == 3
    assert any_lake.read("visits").count() == 0
    # the files are Delta's: deltalake reads the instants back exactly
    any_lake.write_arrow(people, "visits", _visits_per_spend, VISITS, mode="overwrite")
    arrow = DeltaTable(any_lake.uri("visits")).to_pyarrow_table()
    assert arrow.num_rows == 6 and set(arrow.column("seen_at").to_pylist()) == {T0}


def test_embedded_write_arrow_commits_only_the_reported_files_with_statistics(lake, spark, monkeypatch):
    people = _people(spark, [ALICE, BOB]).repartition(2)
    lake.write_arrow(people, "visits", _visits_per_spend, VISITS)
    table = DeltaTable(lake.uri("visits"))
    stats = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    assert sum(s["num_records"] for s in stats) == 3 and all(s["num_records"] for s in stats)
    assert min(s["min.customer_id"] for s in stats) == "c1" and max(s["max.visit"] for s in stats) == 2
    # a file that a failed task attempt left in the commit's folder is not part of the commit
    from cdp.lake import embedded

    folder = Path(lake.uri("visits"), "w-with-stray")
    folder.mkdir()
    (folder / "part-stray.snappy.parquet").write_bytes(Path(table.file_uris()[0].removeprefix("file://")).read_bytes())
    monkeypatch.setattr(embedded, "_new_folder", lambda: "w-with-stray")
    lake.write_arrow(_people(spark, [BOB]), "visits", _visits_per_spend, VISITS, mode="overwrite")
    assertDataFrameEqual(lake.read("visits"), spark.createDataFrame([("c2", 1, T0), ("c2", 2, T0)], VISITS))


def test_failed_write_arrow_commits_nothing_and_refuses_other_schemas(any_lake, spark):
    any_lake.write_arrow(_people(spark, [BOB]), "visits", _visits_per_spend, VISITS)

    def broken(batches):
        for _ in batches:
            raise ValueError("unpivot broke")
        yield from ()

    with pytest.raises(Exception, match="unpivot broke"):
        any_lake.write_arrow(_people(spark, [ALICE]), "visits", broken, VISITS, mode="overwrite")
    assert any_lake.version("visits") == 0 and any_lake.read("visits").count() == 2
    other = T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("visit", T.StringType())])
    with pytest.raises(SchemaMismatch, match="visit"):
        any_lake.write_arrow(_people(spark, [ALICE]), "visits", _visits_per_spend, other)
    any_lake.write(_people(spark, [ALICE]), "by_city", partition_by=["city"])
    if any_lake.backend == "embedded":
        with pytest.raises(SchemaMismatch, match="partitioned"):
            any_lake.write_arrow(_people(spark, [ALICE]), "by_city", _visits_per_spend, VISITS, mode="overwrite")


def _spend_per_city():
    """Arrow function over (city, spend) batches: total spend per city in this task (by value)."""
    def totals(batches):
        import pyarrow as pa

        batches = list(batches)  # a task may get none
        rows = pa.Table.from_batches(batches) if batches else None
        if rows is not None and rows.num_rows:
            summed = rows.group_by("city").aggregate([("spend", "sum"), ("spend", "count")])
            yield pa.RecordBatch.from_arrays([summed.column("city").combine_chunks(),
                                              summed.column("spend_sum").combine_chunks(),
                                              summed.column("spend_count").combine_chunks()],
                                             names=["city", "spend", "n"])
    return totals


def test_arrow_scan_feeds_the_tables_columns_to_an_arrow_function(any_lake, spark):
    any_lake.write(_people(spark, [ALICE, BOB]), "people")
    later = T.StructType([*PEOPLE.fields, T.StructField("tier", T.StringType())])
    any_lake.write(spark.createDataFrame([("c4", "Shanghai", 5.0, T0, "gold")], later), "people", evolve_schema=True)
    scan = any_lake.arrow_scan("people", ["tier", "spend", "customer_id"])
    assert scan.columns == ("tier", "spend", "customer_id")
    # the columns in the asked order and types; a file written before "tier" existed reads it as null
    rows = scan.map(lambda batches: batches, "tier string, spend double, customer_id string")
    assertDataFrameEqual(rows, spark.createDataFrame([(None, 10.0, "c1"), (None, 20.5, "c2"), ("gold", 5.0, "c4")],
                                                     "tier string, spend double, customer_id string"))
    # a file without any of the asked columns still gives its rows
    assertDataFrameEqual(any_lake.arrow_scan("people", ["tier"]).map(lambda batches: batches, "tier string"),
                         spark.createDataFrame([(None,), (None,), ("gold",)], "tier string"))
    totals = any_lake.arrow_scan("people", ["city", "spend"]).map(_spend_per_city(), "city string, spend double, n long")
    by_city = totals.groupBy("city").agg(F.sum("spend").alias("spend"), F.sum("n").alias("n"))
    assertDataFrameEqual(by_city, spark.createDataFrame([("Shanghai", 15.0, 2), ("Beijing", 20.5, 1)],
                                                        "city string, spend double, n long"))
    # a version, and a partitioned table (partition values live in the log: Spark reads it)
    assert any_lake.arrow_scan("people", ["customer_id"], version=0).map(
        lambda batches: batches, "customer_id string").count() == 2
    any_lake.write(_people(spark, [ALICE, CAROL]), "by_city", partition_by=["city"])
    by_partition = any_lake.arrow_scan("by_city", ["city", "customer_id"]).map(lambda b: b, "city string, customer_id string")
    assertDataFrameEqual(by_partition, spark.createDataFrame([("Shanghai", "c1"), ("上海 / Pudong", "c3")],
                                                             "city string, customer_id string"))
    # read and write: the unpivot fed straight from the table's files
    scan = any_lake.arrow_scan("people", [f.name for f in PEOPLE.fields])
    any_lake.write_arrow(scan.source, "visits", scan.feeding(_visits_per_spend), VISITS, mode="overwrite")
    assertDataFrameEqual(any_lake.read("visits"), spark.createDataFrame(
        [("c1", 1, T0), ("c2", 1, T0), ("c2", 2, T0)], VISITS))
    with pytest.raises(LakeError, match="nowhere"):
        any_lake.arrow_scan("people", ["nowhere"])


def test_backend_is_chosen_explicitly_or_by_the_sessions_setting(spark, tmp_path):
    from cdp.lake import BACKEND_SETTING

    root = str(tmp_path / "lake")
    assert Lake(spark, root, backend="embedded").backend == "embedded"  # also in a session with the jars
    saved = spark.conf.get(BACKEND_SETTING, "auto")
    try:
        spark.conf.set(BACKEND_SETTING, "auto")
        assert Lake(spark, root).backend == ("delta-spark" if delta_spark_available(spark) else "embedded")
        spark.conf.set(BACKEND_SETTING, "embedded")
        assert Lake(spark, root).backend == "embedded"
        if delta_spark_available(spark):  # an explicit backend wins over the session's setting
            assert Lake(spark, root, backend="delta-spark").backend == "delta-spark"
        spark.conf.set(BACKEND_SETTING, "parquet")
        with pytest.raises(LakeError, match="unknown lake backend 'parquet'"):
            Lake(spark, root)
    finally:
        spark.conf.set(BACKEND_SETTING, saved)
    if not delta_spark_available(spark) and not local_jars():
        with pytest.raises(LakeError, match="cdp jars fetch"):
            Lake(spark, root, backend="delta-spark")


@pytest.mark.parametrize(("first", "second"), [("embedded", "delta-spark"), ("delta-spark", "embedded")])
def test_a_table_continues_on_the_other_backend_with_time_travel(spark, tmp_path, first, second):
    """A laptop's lake taken to a cluster and back: each backend appends, merges, replaces partitions and
    deletes on the other's commits, and every version reads the same on both."""
    if not delta_spark_available(spark):
        if not local_jars():
            pytest.skip(absent_reason())
        pytest.fail(f"the delta-spark jars are in {jars_dir()} but the session cannot load Delta's classes")
    # a plain partition value: see the README on non-ASCII values across backends (a known gap)
    carol = ("c3", "Hangzhou", None, None)
    root = str(tmp_path / "lake")
    one, other = Lake(spark, root, backend=first), Lake(spark, root, backend=second)
    # `job` as the jobs write it: a struct field of Delta's own commitInfo, which delta-spark's log parser
    # refused as a top-level string (the embedded backend keeps metadata in userMetadata, as delta-spark does)
    one.write(_people(spark, [ALICE, BOB]), "people", partition_by=["city"], metadata={"run_id": "r0", "job": "stitch"})
    other.write(_people(spark, [carol]), "people", metadata={"run_id": "r1"})
    merged = other.merge(_people(spark, [("c2", "Beijing", 30.0, T0)]), "people", ["customer_id"])
    assert (merged.inserted, merged.updated) == (0, 1)
    other.write(_people(spark, [("c9", "Shanghai", 9.0, T0)]), "people", mode="overwrite",
                replace_where={"city": "Shanghai"})
    assert one.delete("people", "customer_id = 'c3'") == 1
    expected = {
        0: [ALICE, BOB],
        1: [ALICE, BOB, carol],
        2: [ALICE, ("c2", "Beijing", 30.0, T0), carol],
        3: [("c9", "Shanghai", 9.0, T0), ("c2", "Beijing", 30.0, T0), carol],
        4: [("c9", "Shanghai", 9.0, T0), ("c2", "Beijing", 30.0, T0)],
    }
    for lake in (one, other):
        assert lake.version("people") == 4
        assert [entry["version"] for entry in lake.history("people")] == [4, 3, 2, 1, 0]
        for version, rows in expected.items():
            assertDataFrameEqual(lake.read("people", version=version), _people(spark, rows))
    # each commit's metadata reads back on both, whichever wrote it (identity's config fingerprint rides on it)
    assert [one.history("people")[i].get("run_id") for i in (-1, -2)] == ["r0", "r1"]
    assert [other.history("people")[i].get("run_id") for i in (-1, -2)] == ["r0", "r1"]
    assert one.history("people")[-1]["job"] == other.history("people")[-1]["job"] == "stitch"
    # and after the other backend vacuums, only the latest version is left to read
    other.vacuum("people", retention_hours=0)
    assertDataFrameEqual(one.read("people"), _people(spark, expected[4]))
