"""Erasure that leaves nothing: after `cdp forget` no byte under the lake spells the person, and a
re-delivered export does not bring them back.

The lake is a copy of the session's reference run (tests/pipelines.py: the whole pipeline on
generated data, train and run report included, MLflow tracking into the lake), so data files, Delta
logs and checkpoints, quality and run reports, exports and MLflow's database and artifacts are all
there to search. Every spelling of the person's e-mail, phone, member number and WeChat unionid that
occurs in the raw files is searched for in every file under the lake (:func:`pipelines.find_spellings`).
Then every raw export is delivered again under a new name, the pipeline re-runs and the lake is
searched again; the other customers' records, returns and profiles are as they were.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pipelines import (
    a_logged_identifier,
    cdp_forget,
    cdp_run,
    choose_person,
    comparable,
    context,
    copy_lake,
    erasure_audit,
    find_spellings,
    mlflow_store,
    spellings,
    timed,
)
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

pytestmark = [pytest.mark.slow, pytest.mark.long_e2e]  # forget and a re-run (~17 min at load 13): opt-in

RERUN_ID = "e2e-rerun"


def redeliver(raw: Path) -> int:
    """Copy every raw export under a new name, one byte longer (a new checksum, the same records)."""
    copies = 0
    for path in sorted(raw.rglob("*")):
        if path.is_file() and "_truth" not in path.parts and "redelivered" not in path.name:
            copy = path.with_name(f"{path.stem}-redelivered{path.suffix}")
            shutil.copy(path, copy)
            with copy.open("ab") as handle:
                handle.write(b"\n")
            copies += 1
    return copies


def returns_by_customer(lake):
    """return_id -> the customer its order belongs to (through customer_records)."""
    orders = lake.read("silver_orders").select("order_id", "source", "record_id")
    records = lake.read("customer_records")
    return (lake.read("silver_returns").select("return_id", "order_id")
            .join(orders, on="order_id", how="inner").join(records, on=["source", "record_id"], how="inner")
            .select("return_id", "customer_id"))


@pytest.fixture(scope="module")
def erased(spark, tmp_path_factory, conf_dir, cli_conf, e2e_raw, reference_run):
    from cdp.jobs import forget
    from cdp.lake import Lake

    work = tmp_path_factory.mktemp("erasure")
    lake_root = copy_lake(reference_run, work / "lake")
    raw = work / "raw"
    shutil.copytree(e2e_raw, raw)  # the shared raw folder stays as it is
    person = choose_person(raw)
    wanted = spellings(person, raw)
    lake = Lake(spark, str(lake_root), backend="embedded")
    before = {"found": find_spellings(lake_root, wanted),
              "records": lake.read("customer_records").collect(),
              "returns": returns_by_customer(lake).collect(),
              "profile": comparable(lake.read("customer_profile")).collect()}
    customer_ids = {r["customer_id"] for r in lake.read("identity_map").filter(
        F.col("id_value").isin(person["email"], person["phone"], person["member_no"])).collect()}
    # MLflow tracks into the lake copy (its default), so its database and artifacts are searched too
    with mlflow_store(None), timed("erasure: dry run, forget, re-delivery and re-run (no train)"):
        dry = forget.run(spark, context(conf_dir, lake_root, "dry"), lake=lake,
                         identifier=f"email={person['email']}", dry_run=True)
        found_after_dry_run = find_spellings(lake_root, wanted)
        # `cdp forget` as users run it, naming every identifier the person gave
        cdp_forget(cli_conf, lake_root, "embedded", person, "req-1")
        after_forget = find_spellings(lake_root, wanted)
        copies = redeliver(raw)
        # every step but train, in its own process (the lake's champions, MLflow in the lake copy)
        cdp_run(cli_conf, lake_root, raw, backend="embedded", log=work / f"{RERUN_ID}.log", run_id=RERUN_ID)
        after_rerun = find_spellings(lake_root, wanted)
    lake = Lake(spark, str(lake_root), backend="embedded")  # what the child commands committed, read afresh
    return {"lake": lake, "person": person, "wanted": wanted, "before": before, "customer_ids": customer_ids,
            "dry": dry, "found_after_dry_run": found_after_dry_run, "audit": erasure_audit(lake, "req-1"),
            "after_forget": after_forget, "after_rerun": after_rerun, "copies": copies}


def test_the_person_was_everywhere_before(erased, reference_run):
    found = erased["before"]["found"]
    assert len(erased["wanted"]) >= 5, erased["wanted"]
    folders = {hit.split("/")[0] for hit in found}
    assert {"bronze_crm_members", "silver_identifiers", "identity_map", "customer_profile"} <= folders, folders
    # Whether a person's values are some file's min/max statistic depends on the data (at this size
    # the chosen person's are not); that the search reads the Delta log does not: an identifier the
    # log's statistics hold is found there.
    table = reference_run.lake_root / "identity_map"
    logged = a_logged_identifier(table, "id_value")
    assert any(hit.startswith("_delta_log/") for hit in find_spellings(table, {logged})), logged
    # what the search covers beyond tables was there to search
    root = Path(erased["lake"].root)
    assert any(p.is_file() for p in (root / "mlflow-artifacts").rglob("*"))
    assert (root / "mlflow.db").is_file() and any((root / "_reports").rglob("*.html"))


def test_dry_run_names_tables_and_files_and_erases_nothing(erased):
    from cdp.jobs.forget import format_plan

    dry = erased["dry"]
    assert dry.rows_deleted == {} and not dry.vacuumed
    assert {"customer_profile", "identity_map", "silver_identifiers", "bronze_crm_members"} <= set(dry.planned)
    profile_files = dry.planned["customer_profile"]
    assert sum(profile_files.values()) == len(erased["customer_ids"])
    assert all(".parquet" in f for f in profile_files)
    assert erased["found_after_dry_run"] == erased["before"]["found"]
    text = format_plan(dry)
    assert f"table customer_profile: {len(erased['customer_ids'])} rows in" in text and "nothing erased" in text


def test_no_byte_under_the_lake_spells_the_person_after_forget(erased):
    assert erased["customer_ids"]
    assert erased["after_forget"] == []
    assert erased["audit"]["rows_deleted"]["customer_profile"] == len(erased["customer_ids"])


def test_a_redelivered_export_does_not_bring_the_person_back(erased):
    assert erased["copies"] > 0
    assert erased["after_rerun"] == []
    log = erased["lake"].read("load_log").filter(F.col("run_id") == RERUN_ID)
    raw, bronze, quarantined, suppressed = log.agg(
        F.sum("raw_records"), F.sum("bronze_rows"), F.sum("quarantined_rows"), F.sum("suppressed_rows")).first()
    assert suppressed > 0
    assert raw == bronze + quarantined + suppressed


def test_the_other_customers_are_as_they_were(spark, erased):
    """Records, returns and profiles of everyone else: unchanged by the erasure and the re-run."""
    lake, gone = erased["lake"], erased["customer_ids"]
    before = erased["before"]
    profile = comparable(lake.read("customer_profile"))
    for name, current, schema in (
            ("records", lake.read("customer_records"), lake.read("customer_records").schema),
            ("returns", returns_by_customer(lake), "return_id string, customer_id string"),
            ("profile", profile, profile.schema)):
        kept = [row for row in before[name] if row["customer_id"] not in gone]
        expected = spark.createDataFrame(kept, schema)
        assert expected.count() > 0, name
        assertDataFrameEqual(current.select(*expected.columns), expected)
