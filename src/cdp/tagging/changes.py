"""What changed in one tag between two versions of tags_wide: value transitions per customer.

tags_wide is overwritten by each ``cdp tag`` run, so its Delta versions hold every earlier run's
values. ``cdp tags changes NAME`` reads two of them and prints what :func:`tag_transitions` returns.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# how a customer without a row in one of the two versions shows (a new customer, or one forgotten)
NO_ROW = "(no row)"


def tag_transitions(current: DataFrame, previous: DataFrame, tag: str) -> DataFrame:
    """Customers per (previous value, current value) of ``tag``, most customers first.

    Input: two tags_wide versions (``customer_id`` and the tag's column; a version without the column,
    from before the tag existed, counts as every value null). Values compare as strings; a null value
    stays null; a customer in only one version shows :data:`NO_ROW` on the other side.
    Output: previous string, current string, changed boolean (values differ, nulls included), customers long.
    """
    def values(df: DataFrame, side: str) -> DataFrame:
        value = F.col(tag).cast("string") if tag in df.columns else F.lit(None).cast("string")
        return df.select("customer_id", value.alias(side), F.lit(True).alias(f"_in_{side}"))

    joined = values(current, "current").join(values(previous, "previous"), on="customer_id", how="full_outer")
    shown = {side: F.when(F.col(f"_in_{side}").isNull(), F.lit(NO_ROW)).otherwise(F.col(side))
             for side in ("previous", "current")}
    return (joined.groupBy(shown["previous"].alias("previous"), shown["current"].alias("current"))
            .agg(F.count(F.lit(1)).alias("customers"))
            .withColumn("changed", ~F.col("previous").eqNullSafe(F.col("current")))
            .select("previous", "current", "changed", "customers")
            .orderBy(F.col("customers").desc(), F.col("previous").asc_nulls_first(), F.col("current").asc_nulls_first()))
