"""`cdp audiences` end to end on a tiny hand-made lake: consent, reachability, gates, changes, preview.

The scenario builder here is reused by the export and forget tests.
"""
from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.runtime.config import JobContext, Profile

AS_OF = date(2026, 11, 1)
T0 = datetime(2026, 10, 1, 9, 0)
T1 = datetime(2026, 10, 20, 9, 0)
T_CART = datetime(2026, 10, 30, 12, 0)

# c1 gold, email + sms consent, abandoned cart -> in both audiences
# c2 gold, granted then withdrew email consent      -> excluded: no consent
# c3 gold, granted, but has no email                  -> excluded: unreachable
# c4 gold, never gave consent                         -> excluded: no consent
# c5 silver                                          -> not matched
# c6 gold, email consent                              -> member
PROFILE = [
    ("c1", "Ann", "F", "a@x.com", "+8613800000001", 1),
    ("c2", "Bob", "M", "b@x.com", None, 2),
    ("c3", "Cy", "M", None, None, 1),
    ("c4", "Di", "F", "d@x.com", None, 3),
    ("c5", "Ed", "M", "e@x.com", None, 1),
    ("c6", "Flo", "F", "f@x.com", None, 2),
]
TIERS = {"c1": "gold", "c2": "gold", "c3": "gold", "c4": "gold", "c5": "silver", "c6": "gold"}

VIP_EMAIL = {
    "name": "vip_email", "channel": "email", "description": "gold customers by e-mail",
    "where": {"tag": "value_tier", "in": ["gold", "platinum"]},
    "destinations": [{"name": "ads_upload", "format": "csv", "hashed": True},
                     {"name": "esp", "format": "jsonl", "hashed": False}],
}
CART_SMS = {
    "name": "cart_sms", "channel": "sms",
    "where": {"all": [{"did": "add_to_cart", "not_followed_by": "checkout", "within_days": 7},
                      {"profile": "city_tier", "<=": 2}]},
    "destinations": [{"name": "sms_gateway", "format": "parquet", "hashed": False}],
}


def make_conf(tmp_path: Path, repo_conf: Path, audiences: list[dict]) -> Path:
    conf = tmp_path / "conf"
    (conf / "audiences").mkdir(parents=True, exist_ok=True)
    for name in ("quality.yaml", "identity.yaml", "sources.yaml"):
        shutil.copy(repo_conf / name, conf / name)
    for spec in audiences:
        (conf / "audiences" / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
    return conf


def make_ctx(conf: Path, lake_root: str, run_id: str) -> JobContext:
    return JobContext(conf_dir=conf, profile=Profile(name="local", lake=lake_root), lake_root=lake_root,
                      run_id=run_id)


def build_lake(spark, lake) -> None:
    """Every input table of audiences / export / forget, in the contract schemas, with a few rows."""
    lake.write(spark.createDataFrame(PROFILE, "customer_id string, name string, gender string, email string, "
                                              "phone string, city_tier int"), "customer_profile")
    idmap = []
    for cid, _, _, email, phone, _ in PROFILE:
        idmap.append(("member_id", f"M{cid[1:]}", cid, False))
        if email:
            idmap.append(("email", email, cid, False))
        if phone:
            idmap.append(("phone", phone, cid, False))
    idmap += [("order_id", "O1", "c1", False), ("device_id", "dev-shared", "c5", True)]
    lake.write(spark.createDataFrame([(*r, "run0") for r in idmap],
                                     "id_type string, id_value string, customer_id string, is_shared boolean, "
                                     "updated_run string"), "identity_map")
    records = [("crm_members", f"M{cid[1:]}", cid) for cid, *_ in PROFILE] + [("orders", "O1", "c1"),
                                                                              ("events", "E1", "c1")]
    lake.write(spark.createDataFrame(records, "source string, record_id string, customer_id string"),
               "customer_records")
    identifiers = [("crm_members", f"M{cid[1:]}", "email", email, f" {email.upper()} ", T0)
                   for cid, _, _, email, *_ in PROFILE if email]
    identifiers += [("crm_members", f"M{cid[1:]}", "member_id", f"M{cid[1:]}", f"M{cid[1:]}", T0) for cid, *_ in PROFILE]
    lake.write(spark.createDataFrame(identifiers, "source string, record_id string, id_type string, id_value string, "
                                                  "raw_value string, observed_at timestamp"), "silver_identifiers")
    consent = [("crm_members", "M1", "email", True, T0), ("crm_members", "M1", "sms", True, T0),
               ("crm_members", "M2", "email", True, T0), ("crm_members", "M2", "email", False, T1),
               ("crm_members", "M3", "email", True, T0), ("crm_members", "M5", "email", True, T0),
               ("crm_members", "M6", "email", True, T0), ("crm_members", "M9", "email", True, T0)]
    lake.write(spark.createDataFrame(consent, "source string, record_id string, channel string, granted boolean, "
                                              "event_time timestamp"), "silver_consent")
    lake.write(spark.createDataFrame(
        [("E1", "events", "E1", "add_to_cart", "web", T_CART, "s1", "P1", "shoes", {})],
        "event_id string, source string, record_id string, event_type string, channel string, event_time timestamp, "
        "session_id string, product_id string, category string, attributes map<string,string>"), "silver_events")
    lake.write(spark.createDataFrame(
        [("O1", "orders", "O1", T0, "online", None, "paid", 100.0, 0.0, None, "alipay", "CNY")],
        "order_id string, source string, record_id string, order_time timestamp, channel string, store_id string, "
        "status string, total_amount double, discount_amount double, coupon_code string, payment_method string, "
        "currency string"), "silver_orders")
    lake.write(spark.createDataFrame([("O1", 1, "P1", "shoes", 1, 100.0, 100.0)],
                                     "order_id string, line_no int, product_id string, category string, quantity int, "
                                     "unit_price double, line_amount double"), "silver_order_lines")
    lake.write(spark.createDataFrame(
        [(cid, AS_OF, T1, "tagrun", TIERS[cid], 0.5) for cid, *_ in PROFILE],
        "customer_id string, as_of date, computed_at timestamp, run_id string, value_tier string, churn_risk double"),
        "tags_wide")
    lake.write(spark.createDataFrame(
        [(cid, "value_tier", TIERS[cid], "rule", "def:x", T1, AS_OF, "tagrun") for cid, *_ in PROFILE],
        "customer_id string, tag string, value string, kind string, version string, computed_at timestamp, "
        "as_of date, run_id string"), "tags_long")
    lake.write(spark.createDataFrame([(cid, AS_OF, 1) for cid, *_ in PROFILE],
                                     "customer_id string, as_of date, orders_count_lifetime int"),
               "features_daily", partition_by=["as_of"])
    lake.write(spark.createDataFrame(
        [(f"M{cid[1:]}", email, "crm/a.csv", 1, "load1", T0) for cid, _, _, email, *_ in PROFILE],
        "member_no string, email string, _source_file string, _line long, _load_id string, _ingested_at timestamp"),
        "bronze_crm_members")


_PRISTINE: dict[Path, tuple[Path, object]] = {}  # repo conf -> (untouched copy of the scenario, its run result)


def publish_scenario(spark, root: Path, repo_conf: Path):
    """A lake with every input and both audiences published once (run 'run1'), in ``root``.

    Built once per test session; later callers (export, forget) get a copy of the untouched folder,
    lake and conf, which is a valid lake: Delta logs address their files relative to the table.
    """
    from cdp.jobs import audiences
    from cdp.lake import Lake

    if repo_conf in _PRISTINE:
        pristine, result = _PRISTINE[repo_conf]
        shutil.copytree(pristine, root, dirs_exist_ok=True)
        return Lake(spark, str(root / "lake")), root / "conf", result
    lake = Lake(spark, str(root / "lake"))
    build_lake(spark, lake)
    conf = make_conf(root, repo_conf, [VIP_EMAIL, CART_SMS])
    result = audiences.run(spark, make_ctx(conf, lake.root, "run1"), lake=lake, as_of=AS_OF)
    pristine = root.parent / f"{root.name}-pristine"  # in pytest's temp folder, cleaned with it
    shutil.copytree(root, pristine)
    _PRISTINE[repo_conf] = (pristine, result)
    return lake, conf, result


@pytest.fixture(scope="module")
def scenario(spark, tmp_path_factory, conf_dir):
    # built once per module: the tests below read it, and the last one extends it
    return publish_scenario(spark, tmp_path_factory.mktemp("audiences"), conf_dir)


def test_publish_members_consent_and_counts(spark, scenario):
    lake, conf, result = scenario
    assert result.failed == {}
    vip = lake.read("audience_vip_email").select("customer_id", "channel", "email", "phone", "in_control")
    expected = spark.createDataFrame([("c1", "email", "a@x.com", None, False), ("c6", "email", "f@x.com", None, False)],
                                     "customer_id string, channel string, email string, phone string, in_control boolean")
    assertDataFrameEqual(vip, expected)
    counts = result.counts["vip_email"]
    assert (counts.matched, counts.no_consent, counts.unreachable, counts.suppressed, counts.members) == (5, 2, 1, 0, 2)
    cart = lake.read("audience_cart_sms").select("customer_id", "phone", "email")
    assertDataFrameEqual(cart, spark.createDataFrame([("c1", "+8613800000001", None)],
                                                     "customer_id string, phone string, email string"))
    consent = lake.read("consent_current").filter("customer_id = 'c2'").select("channel", "granted")
    assertDataFrameEqual(consent, spark.createDataFrame([("email", False)], "channel string, granted boolean"))
    changes = lake.read("audience_changes").select("audience", "customer_id", "change", "publish_version")
    assertDataFrameEqual(changes, spark.createDataFrame(
        [("vip_email", "c1", "entered", 0), ("vip_email", "c6", "entered", 0), ("cart_sms", "c1", "entered", 0)],
        "audience string, customer_id string, change string, publish_version long"))
    report = Path(lake.root) / "_reports" / "quality" / "run1" / "audience_vip_email.html"
    assert "PASSED" in report.read_text()


def test_preview_prints_size_overlap_and_composition(spark, scenario):
    from cdp.jobs import audiences

    lake, conf, _ = scenario
    preview = audiences.preview(spark, make_ctx(conf, lake.root, "p1"), "vip_email", lake=lake, as_of=AS_OF)
    assert (preview.counts.members, preview.counts.matched, preview.counts.no_consent) == (2, 5, 2)
    assert preview.overlap == {"cart_sms": 1}
    assert ("value_tier", "gold", 2, 1.0) in preview.composition
    text = audiences.format_preview(preview)
    assert "size 2" in text and "cart_sms" in text


def test_unknown_tag_is_a_config_error_naming_file_and_key(spark, lake, tmp_path, conf_dir):
    from cdp.jobs import audiences
    from cdp.runtime.config import ConfigError

    build_lake(spark, lake)
    bad = {"name": "oops", "channel": "email", "where": {"all": [{"tag": "value_tier", "=": "gold"},
                                                                 {"tag": "shoe_size", ">": 40}]}}
    conf = make_conf(tmp_path, conf_dir, [bad])
    with pytest.raises(ConfigError, match=r"oops\.yaml: where\.all\[1\]\.tag: unknown tag 'shoe_size'"):
        audiences.run(spark, make_ctx(conf, lake.root, "r"), lake=lake, as_of=AS_OF)
    (conf / "audiences" / "oops.yaml").write_text(yaml.safe_dump({**bad, "where": {"tag": "value_tier", "~": 1}}))
    with pytest.raises(ConfigError, match=r"oops\.yaml: where\.~: unknown operator"):
        audiences.run(spark, make_ctx(conf, lake.root, "r"), lake=lake, as_of=AS_OF)


def test_republish_records_exits_and_gate_blocks_consentless_member(spark, scenario):
    from cdp.jobs import audiences
    from cdp.jobs.entry import JobFailed

    lake, conf, _ = scenario
    # c6 withdraws e-mail consent: the next publish drops c6 and records the exit
    lake.write(spark.createDataFrame([("crm_members", "M6", "email", False, T_CART)],
                                     "source string, record_id string, channel string, granted boolean, "
                                     "event_time timestamp"), "silver_consent", mode="append")
    result = audiences.run(spark, make_ctx(conf, lake.root, "run2"), lake=lake, as_of=AS_OF, names=["vip_email"])
    assert result.published == {"vip_email": 1}
    changes = (lake.read("audience_changes").filter("publish_version = 1")
               .select("audience", "customer_id", "change"))
    assertDataFrameEqual(changes, spark.createDataFrame([("vip_email", "c6", "exited")],
                                                        "audience string, customer_id string, change string"))

    # a candidate holding a member without consent never gets published (gate on the real suite)
    from cdp.runtime.gates import publish_with_gates

    bad = lake.read("audience_vip_email").unionByName(
        lake.read("audience_vip_email").limit(1).withColumn("customer_id", F.lit("c4")))
    consent = lake.read("consent_current")
    with pytest.raises(JobFailed, match="has_consent"):
        publish_with_gates(lake, bad, "audience_vip_email", "audience", make_ctx(conf, lake.root, "run3"),
                           inputs={"consent_current": consent},
                           params={"audience_compliance": {"channel": "email"}})
    assert lake.version("audience_vip_email") == 1
    assert lake.read("audience_vip_email").filter("customer_id = 'c4'").count() == 0


def test_an_audience_selects_by_past_publishes_and_message_responses(spark, tmp_path, conf_dir):
    """vip_email published c1 and c6 (run1); c1 opened the e-mail that export sent: a follow-up to
    everyone who entered vip_email in the last 30 days and did not open it is c6 alone."""
    from cdp.jobs import audiences

    lake, conf, _ = publish_scenario(spark, tmp_path, conf_dir)
    lake.write(spark.createDataFrame([("email_responses", "R1", "c1")],
                                     "source string, record_id string, customer_id string"),
               "customer_records", mode="append")
    lake.write(spark.createDataFrame(
        [("email_responses:R1", "email_responses", "R1", "email_open", "email", T_CART, None, None, None,
          {"message_id": "vip_email.esp.v0", "audience": "vip_email"})],
        "event_id string, source string, record_id string, event_type string, channel string, event_time timestamp, "
        "session_id string, product_id string, category string, attributes map<string,string>"),
        "silver_events", mode="append")
    follow_up = {"name": "vip_follow_up", "channel": "email",
                 "where": {"all": [{"entered_audience": "vip_email", "within_days": 30},
                                   {"not": {"message": "vip_email.esp.v0", "response": "opened"}}]}}
    (conf / "audiences" / "vip_follow_up.yaml").write_text(yaml.safe_dump(follow_up))
    result = audiences.run(spark, make_ctx(conf, lake.root, "run2"), lake=lake, as_of=AS_OF,
                           names=["vip_follow_up"])
    assert result.published == {"vip_follow_up": 0}
    assertDataFrameEqual(lake.read("audience_vip_follow_up").select("customer_id", "in_control"),
                         spark.createDataFrame([("c6", False)], "customer_id string, in_control boolean"))

    # a goal no audience declares is a config error naming file and key
    (conf / "audiences" / "vip_follow_up.yaml").write_text(yaml.safe_dump(
        {**follow_up, "where": {"goal": "checkout_7d", "audience": "vip_email"}}))
    from cdp.runtime.config import ConfigError

    with pytest.raises(ConfigError, match=r"vip_follow_up\.yaml: where\.goal: audience 'vip_email' has no goal"):
        audiences.run(spark, make_ctx(conf, lake.root, "run3"), lake=lake, as_of=AS_OF, names=["vip_follow_up"])
