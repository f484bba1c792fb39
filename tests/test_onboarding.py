"""Onboarding a source by YAML alone (issue 28): identifier canonicalisation from identity.yaml, field
rules, derived values, date-only and local times, unmapped values, and one brand-new source landed
and standardised end to end, its silver rows compared whole."""
from __future__ import annotations

import copy
import shutil
from datetime import datetime
from functools import reduce
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.identity import IdentityConfig, resolve_identities
from cdp.identity.normalize import Normalizer
from cdp.jobs.land import read_sources
from cdp.jobs.land import run as land
from cdp.jobs.standardize import SILVER_SCHEMAS, normalize_identifiers, silver_identifiers
from cdp.jobs.standardize import run as standardize
from cdp.jobs.validate import validate_conf
from cdp.lake import Lake
from cdp.runtime.config import ConfigError, JobContext, Profile, load_yaml, parse_file
from cdp.sources import FieldSpec, SourcesConfig, convert, parse_lines

REPO_CONF = Path(__file__).resolve().parents[1] / "conf"
SERVICE = "number, not a personal one (personal_types: mobile, fixed_line, fixed_line_or_mobile)"


@pytest.fixture(scope="module")
def identity() -> IdentityConfig:
    return parse_file(REPO_CONF / "identity.yaml", IdentityConfig.from_dict)


# -- 1. identifier canonicalisation (conf/identity.yaml) ------------------------------------------

EMAILS = [  # raw, canonical under the shipped identity.yaml
    ("John.Smith+promo@GoogleMail.com", "johnsmith@gmail.com"),  # alias domain, +tag, dots
    ("j.o.h.n.smith@gmail.com", "johnsmith@gmail.com"),
    (" JOHNSMITH@GMAIL.COM ", "johnsmith@gmail.com"),
    ("johnsmith+newsletter@gmail.com", "johnsmith@gmail.com"),
    ("li.na+shop@outlook.com", "li.na@outlook.com"),  # +tag stripped, dots kept
    ("li.na+shop@qq.com", "li.na+shop@qq.com"),  # qq.com: neither rule
    ("wang.fang@163.com", "wang.fang@163.com"),
    ("+only@gmail.com", None),  # nothing left of the local part
    ("not-an-email", None),
    (None, None),
]
PHONES = [  # raw, canonical, non_personal
    ("+86 138 0013 8000", "+8613800138000", None),
    ("0086-138-0013-8000", "+8613800138000", None),  # country-prefix variants
    ("8613800138000", "+8613800138000", None),
    ("021-6234 5678", "+862162345678", None),  # Shanghai landline: personal
    ("400-820-8820", "+864008208820", f"shared_cost {SERVICE}"),  # China 400 service line
    ("800 820 8820", "+868008208820", f"toll_free {SERVICE}"),  # China 800 toll-free line
    ("+1 800 555 0199", "+18005550199", f"toll_free {SERVICE}"),
    ("12345", None, None),
]


def test_email_and_phone_canonical_values_from_identity_yaml(identity: IdentityConfig) -> None:
    email, phone = identity.normalizers["email"], identity.normalizers["phone"]
    assert [(raw, email.python(raw)) for raw, _ in EMAILS] == EMAILS
    assert [(raw, phone.python(raw), phone.non_personal(phone.python(raw))) for raw, _, _ in PHONES] == PHONES


def test_spark_normalisers_agree_with_python_as_configured(spark: SparkSession, identity: IdentityConfig) -> None:
    """Identity's normalisation in standardize (Spark) gives the canonical values of the table above."""
    raw = spark.createDataFrame([("email", r) for r, _ in EMAILS] + [("phone", r) for r, _, _ in PHONES],
                                "id_type string, raw_value string").withColumn("qualifier", F.lit(None).cast("string"))
    normalized = normalize_identifiers(raw, identity.normalizers)
    assertDataFrameEqual(normalized.select("id_type", "raw_value", "id_value", "non_personal"), spark.createDataFrame(
        [("email", r, c, None) for r, c in EMAILS] + [("phone", r, c, n) for r, c, n in PHONES],
        "id_type string, raw_value string, id_value string, non_personal string"))


def test_generic_text_normaliser_options(spark: SparkSession) -> None:
    member = Normalizer.from_config({"name": "text", "case": "upper", "unicode": "nfkc",
                                     "rewrite": [{"pattern": r"^(?:VIP|M)[-_ ]?", "replace": "M"}]}, "w")
    loyalty = Normalizer.from_config({"name": "trim_lower", "unicode": "none", "trim": False}, "w")
    cases = [("ｍ-００１", "M001", "ｍ-００１"), (" vip_0042 ", "M0042", " vip_0042 "), ("①②", "12", "①②"),
             ("  ", None, "  "), (None, None, None)]
    assert [(raw, member.python(raw), loyalty.python(raw)) for raw, _, _ in cases] == cases
    frame = spark.createDataFrame([(raw,) for raw, _, _ in cases], "raw string")
    assertDataFrameEqual(
        frame.select("raw", member.column(F.col("raw")).alias("member"), loyalty.column(F.col("raw")).alias("loyalty")),
        spark.createDataFrame(cases, "raw string, member string, loyalty string"))
    assert member.runs_in_python and not loyalty.runs_in_python


@settings(max_examples=200, deadline=None)
@given(st.emails() | st.from_regex(r"[A-Za-z.]{1,8}(\+[a-z]{1,5})?@(gmail|googlemail|outlook|qq)\.com", fullmatch=True))
def test_configured_email_normaliser_is_idempotent(raw: str) -> None:
    email = parse_file(REPO_CONF / "identity.yaml", IdentityConfig.from_dict).normalizers["email"]
    once = email.python(raw)
    assert once is None or email.python(once) == once


@pytest.mark.parametrize(("normalizer", "message"), [
    ("e164", r"types\.phone\.normalizer: unknown normaliser 'e164'"),
    ({"name": "phone", "personal_types": ["mobile", "hotline"]},
     r"types\.phone\.normalizer\.personal_types: unknown number types \['hotline'\]"),
    ({"name": "phone", "default_region": "XX"}, r"types\.phone\.normalizer\.default_region: 'XX' is not a region"),
    ({"name": "phone", "dots": "fold"}, r"types\.phone\.normalizer\.dots: unknown option of a phone normaliser"),
    ({"name": "email", "domains": {"gmail.com": {"dots": "squash"}}},
     r"types\.phone\.normalizer\.domains\.gmail\.com\.dots: expected fold or keep"),
    ({"name": "email", "domains": {"a.com": {"alias_of": "b.com"}, "b.com": {"alias_of": "c.com"}}},
     r"types\.phone\.normalizer\.domains\.a\.com\.alias_of: 'b\.com' is itself an alias"),
    ({"name": "text", "rewrite": [{"pattern": "(", "replace": ""}]},
     r"types\.phone\.normalizer\.rewrite\[0\]\.pattern: invalid regular expression"),
])
def test_an_unknown_normaliser_or_option_fails_at_load_naming_file_and_key(tmp_path: Path, normalizer, message) -> None:
    data = copy.deepcopy(load_yaml(REPO_CONF / "identity.yaml"))
    data["types"]["phone"]["normalizer"] = normalizer
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "identity.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"identity\.yaml: {message}"):
        parse_file(conf / "identity.yaml", IdentityConfig.from_dict)


def test_cdp_validate_lists_a_bad_normaliser_option(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(REPO_CONF, conf)
    text = (conf / "identity.yaml").read_text(encoding="utf-8")
    (conf / "identity.yaml").write_text(text.replace("dots: keep", "dot: keep", 1), encoding="utf-8")
    assert validate_conf(conf).problems == (
        f"{conf / 'identity.yaml'}: types.email.normalizer.dot: unknown option of a email normaliser; "
        "expected ['plus_tags', 'dots', 'domains']",)


def test_a_service_line_links_nobody_and_email_variants_make_one_customer(spark: SparkSession,
                                                                          identity: IdentityConfig) -> None:
    """Three people give the shop's 400 hotline as their phone; one of them writes her Gmail address
    three ways. The hotline stays in silver but joins nobody; the Gmail variants are one node."""
    raw = spark.createDataFrame([
        ("crm", "r1", "email", "Ann.Lee+shop@googlemail.com"), ("crm", "r1", "phone", "400-820-8820"),
        ("crm", "r2", "email", "bo@163.com"), ("crm", "r2", "phone", "400 820 8820"),
        ("crm", "r3", "email", "annlee@gmail.com"), ("crm", "r3", "phone", "+86 400 820 8820"),
        ("crm", "r4", "email", "a.n.n.lee@gmail.com"), ("crm", "r4", "member_id", "M9"),
    ], "source string, record_id string, id_type string, raw_value string").select(
        "*", F.lit(None).cast("string").alias("qualifier"), F.lit(datetime(2025, 1, 1)).alias("observed_at"))
    silver = silver_identifiers(normalize_identifiers(raw, identity.normalizers))
    assert {(r["id_value"], r["non_personal"]) for r in silver.filter("id_type = 'phone'").collect()} == {
        ("+864008208820", f"shared_cost {SERVICE}")}
    result = resolve_identities(silver, identity, "r1")
    records = result.customer_records.select("record_id", "customer_id")
    pairs = (records.alias("a").join(records.alias("b"), F.col("a.record_id") < F.col("b.record_id"), how="inner")
             .select(F.col("a.record_id").alias("a"), F.col("b.record_id").alias("b"),
                     (F.col("a.customer_id") == F.col("b.customer_id")).alias("same_customer")))
    assertDataFrameEqual(pairs, spark.createDataFrame([
        ("r1", "r2", False), ("r1", "r3", True), ("r1", "r4", True), ("r2", "r3", False), ("r2", "r4", False),
        ("r3", "r4", True)], "a string, b string, same_customer boolean"))
    assert result.identity_map.filter("id_type = 'phone'").count() == 0  # never a node
    assertDataFrameEqual(result.observations.filter("id_type = 'phone'").select("record_id", "status", "status_reason"),
                         spark.createDataFrame([(r, "non_personal", f"shared_cost {SERVICE}") for r in ("r1", "r2", "r3")],
                                               "record_id string, status string, status_reason string"))


# -- 2. field rules, 4. times ----------------------------------------------------------------------

RULES_YAML = {"sources": {"shop": {
    "path": "shop/*.jsonl", "format": "jsonl", "record_id": "id",
    "fields": {
        "id": {"type": "string", "required": True, "regex": "^S[0-9]+$"},
        "amount": {"type": "double", "min": 0, "max": 10000},
        "status": {"type": "string", "allowed": ["PAID", "CANCELLED"]},
        "note": {"type": "string", "max_length": 8, "on_invalid": "null"},
        "paid_at": {"type": "timestamp", "format": "iso8601", "not_after": "now"},
        "items": {"type": "array", "fields": {"qty": {"type": "int", "min": 1}}},
    }}}}


def test_a_record_breaking_a_rule_is_quarantined_naming_field_rule_and_value(spark: SparkSession) -> None:
    source = SourcesConfig.from_dict(RULES_YAML).sources["shop"]
    lines = [
        '{"id": "S1", "amount": "12.5", "status": "PAID", "note": "ok", "paid_at": "2025-03-01T10:00:00Z", "items": [{"qty": "1"}]}',
        '{"id": "S2", "amount": "-12.50", "status": "PAID"}',
        '{"id": "S3", "amount": "20", "status": "REFUNDED"}',
        '{"id": "X4", "amount": "20"}',
        '{"id": "S5", "note": "a very long note"}',
        '{"id": "S6", "paid_at": "2090-01-01T00:00:00Z"}',  # in the future
        '{"id": "S7", "amount": "99999", "items": [{"qty": "2"}, {"qty": "0"}]}',
        '{"id": "S8", "amount": "abc"}',
    ]
    frame = spark.createDataFrame([("f.jsonl", i + 1, text, None) for i, text in enumerate(lines)],
                                  "_source_file string, _line long, _text string, _decode_error string")
    parsed = parse_lines(frame, source)
    assertDataFrameEqual(parsed.select("_line", "_reason", "_nulled"), spark.createDataFrame([
        (1, None, []),
        (2, "amount: rule min 0 failed: '-12.50'", []),
        (3, "status: rule allowed PAID, CANCELLED failed: 'REFUNDED'", []),
        (4, "id: rule regex ^S[0-9]+$ failed: 'X4'", []),
        (5, None, ["note"]),  # on_invalid: null: kept, the note becomes null, counted by cdp land
        (6, "paid_at: rule not_after now failed: '2090-01-01T00:00:00Z'", []),
        (7, "amount: rule max 10000 failed: '99999'; items[].qty: rule min 1 failed: '0'", []),
        (8, "amount: invalid double: 'abc'", []),
    ], "_line long, _reason string, _nulled array<string>"))
    note = source.resolve("note")[0]
    assertDataFrameEqual(parsed.filter("_line = 5").select(convert(F.col("note"), note).alias("note")),
                         spark.createDataFrame([(None,)], "note string"))


def test_not_after_now_refuses_a_future_time(spark: SparkSession) -> None:
    spec = FieldSpec.from_dict("at", {"type": "timestamp", "format": "epoch_s", "not_after": "now"}, "w", "UTC")
    frame = spark.createDataFrame([("1735689600",), ("4102000000",)], "raw string")  # 2025-01-01, 2099-12-26
    assertDataFrameEqual(frame.select("raw", convert(F.col("raw"), spec).alias("at")), spark.createDataFrame(
        [("1735689600", datetime(2025, 1, 1)), ("4102000000", None)], "raw string, at timestamp"))


# (zone, format, raw, UTC): every format just before and after local midnight and across DST changes
# (America/New_York springs forward at 2025-03-09 02:00, Europe/Berlin falls back at 2025-10-26 03:00).
TIMES = [
    ("Asia/Shanghai", "iso8601", "2025-03-09T23:59:59", datetime(2025, 3, 9, 15, 59, 59)),
    ("Asia/Shanghai", "iso8601", "2025-03-10T00:00:00", datetime(2025, 3, 9, 16, 0, 0)),
    ("Asia/Shanghai", "iso8601", "2025-03-10T00:00:00+08:00", datetime(2025, 3, 9, 16, 0, 0)),
    ("Asia/Shanghai", "iso8601", "2025-03-09T16:00:00Z", datetime(2025, 3, 9, 16, 0, 0)),
    ("Asia/Shanghai", "iso8601", "2025-03-10", datetime(2025, 3, 10)),  # date only: keeps its day
    ("Asia/Shanghai", "yyyy-MM-dd HH:mm:ss", "2025-03-09 23:59:59", datetime(2025, 3, 9, 15, 59, 59)),
    ("Asia/Shanghai", "yyyy/MM/dd HH:mm:ss", "2025/03/10 00:00:00", datetime(2025, 3, 9, 16, 0, 0)),
    ("Asia/Shanghai", "yyyyMMddHHmmss", "20250310000001", datetime(2025, 3, 9, 16, 0, 1)),
    ("Asia/Shanghai", "yyyy-MM-dd", "2025-03-10", datetime(2025, 3, 10)),  # date-only pattern: no shift
    ("Asia/Shanghai", "yyyyMMdd", "20250309", datetime(2025, 3, 9)),
    ("Asia/Shanghai", "epoch_s", "1741535999", datetime(2025, 3, 9, 15, 59, 59)),  # 23:59:59 local
    ("Asia/Shanghai", "epoch_ms", "1741536000000", datetime(2025, 3, 9, 16, 0, 0)),  # 00:00 local
    ("Asia/Shanghai", "yyyy-MM-dd HH:mm:ssXXX", "2025-03-10 00:00:00+08:00", datetime(2025, 3, 9, 16, 0, 0)),
    ("America/New_York", "iso8601", "2025-03-08T23:59:59", datetime(2025, 3, 9, 4, 59, 59)),
    ("America/New_York", "iso8601", "2025-03-09T00:00:00", datetime(2025, 3, 9, 5, 0, 0)),
    ("America/New_York", "yyyy-MM-dd HH:mm:ss", "2025-03-09 01:59:59", datetime(2025, 3, 9, 6, 59, 59)),  # EST
    ("America/New_York", "yyyy-MM-dd HH:mm:ss", "2025-03-09 03:00:00", datetime(2025, 3, 9, 7, 0, 0)),  # EDT
    ("America/New_York", "iso8601", "2025-03-09", datetime(2025, 3, 9)),
    ("America/New_York", "yyyy-MM-dd", "2025-03-09", datetime(2025, 3, 9)),
    ("Europe/Berlin", "iso8601", "2025-10-25T23:59:59", datetime(2025, 10, 25, 21, 59, 59)),
    ("Europe/Berlin", "iso8601", "2025-10-26T00:00:00", datetime(2025, 10, 25, 22, 0, 0)),
    ("Europe/Berlin", "yyyy-MM-dd HH:mm:ss", "2025-10-26 01:59:59", datetime(2025, 10, 25, 23, 59, 59)),  # CEST
    ("Europe/Berlin", "yyyy-MM-dd HH:mm:ss", "2025-10-26 03:00:00", datetime(2025, 10, 26, 2, 0, 0)),  # CET
    ("Europe/Berlin", "epoch_s", "1761429600", datetime(2025, 10, 25, 22, 0, 0)),  # 00:00 CEST
    ("Europe/Berlin", "yyyy-MM-dd", "2025-10-26", datetime(2025, 10, 26)),
]


def test_every_time_format_near_local_midnight_and_across_dst(spark: SparkSession) -> None:
    rows = [spark.range(1).select(F.lit(i).alias("case"), convert(F.lit(raw), FieldSpec.from_dict(
        "t", {"type": "timestamp", "format": fmt}, "w", zone)).alias("utc"))
        for i, (zone, fmt, raw, _) in enumerate(TIMES)]
    assertDataFrameEqual(reduce(DataFrame.unionByName, rows), spark.createDataFrame(
        [(i, utc) for i, (_, _, _, utc) in enumerate(TIMES)], "case int, utc timestamp"))


# -- 3. derived values, 6. unmapped values: validation at load ---------------------------------------

def _source(**changes) -> dict:
    data = {"sources": {"shop": {
        "path": "shop/*.jsonl", "format": "jsonl", "record_id": "id", "event_time": "day",
        "fields": {"id": "string", "day": "date", "sku": "string",
                   "lines": {"type": "array", "fields": {"sku": "string"}}},
        "order_lines": {"explode": "lines", "order_id": "id", "product_id": "lines[].sku"}}}}
    data["sources"]["shop"]["order_lines"].update(changes)
    return data


@pytest.mark.parametrize(("changes", "message"), [
    ({"category": {"expr": "upper(substring(lines.code, 1, 2))"}},
     r"order_lines\.category\.expr: field 'lines\[\]\.code' is not in the source schema"),
    ({"category": {"expr": "upper(substring(sku, 1, 2)"}}, r"order_lines\.category\.expr: SQL does not parse"),
    ({"category": {"field": "sku", "map": "missing.csv"}}, r"order_lines\.category\.map: .*missing\.csv: lookup file not found"),
    ({"category": {"field": "sku", "map": {"A": "a"}, "default": "x", "unmapped": "drop"}},
     r"order_lines\.category\.unmapped: only for a map without a default"),
    ({"category": {"field": "sku", "extract": "([A-Z"}}, r"order_lines\.category\.extract: invalid regular expression"),
    ({"category": {"field": "sku", "value": "x"}}, r"order_lines\.category: give exactly one of field, value"),
    ({"category": {"coalesce": ["sku"]}}, r"order_lines\.category\.coalesce: expected a list of two or more"),
    ({"category": {"present": "colour"}}, r"order_lines\.category\.present: field 'colour' is not in the source schema"),
])
def test_derived_values_are_checked_when_the_config_loads(tmp_path: Path, changes, message) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(_source(**changes)), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"sources\.yaml: sources\.shop\.{message}"):
        read_sources(path)


def test_canonical_enums_extend_in_config_and_expressions_on_them_must_be_mapped() -> None:
    events = [{"event_type": {"value": "order_shipped"}, "channel": {"value": "web"}, "event_time": "day"}]
    data = _source()
    data["sources"]["shop"]["events"] = events
    with pytest.raises(ValueError, match=r"events\[0\]\.event_type: values \['order_shipped'\] are not among .*"
                                         r"a new kind goes in sources\.yaml enums\.event_types"):
        SourcesConfig.from_dict(data)
    config = SourcesConfig.from_dict({**data, "enums": {"event_types": ["order_shipped"]}})
    assert "order_shipped" in config.enums["event_types"] and "page_view" in config.enums["event_types"]
    events[0]["event_type"] = {"expr": "lower(sku)"}
    with pytest.raises(ValueError, match=r"events\[0\]\.event_type: events\.event_type takes only .*map the expression"):
        SourcesConfig.from_dict({**data, "enums": {"event_types": ["order_shipped"]}})
    with pytest.raises(ValueError, match=r"enums\.event_kinds: unknown enum"):
        SourcesConfig.from_dict({**data, "enums": {"event_kinds": ["x"]}})


# -- a brand-new source, by YAML alone --------------------------------------------------------------

MARKETPLACE_YAML = """
defaults: {timezone: Asia/Shanghai}
enums:
  event_types: [order_shipped]
  order_statuses: [shipped]
sources:
  marketplace:
    description: a marketplace's order export nobody has seen before
    path: marketplace/*.jsonl
    format: jsonl
    record_id: order_ref
    event_time: ship_date                     # date only: the record's day, never shifted
    fields:
      order_ref: {type: string, required: true, regex: '^MP-[0-9]{4}$'}
      placed_ms: {type: timestamp, format: epoch_ms, required: true, not_after: now}
      ship_date: {type: date, format: yyyy-MM-dd}
      state: {type: string, required: true}
      amount: {type: double, min: 0}
      coupon: string
      promo_code: string
      note: {type: string, max_length: 20, on_invalid: "null"}
      region: string
      buyer:
        type: struct
        fields: {email: string, phone: string, hotline: string}
      lines:
        type: array
        required: true
        fields:
          sku: {type: string, required: true}
          qty: {type: int, min: 1}
          price: double
    identifiers:
      - {type: order_id, field: order_ref}
      - {type: email, field: buyer.email}
      - {type: phone, field: buyer.phone}
      - {type: phone, field: buyer.hotline}
    orders:
      order_id: order_ref
      order_time: placed_ms
      channel: {value: online}
      store_id: {field: order_ref, extract: '^MP-([0-9]{2})'}
      status: {field: state, map: {SHIPPED: shipped, CANCELLED: cancelled, PAID: paid}}
      total_amount: amount
      coupon_code: {coalesce: [coupon, promo_code]}
      currency: {value: CNY}
    order_lines:
      explode: lines
      order_id: order_ref
      product_id: lines[].sku
      category: {expr: "upper(substring(lines.sku, 1, 2))", map: categories.csv}
      quantity: lines[].qty
      unit_price: lines[].price
    events:
      - event_type: {value: order_shipped}
        channel: {value: web}
        event_time: ship_date
        attributes:
          has_note: {present: note}
          region: {field: region, map: {SH: 上海, BJ: 北京}, unmapped: drop}
"""
CATEGORIES_CSV = "prefix,category\nSH,shoes\nBG,bags\n"


def _order(ref: str, placed_ms: int, ship: str, email: str, phone: str, hotline: str, lines: str, *,
           state: str = "SHIPPED", amount: str = "528.0", coupon: str = "", promo: str = "SPRING",
           note: str = "leave at door", region: str = "SH") -> str:
    return (f'{{"order_ref": "{ref}", "placed_ms": {placed_ms}, "ship_date": "{ship}", "state": "{state}", '
            f'"amount": "{amount}", "coupon": "{coupon}", "promo_code": "{promo}", "note": "{note}", '
            f'"region": "{region}", "buyer": {{"email": "{email}", "phone": "{phone}", "hotline": "{hotline}"}}, '
            f'"lines": {lines}}}')


@pytest.fixture(scope="module")
def marketplace(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("marketplace")
    conf, raw = root / "conf", root / "raw" / "marketplace"
    conf.mkdir()
    raw.mkdir(parents=True)
    (conf / "sources.yaml").write_text(MARKETPLACE_YAML, encoding="utf-8")
    (conf / "categories.csv").write_text(CATEGORIES_CSV, encoding="utf-8")
    shutil.copy(REPO_CONF / "identity.yaml", conf / "identity.yaml")
    (raw / "2025-03.jsonl").write_text("\n".join(MARKETPLACE_LINES) + "\n", encoding="utf-8")
    ctx = JobContext(conf_dir=conf, profile=Profile("test", str(root / "lake")), lake_root=str(root / "lake"),
                     run_id="onboard")
    lake = Lake(spark, ctx.lake_root)
    landed = land(spark, ctx, raw=str(root / "raw"), lake=lake)
    standardized = standardize(spark, ctx, lake=lake)
    return conf, lake, landed, standardized


TWO_LINES = '[{"sku": "SH-RUN-42", "qty": "2", "price": "199.5"}, {"sku": "bg-tote", "qty": "1", "price": "129"}]'
MARKETPLACE_LINES = [
        # 23:59 local on 9 March, shipped the next day; the buyer writes her Gmail address with a
        # +tag at googlemail.com and gives the shop's 400 hotline as a second phone
        _order("MP-1001", 1741535940000, "2025-03-10", "John.Smith+promo@GoogleMail.com", "+86 138 0013 8000",
               "400-820-8820", TWO_LINES),
        _order("MP-1002", 1741536030000, "2025-03-10", "johnsmith@gmail.com", "0086 139 0013 9000",
               "400-820-8820", '[{"sku": "SH-TRAIL", "qty": "1", "price": "528"}]', coupon="WELCOME"),
        _order("MP-1003", 1741406400000, "2025-03-09", "li.na+shop@qq.com", "13700137000", "800 820 8820",
               '[{"sku": "BG-MINI", "qty": "3", "price": "59"}]', state="PAID", amount="177", promo="",
               note="", region="GZ"),
        _order("MP-1004", 1741569300000, "2025-03-11", "x@qq.com", "", "",
               '[{"sku": "SH-1", "qty": "1", "price": "12.5"}]', amount="-12.5"),  # a negative amount
        _order("MP-1005", 1741569300000, "2025-03-11", "y@qq.com", "", "",
               '[{"sku": "ZZ-9", "qty": "1", "price": "10"}]', amount="10"),  # no category for ZZ
        _order("MP-1006", 1741658400000, "2025-03-11", "J.O.H.N.SMITH@gmail.com", "", "",
               '[{"sku": "SH-RUN-43", "qty": "1", "price": "199"}]', state="CANCELLED", amount="199", promo="",
               note="please ring the bell twice, then wait"),  # too long for note: nulled, counted
]


MAR9, MAR10, MAR11 = datetime(2025, 3, 9), datetime(2025, 3, 10), datetime(2025, 3, 11)


def test_the_new_source_validates_with_the_shipped_configuration(marketplace) -> None:
    conf = marketplace[0]
    for name in ("features.yaml", "quality.yaml", "engage.yaml"):
        shutil.copy(REPO_CONF / name, conf / name)
    for folder in ("tags", "audiences", "profiles"):
        shutil.copytree(REPO_CONF / folder, conf / folder, dirs_exist_ok=True)
    assert validate_conf(conf).problems == ()


def test_a_new_source_lands_and_standardises_by_yaml_alone(spark: SparkSession, marketplace) -> None:
    _, lake, landed, standardized = marketplace
    load = landed.loads["marketplace"]
    assert (load.raw_records, load.bronze_rows, load.quarantined_rows, load.nulled) == (6, 5, 1, {"note": 1})
    assert standardized.unmapped == {"marketplace.order_lines.category lines[].sku": {"quarantine": 1},
                                     "marketplace.events[0].attributes.region region": {"drop": 1}}
    assert standardized.non_personal == {"marketplace.phone": 2}

    assertDataFrameEqual(lake.read("silver_identifiers"), spark.createDataFrame([
        ("marketplace", "MP-1001", "order_id", "MP-1001", "MP-1001", MAR10, None),
        ("marketplace", "MP-1001", "email", "johnsmith@gmail.com", "John.Smith+promo@GoogleMail.com", MAR10, None),
        ("marketplace", "MP-1001", "phone", "+8613800138000", "+86 138 0013 8000", MAR10, None),
        ("marketplace", "MP-1001", "phone", "+864008208820", "400-820-8820", MAR10, f"shared_cost {SERVICE}"),
        ("marketplace", "MP-1002", "order_id", "MP-1002", "MP-1002", MAR10, None),
        ("marketplace", "MP-1002", "email", "johnsmith@gmail.com", "johnsmith@gmail.com", MAR10, None),
        ("marketplace", "MP-1002", "phone", "+8613900139000", "0086 139 0013 9000", MAR10, None),
        ("marketplace", "MP-1002", "phone", "+864008208820", "400-820-8820", MAR10, f"shared_cost {SERVICE}"),
        ("marketplace", "MP-1003", "order_id", "MP-1003", "MP-1003", MAR9, None),
        ("marketplace", "MP-1003", "email", "li.na+shop@qq.com", "li.na+shop@qq.com", MAR9, None),
        ("marketplace", "MP-1003", "phone", "+8613700137000", "13700137000", MAR9, None),
        ("marketplace", "MP-1003", "phone", "+868008208820", "800 820 8820", MAR9, f"toll_free {SERVICE}"),
        ("marketplace", "MP-1006", "order_id", "MP-1006", "MP-1006", MAR11, None),
        ("marketplace", "MP-1006", "email", "johnsmith@gmail.com", "J.O.H.N.SMITH@gmail.com", MAR11, None),
    ], SILVER_SCHEMAS["silver_identifiers"]))
    assertDataFrameEqual(lake.read("silver_orders"), spark.createDataFrame([
        ("MP-1001", "marketplace", "MP-1001", datetime(2025, 3, 9, 15, 59), "online", "10", "shipped", 528.0, None,
         "SPRING", None, "CNY"),
        ("MP-1002", "marketplace", "MP-1002", datetime(2025, 3, 9, 16, 0, 30), "online", "10", "shipped", 528.0,
         None, "WELCOME", None, "CNY"),
        ("MP-1003", "marketplace", "MP-1003", datetime(2025, 3, 8, 4, 0), "online", "10", "paid", 177.0, None, None,
         None, "CNY"),
        ("MP-1006", "marketplace", "MP-1006", datetime(2025, 3, 11, 2, 0), "online", "10", "cancelled", 199.0, None,
         None, None, "CNY"),
    ], SILVER_SCHEMAS["silver_orders"]))
    assertDataFrameEqual(lake.read("silver_order_lines"), spark.createDataFrame([
        ("MP-1001", 1, "SH-RUN-42", "shoes", 2, 199.5, 399.0),
        ("MP-1001", 2, "bg-tote", "bags", 1, 129.0, 129.0),  # the lookup reads the upper-cased prefix
        ("MP-1002", 1, "SH-TRAIL", "shoes", 1, 528.0, 528.0),
        ("MP-1003", 1, "BG-MINI", "bags", 3, 59.0, 177.0),
        ("MP-1006", 1, "SH-RUN-43", "shoes", 1, 199.0, 199.0),
    ], SILVER_SCHEMAS["silver_order_lines"]))
    assertDataFrameEqual(lake.read("silver_events"), spark.createDataFrame([
        ("marketplace:MP-1001", "marketplace", "MP-1001", "order_shipped", "web", MAR10, None, None, None,
         {"has_note": "true", "region": "上海"}),
        ("marketplace:MP-1002", "marketplace", "MP-1002", "order_shipped", "web", MAR10, None, None, None,
         {"has_note": "true", "region": "上海"}),
        ("marketplace:MP-1003", "marketplace", "MP-1003", "order_shipped", "web", MAR9, None, None, None,
         {"has_note": "false"}),  # GZ is not in the region map: dropped (unmapped: drop), counted
        ("marketplace:MP-1006", "marketplace", "MP-1006", "order_shipped", "web", MAR11, None, None, None,
         {"has_note": "false", "region": "上海"}),  # its note broke max_length: nulled, so not present
    ], SILVER_SCHEMAS["silver_events"]))
    assertDataFrameEqual(
        lake.read("quarantine").select("source", "stage", "file", "line", "field", "raw", "reason"),
        spark.createDataFrame([
            ("marketplace", "land", "marketplace/2025-03.jsonl", 4, "amount", MARKETPLACE_LINES[3],
             "amount: rule min 0 failed: '-12.5'"),
            ("marketplace", "standardize", "marketplace/2025-03.jsonl", 5, "lines[].sku", "ZZ",
             "lines[].sku: unmapped value 'ZZ' (map of order_lines.category; add it to the map, or declare "
             "default: or unmapped: drop)"),
        ], "source string, stage string, file string, line long, field string, raw string, reason string"))
