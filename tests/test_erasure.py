"""Erasure that leaves nothing: after `cdp forget` no byte under the lake spells the person, and a
re-delivered export does not bring them back.

The whole pipeline runs on generated data (`cdp.synthetic`, whose `_truth/` says which records are
whose); MLflow tracks into the lake, so its artifacts are searched too. Every spelling of the
person's e-mail, phone, member number and WeChat unionid that occurs in the raw files is then
searched for in every file under the lake: Parquet files (data files and Delta checkpoints) are
read with pyarrow and every value scanned (Parquet compresses, so bytes would prove nothing); all
other files (Delta log JSON, reports, exports, MLflow's database and artifacts) byte for byte.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.synthetic import GenerateParams, format_email, format_phone, generate

CUSTOMERS = 150
END = date(2025, 6, 30)
AS_OF = "2025-07-01"


def _ctx(conf_dir: Path, lake_root: Path, run_id: str):
    from cdp.runtime.config import JobContext, Profile

    return JobContext(conf_dir=conf_dir, profile=Profile(name="local", lake=str(lake_root)),
                      lake_root=str(lake_root), run_id=run_id)


def _raw_text(raw: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in sorted(raw.rglob("*"))
                     if p.is_file() and "_truth" not in p.parts)


def choose_person(raw: Path) -> dict[str, str]:
    """The person with the most records among those with an e-mail, a phone, a member number and returns."""
    truth = raw / "_truth"
    with (truth / "records.csv").open(encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    with (truth / "persons.csv").open(encoding="utf-8") as handle:
        persons = {row["person_id"]: row for row in csv.DictReader(handle)}
    counts: dict[str, int] = {}
    with_returns = {r["person_id"] for r in records if r["source"] == "returns"}
    for row in records:
        counts[row["person_id"]] = counts.get(row["person_id"], 0) + 1
    eligible = [p for p in persons.values() if p["email"] and p["phone"] and p["member_no"] and p["unionid"]
                and p["person_id"] in with_returns]
    return max(eligible, key=lambda p: (counts.get(p["person_id"], 0), p["person_id"]))


def spellings(person: dict[str, str], raw: Path) -> set[str]:
    """Every spelling of the person's identifiers that the raw files hold (as they appear there)."""
    text = _raw_text(raw)
    national = person["phone"].removeprefix("+86")
    candidates = {person["phone"], person["member_no"], person["unionid"],
                  *(format_email(person["email"], v).strip() for v in range(4)),
                  *(format_phone(national, v).strip() for v in range(8))}
    found = {c for c in candidates if c and c in text}
    assert person["email"] in {c.lower() for c in found} and national in "".join(found), found
    return found


def find_spellings(root: Path, wanted: set[str]) -> list[str]:
    """Where under ``root`` any of ``wanted`` occurs (case-insensitive): '<file>: <spelling>'."""
    needles = sorted({w.lower() for w in wanted})
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        texts: list[str] = []
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.columns:
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    texts.extend(v for v in column.to_pylist() if v)
                elif pa.types.is_nested(column.type):
                    texts.append(json.dumps(column.to_pylist(), ensure_ascii=False, default=str))
        else:
            data = path.read_bytes()
            texts.append(data.decode("utf-8", errors="ignore"))
            # JSON writers may escape non-ASCII (full-width digits); read those files unescaped too
            if path.suffix in (".json", ".jsonl") or path.parent.name == "_delta_log":
                texts.append(data.decode("unicode_escape", errors="ignore"))
        for text in texts:
            lowered = text.lower()
            hits.extend(f"{path.relative_to(root)}: {n}" for n in needles if n in lowered)
    return sorted(set(hits))


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
def erased(spark, tmp_path_factory, conf_dir):
    from cdp.jobs import forget
    from cdp.jobs import run as runner
    from cdp.lake import Lake

    root = tmp_path_factory.mktemp("erasure")
    raw, lake_root = root / "raw", root / "lake"
    generate(GenerateParams(out=raw, customers=CUSTOMERS, seed=11, end=END, chunk_size=CUSTOMERS, workers=1))
    person = choose_person(raw)
    wanted = spellings(person, raw)
    with pytest.MonkeyPatch.context() as patch:
        # MLflow tracks into the lake (its default), so its database and artifacts are searched too
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        lake = Lake(spark, str(lake_root))
        first = runner.run(spark, _ctx(conf_dir, lake_root, "run1"), raw=str(raw), as_of=AS_OF, lake=lake)
        assert first.status == "ok", runner.format_summary(first)
        before = {"found": find_spellings(lake_root, wanted),
                  "records": lake.read("customer_records").collect(),
                  "returns": returns_by_customer(lake).collect(),
                  "profile": lake.read("customer_profile").collect()}
        customer_ids = {r["customer_id"] for r in lake.read("identity_map").filter(
            F.col("id_value").isin(person["email"], person["phone"], person["member_no"])).collect()}
        dry = forget.run(spark, _ctx(conf_dir, lake_root, "dry"), lake=lake,
                         identifier=f"email={person['email']}", dry_run=True)
        found_before_dry_run = find_spellings(lake_root, wanted)
        results = [forget.run(spark, _ctx(conf_dir, lake_root, f"forget-{kind}"), lake=lake,
                              identifier=f"{kind}={person[key]}", request_id=f"req-{kind}")
                   for kind, key in (("email", "email"), ("phone", "phone"), ("member_id", "member_no"),
                                     ("wechat_unionid", "unionid"))]
        after_forget = find_spellings(lake_root, wanted)
        copies = redeliver(raw)
        second = runner.run(spark, _ctx(conf_dir, lake_root, "run2"), raw=str(raw), as_of=AS_OF, lake=lake)
        assert second.status == "ok", runner.format_summary(second)
        after_rerun = find_spellings(lake_root, wanted)
    return {"lake": lake, "person": person, "wanted": wanted, "before": before, "customer_ids": customer_ids,
            "dry": dry, "found_before_dry_run": found_before_dry_run, "results": results,
            "after_forget": after_forget, "after_rerun": after_rerun, "copies": copies, "second": second}


def test_the_person_was_everywhere_before(erased):
    found = erased["before"]["found"]
    assert len(erased["wanted"]) >= 5, erased["wanted"]
    folders = {hit.split("/")[0] for hit in found}
    assert {"bronze_crm_members", "silver_identifiers", "identity_map", "customer_profile"} <= folders, folders
    assert any("_delta_log" in hit for hit in found)


def test_dry_run_names_tables_and_files_and_erases_nothing(erased):
    dry = erased["dry"]
    assert dry.rows_deleted == {} and not dry.vacuumed
    assert {"customer_profile", "identity_map", "silver_identifiers", "bronze_crm_members"} <= set(dry.planned)
    profile_files = dry.planned["customer_profile"]
    assert sum(profile_files.values()) == 1 and all(".parquet" in f for f in profile_files)
    assert erased["found_before_dry_run"] == erased["before"]["found"]
    from cdp.jobs.forget import format_plan

    text = format_plan(dry)
    assert "table customer_profile: 1 rows in 1 files" in text and "nothing erased" in text


def test_no_byte_under_the_lake_spells_the_person_after_forget(erased):
    assert erased["after_forget"] == []
    assert erased["results"][0].rows_deleted.get("customer_profile") == len(erased["customer_ids"])


def test_a_redelivered_export_does_not_bring_the_person_back(erased):
    assert erased["copies"] > 0
    land = next(r for r in erased["second"].steps if r.step == "land")
    assert land.status == "ok"
    assert erased["after_rerun"] == []
    lake = erased["lake"]
    log = lake.read("load_log").filter(F.col("run_id") == "run2")
    suppressed = log.agg(F.sum("suppressed_rows")).first()[0]
    assert suppressed > 0
    raw, bronze, quarantined = log.agg(F.sum("raw_records"), F.sum("bronze_rows"), F.sum("quarantined_rows")).first()
    assert raw == bronze + quarantined + suppressed


def test_the_other_customers_are_as_they_were(spark, erased):
    """Records, returns and profiles of everyone else: unchanged by the erasure and the re-run."""
    lake, gone = erased["lake"], erased["customer_ids"]
    before = erased["before"]
    for name, current, schema in (
            ("records", lake.read("customer_records"), "source string, record_id string, customer_id string"),
            ("returns", returns_by_customer(lake), "return_id string, customer_id string"),
            ("profile", lake.read("customer_profile"), lake.read("customer_profile").schema)):
        kept = [row for row in before[name] if row["customer_id"] not in gone]
        expected = spark.createDataFrame(kept, schema)
        assertDataFrameEqual(current.select(*expected.columns), expected)
    assert os.path.isdir(lake.root)
