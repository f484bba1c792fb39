"""The one place that builds a SparkSession for a job."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark import SparkConf
from pyspark.sql import SparkSession

from cdp.lake.storage import ObjectStore
from cdp.runtime.config import Profile
from cdp.runtime.jars import DELTA_CATALOG, DELTA_EXTENSION, has_delta_spark, local_jars

logger = logging.getLogger(__name__)

# Settings every session needs whatever the profile says: Parquet readable by delta-rs and other
# readers (INT96 timestamps are not), and UTC so event times never shift with the machine's zone.
REQUIRED_SETTINGS = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
}

# Defaults a profile may override. PySpark 4 records the Python call site of every Column function
# (DataFrame debugging): several JVM round trips per call, and the tag catalogue and feature families
# build thousands of Columns per job (660 tags: 8.6 s of py4j calls with it on, 2.4 s off). Errors
# still name the failing expression; our own messages name the file, record and field.
#
# Adaptive execution may coalesce the partitions of a cached (persisted) frame as it does for any other
# query. Spark 4.2 leaves this off, so a frame persisted after a shuffle kept all
# spark.sql.shuffle.partitions (400 in the cluster profile) however small it was: on the standalone
# cluster, standardize wrote 350 files per silver table of 500 customers, and unions of such frames ran
# thousands of tasks with 3 MB task binaries each (the step ran past 25 minutes; 1 file per table with
# the setting on).
DEFAULT_SETTINGS = {
    "spark.python.sql.dataFrameDebugging.enabled": "false",
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}


# JVM options a profile may ask for. Under spark-submit they are appended to what it was given (--conf,
# spark-defaults.conf) instead of replacing it, and the driver's are left to it: they only take effect
# before the driver JVM starts. Started by the `cdp` CLI, the profile's value is the one used.
JAVA_OPTIONS = ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions")


def merged_java_options(existing: str | None, wanted: str) -> str:
    """``existing`` JVM options with each option of ``wanted`` appended unless it is already there."""
    options = (existing or "").split()
    options += [option for option in wanted.split() if option not in options]
    return " ".join(options)


def console_settings() -> dict[str, str]:
    """Spark's console progress bar only when stdout is a terminal: under a scheduler its carriage
    returns fill the captured log with thousands of partial lines. A profile may still set it."""
    return {"spark.ui.showConsoleProgress": "true" if sys.stdout.isatty() else "false"}


def jar_settings(settings: dict[str, str], jars: list[Path]) -> dict[str, str]:
    """The settings that put the fetched ``jars`` (``cdp jars fetch``) on the session's classpath.

    Every jar goes on ``spark.jars`` (after any the profile names). With delta-spark among them, the
    Delta session extension and catalog are added unless the profile already names an extension or
    catalog of its own; the lake then picks the delta-spark backend (``spark.cdp.lake.backend``
    in a profile can still ask for ``embedded``). No jars: nothing changes.
    """
    if not jars:
        return {}
    added = {"spark.jars": ",".join([*filter(None, [settings.get("spark.jars")]), *map(str, jars)])}
    if has_delta_spark(jars):
        extensions = [e for e in (settings.get("spark.sql.extensions") or "").split(",") if e]
        if DELTA_EXTENSION not in extensions:
            added["spark.sql.extensions"] = ",".join([*extensions, DELTA_EXTENSION])
        added.setdefault("spark.sql.catalog.spark_catalog",
                         settings.get("spark.sql.catalog.spark_catalog", DELTA_CATALOG))
    return added


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (which owns master and packages)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def remote_url(remote: str | None = None) -> str | None:
    """The Spark Connect URL a job runs through: ``remote`` (``--remote``), else ``$SPARK_REMOTE``, else None."""
    return remote or os.environ.get("SPARK_REMOTE") or None


def object_store_settings(profile: Profile) -> dict[str, str]:
    """S3A settings (``spark.hadoop.fs.s3a.*``) from the AWS environment, for what the profile leaves
    unsaid: an ``AWS_ENDPOINT_URL`` (MinIO, a private S3) reaches Spark as it reaches delta-rs and
    pyarrow (``cdp.lake.storage``). Nothing when the environment names no endpoint, region or keys."""
    store = ObjectStore.from_settings(profile.spark)
    if not (store.endpoint or store.region or store.access_key):
        return {}
    return store.s3a()


def build_session(profile: Profile, app_name: str, remote: str | None = None) -> SparkSession:
    """Get or create the session for ``app_name`` with the profile's settings.

    With a Spark Connect URL (``remote``, else ``$SPARK_REMOTE``, e.g. ``sc://localhost:15002``) the
    session is a Connect client: see :func:`build_remote_session`.

    Under spark-submit the master, packages and resources come from the command line: the profile's
    ``spark.master``, ``spark.driver.memory`` and driver JVM options are then left alone, and its
    executor JVM options are appended to those given on the command line. Otherwise the jars fetched
    by ``cdp jars fetch`` go on ``spark.jars`` (:func:`jar_settings`); nothing is downloaded here.
    """
    url = remote_url(remote)
    if url is not None:
        return build_remote_session(profile, app_name, url)
    # Python workers must run this interpreter (with pandas, pyarrow, phonenumbers), not whatever
    # python3 is first on PATH; spark-submit users can still override it with PYSPARK_PYTHON.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    launched_by_submit = under_spark_submit()
    launch_conf = SparkConf() if launched_by_submit else None  # what spark-submit was given
    settings = {**DEFAULT_SETTINGS, **console_settings(), **object_store_settings(profile), **profile.spark}
    if not launched_by_submit:
        jars = local_jars()
        settings.update(jar_settings(settings, jars))
        if jars:
            logger.info("%d fetched jars on spark.jars (%s)", len(jars), jars[0].parent)
    for key, value in {**settings, **REQUIRED_SETTINGS}.items():
        if launched_by_submit and key in ("spark.master", "spark.driver.memory", "spark.driver.extraJavaOptions"):
            continue
        if key in JAVA_OPTIONS and launch_conf is not None:
            value = merged_java_options(launch_conf.get(key, None), value)
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    for key, value in REQUIRED_SETTINGS.items():
        spark.conf.set(key, value)
    logger.info("Spark %s session %r (master %s)", spark.version, app_name,
                spark.sparkContext.master)
    return spark


def build_remote_session(profile: Profile, app_name: str, url: str) -> SparkSession:
    """A Spark Connect session on ``url`` with the profile's runtime SQL settings.

    The server was started with its master, memory, JVM options and jars; a client can only change
    runtime SQL settings of its own session. The profile's other settings (``spark.master``,
    ``spark.driver.memory``, JVM options, static SQL settings) are skipped with a debug line each.
    """
    # The builder sends spark.app.name as a session setting too; the server ignores it (silently).
    spark = SparkSession.builder.remote(url).appName(app_name).getOrCreate()
    for key, value in {**DEFAULT_SETTINGS, **profile.spark, **REQUIRED_SETTINGS}.items():
        if key in JAVA_OPTIONS or not spark.conf.isModifiable(key):
            logger.debug("Spark Connect: %s is not a runtime SQL setting, left to the server (profile %s wants %s)",
                         key, profile.name, value)
            continue
        spark.conf.set(key, value)
    logger.info("Spark %s Connect session %r on %s", spark.version, app_name, url)
    return spark

