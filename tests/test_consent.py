"""Consent (latest event wins), channel eligibility and PII masking on tiny frames."""
from __future__ import annotations

from datetime import datetime

from pyspark.testing import assertDataFrameEqual

from cdp.privacy import channel_contacts, consent_current, eligibility, mask_pii

T1, T2 = datetime(2026, 1, 1), datetime(2026, 2, 1)
CONSENT = "source string, record_id string, channel string, granted boolean, event_time timestamp"
RECORDS = "source string, record_id string, customer_id string"


def test_latest_event_wins_across_sources_and_ties_favour_withdrawal(spark):
    records = spark.createDataFrame([("crm", "r1", "c1"), ("shop", "s1", "c1"), ("crm", "r2", "c2"),
                                     ("crm", "r3", "c3")], RECORDS)
    events = spark.createDataFrame([
        ("crm", "r1", "email", True, T1), ("shop", "s1", "email", False, T2),   # c1: later withdrawal in another source
        ("crm", "r1", "sms", False, T1), ("shop", "s1", "sms", True, T2),       # c1: later grant
        ("crm", "r2", "email", True, T2), ("crm", "r2", "email", False, T2),    # c2: tie -> withdrawal
        ("crm", "r9", "email", True, T2),                                       # unmapped record: dropped
        ("crm", "r3", "ads", None, T2),                                         # unknown grant: ignored
    ], CONSENT)
    result = consent_current(events, records).select("customer_id", "channel", "granted", "source")
    expected = spark.createDataFrame([("c1", "email", False, "shop"), ("c1", "sms", True, "shop"),
                                      ("c2", "email", False, "crm")],
                                     "customer_id string, channel string, granted boolean, source string")
    assertDataFrameEqual(result, expected)


def test_eligibility_requires_consent_identifier_and_no_suppression(spark):
    profile = spark.createDataFrame([("c1", "a@x.com", None), ("c2", None, "+861"), ("c3", "c@x.com", None),
                                     ("c4", "d@x.com", None)], "customer_id string, email string, phone string")
    identity_map = spark.createDataFrame(
        [("wechat_openid", "wxA:o1", "c1", False), ("wechat_openid", "wxB:o2", "c1", False),
         ("wechat_openid", "wxA:o3", "c2", True)], "id_type string, id_value string, customer_id string, is_shared boolean")
    consent = spark.createDataFrame([("c1", "email", True), ("c2", "email", True), ("c3", "email", False),
                                     ("c4", "email", True), ("c1", "wechat", True), ("c2", "wechat", True)],
                                    "customer_id string, channel string, granted boolean")
    suppressed = spark.createDataFrame([("c4",)], "customer_id string")
    email = eligibility(channel_contacts(profile, identity_map, "email"), consent, "email", suppressed=suppressed)
    assertDataFrameEqual(email.select("customer_id", "email", "reachable", "has_consent", "is_suppressed", "eligible"),
                         spark.createDataFrame([
                             ("c1", "a@x.com", True, True, False, True),
                             ("c2", None, False, True, False, False),
                             ("c3", "c@x.com", True, False, False, False),
                             ("c4", "d@x.com", True, True, True, False)],
                             "customer_id string, email string, reachable boolean, has_consent boolean, "
                             "is_suppressed boolean, eligible boolean"))
    # wechat: the open id of the asked official account; a shared open id never counts
    wechat = eligibility(channel_contacts(profile, identity_map, "wechat", wechat_appid="wxA"), consent, "wechat")
    assertDataFrameEqual(wechat.filter("eligible").select("customer_id", "wechat_openid"),
                         spark.createDataFrame([("c1", "wxA:o1")], "customer_id string, wechat_openid string"))


def test_mask_pii_by_default_and_reveal_on_request(spark):
    df = spark.createDataFrame([("c1", "jane@example.com", "+8613800138000", "Jane", 3)],
                               "customer_id string, email string, phone string, name string, orders int")
    masked = mask_pii(df)
    assertDataFrameEqual(masked, spark.createDataFrame(
        [("c1", "j***@example.com", "***8000", "J**", 3)],
        "customer_id string, email string, phone string, name string, orders int"))
    assert masked.columns == df.columns
    assertDataFrameEqual(mask_pii(df, reveal=True), df)
