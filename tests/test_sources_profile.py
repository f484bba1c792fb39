"""``cdp sources profile``: a sample of an export profiled per field, and a draft of its YAML."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cdp.jobs import sources as sources_job
from cdp.runtime.config import JobContext, Profile
from cdp.sources import SourcesConfig
from cdp.sources.profiling import detect_format, draft_source_yaml, infer_type, profile_records

ORDERS = [
    {"order_no": "SO1", "paid_at": "2024-03-01T10:00:00+08:00", "day": "2024-03-01", "ts": 1709258400000,
     "vip": "1", "buyer": {"member_no": "M1", "phone": "13800138000"}, "items": [{"sku": "AB-1", "qty": 1}]},
    {"order_no": "SO2", "paid_at": "2024-03-02 11:00:00", "day": "2024-03-02", "ts": 1709348400000,
     "vip": "0", "buyer": {"member_no": "M2", "phone": "4008123123"}, "items": [{"sku": "AB-2", "qty": 2}]},
    {"order_no": "SO3", "paid_at": "2024-03-03T12:00:00+08:00", "day": "2024-03-03", "ts": 1709438400000,
     "vip": "1", "buyer": {"member_no": "M3", "phone": "4008123123"}, "items": [{"sku": "CD-1", "qty": 1}]},
    {"order_no": "SO4", "paid_at": "2024-03-04T13:00:00+08:00", "day": "2024-03-04", "ts": 1709528400000,
     "vip": "0", "buyer": {"member_no": "M4", "phone": "4008123123", "email": "a@b.cn"}, "items": []},
]


@pytest.mark.parametrize(("value", "detected"), [
    ("2024-03-01T10:00:00+08:00", "iso8601 with offset"),
    ("2024-03-01 10:00:00", "iso8601 local time"),
    ("2024/3/1 9:05:00", "yyyy/M/d H:mm:ss"),
    ("2024-03-01", "date yyyy-MM-dd"),
    (1709258400000, "epoch milliseconds"),
    ("1709258400", "epoch seconds"),
    ("Li.Lei@Example.com", "e-mail"),
    ("138-0013-8000", "phone"),
    ("+86 138 0013 8000", "phone"),
    (42, None),
    ("hello", None),
])
def test_formats_are_detected_per_value(value, detected):
    assert detect_format(value) == detected


@pytest.mark.parametrize(("values", "inferred"), [
    (["2024-03-01T10:00:00+08:00", "2024-03-02 11:00:00"], ("timestamp", ("iso8601",))),
    (["2024-03-01", "2024/3/2", "2024-03-03"], ("date", ("yyyy-MM-dd", "yyyy/M/d"))),
    ([1709258400000, 1709348400000], ("timestamp", ("epoch_ms",))),
    (["1", "0", "1"], ("boolean", ())),
    ([1, 2, 3] * 20 + ["two"], ("int", ())),  # one value in 61 does not conform: quarantined at land
    ([1, 2, 3] * 5 + ["two"], ("string", ())),  # too many that do not conform
    ([1, 2**40], ("long", ())),
    (["1.5", "2"], ("double", ())),
])
def test_types_are_inferred_from_conforming_values(values, inferred):
    assert infer_type(values) == inferred


def test_profile_of_nested_records():
    profile = profile_records("shop_orders", ORDERS)
    assert [(f.path, f.type, f.present, f.distinct, f.candidate_key) for f in profile.fields] == [
        ("order_no", "string", 4, 4, True),
        ("paid_at", "timestamp", 4, 4, True),
        ("day", "date", 4, 4, True),
        ("ts", "timestamp", 4, 4, True),
        ("vip", "boolean", 4, 2, False),
        ("buyer", "struct", 4, 0, False),
        ("buyer.member_no", "string", 4, 4, True),
        ("buyer.phone", "string", 4, 2, False),
        ("items", "array", 3, 0, False),
        ("items[].sku", "string", 3, 3, False),
        ("items[].qty", "int", 3, 2, False),
        ("buyer.email", "string", 1, 1, False),
    ]
    phone = profile.field("buyer.phone")
    assert phone.formats == ("phone",) and phone.top_values == (("4008123123", 3), ("13800138000", 1))
    # one service line on the orders of three members: a candidate for the blocked list
    assert phone.shared == (("4008123123", "buyer.member_no", 3),)
    assert profile.field("buyer.email").null_share == 0.75


def test_the_draft_is_a_source_block_the_loader_accepts():
    draft = draft_source_yaml(profile_records("shop_orders", ORDERS), path="orders/*.jsonl", file_format="jsonl")
    block = yaml.safe_load(draft)
    assert block == {"sources": {"shop_orders": {
        "path": "orders/*.jsonl", "format": "jsonl", "record_id": "order_no", "event_time": "paid_at",
        "fields": {
            "order_no": {"type": "string", "required": True},
            "paid_at": {"type": "timestamp", "format": "iso8601", "required": True},
            "day": {"type": "date", "format": "yyyy-MM-dd", "required": True},
            "ts": {"type": "timestamp", "format": "epoch_ms", "required": True},
            "vip": "boolean",
            "buyer": {"type": "struct", "fields": {"member_no": {"type": "string", "required": True},
                                                   "phone": "string", "email": "string"}},
            "items": {"type": "array", "fields": {"sku": "string", "qty": "int"}},
        },
        "identifiers": [{"type": "phone", "field": "buyer.phone"}, {"type": "email", "field": "buyer.email"}],
    }}}
    SourcesConfig.from_dict(block)  # loads as it is


def test_cdp_sources_profile_reads_a_folder_of_gbk_csv_and_counts_unreadable_json(tmp_path: Path, conf_dir):
    raw = tmp_path / "raw"
    (raw / "tickets").mkdir(parents=True)
    (raw / "tickets" / "t1.csv").write_bytes("ticket_no,手机,opened\nT1,13800138000,2024-03-01\nT2,,2024-03-02\n"
                                             .encode("gbk"))
    (raw / "events").mkdir()
    (raw / "events" / "e.jsonl").write_text(json.dumps({"id": "E1"}) + "\n{broken\n" + json.dumps({"id": "E2"}) + "\n")
    ctx = JobContext(conf_dir=conf_dir, profile=Profile("local", str(tmp_path / "lake")),
                     lake_root=str(tmp_path / "lake"), run_id="r1")

    profile, draft = sources_job.run(None, ctx, raw=str(raw / "tickets"))
    assert [(f.path, f.type, f.present) for f in profile.fields] == [
        ("ticket_no", "string", 2), ("手机", "string", 1), ("opened", "date", 2)]
    assert yaml.safe_load(draft)["sources"]["tickets"]["encoding"] == "gbk"
    assert yaml.safe_load(draft)["sources"]["tickets"]["path"] == "*.csv"

    sample = sources_job.read_sample(str(raw / "events"), pattern=None, file_format=None, encoding=None)
    assert sample.records == [{"id": "E1"}, {"id": "E2"}]
    assert sample.unreadable == ["e.jsonl: line 2: not JSON (Expecting property name enclosed in double quotes)"]


def test_profile_with_a_configured_source_uses_its_files(tmp_path: Path, conf_dir):
    from datetime import date

    from cdp.synthetic import GenerateParams, generate

    generate(GenerateParams(out=tmp_path / "raw", customers=30, seed=3, end=date(2025, 6, 30), workers=1))
    ctx = JobContext(conf_dir=conf_dir, profile=Profile("local", str(tmp_path / "lake")),
                     lake_root=str(tmp_path / "lake"), run_id="r1")
    profile, draft = sources_job.run(None, ctx, raw=str(tmp_path / "raw"), source="crm_members")
    assert profile.name == "crm_members" and profile.records > 0
    assert profile.field("member_no").candidate_key
    assert yaml.safe_load(draft)["sources"]["crm_members"]["path"] == "crm/*.csv"
