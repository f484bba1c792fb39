"""Step commits: readers see each table at the version of the last commit record naming it."""
from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from cdp.lake import COMMITS_TABLE, Lake, TableNotFound

PEOPLE = "id long, name string"


def people(spark: SparkSession, *rows: tuple[int, str]):
    return spark.createDataFrame(list(rows), PEOPLE)


def test_without_a_commit_log_every_version_is_current(spark, lake):
    lake.write(people(spark, (1, "ann")), "people", "overwrite")
    lake.abandon()  # as if another process had written it: no commit log, so it is current anyway
    assertDataFrameEqual(lake.read("people"), people(spark, (1, "ann")))
    assert lake.committed() is None and lake.tables() == ["people"]


def test_an_uncommitted_step_is_invisible_and_rolled_back_by_the_next_write(spark, tmp_path):
    lake = Lake(spark, str(tmp_path / "lake"))
    lake.ensure_commit_log("run-1")
    lake.write(people(spark, (1, "ann")), "people", "append")
    lake.write(people(spark, (9, "log")), "events", "append")
    assert lake.commit("land", "run-1") == {"people": 0, "events": 0}
    # a step that died: one table appended to, one created; no commit record
    lake.write(people(spark, (2, "dead")), "people", "append")
    lake.write(people(spark, (3, "dead")), "orphan", "append")
    lake.abandon()

    reader = Lake(spark, lake.root)  # another process would see the same
    assertDataFrameEqual(reader.read("people"), people(spark, (1, "ann")))
    assert reader.version("people") == 0 and [h["version"] for h in reader.history("people")] == [0]
    assert not reader.exists("orphan") and reader.tables() == ["events", "people", COMMITS_TABLE]
    with pytest.raises(TableNotFound, match="never committed"):
        reader.read("orphan")
    assertDataFrameEqual(reader.read("people", version=1), people(spark, (1, "ann"), (2, "dead")))

    # the next step's append starts from the committed version; the orphan is replaced, not appended to
    reader.write(people(spark, (4, "bo")), "people", "append")
    reader.write(people(spark, (5, "cy")), "orphan", "append")
    assertDataFrameEqual(reader.read("people"), people(spark, (1, "ann"), (4, "bo")))
    versions = reader.commit("land", "run-2")
    assert versions == {"people": 3, "orphan": 1}  # v2 is the restore of v0, v3 the append
    fresh = Lake(spark, lake.root)
    assertDataFrameEqual(fresh.read("people"), people(spark, (1, "ann"), (4, "bo")))
    assertDataFrameEqual(fresh.read("orphan"), people(spark, (5, "cy")))
    steps = fresh.read(COMMITS_TABLE).orderBy("committed_at").select("run_id", "step").collect()
    assert [tuple(r) for r in steps] == [("run-1", "baseline"), ("run-1", "land"), ("run-2", "land")]


def test_a_reader_kept_open_sees_what_another_process_commits_later(spark, tmp_path):
    from cdp.lake import commits

    writer = Lake(spark, str(tmp_path / "lake"))
    writer.ensure_commit_log("run-1")
    writer.write(people(spark, (1, "ann")), "people", "overwrite")
    writer.commit("land", "run-1")
    reader = Lake(spark, writer.root)  # a notebook's lake, open while the scheduled run goes on
    assertDataFrameEqual(reader.read("people"), people(spark, (1, "ann")))

    # another process's step: its commit bumps that process's counters, not this one's
    counters = dict(commits._GENERATION)
    writer.write(people(spark, (2, "bo")), "people", "overwrite")
    writer.commit("land", "run-2")
    commits._GENERATION.clear()
    commits._GENERATION.update(counters)

    assert reader.version("people") == 1
    assertDataFrameEqual(reader.read("people"), people(spark, (2, "bo")))


def test_the_commit_log_starts_from_the_tables_as_they_are(spark, lake):
    lake.write(people(spark, (1, "ann")), "people", "overwrite")
    lake.write(people(spark, (2, "bo")), "people", "overwrite")
    lake.abandon()
    lake.ensure_commit_log("run-1")
    assert lake.committed() == {"people": 1}
    assertDataFrameEqual(Lake(lake.spark, lake.root).read("people"), people(spark, (2, "bo")))


def test_the_crash_hook_fires_only_at_the_named_step_moment_and_table(monkeypatch):
    import os
    import signal

    from cdp.lake import CRASH_ENV, crash_point, step_scope

    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(("kill", pid, sig)))
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: killed.append(("killpg", pgid, sig)))
    monkeypatch.delenv(CRASH_ENV, raising=False)
    with step_scope("stitch"):
        crash_point("after", "identity_history")  # unset: inert
    monkeypatch.setenv(CRASH_ENV, "stitch:after:identity_history")
    crash_point("after", "identity_history")  # no step running
    with step_scope("stitch"):
        crash_point("before", "identity_history")
        crash_point("after", "identity_map")
    with step_scope("audiences"):
        crash_point("after", "identity_history")
    assert killed == []
    with step_scope("stitch"):
        crash_point("after", "identity_history")
    assert killed and killed[-1] == ("kill", os.getpid(), signal.SIGKILL)
