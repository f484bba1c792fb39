"""`cdp forget`: the person disappears from every table (and old versions), and stays out on reload."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pipelines import find_spellings
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from test_audience_job import make_ctx, publish_scenario

from cdp.privacy import drop_records, suppress, suppressed_records

C1_VALUES = {"c1", "a@x.com", "+8613800000001", "M1", "O1", "E1"}
SHA_A = hashlib.sha256(b"a@x.com").hexdigest()


@pytest.fixture(scope="module")
def forgotten(spark, tmp_path_factory, conf_dir):
    from cdp.jobs import export, forget

    lake, conf, _ = publish_scenario(spark, tmp_path_factory.mktemp("forget"), conf_dir)
    export.run(spark, make_ctx(conf, lake.root, "exp1"), lake=lake)
    silver_before = lake.read("silver_identifiers").collect()
    versions_before = {t: lake.version(t) for t in lake.tables()}
    result = forget.run(spark, make_ctx(conf, lake.root, "forget1"), lake=lake,
                        identifier="email=  A@X.com ", request_id="req-1")
    return lake, conf, result, silver_before, versions_before


def test_person_is_gone_from_every_table(spark, forgotten):
    lake, _, result, _, _ = forgotten
    assert result.person.customer_ids == ("c1",)
    expected_touched = {"customer_profile", "identity_map", "customer_records", "silver_identifiers",
                        "silver_consent", "silver_events", "silver_orders", "silver_order_lines", "tags_wide",
                        "tags_long", "features_daily", "bronze_crm_members", "consent_current",
                        "audience_vip_email", "audience_cart_sms", "_staging_audience_vip_email",
                        "_staging_audience_cart_sms", "audience_changes", "export_vip_email", "export_cart_sms"}
    assert expected_touched <= set(result.rows_deleted), expected_touched - set(result.rows_deleted)
    assert set(result.vacuumed) == set(result.rows_deleted)
    assert result.rows_deleted["customer_profile"] == 1 and result.rows_deleted["identity_map"] == 4
    for table in lake.tables():
        if table in ("suppression_list", "privacy_audit"):
            continue
        frame = lake.read(table)
        strings = [c for c, t in frame.dtypes if t == "string"]
        if not strings:
            continue
        hit = F.lit(False)
        for column in strings:
            hit = hit | F.col(f"`{column}`").isin(*C1_VALUES, SHA_A)
        assert frame.filter(hit).count() == 0, f"{table} still holds the person"
    # the others are untouched
    assert sorted(r.customer_id for r in lake.read("customer_profile").collect()) == ["c2", "c3", "c4", "c5", "c6"]


def test_old_versions_cannot_bring_the_person_back(spark, forgotten):
    lake, _, _, _, versions_before = forgotten
    for table in ("customer_profile", "identity_map", "audience_vip_email"):
        try:
            rows = lake.read(table, version=versions_before[table]).filter("customer_id = 'c1'").count()
        except Exception:  # noqa: BLE001 - the vacuumed files are gone: exactly what erasure wants
            rows = 0
        assert rows == 0, table


def test_export_files_are_redacted(forgotten):
    lake, _, result, _, _ = forgotten
    assert result.export_files_rewritten >= 2
    folder = Path(lake.root) / "_exports" / "vip_email" / "ads_upload" / "v0"
    assert SHA_A not in (folder / "snapshot.csv").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    snapshot = next(f for f in manifest["files"] if f["kind"] == "snapshot")
    assert snapshot["rows"] == 1  # c6 stays
    assert snapshot["sha256"] == hashlib.sha256((folder / "snapshot.csv").read_bytes()).hexdigest()


def test_audit_has_no_pii_and_suppression_list_has_hashes(spark, forgotten):
    lake, _, _, _, _ = forgotten
    audit = lake.read("privacy_audit").collect()
    assert len(audit) == 1
    row = audit[0].asDict()
    text = json.dumps(row, default=str)
    assert not any(value in text for value in ("a@x.com", "+8613800000001", '"c1"'))
    assert row["request_id"] == "req-1"
    assert row["subject_hashes"] == [hashlib.sha256(b"c1").hexdigest()]
    assert row["rows_deleted"]["customer_profile"] == 1
    suppression = lake.read("suppression_list").select("id_type", "id_hash", "list")
    expected = [(t, hashlib.sha256(v.encode()).hexdigest(), "erasure")
                for t, v in [("email", "a@x.com"), ("phone", "+8613800000001"), ("member_id", "M1"),
                             ("order_id", "O1")]]
    assertDataFrameEqual(suppression, spark.createDataFrame(expected, "id_type string, id_hash string, list string"))


def test_reload_through_the_suppression_filter_keeps_them_out(spark, forgotten):
    lake, _, _, silver_before, _ = forgotten
    # a later load brings the very same records back into silver ...
    reloaded = spark.createDataFrame(silver_before, lake.read("silver_identifiers").schema)
    suppression = lake.read("suppression_list")
    # ... and standardize's filter drops every record carrying a suppressed identifier
    blocked = suppressed_records(reloaded, suppression)
    kept = drop_records(reloaded, blocked)
    assert kept.filter(F.col("id_value").isin(*C1_VALUES)).count() == 0
    assert kept.select("record_id").distinct().count() == 5  # M2..M6 untouched
    assert suppress(reloaded, suppression).filter(F.col("id_value").isin(*C1_VALUES)).count() == 0


def test_shared_identifier_is_refused_and_bad_input_is_named(spark, forgotten):
    from cdp.jobs import forget
    from cdp.jobs.entry import JobFailed
    from cdp.runtime.config import ConfigError

    lake, conf, _, _, _ = forgotten
    with pytest.raises(JobFailed, match="shared identifier"):
        forget.run(spark, make_ctx(conf, lake.root, "f2"), lake=lake, identifier="device_id=dev-shared")
    with pytest.raises(ConfigError, match="types.shoe_size: unknown identifier type"):
        forget.run(spark, make_ctx(conf, lake.root, "f3"), lake=lake, identifier="shoe_size=42")
    with pytest.raises(ConfigError, match="expected TYPE=VALUE"):
        forget.run(spark, make_ctx(conf, lake.root, "f4"), lake=lake, identifier="a@x.com")


def test_no_byte_under_the_lake_spells_the_person(forgotten):
    """Data files, Delta logs and checkpoints, gate reports, exports: the e-mail and phone are nowhere."""
    from test_audience_job import _PRISTINE

    lake = forgotten[0]
    wanted = {"a@x.com", "+8613800000001", "13800000001"}
    pristine = next(iter(_PRISTINE.values()))[0] / "lake"
    assert len(find_spellings(pristine, wanted)) > 20  # the person was all over the lake before
    assert find_spellings(Path(lake.root), wanted) == []
