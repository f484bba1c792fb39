"""`cdp export`: ad-platform hashing, files + manifest, consent at export time, idempotency."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual
from test_audience_job import T_CART, make_ctx, publish_scenario

from cdp.audiences.activation import export_frame, normalise_email, normalise_phone

# sha256("test@example.com") and sha256("+8613800138000"), as published by ad platforms' docs / any sha256 tool
TEST_EMAIL_SHA256 = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
TEST_PHONE_SHA256 = "ec61f3c620a98bdead8c1f1f0ae747abd1b62a0c2dba4fd4bc22cf0d1d8653e5"
SHA_A = hashlib.sha256(b"a@x.com").hexdigest()
SHA_F = hashlib.sha256(b"f@x.com").hexdigest()


def test_normalisers():
    assert normalise_email("  Test@Example.COM ") == "test@example.com"
    assert normalise_email("   ") is None
    assert normalise_phone("138 0013 8000") == "+8613800138000"
    assert normalise_phone("+86 138-0013-8000") == "+8613800138000"
    assert normalise_phone("12") is None


def test_export_frame_hashes_normalised_identifiers(spark):
    members = spark.createDataFrame(
        [("c1", "  Test@Example.COM ", "138 0013 8000", None, "dev-1"), ("c2", None, "not a phone", None, None)],
        "customer_id string, email string, phone string, wechat_openid string, device_id string")
    hashed = export_frame(members, "ads", hashed=True)
    assertDataFrameEqual(hashed, spark.createDataFrame(
        [("c1", TEST_EMAIL_SHA256, TEST_PHONE_SHA256, "dev-1")],  # c2 has nothing usable left: dropped
        "customer_id string, email_sha256 string, phone_sha256 string, device_id string"))
    clear = export_frame(members, "email", hashed=False)
    assertDataFrameEqual(clear, spark.createDataFrame([("c1", "test@example.com")], "customer_id string, email string"))


@pytest.fixture(scope="module")
def exported(spark, tmp_path_factory, conf_dir):
    from cdp.jobs import export

    lake, conf, _ = publish_scenario(spark, tmp_path_factory.mktemp("export"), conf_dir)
    # c6 withdraws e-mail consent after the publish, before the export
    lake.write(spark.createDataFrame([("crm_members", "M6", "email", False, T_CART)],
                                     "source string, record_id string, channel string, granted boolean, "
                                     "event_time timestamp"), "silver_consent", mode="append")
    result = export.run(spark, make_ctx(conf, lake.root, "exp1"), lake=lake)
    return lake, conf, result


def test_export_writes_files_manifest_and_table_without_opted_out(spark, exported):
    lake, _, result = exported
    assert sorted((e.audience, e.destination, e.rows, e.skipped) for e in result.exports) == [
        ("cart_sms", "sms_gateway", 1, False), ("vip_email", "ads_upload", 1, False), ("vip_email", "esp", 1, False)]
    folder = Path(lake.root) / "_exports" / "vip_email" / "ads_upload" / "v0"
    lines = (folder / "snapshot.csv").read_text().splitlines()
    # c1 only: c2 and c4 never consented / withdrew, c3 has no e-mail, c6 withdrew after the publish
    assert lines == ["email_sha256,message_id", f"{SHA_A},vip_email.ads_upload.v0"]
    assert SHA_F not in (folder / "added.csv").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["publish_version"] == 0 and manifest["hashed"] is True
    assert manifest["message_id"] == "vip_email.ads_upload.v0"
    assert manifest["columns"] == ["email_sha256", "message_id"]
    for entry in manifest["files"]:
        data = (folder / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert {f["kind"]: f["rows"] for f in manifest["files"]} == {"snapshot": 1, "added": 1, "removed": 0}
    esp = (Path(lake.root) / "_exports" / "vip_email" / "esp" / "v0" / "snapshot.jsonl").read_text()
    assert [json.loads(line) for line in esp.splitlines()] == [{"email": "a@x.com", "message_id": "vip_email.esp.v0"}]
    sms = pq.read_table(Path(lake.root) / "_exports" / "cart_sms" / "sms_gateway" / "v0" / "snapshot.parquet")
    assert sms.to_pylist() == [{"phone": "+8613800000001", "message_id": "cart_sms.sms_gateway.v0"}]
    # one row per send: what a response's message id links back to
    assertDataFrameEqual(
        lake.read("export_messages").select("message_id", "audience", "destination", "channel", "publish_version",
                                            "recipients", "run_id"),
        spark.createDataFrame([("cart_sms.sms_gateway.v0", "cart_sms", "sms_gateway", "sms", 0, 1, "exp1"),
                               ("vip_email.ads_upload.v0", "vip_email", "ads_upload", "email", 0, 1, "exp1"),
                               ("vip_email.esp.v0", "vip_email", "esp", "email", 0, 1, "exp1")],
                              "message_id string, audience string, destination string, channel string, "
                              "publish_version long, recipients long, run_id string"))
    table = lake.read("export_vip_email").select("destination", "customer_id", "email", "email_sha256",
                                                 "publish_version")
    assertDataFrameEqual(table, spark.createDataFrame(
        [("ads_upload", "c1", None, SHA_A, 0), ("esp", "c1", "a@x.com", None, 0)],
        "destination string, customer_id string, email string, email_sha256 string, publish_version long"))


def test_reexport_of_same_publish_version_writes_nothing(spark, exported):
    from cdp.jobs import export

    lake, conf, _ = exported
    folder = Path(lake.root) / "_exports" / "vip_email" / "ads_upload" / "v0"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    table_version = lake.version("export_vip_email")
    again = export.run(spark, make_ctx(conf, lake.root, "exp2"), lake=lake)
    assert all(e.skipped for e in again.exports) and len(again.exports) == 3
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert lake.version("export_vip_email") == table_version
    assert lake.read("export_messages").count() == 3  # one row per send, not per attempt


def test_control_group_and_consentless_members_are_never_sendable(spark):
    from cdp.jobs.export import sendable_members

    members = spark.createDataFrame([("c1", False), ("c2", True), ("c3", False), ("c4", False)],
                                    "customer_id string, in_control boolean")
    consent = spark.createDataFrame([("c1", "sms", True), ("c2", "sms", True), ("c3", "email", True),
                                     ("c4", "sms", True)], "customer_id string, channel string, granted boolean")
    suppressed = spark.createDataFrame([("c4",)], "customer_id string")
    result = sendable_members(members, consent, suppressed, "sms")
    assertDataFrameEqual(result, spark.createDataFrame([("c1", False)], "customer_id string, in_control boolean"))
