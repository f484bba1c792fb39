"""What differs between a classic SparkSession and a Spark Connect one, in one place.

Under Spark Connect (``spark.remote``, ``SPARK_REMOTE``, Databricks serverless and shared clusters)
the client holds no JVM: ``sparkContext``, RDDs, ``_jdf`` and ``_jvm`` do not exist. Code that needs
a figure they used to give (default parallelism, a DataFrame's partition count, the checkpoint
folder) asks here; code that needs a feature Connect lacks calls :func:`require_classic`, which fails
with a message naming the feature instead of an ``AttributeError`` deep inside PySpark.

This module imports nothing of ``cdp``, so every package may use it (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

logger = logging.getLogger(__name__)


class ConnectUnsupported(RuntimeError):
    """A feature the code needs does not exist on a Spark Connect session."""


def is_remote(spark: SparkSession | DataFrame) -> bool:
    """True for a Spark Connect session (or a DataFrame of one), False for a classic one.

    Decided by the object's class, not by PySpark's process-wide ``is_remote()`` (an environment
    variable): one process may hold a classic session and a Connect one, as the tests do.
    """
    return type(spark).__module__.startswith("pyspark.sql.connect.")


def require_classic(spark: SparkSession | DataFrame, feature: str) -> None:
    """Raise :class:`ConnectUnsupported` naming ``feature`` when ``spark`` is a Spark Connect session."""
    if is_remote(spark):
        raise ConnectUnsupported(f"{feature} is not available through Spark Connect; run this step with a "
                                 "classic session (cdp without --remote and SPARK_REMOTE, or spark-submit)")


def default_parallelism(spark: SparkSession) -> int:
    """The cores Spark runs tasks on (``SparkContext.defaultParallelism`` on a classic session).

    Over Connect: the partitions ``spark.range`` gets without being told (Spark sizes it with
    ``spark.sql.leafNodeDefaultParallelism``, whose default is the default parallelism); one tiny job.
    """
    if not is_remote(spark):
        return spark.sparkContext.defaultParallelism
    session_id = spark.session_id
    if session_id not in _PARALLELISM:
        # enough rows that no partition is empty; the partition id is projected first, since an
        # aggregate may not take a non-deterministic expression as its argument
        row = (spark.range(0, 1 << 16).select(F.spark_partition_id().alias("partition"))
               .agg(F.max("partition").alias("last")).first())
        _PARALLELISM[session_id] = int(row["last"]) + 1 if row is not None and row["last"] is not None else 1
    return _PARALLELISM[session_id]


_PARALLELISM: dict[str, int] = {}  # Connect session id -> default parallelism (the server's cores do not change)


def num_partitions(df: DataFrame) -> int | None:
    """The partitions ``df`` has without computing it (classic), or None when only a job could tell (Connect)."""
    if is_remote(df):
        return None
    return df.rdd.getNumPartitions()


def checkpoint_dir(spark: SparkSession) -> str | None:
    """The folder reliable ``DataFrame.checkpoint`` writes to, or None when none is set.

    Classic: ``SparkContext.setCheckpointDir`` or ``spark.checkpoint.dir``. Connect: the server's
    ``spark.checkpoint.dir`` (``setCheckpointDir`` cannot be called from a Connect client).
    """
    if not is_remote(spark):
        return spark.sparkContext.getCheckpointDir()  # set from spark.checkpoint.dir at start, too
    return _conf(spark, "spark.checkpoint.dir")


def _conf(spark: SparkSession, key: str) -> str | None:
    try:
        value: Any = spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - an unknown key on some servers raises instead of returning the default
        logger.debug("could not read %s from the session", key)
        return None
    return str(value) if value else None
