"""Standardisation: bronze -> silver, compared whole; dedup on natural keys; invalid ids quarantined."""
from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from cdp.jobs.land import run as land
from cdp.jobs.standardize import SILVER_SCHEMAS, load_normalizers, normalize_identifiers
from cdp.jobs.standardize import run as standardize
from cdp.lake import Lake
from cdp.runtime.config import ConfigError, JobContext, Profile

SOURCES_YAML = """
defaults: {timezone: Asia/Shanghai}
sources:
  crm:
    path: crm/*.csv
    format: csv
    record_id: member_no
    on_duplicate_key: latest
    event_time: updated
    fields:
      member_no: {type: string, required: true}
      mobile: string
      email: string
      unionid: string
      name: string
      gender: string
      city: string
      updated: {type: timestamp, format: "yyyy/MM/dd HH:mm:ss", required: true}
      opt_in: boolean
    identifiers:
      - {type: member_id, field: member_no}
      - {type: phone, field: mobile}
      - {type: email, field: email}
      - {type: wechat_unionid, field: unionid}
    attributes:
      name: name
      gender: {field: gender, map: {"女": F, "男": M, F: F, M: M}}
      city: city
      city_tier: {field: city, map: {"上海": 1, "北京": 1, "温州": 3}}
    consent:
      - {channel: {value: email}, granted: opt_in, event_time: updated}
  wechat:
    path: wechat/*.jsonl
    format: jsonl
    record_id: [appid, openid]
    event_time: sub
    fields:
      appid: {type: string, required: true}
      openid: {type: string, required: true}
      unionid: string
      sub: {type: timestamp, format: epoch_s, required: true}
      unsub: {type: timestamp, format: epoch_s}
    identifiers:
      - {type: wechat_openid, field: openid, qualifier: appid}
      - {type: wechat_unionid, field: unionid}
    events:
      - {event_type: {value: wechat_follow}, channel: {value: wechat}, event_time: sub, attributes: {appid: appid}}
      - {event_type: {value: wechat_unfollow}, channel: {value: wechat}, event_time: unsub}
    consent:
      - {channel: {value: wechat}, granted: {value: true}, event_time: sub}
      - {channel: {value: wechat}, granted: {value: false}, event_time: unsub}
"""
HEADER = "member_no,mobile,email,unionid,name,gender,city,updated,opt_in"


def _setup(root: Path) -> tuple[Path, JobContext]:
    raw = root / "raw"
    (raw / "crm").mkdir(parents=True)
    (raw / "wechat").mkdir()
    (raw / "crm" / "full.csv").write_text("\n".join([
        HEADER,
        "M1,+86 138 0013 8000, Wang@QQ.com,oU1,王芳,女,上海,2024/01/01 08:00:00,1",
        "M2,N/A,li@163.com,,Li Na,F,北京,2024/01/01 08:00:00,0",
    ]) + "\n", encoding="utf-8")
    # The delta export changes M1 later (newer wins) and repeats M2 unchanged (a duplicate).
    (raw / "crm" / "delta.csv").write_text("\n".join([
        HEADER,
        "M1,１３９ ００１３ ９０００,wang@qq.com,oU1,王芳,女,上海,2024/02/01 08:00:00,0",
        "M2,N/A,li@163.com,,Li Na,F,北京,2024/01/01 08:00:00,0",
    ]) + "\n", encoding="utf-8")
    (raw / "wechat" / "followers.jsonl").write_text(
        '{"appid": "wxA", "openid": "o1", "unionid": "oU1", "sub": 1706745600, "unsub": "1709251200"}\n'
        '{"appid": "wxB", "openid": "o2", "sub": 1706745600}\n', encoding="utf-8")
    conf = root / "conf"
    conf.mkdir()
    (conf / "sources.yaml").write_text(SOURCES_YAML, encoding="utf-8")
    shutil.copy(Path(__file__).resolve().parents[1] / "conf" / "identity.yaml", conf / "identity.yaml")
    lake_root = str(root / "lake")
    return raw, JobContext(conf_dir=conf, profile=Profile("test", lake_root), lake_root=lake_root,
                           run_id="test-run")


@pytest.fixture(scope="module")
def silver(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory):
    raw, ctx = _setup(tmp_path_factory.mktemp("std"))
    lake = Lake(spark, ctx.lake_root)
    land(spark, ctx, raw=str(raw), lake=lake)
    result = standardize(spark, ctx, lake=lake)
    return ctx, lake, result


FEB = datetime(2024, 2, 1)  # 2024/02/01 08:00 Shanghai = 1706745600 = 2024-02-01 00:00 UTC
JAN = datetime(2024, 1, 1)
MAR = datetime(2024, 3, 1)


def test_silver_identifiers(spark: SparkSession, silver) -> None:
    _, lake, _ = silver
    expected = spark.createDataFrame([
        ("crm", "M1", "member_id", "M1", "M1", FEB, None),
        ("crm", "M1", "phone", "+8613900139000", "１３９ ００１３ ９０００", FEB, None),
        ("crm", "M1", "email", "wang@qq.com", "wang@qq.com", FEB, None),
        ("crm", "M1", "wechat_unionid", "oU1", "oU1", FEB, None),
        ("crm", "M2", "member_id", "M2", "M2", JAN, None),
        ("crm", "M2", "email", "li@163.com", "li@163.com", JAN, None),
        ("wechat", "wxA:o1", "wechat_openid", "wxA:o1", "o1", FEB, None),
        ("wechat", "wxA:o1", "wechat_unionid", "oU1", "oU1", FEB, None),
        ("wechat", "wxB:o2", "wechat_openid", "wxB:o2", "o2", FEB, None),
    ], SILVER_SCHEMAS["silver_identifiers"])
    assertDataFrameEqual(lake.read("silver_identifiers"), expected)


def test_silver_attributes_consent_events(spark: SparkSession, silver) -> None:
    _, lake, _ = silver
    assertDataFrameEqual(lake.read("silver_customer_attributes"), spark.createDataFrame([
        ("crm", "M1", FEB, "王芳", "F", None, "上海", None, 1, None, None),
        ("crm", "M2", JAN, "Li Na", "F", None, "北京", None, 1, None, None),
    ], SILVER_SCHEMAS["silver_customer_attributes"]))
    assertDataFrameEqual(lake.read("silver_consent"), spark.createDataFrame([
        ("crm", "M1", "email", False, FEB),
        ("crm", "M2", "email", False, JAN),
        ("wechat", "wxA:o1", "wechat", True, FEB),
        ("wechat", "wxA:o1", "wechat", False, MAR),
        ("wechat", "wxB:o2", "wechat", True, FEB),
    ], SILVER_SCHEMAS["silver_consent"]))
    assertDataFrameEqual(lake.read("silver_events"), spark.createDataFrame([
        ("wechat:wxA:o1#0", "wechat", "wxA:o1", "wechat_follow", "wechat", FEB, None, None, None, {"appid": "wxA"}),
        ("wechat:wxA:o1#1", "wechat", "wxA:o1", "wechat_unfollow", "wechat", MAR, None, None, None, {}),
        ("wechat:wxB:o2#0", "wechat", "wxB:o2", "wechat_follow", "wechat", FEB, None, None, None, {"appid": "wxB"}),
    ], SILVER_SCHEMAS["silver_events"]))
    for empty in ("silver_orders", "silver_order_lines", "silver_returns", "silver_products"):
        assert lake.read(empty).count() == 0


def test_invalid_identifiers_are_quarantined_with_reason(spark: SparkSession, silver) -> None:
    _, lake, result = silver
    got = lake.read("quarantine").filter("stage = 'standardize'").select("source", "file", "line", "field", "raw",
                                                                        "reason")
    # M2's "N/A" phone: of two identical copies the dedup keeps the last by file name (full.csv).
    assertDataFrameEqual(got, spark.createDataFrame([
        ("crm", "crm/full.csv", 3, "mobile", "N/A", "mobile: invalid phone after normaliser phone (record M2)"),
    ], "source string, file string, line long, field string, raw string, reason string"))
    assert result.invalid_identifiers == {"crm.mobile": 1}


def test_rerun_rebuilds_the_same_silver(spark: SparkSession, silver) -> None:
    ctx, lake, first = silver
    before = {name: sorted(map(tuple, lake.read(name).collect())) for name in SILVER_SCHEMAS}
    again = standardize(spark, ctx, lake=lake)
    after = {name: sorted(map(tuple, lake.read(name).collect())) for name in SILVER_SCHEMAS}
    assert after == before and again.rows == first.rows
    assert lake.read("quarantine").filter("stage = 'standardize'").count() == 1


def test_normaliser_and_type_errors_name_file_and_key(spark: SparkSession, tmp_path: Path) -> None:
    identity = tmp_path / "identity.yaml"
    identity.write_text("types:\n  phone: {normalizer: e164}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"identity\.yaml: types\.phone\.normalizer: unknown normaliser 'e164'"):
        load_normalizers(identity)
    _, ctx = _setup(tmp_path / "bad")
    (ctx.conf_dir / "sources.yaml").write_text(SOURCES_YAML.replace("type: wechat_unionid", "type: union_id"),
                                               encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sources\.yaml: sources\.crm\.identifiers\[3\]\.type: 'union_id'"):
        standardize(spark, ctx, lake=Lake(spark, ctx.lake_root))


def test_normalize_identifiers_per_type_with_qualifier(spark: SparkSession) -> None:
    """Spark-expression types on every row, the phone type through its distinct-value lookup, a
    type without a normaliser gets null; qualifiers prefix valid values only; other columns kept."""
    raw = spark.createDataFrame([
        ("r1", "email", " Wang.Fang@QQ.COM ", None),
        ("r2", "email", "not-an-email", None),
        ("r3", "phone", "+86 138 0013 8000", None),
        ("r4", "phone", "+86 138 0013 8000", None),  # the same number again
        ("r5", "phone", "12", None),
        ("r6", "wechat_openid", "  oAbC ", "wxapp1"),
        ("r7", "wechat_openid", "   ", "wxapp1"),
        ("r8", "member_id", "ｍ００１", None),
        ("r9", "fax", "123", None),
        ("r10", "service_phone", "021-6234 5678", None),  # a second type on the phone normaliser
        ("r11", "phone", "400-820-8820", None),  # a shared-cost service line: valid, links nobody
    ], "record_id string, id_type string, raw_value string, qualifier string")
    normalizers = {"email": "email", "phone": "phone", "wechat_openid": "trim", "member_id": "trim_upper",
                   "service_phone": "phone"}
    result = normalize_identifiers(raw, normalizers)
    assert result.columns == ["id_type", "raw_value", "record_id", "qualifier", "id_value", "non_personal"]
    expected = spark.createDataFrame([
        ("email", " Wang.Fang@QQ.COM ", "r1", None, "wang.fang@qq.com", None),
        ("email", "not-an-email", "r2", None, None, None),
        ("phone", "+86 138 0013 8000", "r3", None, "+8613800138000", None),
        ("phone", "+86 138 0013 8000", "r4", None, "+8613800138000", None),
        ("phone", "12", "r5", None, None, None),
        ("wechat_openid", "  oAbC ", "r6", "wxapp1", "wxapp1:oAbC", None),
        ("wechat_openid", "   ", "r7", "wxapp1", None, None),
        ("member_id", "ｍ００１", "r8", None, "M001", None),
        ("fax", "123", "r9", None, None, None),
        ("service_phone", "021-6234 5678", "r10", None, "+862162345678", None),
        ("phone", "400-820-8820", "r11", None, "+864008208820",
         "shared_cost number, not a personal one (personal_types: fixed_line, mobile, fixed_line_or_mobile)"),
    ], result.schema)
    assertDataFrameEqual(result, expected)


def test_each_source_reports_what_deduplication_did(silver) -> None:
    _, _, result = silver
    # crm: M1 updated by the delta export (latest wins), M2 delivered twice unchanged (exact duplicate)
    assert result.duplicates == {
        "crm": {"rows": 4, "missing_id": 0, "exact_duplicates": 1, "superseded": 1, "collision_keys": 0,
                "collision_rows": 0},
        "wechat": {"rows": 2, "missing_id": 0, "exact_duplicates": 0, "superseded": 0, "collision_keys": 0,
                   "collision_rows": 0},
    }


def test_a_key_collision_fails_standardize_under_on_duplicate_key_error(spark: SparkSession, tmp_path: Path) -> None:
    from cdp.jobs.entry import JobFailed

    raw, ctx = _setup(tmp_path)
    sources = ctx.conf_dir / "sources.yaml"
    sources.write_text(sources.read_text(encoding="utf-8").replace("on_duplicate_key: latest", "on_duplicate_key: error"),
                       encoding="utf-8")
    lake = Lake(spark, ctx.lake_root)
    land(spark, ctx, raw=str(raw), lake=lake)
    with pytest.raises(JobFailed, match=r"sources\.crm: 1 record id\(s\) seen with different contents "
                                        r"\(first: 'M1' in .*line \d\); on_duplicate_key: error"):
        standardize(spark, ctx, lake=lake)
    assert not lake.exists("silver_identifiers")  # nothing published


def test_channel_responses_are_linked_to_the_export_that_sent_them(spark: SparkSession, tmp_path: Path) -> None:
    """The shipped email_responses source: a response naming an exported message gets its audience,
    destination and publish version; one naming a message no export sent stays as it is, counted."""
    raw = tmp_path / "raw"
    (raw / "responses" / "email" / "2025-06").mkdir(parents=True)
    (raw / "responses" / "email" / "2025-06" / "esp.csv").write_text("\n".join([
        "response_id,message_id,campaign,recipient,event,event_time,order_no,amount",
        "R1,vip.esp.v3,summer,a@x.com,opened,2025-06-01T02:00:00Z,,",
        "R2,vip.esp.v3,summer,a@x.com,converted,2025-06-02T03:00:00Z,SO1,99.50",
        "R3,old.esp.v1,,b@x.com,unsubscribed,2025-06-01T02:00:00Z,,",
    ]) + "\n", encoding="utf-8")
    conf = tmp_path / "conf"
    conf.mkdir()
    shipped = Path(__file__).resolve().parents[1] / "conf"
    for name in ("sources.yaml", "identity.yaml"):
        shutil.copy(shipped / name, conf / name)
    lake_root = str(tmp_path / "lake")
    ctx = JobContext(conf_dir=conf, profile=Profile("test", lake_root), lake_root=lake_root, run_id="resp")
    lake = Lake(spark, lake_root)
    lake.write(spark.createDataFrame([("vip.esp.v3", "vip", "esp", "email", 3, 10, "r0")],
                                     "message_id string, audience string, destination string, channel string, "
                                     "publish_version long, recipients long, run_id string"), "export_messages")
    land(spark, ctx, raw=str(raw), sources=["email_responses"], lake=lake)
    result = standardize(spark, ctx, lake=lake)

    linked = {"message_id": "vip.esp.v3", "campaign": "summer", "audience": "vip", "destination": "esp",
              "publish_version": "3"}
    assertDataFrameEqual(lake.read("silver_events"), spark.createDataFrame([
        ("email_responses:R1", "email_responses", "R1", "email_open", "email", datetime(2025, 6, 1, 2), None, None,
         None, linked),
        ("email_responses:R2", "email_responses", "R2", "email_conversion", "email", datetime(2025, 6, 2, 3), None,
         None, None, {**linked, "order_id": "SO1", "amount": "99.5"}),
        ("email_responses:R3", "email_responses", "R3", "email_unsubscribe", "email", datetime(2025, 6, 1, 2), None,
         None, None, {"message_id": "old.esp.v1"}),
    ], SILVER_SCHEMAS["silver_events"]))
    assert result.responses == {"email_responses": {"linked": 2, "unlinked": 1}}
    # the unsubscribe withdraws consent like any other source's
    assertDataFrameEqual(lake.read("silver_consent"), spark.createDataFrame(
        [("email_responses", "R3", "email", False, datetime(2025, 6, 1, 2))], SILVER_SCHEMAS["silver_consent"]))
