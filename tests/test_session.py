"""The session helper: a profile's JVM options are appended to the launch's, never replace them; the jars
fetched by `cdp jars fetch` go on spark.jars with the Delta extension."""
from __future__ import annotations

from pathlib import Path

from cdp.runtime.jars import DELTA_CATALOG, DELTA_EXTENSION, local_jars
from cdp.runtime.session import jar_settings, merged_java_options


def test_profile_java_options_are_appended_to_what_the_launch_set():
    assert merged_java_options(None, "-XX:-DontCompileHugeMethods") == "-XX:-DontCompileHugeMethods"
    assert merged_java_options("", "-XX:-DontCompileHugeMethods") == "-XX:-DontCompileHugeMethods"
    assert merged_java_options("-Dlog4j.configuration=file:x.properties -XX:+UseG1GC",
                               "-XX:-DontCompileHugeMethods") == (
        "-Dlog4j.configuration=file:x.properties -XX:+UseG1GC -XX:-DontCompileHugeMethods")


def test_an_option_already_given_is_not_repeated():
    assert merged_java_options("-XX:-DontCompileHugeMethods -Xss4m",
                               "-Xss4m -XX:-DontCompileHugeMethods") == "-XX:-DontCompileHugeMethods -Xss4m"


DELTA_JARS = [Path("/j/delta-spark_2.13-4.4.0.jar"), Path("/j/delta-storage-4.4.0.jar")]


def test_fetched_delta_jars_go_on_spark_jars_with_the_delta_extension_and_catalog():
    assert jar_settings({}, DELTA_JARS) == {
        "spark.jars": "/j/delta-spark_2.13-4.4.0.jar,/j/delta-storage-4.4.0.jar",
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
    }


def test_a_profiles_jars_extensions_and_catalog_are_kept():
    profile = {"spark.jars": "/opt/x.jar", "spark.sql.extensions": "com.acme.Ext",
               "spark.sql.catalog.spark_catalog": "com.acme.Catalog"}
    assert jar_settings(profile, DELTA_JARS) == {
        "spark.jars": "/opt/x.jar,/j/delta-spark_2.13-4.4.0.jar,/j/delta-storage-4.4.0.jar",
        "spark.sql.extensions": f"com.acme.Ext,{DELTA_EXTENSION}",
        "spark.sql.catalog.spark_catalog": "com.acme.Catalog",
    }
    with_delta = {"spark.sql.extensions": DELTA_EXTENSION}
    assert "spark.sql.extensions" not in jar_settings(with_delta, DELTA_JARS)


def test_no_jars_change_nothing_and_other_jars_add_no_extension(tmp_path):
    assert jar_settings({}, []) == {}
    assert local_jars(tmp_path / "never-fetched") == []
    (tmp_path / "graphframes-spark4_2.13-0.12.3.jar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a jar")
    jars = local_jars(tmp_path)
    assert jars == [tmp_path / "graphframes-spark4_2.13-0.12.3.jar"]
    assert jar_settings({}, jars) == {"spark.jars": str(jars[0])}


def test_the_connect_url_comes_from_remote_then_spark_remote(monkeypatch):
    from cdp.runtime.session import remote_url

    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert remote_url(None) is None  # a classic session
    monkeypatch.setenv("SPARK_REMOTE", "sc://from-env:15002")
    assert remote_url(None) == "sc://from-env:15002"
    assert remote_url("sc://from-flag:15002") == "sc://from-flag:15002"  # --remote wins


def test_every_job_takes_remote():
    from cdp.jobs.entry import base_parser

    assert base_parser("stitch").parse_args(["--remote", "sc://localhost:15002"]).remote == "sc://localhost:15002"
    assert base_parser("stitch").parse_args([]).remote is None


def test_a_frame_persisted_after_a_shuffle_is_coalesced_like_any_other_query(spark, tmp_path):
    """With the sessions' defaults, adaptive execution coalesces a persisted frame's partitions too: the
    cluster profile's 400 shuffle partitions left every cached frame of standardize with 400 partitions
    (350 files per silver table of 500 customers, unions of thousands of tasks)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from cdp.runtime.session import DEFAULT_SETTINGS

    wanted = {"spark.sql.adaptive.enabled": "true", "spark.sql.shuffle.partitions": "40",
              "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning":
                  DEFAULT_SETTINGS["spark.sql.optimizer.canChangeCachedPlanOutputPartitioning"]}
    saved = {key: spark.conf.get(key) for key in wanted}
    try:
        for key, value in wanted.items():
            spark.conf.set(key, value)
        counted = spark.range(1000).groupBy((F.col("id") % 37).alias("key")).count()
        persisted = counted.persist(StorageLevel.MEMORY_AND_DISK)
        assert persisted.count() == 37
        persisted.write.parquet(str(tmp_path / "out"))
        persisted.unpersist()
    finally:
        for key, value in saved.items():
            spark.conf.set(key, value)
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 1
