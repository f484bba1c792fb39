"""The table-contract registry agrees with the code that writes, masks and erases the tables."""
from __future__ import annotations

import pytest
from pyspark.testing import assertDataFrameEqual

from cdp import contracts
from cdp.features.schemas import INPUT_SCHEMAS
from cdp.jobs import export, forget, journeys, land, stitch
from cdp.jobs.standardize import SILVER_SCHEMAS
from cdp.journeys import engine as journey_engine
from cdp.privacy import CONSENT_SCHEMA, DEFAULT_PII_COLUMNS, SUPPRESSION_SCHEMA, mask_pii
from cdp.tagging.compute import TAGS_LONG_SCHEMA

FIXED = [c for c in contracts.CONTRACTS if c.schema is not None]


def _schema(spark, ddl):
    return spark.createDataFrame([], ddl).schema


def test_schemas_are_the_ones_the_jobs_write(spark):
    written = {
        "quarantine": land.QUARANTINE_SCHEMA,
        "identity_map": _schema(spark, stitch._EMPTY_SCHEMAS[stitch.IDENTITY_MAP]),
        "identity_graph": _schema(spark, stitch._EMPTY_SCHEMAS[stitch.IDENTITY_GRAPH]),
        "identity_quarantine": _schema(spark, stitch._EMPTY_SCHEMAS[stitch.IDENTITY_QUARANTINE]),
        "tags_long": TAGS_LONG_SCHEMA,
        "consent_current": CONSENT_SCHEMA,
        "suppression_list": SUPPRESSION_SCHEMA,
        "privacy_audit": _schema(spark, forget.AUDIT_SCHEMA),
        "export_messages": _schema(spark, export.MESSAGES_SCHEMA + ", exported_at timestamp"),
        **{name: _schema(spark, ddl) for name, ddl in SILVER_SCHEMAS.items()},
        "journey_state": _schema(spark, journey_engine.STATE_SCHEMA),
        "journey_events": _schema(spark, journey_engine.EVENTS_SCHEMA + ", recorded_at timestamp"),
        "journey_runs": _schema(spark, journeys.RUNS_SCHEMA + ", recorded_at timestamp"),
    }
    assert {name: _schema(spark, contracts.schema_of(name)).simpleString() for name in written} == {
        name: schema.simpleString() for name, schema in written.items()}


def test_feature_inputs_read_columns_the_contracts_hold(spark):
    for name, schema in INPUT_SCHEMAS.items():
        contract = contracts.contract_for(name)
        if contract.schema is None:
            continue
        declared = {f.name: f.dataType for f in _schema(spark, contract.schema).fields}
        assert {f.name: declared.get(f.name) for f in schema.fields} == {f.name: f.dataType for f in schema.fields}


@pytest.mark.parametrize("contract", FIXED, ids=lambda c: c.name)
def test_keys_pii_and_forget_keys_are_columns_of_the_schema(contract):
    named = set(contract.keys) | set(contract.pii) | {c for group in contract.forget_keys for c in group}
    assert named - set(contract.columns) == set()


@pytest.mark.parametrize("contract", [c for c in FIXED if c.name != "quarantine"], ids=lambda c: c.name)
def test_forget_erases_exactly_the_tables_whose_contract_has_forget_keys(spark, contract):
    person = forget.Person(customer_ids=("c1",), identifiers=(("email", "a@x.com"),), records=(("pos", "r1"),),
                           order_ids=("o1",), raw_values=())
    keys = forget.erase_keys(spark, list(contract.columns), person)
    assert (bool(keys), contract.name in forget.SKIP_TABLES) == (contract.personal, not contract.personal)


def test_families_and_unknown_tables():
    assert [getattr(contracts.contract_for(t), "name", None) for t in ("bronze_pos", "audience_vip", "nope")] == [
        "bronze_*", "audience_*", None]
    assert forget.SKIP_TABLES >= {"suppression_list", "privacy_audit", "load_log", "runs", "tag_stats",
                                  "audience_stats"}
    with pytest.raises(KeyError, match="customer_profile: no fixed schema"):
        contracts.schema_of("customer_profile")


def test_mask_pii_masks_what_the_table_contract_lists(spark):
    profile = spark.createDataFrame([("c1", "Zhang Wei", "F", "wang.fang@qq.com", "+8613800138000", "Shanghai")],
                                    "customer_id string, name string, gender string, email string, phone string, "
                                    "city string")
    expected = spark.createDataFrame([("c1", "Z**", "F", "w***@qq.com", "***8000", "Shanghai")],
                                     "customer_id string, name string, gender string, email string, phone string, "
                                     "city string")
    assertDataFrameEqual(mask_pii(profile, table="customer_profile"), expected)
    assertDataFrameEqual(mask_pii(profile), expected)  # the default: every contract's PII columns
    assert set(DEFAULT_PII_COLUMNS) >= {"email", "phone", "name", "raw_value", "id_value", "wechat_openid",
                                        "device_id", "birth_date", "raw", "a_value", "b_value"}
    with pytest.raises(ValueError, match="'scratch' has no contract"):
        mask_pii(profile, table="scratch")
