"""Training labels: what a customer did after a snapshot instant."""
from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdp.features.build import as_of_instant


def purchase_labels(orders: DataFrame, customer_records: DataFrame, as_of: date, horizon_days: int) -> DataFrame:
    """Orders and spend of each customer in ``[as_of, as_of + horizon_days)`` (the future of a snapshot
    built as of ``as_of``, which uses only data before ``as_of``).

    Input: silver_orders, customer_records. Output: customer_id, label_orders long, label_revenue double
    (only customers with at least one non-cancelled order in the horizon).
    """
    start = as_of_instant(as_of)
    end = as_of_instant(as_of + timedelta(days=horizon_days))
    return (orders.join(customer_records.select("source", "record_id", "customer_id"),
                        on=["source", "record_id"], how="inner")
            .where((F.col("order_time") >= F.lit(start)) & (F.col("order_time") < F.lit(end))
                   & ~F.col("status").eqNullSafe("cancelled"))  # a NULL status is not a cancellation
            .groupBy("customer_id")
            .agg(F.count("order_id").alias("label_orders"), F.sum("total_amount").alias("label_revenue"))
            .select("customer_id", "label_orders", "label_revenue"))
