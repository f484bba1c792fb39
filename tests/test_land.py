"""Landing: raw files -> bronze + quarantine, counted, idempotent; config errors name file and key."""
from __future__ import annotations

import hashlib
import shutil
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.jobs.land import run as land
from cdp.lake import Lake
from cdp.runtime.config import ConfigError, JobContext, Profile
from cdp.sources import SourcesConfig, map_table

SOURCES_YAML = """
defaults: {timezone: Asia/Shanghai}
sources:
  shop_orders:
    path: orders/*.jsonl
    format: jsonl
    record_id: order_no
    event_time: created_at
    fields:
      order_no: {type: string, required: true}
      created_at: {type: timestamp, format: [iso8601, "yyyy/MM/dd HH:mm:ss"], required: true}
      buyer: {type: struct, fields: {phone: string, member_no: string}}
      items:
        type: array
        required: true
        fields: {sku: {type: string, required: true}, qty: {type: int, required: true}, price: double}
      total: double
    identifiers:
      - {type: order_id, field: order_no}
      - {type: phone, field: buyer.phone}
      - {type: member_id, field: buyer.member_no}
    orders: {order_id: order_no, order_time: created_at, total_amount: total, status: {value: paid}, channel: {value: online}}
    order_lines:
      explode: items
      order_id: order_no
      product_id: items[].sku
      quantity: items[].qty
      unit_price: items[].price
  members:
    path: crm/*.csv
    format: csv
    encoding: gbk
    record_id: member_no
    event_time: updated
    fields:
      member_no: {type: string, required: true}
      name: string
      mobile: string
      updated: {type: timestamp, format: "yyyy/MM/dd HH:mm:ss", required: true}
      sms_ok: boolean
    identifiers:
      - {type: member_id, field: member_no}
      - {type: phone, field: mobile}
    attributes: {name: name}
    consent:
      - {channel: {value: sms}, granted: sms_ok, event_time: updated}
  catalogue:
    path: products/*.parquet
    format: parquet
    record_id: sku
    fields:
      sku: {type: string, required: true}
      price: double
    products: {product_id: sku, price: price}
"""

ORDERS = [
    '{"order_no": "SO1", "created_at": "2024-03-01T10:00:00+08:00", "buyer": {"phone": "+86 138 0013 8000", '
    '"member_no": "M1"}, "items": [{"sku": "A", "qty": 2, "price": 10.5}, {"sku": "B", "qty": "1", "price": 3}], '
    '"total": 24}',
    '{"order_no": "SO2", "created_at": "2024/03/02 09:30:00", "buyer": {}, "items": [{"sku": "C", "qty": 1}]}',
    '{"order_no": "SO3", "created_at": "2024-03-03T01:00:00Z", "items": [{"sku": "A", "qty": 1, "price": 10.5}]',
    "",
    '{"created_at": "2024-03-04T10:00:00+08:00", "items": [{"sku": "A", "qty": 1}]}',
    '{"order_no": "SO5", "created_at": "2024-03-05T10:00:00+08:00", "items": [{"sku": "A", "qty": "two"}]}',
    '{"order_no": "SO6", "created_at": "2024-02-30T10:00:00+08:00", "items": [{"sku": "A", "qty": 1}]}',
    '{"order_no": "SO7", "created_at": "2024-03-07T10:00:00+08:00", "items": []}',
]
MEMBERS = [
    "member_no,name,mobile,updated,sms_ok",
    "M1,王芳,１３８００１３８０００,2024/01/02 08:00:00,Y",
    "M2,Li Na,,2024/01/03 08:00:00,N",
    "M3,张伟,139,2024/01/04",
    "M4,赵敏,13900139000,2023/02/29 08:00:00,Y",
]


def write_raw(root: Path) -> Path:
    (root / "orders").mkdir(parents=True)
    (root / "crm").mkdir()
    (root / "orders" / "2024-03.jsonl").write_text("\n".join(ORDERS) + "\n", encoding="utf-8")
    (root / "crm" / "members.csv").write_bytes(("\n".join(MEMBERS) + "\n").encode("gbk"))
    (root / "products").mkdir()
    pq.write_table(pa.table({"sku": ["A", None, "C"], "price": ["10.5", "1", "free"]}),
                   root / "products" / "catalogue.parquet")
    return root


def make_conf(root: Path, sources_yaml: str = SOURCES_YAML) -> Path:
    conf = root / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "sources.yaml").write_text(sources_yaml, encoding="utf-8")
    shutil.copy(Path(__file__).resolve().parents[1] / "conf" / "identity.yaml", conf / "identity.yaml")
    return conf


def content_load_id(source: str, *paths: Path) -> str:
    """A load's id as the contract defines it: source + SHA-256 over its files' sorted SHA-256s."""
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)
    return f"{source}-{hashlib.sha256(chr(10).join(digests).encode()).hexdigest()[:16]}"


def context(conf: Path, lake_root: str) -> JobContext:
    return JobContext(conf_dir=conf, profile=Profile("test", lake_root), lake_root=lake_root, run_id="test-run")


@pytest.fixture(scope="module")
def landed(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("land")
    raw = write_raw(root / "raw")
    ctx = context(make_conf(root), str(root / "lake"))
    lake = Lake(spark, ctx.lake_root)
    first = land(spark, ctx, raw=str(raw), lake=lake)
    return raw, ctx, lake, first


def test_raw_equals_bronze_plus_quarantine(landed) -> None:
    _, _, _, result = landed
    orders, members = result.loads["shop_orders"], result.loads["members"]
    assert (orders.raw_records, orders.bronze_rows, orders.quarantined_rows) == (7, 2, 5)
    assert (members.raw_records, members.bronze_rows, members.quarantined_rows) == (4, 2, 2)
    catalogue = result.loads["catalogue"]
    assert (catalogue.raw_records, catalogue.bronze_rows, catalogue.quarantined_rows) == (3, 1, 2)
    assert result.raw_records == result.bronze_rows + result.quarantined_rows == 14


def test_quarantine_names_file_line_and_field(spark: SparkSession, landed) -> None:
    _, _, lake, _ = landed
    got = lake.read("quarantine").select("source", "stage", "file", "line", "field", "reason")
    expected = spark.createDataFrame([
        ("shop_orders", "land", "orders/2024-03.jsonl", 3, None, "malformed JSON: not a complete JSON object"),
        ("shop_orders", "land", "orders/2024-03.jsonl", 5, "order_no", "order_no: required field is missing"),
        ("shop_orders", "land", "orders/2024-03.jsonl", 6, "items[].qty", "items[].qty: invalid int: 'two'"),
        ("shop_orders", "land", "orders/2024-03.jsonl", 7, "created_at",
         "created_at: invalid timestamp (iso8601 | yyyy/MM/dd HH:mm:ss): '2024-02-30T10:00:00+08:00'"),
        ("shop_orders", "land", "orders/2024-03.jsonl", 8, "items", "items: required array is missing or empty"),
        ("members", "land", "crm/members.csv", 4, None, "malformed CSV line: expected 5 columns"),
        ("members", "land", "crm/members.csv", 5, "updated",
         "updated: invalid timestamp (yyyy/MM/dd HH:mm:ss): '2023/02/29 08:00:00'"),
        ("catalogue", "land", "products/catalogue.parquet", 2, "sku", "sku: required field is missing"),
        ("catalogue", "land", "products/catalogue.parquet", 3, "price", "price: invalid double: 'free'"),
    ], "source string, stage string, file string, line long, field string, reason string")
    assertDataFrameEqual(got, expected)
    raw_text = lake.read("quarantine").filter("line = 3").select("raw").first()["raw"]
    assert raw_text == ORDERS[2]


def test_bronze_keeps_raw_strings_nested_and_load_metadata(spark: SparkSession, landed) -> None:
    raw, _, lake, _ = landed
    load_id = content_load_id("shop_orders", raw / "orders" / "2024-03.jsonl")
    bronze = lake.read("bronze_shop_orders")
    assert dict(bronze.dtypes)["items"] == "array<struct<sku:string,qty:string,price:string>>"
    got = bronze.select("order_no", "created_at", "buyer.phone", F.get(F.col("items"), 1)["qty"].alias("qty2"),
                        "_source_file", "_line", "_load_id")
    expected = spark.createDataFrame([
        ("SO1", "2024-03-01T10:00:00+08:00", "+86 138 0013 8000", "1", "orders/2024-03.jsonl", 1, load_id),
        ("SO2", "2024/03/02 09:30:00", None, None, "orders/2024-03.jsonl", 2, load_id),
    ], "order_no string, created_at string, phone string, qty2 string, _source_file string, _line long, "
       "_load_id string")
    assertDataFrameEqual(got, expected)
    members = lake.read("bronze_members").select("member_no", "name", "mobile", "_line")
    assertDataFrameEqual(members, spark.createDataFrame(
        [("M1", "王芳", "１３８００１３８０００", 2), ("M2", "Li Na", None, 3)],
        "member_no string, name string, mobile string, _line long"))


def test_rerun_over_the_same_files_adds_nothing_and_new_files_load_once(spark: SparkSession, landed) -> None:
    raw, ctx, lake, _ = landed
    versions = {t: lake.version(t) for t in ("bronze_shop_orders", "bronze_members", "quarantine", "load_log")}
    again = land(spark, ctx, raw=str(raw), lake=lake)
    assert again.raw_records == 0 and again.loads["shop_orders"].files_skipped == 1
    assert {t: lake.version(t) for t in versions} == versions
    # A new export arrives, plus a byte-identical copy of an old one under another name.
    (raw / "orders" / "2024-04.jsonl").write_text(
        '{"order_no": "SO8", "created_at": "2024-04-01T10:00:00+08:00", "items": [{"sku": "D", "qty": 1}]}\n',
        encoding="utf-8")
    shutil.copy(raw / "orders" / "2024-03.jsonl", raw / "orders" / "copy-of-2024-03.jsonl")
    third = land(spark, ctx, raw=str(raw), sources=["shop_orders"], lake=lake)
    assert (third.loads["shop_orders"].files_loaded, third.loads["shop_orders"].files_skipped) == (1, 2)
    assert third.raw_records == third.bronze_rows == 1
    log = lake.read("load_log").select("source", "load_id", "seq", "file", "raw_records", "bronze_rows",
                                       "quarantined_rows")
    assertDataFrameEqual(log, spark.createDataFrame([
        ("shop_orders", content_load_id("shop_orders", raw / "orders" / "2024-03.jsonl"), 1,
         "orders/2024-03.jsonl", 7, 2, 5),
        ("members", content_load_id("members", raw / "crm" / "members.csv"), 1, "crm/members.csv", 4, 2, 2),
        ("catalogue", content_load_id("catalogue", raw / "products" / "catalogue.parquet"), 1,
         "products/catalogue.parquet", 3, 1, 2),
        ("shop_orders", content_load_id("shop_orders", raw / "orders" / "2024-04.jsonl"), 2,
         "orders/2024-04.jsonl", 1, 1, 0),
    ], "source string, load_id string, seq long, file string, raw_records long, bronze_rows long, "
       "quarantined_rows long"))
    assert sorted(r["order_no"] for r in lake.read("bronze_shop_orders").collect()) == ["SO1", "SO2", "SO8"]


def test_items_explode_into_order_lines(spark: SparkSession, landed) -> None:
    _, ctx, lake, _ = landed
    from cdp.runtime.config import parse_file
    from cdp.sources import deduplicate

    config = parse_file(ctx.conf_path("sources.yaml"), SourcesConfig.from_dict)
    source = config.sources["shop_orders"]
    records = deduplicate(lake.read("bronze_shop_orders").filter("order_no != 'SO8'"), source, now=datetime(2024, 4, 1)).records
    (lines,) = map_table(records, source, "order_lines")
    assertDataFrameEqual(
        lines.select("order_id", "line_no", "product_id", "quantity", "unit_price"),
        spark.createDataFrame([("SO1", 1, "A", 2, 10.5), ("SO1", 2, "B", 1, 3.0), ("SO2", 1, "C", 1, None)],
                              "order_id string, line_no int, product_id string, quantity int, unit_price double"))
    (orders,) = map_table(records, source, "orders")
    assertDataFrameEqual(
        orders.select("order_id", "order_time", "status", "total_amount"),
        spark.createDataFrame([("SO1", datetime(2024, 3, 1, 2, 0), "paid", 24.0),
                               ("SO2", datetime(2024, 3, 2, 1, 30), "paid", None)],  # local time, UTC+8
                              "order_id string, order_time timestamp, status string, total_amount double"))


def test_unknown_source_and_missing_raw_path_fail_fast(spark: SparkSession, tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw")
    ctx = context(make_conf(tmp_path), str(tmp_path / "lake"))
    with pytest.raises(ConfigError, match=r"sources\.yaml: sources\.nope: unknown source"):
        land(spark, ctx, raw=str(raw), sources=["nope"])
    with pytest.raises(ConfigError, match="--raw .*does not exist"):
        land(spark, ctx, raw=str(tmp_path / "missing"))
    shutil.rmtree(raw / "crm")
    with pytest.raises(ConfigError, match=r"sources\.yaml: sources\.members\.path: .*crm does not exist"):
        land(spark, ctx, raw=str(raw), sources=["members"])


def test_quoted_csv_fields_may_span_lines_and_a_stray_quote_swallows_nothing(tmp_path: Path) -> None:
    from cdp.jobs.land import _read_file

    lines = [
        "member_no,name,note",
        'M1,"Anna',           # a quoted field with a line break: lines 2-3 are one record
        'Bell",vip',
        'M2,Li "Na",plain',    # a quote inside an unquoted field is just a character
        "",
        'M3,"broken,x',        # never closed: lines 6-8 come back one by one
        "M4,Zhou,ok",
        "M5,Wu,ok",
    ]
    path = tmp_path / "members.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batches = list(_read_file(str(path), "crm/members.csv", "utf-8", True, (",", '"')))
    got = [(n, t) for b in batches for n, t in zip(b.column("_line").to_pylist(), b.column("_text").to_pylist(), strict=True)]
    assert got == [(2, 'M1,"Anna\nBell",vip'), (4, 'M2,Li "Na",plain'), (6, 'M3,"broken,x'),
                   (7, "M4,Zhou,ok"), (8, "M5,Wu,ok")]
    # without a CSV dialect (JSON lines) every line is its own record
    plain = [t for b in _read_file(str(path), "x", "utf-8", True) for t in b.column("_text").to_pylist()]
    assert len(plain) == 6  # header and blank line are not records


def test_multi_line_csv_record_lands_whole(spark: SparkSession, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "crm").mkdir(parents=True)
    text = ("member_no,name,mobile,updated,sms_ok\n"
            'M1,"王\n芳",13800138000,2024/01/02 08:00:00,Y\n'
            "M2,Li Na,,2024/01/03 08:00:00,N\n")
    (raw / "crm" / "members.csv").write_bytes(text.encode("gbk"))
    ctx = context(make_conf(tmp_path), str(tmp_path / "lake"))
    lake = Lake(spark, ctx.lake_root)
    result = land(spark, ctx, raw=str(raw), lake=lake, sources=["members"])
    members = result.loads["members"]
    assert (members.raw_records, members.bronze_rows, members.quarantined_rows) == (2, 2, 0)
    names = {r["member_no"]: (r["name"], r["_line"]) for r in lake.read("bronze_members").collect()}
    assert names == {"M1": ("王\n芳", 2), "M2": ("Li Na", 4)}
