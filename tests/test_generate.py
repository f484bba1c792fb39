"""The generator: deterministic bytes for a seed, realistic mess present, truth covering every record."""
from __future__ import annotations

import csv
import hashlib
import json
from datetime import date
from pathlib import Path

import pytest

from cdp.sources import SourcesConfig
from cdp.synthetic import GenerateParams, format_phone, generate

CUSTOMERS = 240


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "out"
    generate(GenerateParams(out=out, customers=CUSTOMERS, seed=7, end=date(2025, 6, 30), chunk_size=120,
                            workers=1))
    return out


def test_same_seed_gives_the_same_bytes_whatever_the_worker_count(raw: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(GenerateParams(out=again, customers=CUSTOMERS, seed=7, end=date(2025, 6, 30), chunk_size=120,
                            workers=2))
    assert _digest(again) == _digest(raw)


def test_another_seed_gives_other_data(raw: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(GenerateParams(out=other, customers=CUSTOMERS, seed=8, end=date(2025, 6, 30), chunk_size=120,
                            workers=1))
    assert (other / "_truth" / "records.csv").read_bytes() != (raw / "_truth" / "records.csv").read_bytes()


def test_refuses_a_non_empty_output_directory(raw: Path) -> None:
    with pytest.raises(ValueError, match="not empty"):
        generate(GenerateParams(out=raw, customers=10, seed=1, end=date(2025, 6, 30)))


def _all_text(raw: Path) -> str:
    parts = []
    for path in sorted(raw.rglob("*")):
        if path.is_file() and "_truth" not in path.parts:
            encoding = "gbk" if "service" in path.parts else "utf-8-sig"
            parts.append(path.read_text(encoding=encoding))
    return "\n".join(parts)


def test_mess_is_present(raw: Path) -> None:
    text = _all_text(raw)
    assert any("\uff10" <= ch <= "\uff19" for ch in text), "full-width digits"
    assert "+86 1" in text and "0086" in text and "86-1" in text, "phone formats"
    for junk in ("13800000000", "test@test.com", "N/A", ",null,"):
        assert junk in text, junk
    assert any("@" in w and w != w.lower() for w in text.split('"')), "upper-case e-mails"
    assert "+08:00" in text, "ISO times with offsets"
    assert any(ord(ch) > 0x4E00 for ch in text), "Chinese names"
    assert any(f" {s}," in text or f",{s} " in text for s in ("Wang", "Li", "Zhang", "Chen")), "Latin names"
    tickets = next((raw / "service").glob("*.csv")).read_bytes()
    with pytest.raises(UnicodeDecodeError):
        tickets.decode("utf-8")  # the service desk exports GBK
    tickets.decode("gbk")


def test_shared_family_devices_link_several_persons(raw: Path) -> None:
    truth = {}
    with (raw / "_truth" / "records.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            truth[(row["source"], row["record_id"])] = row["person_id"]
    persons_per_device: dict[str, set[str]] = {}
    for path in (raw / "events").rglob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            person = truth.get(("events", record.get("event_id")))
            if record.get("device_id") and person:
                persons_per_device.setdefault(record["device_id"], set()).add(person)
    shared = [d for d, persons in persons_per_device.items() if len(persons) >= 2]
    assert shared, "no device used by two or more persons"
    assert max(len(persons_per_device[d]) for d in shared) <= 4


def _records(raw: Path) -> tuple[set[tuple[str, str]], set[tuple[str, str, int]]]:
    """(source, record id) of every parseable record, and (source, file, line) of unparseable ones."""
    config = SourcesConfig.from_dict(__import__("yaml").safe_load(
        (Path(__file__).resolve().parents[1] / "conf" / "sources.yaml").read_text(encoding="utf-8")))
    ids: set[tuple[str, str]] = set()
    bad: set[tuple[str, str, int]] = set()
    for source in config.sources.values():
        for path in sorted(raw.glob(source.path)):
            rel = str(path.relative_to(raw))
            text = path.read_bytes().decode(source.encoding)
            lines = text.splitlines()
            if source.format == "csv":
                header = next(csv.reader([lines[0]]))
                for number, line in enumerate(lines[1:], start=2):
                    values = next(csv.reader([line]))
                    if len(values) != len(header):
                        bad.add((source.name, rel, number))
                        continue
                    row = dict(zip(header, values, strict=True))
                    ids.add((source.name, ":".join(row[p] for p in source.record_id)))
            else:
                for number, line in enumerate(lines, start=1):
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        bad.add((source.name, rel, number))
                        continue
                    ids.add((source.name, str(record.get(source.record_id[0]))))
    return ids, bad


def test_truth_covers_every_record_and_lists_the_broken_ones(raw: Path) -> None:
    with (raw / "_truth" / "records.csv").open(encoding="utf-8") as handle:
        truth = {(row["source"], row["record_id"]): row["person_id"] for row in csv.DictReader(handle)}
    with (raw / "_truth" / "broken.csv").open(encoding="utf-8") as handle:
        broken = list(csv.DictReader(handle))
    with (raw / "_truth" / "persons.csv").open(encoding="utf-8") as handle:
        persons = {row["person_id"] for row in csv.DictReader(handle)}
    ids, unparseable = _records(raw)
    # Broken copies carry marker ids (or none); every other record has exactly one true person.
    valid_ids = {key for key in ids if "BROKEN" not in key[1] and key[0] != "products"
                 and key[1] not in ("None", "")}
    assert valid_ids == set(truth)
    assert set(truth.values()) <= persons and len(persons) == CUSTOMERS
    broken_lines = {(row["source"], row["file"], int(row["line"])) for row in broken}
    assert unparseable <= broken_lines
    per_source = {row["source"] for row in broken}
    assert per_source == {"crm_members", "orders", "returns", "events", "wechat_followers", "service_tickets",
                          "email_events", "sms_reports", "products"}


def test_persons_carry_latent_traits_and_churn(raw: Path) -> None:
    with (raw / "_truth" / "persons.csv").open(encoding="utf-8") as handle:
        persons = list(csv.DictReader(handle))
    for trait in ("activity", "base_churn_hazard", "price_sensitivity", "email_affinity", "category_prefs",
                  "churn_date"):
        assert trait in persons[0]
    churned = [p for p in persons if p["churn_date"]]
    assert 0 < len(churned) < len(persons)


@pytest.mark.parametrize(("variant", "expected"), [
    (0, "13800138000"), (1, "+86 138 0013 8000"), (2, "138-0013-8000"), (3, "008613800138000"),
    (4, "86-13800138000"), (5, "１３８００１３８０００"), (6, "(+86)138 00138000"), (7, " 13800138000 ")])
def test_phone_formats(variant: int, expected: str) -> None:
    assert format_phone("13800138000", variant) == expected


def test_simulated_campaigns_record_groups_outcomes_and_the_true_lift(raw: Path) -> None:
    from datetime import datetime

    from cdp.synthetic import CAMPAIGNS, read_campaign_truth, read_orders

    with (raw / "_truth" / "records.csv").open(encoding="utf-8") as handle:
        truth = {(row["source"], row["record_id"]): row["person_id"] for row in csv.DictReader(handle)}
    campaigns, members = read_campaign_truth(raw)
    assert [c["message_id"] for c in campaigns] == [c.message_id for c in CAMPAIGNS]
    responses: dict[tuple[str, str], list[dict[str, str]]] = {}
    for path in sorted((raw / "responses").rglob("*.csv")):
        for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines()):
            source = f"{path.relative_to(raw).parts[1]}_responses"
            responses.setdefault((row["message_id"], truth[(source, row["response_id"])]), []).append(row)
    orders: dict[str, list[tuple[str, int, str]]] = {}
    for person, order_no, created, _, status, _ in read_orders(raw):
        orders.setdefault(person, []).append((order_no, created, status))
    caused_orders = {r["order_no"] for rows in responses.values() for r in rows if r["event"] == "converted"}
    for campaign in campaigns:
        ours = [m for m in members if m["message_id"] == campaign["message_id"]]
        sent_at = int(datetime.fromisoformat(campaign["sent_at"].replace("Z", "+00:00")).timestamp())
        window_end = sent_at + int(campaign["window_days"]) * 86400
        assert int(campaign["members"]) == len(ours) > 0
        assert int(campaign["control"]) == sum(m["group"] == "control" for m in ours) > 0
        for member in ours:
            person, key = member["person_id"], (campaign["message_id"], member["person_id"])
            kinds = [r["event"] for r in responses.get(key, [])]
            # the baseline outcome is exactly what the organic orders in the files say
            organic = any(sent_at < created <= window_end and status != "cancelled"
                          for order_no, created, status in orders.get(person, []) if order_no not in caused_orders)
            assert int(member["converted_without"]) == organic, member
            assert int(member["converted_with"]) >= int(member["converted_without"])
            if member["group"] == "control":
                assert kinds == [], f"a control member got a response: {member}"
                continue
            assert kinds[0] == "sent" and kinds[1] in ("delivered", "bounced")
            caused = int(member["converted_with"]) > int(member["converted_without"])
            assert ("converted" in kinds) == caused
            for r in responses.get(key, []):
                if r["event"] == "converted":  # the caused order is in the files, in the window, for this person
                    created = {o: t for o, t, _ in orders[person]}[r["order_no"]]
                    assert sent_at < created <= window_end
        rate_without = sum(int(m["converted_without"]) for m in ours) / len(ours)
        rate_with = sum(int(m["converted_with"]) for m in ours) / len(ours)
        assert float(campaign["true_abs_lift"]) == pytest.approx(rate_with - rate_without, abs=1e-6)
    assert sum(float(c["true_abs_lift"]) for c in campaigns) > 0, "no campaign caused any conversion"
