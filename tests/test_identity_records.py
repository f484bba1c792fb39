"""customer_id attached to a silver table's rows through customer_records, cut to the table's sources."""
from __future__ import annotations

from pyspark.testing import assertDataFrameEqual

from cdp.identity.records import records_of, with_customer_id

RECORDS = "source string, record_id string, customer_id string"


def test_rows_take_the_customer_of_their_own_sources_record(spark):
    records = spark.createDataFrame([
        ("orders", "1", "c-a"),
        ("web", "1", "c-b"),   # the same record id in another source
        ("orders", "2", "c-c"),
        ("app", "9", "c-d"),
    ], RECORDS)
    orders = spark.createDataFrame([("orders", "1", 10.0), ("orders", "2", 20.0), ("orders", "3", 30.0)],
                                   "source string, record_id string, amount double")

    assertDataFrameEqual(records_of(records, orders),
                         spark.createDataFrame([("orders", "1", "c-a"), ("orders", "2", "c-c")], RECORDS))
    # order 3 has no record: dropped, as by an inner join on (source, record_id)
    assertDataFrameEqual(with_customer_id(orders, records),
                         spark.createDataFrame([("orders", "1", 10.0, "c-a"), ("orders", "2", 20.0, "c-c")],
                                               "source string, record_id string, amount double, customer_id string"))


def test_a_table_of_several_sources_keeps_each_sources_records(spark):
    records = spark.createDataFrame([("web", "1", "c-b"), ("app", "1", "c-d"), ("orders", "1", "c-a")], RECORDS)
    events = spark.createDataFrame([("web", "1", "view"), ("app", "1", "open")],
                                   "source string, record_id string, event_type string")

    assertDataFrameEqual(with_customer_id(events, records).select("source", "event_type", "customer_id"),
                         spark.createDataFrame([("web", "view", "c-b"), ("app", "open", "c-d")],
                                               "source string, event_type string, customer_id string"))
