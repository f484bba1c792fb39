"""Customer ids that survive runs: carried from the previous identity map, issued from a hash when new.

Rules (issue 3):

* a previous customer id stays with the cluster that holds most of its identifiers (its *home*), so
  when a customer splits, the largest part keeps the id and the other parts get new ids. A tie
  between parts goes to the part holding the customer's most trusted identifier among those it
  still has (highest priority, then smallest type and value): unique, since an identifier is in one
  cluster only, and it does not depend on node hashes or row order;
* a cluster that is home to several previous customers (a merge) keeps the oldest one (earliest
  ``created_run``, then the smallest id); the others are recorded as merged into it;
* a cluster that is home to none gets a new id: ``c`` + 20 hex digits of SHA-256 over its key
  identifier (highest priority, then smallest type and value) and a salt that is raised while the id
  collides with an id ever issued or with another new id of the same run.

Nothing depends on row order or ``monotonically_increasing_id``, so a full recompute from the same
previous map gives the same ids, and so does an incremental run (it applies these rules to the
recomputed clusters and the previous rows of the same identifiers).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

MAX_SALT = 16

HISTORY_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType()),
    T.StructField("event", T.StringType()),
    T.StructField("customer_id", T.StringType()),
    T.StructField("old_ids", T.ArrayType(T.StringType())),
    T.StructField("reason", T.StringType()),
])


def new_customer_id(key: F.Column, salt: int) -> F.Column:
    """``c`` + 20 hex digits of SHA-256 over the key identifier text and a salt."""
    return F.concat(F.lit("c"), F.substring(F.sha2(F.concat(key, F.lit(f"#{salt}")), 256), 1, 20))


def _issue_new_ids(pending: DataFrame, taken: DataFrame) -> DataFrame:
    """cluster, key_text -> cluster, customer_id, unique and not in ``taken`` (customer_id).

    One check job in the usual case (no collision); colliding clusters retry with the next salt.
    """
    issued: DataFrame | None = None
    taken_ids = taken.select("customer_id").distinct()
    for salt in range(MAX_SALT):
        candidates = pending.select("cluster", "key_text", new_customer_id(F.col("key_text"), salt).alias("customer_id"))
        # Of several new clusters hashing to one id, the smallest key keeps it; the others retry.
        first = Window.partitionBy("customer_id").orderBy("key_text")
        ranked = (candidates.withColumn("rank", F.row_number().over(first))
                  .join(taken_ids.withColumn("taken", F.lit(True)), on="customer_id", how="left")
                  .withColumn("ok", (F.col("rank") == 1) & F.col("taken").isNull())
                  .localCheckpoint(eager=True))
        accepted = ranked.filter("ok").select("cluster", "customer_id")
        issued = accepted if issued is None else issued.unionByName(accepted)
        retry = ranked.filter(~F.col("ok")).select("cluster", "key_text")
        if retry.isEmpty():
            return issued
        taken_ids = taken_ids.unionByName(accepted.select("customer_id"))
        pending = retry
    raise RuntimeError(f"could not issue collision-free customer ids after {MAX_SALT} salts")


def assign_stable_ids(
    clusters: DataFrame,
    previous_map: DataFrame,
    run_id: str,
    *,
    taken_ids: DataFrame | None = None,
    cluster_notes: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Give every cluster a customer id, keeping previous ids as the module docstring says.

    Args:
        clusters: id_type, id_value, priority, cluster (one row per identifier).
        previous_map: id_type, id_value, customer_id, is_shared, created_run (the previous identity map,
            or the part of it covering these clusters' identifiers; may be empty).
        run_id: this run.
        taken_ids: customer_id of every id ever issued (retired ones too); the previous map's ids are
            always added.
        cluster_notes: cluster, note (why a cluster was split off), used in history reasons.

    Returns:
        (assigned, history): assigned is id_type, id_value, cluster, customer_id, created_run;
        history has :data:`HISTORY_SCHEMA` (events new, merge, split, move, retire).
    """
    spark = clusters.sparkSession
    sizes = (clusters.groupBy("cluster")
             .agg(F.min(F.struct((-F.col("priority")).alias("neg_priority"), "id_type", "id_value")).alias("key"))
             .select("cluster", F.concat_ws(":", "key.id_type", "key.id_value").alias("key_text")))
    previous = (previous_map.filter(~F.col("is_shared"))
                .select("id_type", "id_value", F.col("customer_id").alias("prev_id"),
                        F.col("created_run").alias("prev_created")))
    overlap = (clusters.join(previous, on=["id_type", "id_value"], how="inner")
               .groupBy("cluster", "prev_id", "prev_created")
               .agg(F.count(F.lit(1)).alias("overlap"),
                    F.min(F.struct((-F.col("priority")).alias("neg_priority"), "id_type", "id_value"))
                    .alias("best_kept")))
    # Most identifiers first; a tie goes to the part holding the most trusted of them (unique per cluster).
    home_order = Window.partitionBy("prev_id").orderBy(F.desc("overlap"), F.asc("best_kept"))
    overlap = overlap.withColumn("is_home", F.row_number().over(home_order) == 1)
    per_cluster = (overlap.groupBy("cluster")
                   .agg(F.min(F.when(F.col("is_home"), F.struct("prev_created", "prev_id"))).alias("survivor"),
                        F.sort_array(F.collect_list(F.when(F.col("is_home"), F.col("prev_id")))).alias("homed"),
                        F.sort_array(F.collect_list(F.when(~F.col("is_home"), F.col("prev_id")))).alias("visiting")))
    decided = (sizes.join(per_cluster, on="cluster", how="left")
               .select("cluster", "key_text", F.col("survivor.prev_id").alias("survivor_id"),
                       F.col("survivor.prev_created").alias("survivor_created"),
                       F.coalesce("homed", F.array().cast("array<string>")).alias("homed"),
                       F.coalesce("visiting", F.array().cast("array<string>")).alias("visiting"))
               .localCheckpoint(eager=True))

    taken = previous_map.select("customer_id")
    if taken_ids is not None:
        taken = taken.unionByName(taken_ids.select("customer_id"))
    pending = decided.filter(F.col("survivor_id").isNull()).select("cluster", "key_text")
    issued = _issue_new_ids(pending, taken)

    resolved = (decided.join(issued.withColumnRenamed("customer_id", "new_id"), on="cluster", how="left")
                .select("cluster", "homed", "visiting", "survivor_id",
                        F.coalesce("survivor_id", "new_id").alias("customer_id"),
                        F.coalesce("survivor_created", F.lit(run_id)).alias("created_run")))
    assigned = (clusters.join(resolved.select("cluster", "customer_id", "created_run"), on="cluster", how="inner")
                .select("id_type", "id_value", "cluster", "customer_id", "created_run"))

    if cluster_notes is None:
        cluster_notes = spark.createDataFrame([], "cluster long, note string")
    notes = cluster_notes.groupBy("cluster").agg(F.concat_ws("; ", F.sort_array(F.collect_set("note"))).alias("note"))
    events = resolved.join(notes, on="cluster", how="left")
    run = F.lit(run_id)
    new = (events.filter(F.col("survivor_id").isNull() & (F.size("visiting") == 0))
           .select(run.alias("run_id"), F.lit("new").alias("event"), "customer_id",
                   F.array().cast("array<string>").alias("old_ids"),
                   F.lit("new customer: none of its identifiers belonged to a customer").alias("reason")))
    split = (events.filter(F.col("survivor_id").isNull() & (F.size("visiting") > 0))
             .select(run.alias("run_id"), F.lit("split").alias("event"), "customer_id",
                     F.col("visiting").alias("old_ids"),
                     F.coalesce(F.concat(F.lit("split off: "), F.col("note")),
                                F.lit("split off: the links to the rest of the customer are gone (shared "
                                      "identifier or changed data)")).alias("reason")))
    merged_away = F.filter("homed", lambda x: x != F.col("survivor_id"))
    merge = (events.filter(F.size("homed") > 1)
             .select(run.alias("run_id"), F.lit("merge").alias("event"), "customer_id",
                     merged_away.alias("old_ids"),
                     F.lit("merged: new links joined these customers; the oldest customer id survives")
                     .alias("reason")))
    move = (events.filter(F.col("survivor_id").isNotNull() & (F.size("visiting") > 0))
            .select(run.alias("run_id"), F.lit("move").alias("event"), "customer_id",
                    F.col("visiting").alias("old_ids"),
                    F.lit("identifiers moved in from customers that kept their id elsewhere").alias("reason")))
    still_used = resolved.select(F.explode("homed").alias("prev_id"))
    retire = (previous.select("prev_id").distinct()
              .join(still_used, on="prev_id", how="left_anti")
              .select(run.alias("run_id"), F.lit("retire").alias("event"),
                      F.lit(None).cast("string").alias("customer_id"),
                      F.array("prev_id").alias("old_ids"),
                      F.lit("retired: none of its identifiers still links to a customer").alias("reason")))
    history = new.unionByName(split).unionByName(merge).unionByName(move).unionByName(retire)
    return assigned, history
