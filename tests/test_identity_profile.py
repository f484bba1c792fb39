"""Golden record: each survivorship rule picks its winner and records the winning source."""
from __future__ import annotations

from datetime import date, datetime

from pyspark.testing import assertDataFrameEqual

from cdp.identity import IdentityConfig, build_profile
from cdp.identity.config import PROFILE_ATTRIBUTES

ATTRIBUTES = ("source string, record_id string, observed_at timestamp, name string, gender string, "
              "birth_date date, city string, province string, city_tier int, member_level string, "
              "member_since date")
OBSERVATIONS = "source string, id_type string, id_value string, observed_at timestamp, status string"


def test_survivorship_rules(spark):
    config = IdentityConfig.from_dict({
        "types": {"email": {"normalizer": "email", "priority": 60, "limit": 5},
                  "phone": {"normalizer": "phone", "priority": 70, "limit": 3}},
        "survivorship": {"source_priority": ["crm", "pos"],
                         "attributes": {"name": "source_priority", "gender": "most_frequent",
                                        "city": "most_recent", "member_since": "first_non_null",
                                        "email": "most_recent", "phone": "most_frequent"}},
    })
    t = [datetime(2026, 1, d) for d in range(1, 6)]
    attributes = spark.createDataFrame([
        ("web", "w1", t[4], "Wang F", "F", None, "Shanghai", "Shanghai", 1, "gold", date(2021, 5, 1)),
        ("crm", "c1", t[0], "Wang Fang", "M", date(1990, 3, 4), "Beijing", "Beijing", 1, "silver", None),
        ("pos", "p1", t[1], "W. Fang", "F", None, None, None, None, None, date(2020, 1, 1)),
        ("web", "w2", t[2], None, None, None, None, None, None, None, None),
        ("web", "zz", t[2], "Somebody Else", "M", None, "Xi'an", None, None, None, None),  # another customer
    ], ATTRIBUTES)
    records = spark.createDataFrame([("web", "w1", "c-1"), ("crm", "c1", "c-1"), ("pos", "p1", "c-1"),
                                     ("web", "w2", "c-1"), ("web", "zz", "c-2"), ("app", "n1", "c-3")],
                                    "source string, record_id string, customer_id string")
    identity_map = spark.createDataFrame([
        ("email", "old@x.com", "c-1", False), ("email", "new@x.com", "c-1", False),
        ("phone", "+8613900000001", "c-1", False), ("phone", "+8613900000002", "c-1", False),
        ("phone", "+8613999999999", "c-1", True),   # shared: never a profile value
    ], "id_type string, id_value string, customer_id string, is_shared boolean")
    observations = spark.createDataFrame([
        ("crm", "email", "old@x.com", t[0], "valid"), ("web", "email", "new@x.com", t[3], "valid"),
        ("pos", "phone", "+8613900000001", t[1], "valid"), ("web", "phone", "+8613900000001", t[2], "valid"),
        ("crm", "phone", "+8613900000002", t[4], "valid"), ("app", "phone", "+8613999999999", t[4], "valid"),
    ], OBSERVATIONS)
    profile = build_profile(attributes, observations, records, identity_map, config)
    schema = ("customer_id string, name string, gender string, birth_date date, city string, province string, "
              "city_tier int, member_level string, member_since date, email string, phone string, "
              + ", ".join(f"{a}_source string" for a in PROFILE_ATTRIBUTES))
    expected = spark.createDataFrame([
        ("c-1", "Wang Fang", "F", date(1990, 3, 4), "Shanghai", "Shanghai", 1, "gold", date(2020, 1, 1),
         "new@x.com", "+8613900000001",
         "crm", "web", "crm", "web", "web", "web", "web", "pos", "web", "web"),
        ("c-2", "Somebody Else", "M", None, "Xi'an", None, None, None, None, None, None,
         "web", "web", None, "web", None, None, None, None, None, None),
        ("c-3", *([None] * 20)),
    ], schema)
    assertDataFrameEqual(profile, expected)
