"""Spark schemas of the inputs the feature build reads (the contract in docs/ARCHITECTURE.md).

Used to build empty frames (the feature schema is derived by analysing the plan over them, no job
runs) and by tests to build hand-made inputs.
"""
from __future__ import annotations

from pyspark.sql import types as T

CUSTOMER_RECORDS = T.StructType([
    T.StructField("source", T.StringType()),
    T.StructField("record_id", T.StringType()),
    T.StructField("customer_id", T.StringType()),
])

CUSTOMER_PROFILE = T.StructType([
    T.StructField("customer_id", T.StringType()),
    T.StructField("gender", T.StringType()),
    T.StructField("birth_date", T.DateType()),
    T.StructField("city", T.StringType()),
    T.StructField("province", T.StringType()),
    T.StructField("city_tier", T.IntegerType()),
    T.StructField("member_level", T.StringType()),
    T.StructField("member_since", T.DateType()),
])

ORDERS = T.StructType([
    T.StructField("order_id", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("record_id", T.StringType()),
    T.StructField("order_time", T.TimestampType()),
    T.StructField("channel", T.StringType()),
    T.StructField("store_id", T.StringType()),
    T.StructField("status", T.StringType()),
    T.StructField("total_amount", T.DoubleType()),
    T.StructField("discount_amount", T.DoubleType()),
    T.StructField("coupon_code", T.StringType()),
    T.StructField("payment_method", T.StringType()),
    T.StructField("currency", T.StringType()),
])

ORDER_LINES = T.StructType([
    T.StructField("order_id", T.StringType()),
    T.StructField("line_no", T.IntegerType()),
    T.StructField("product_id", T.StringType()),
    T.StructField("category", T.StringType()),
    T.StructField("quantity", T.IntegerType()),
    T.StructField("unit_price", T.DoubleType()),
    T.StructField("line_amount", T.DoubleType()),
])

RETURNS = T.StructType([
    T.StructField("return_id", T.StringType()),
    T.StructField("order_id", T.StringType()),
    T.StructField("product_id", T.StringType()),
    T.StructField("quantity", T.IntegerType()),
    T.StructField("refund_amount", T.DoubleType()),
    T.StructField("return_time", T.TimestampType()),
])

EVENTS = T.StructType([
    T.StructField("event_id", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("record_id", T.StringType()),
    T.StructField("event_type", T.StringType()),
    T.StructField("channel", T.StringType()),
    T.StructField("event_time", T.TimestampType()),
    T.StructField("session_id", T.StringType()),
    T.StructField("product_id", T.StringType()),
    T.StructField("category", T.StringType()),
    T.StructField("attributes", T.MapType(T.StringType(), T.StringType())),
])

CONSENT = T.StructType([
    T.StructField("source", T.StringType()),
    T.StructField("record_id", T.StringType()),
    T.StructField("channel", T.StringType()),
    T.StructField("granted", T.BooleanType()),
    T.StructField("event_time", T.TimestampType()),
])

# lake table name -> schema of the columns the feature build reads
INPUT_SCHEMAS: dict[str, T.StructType] = {
    "customer_records": CUSTOMER_RECORDS,
    "customer_profile": CUSTOMER_PROFILE,
    "silver_orders": ORDERS,
    "silver_order_lines": ORDER_LINES,
    "silver_returns": RETURNS,
    "silver_events": EVENTS,
    "silver_consent": CONSENT,
}
