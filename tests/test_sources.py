"""sources.yaml parsing: the shipped file is valid; bad declarations fail naming file and key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdp.runtime.config import ConfigError, parse_file
from cdp.sources import SourcesConfig

GOOD = {
    "sources": {
        "shop": {
            "path": "shop/*.jsonl", "format": "jsonl", "record_id": "id", "event_time": "at",
            "fields": {"id": {"type": "string", "required": True}, "at": "timestamp",
                       "buyer": {"type": "struct", "fields": {"phone": "string"}},
                       "items": {"type": "array", "fields": {"sku": "string", "qty": "int"}}},
            "identifiers": [{"type": "phone", "field": "buyer.phone"}],
            "order_lines": {"explode": "items", "order_id": "id", "product_id": "items[].sku"},
        }
    }
}


def _with(path: list, value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def test_shipped_sources_yaml_parses(conf_dir: Path) -> None:
    config = parse_file(conf_dir / "sources.yaml", SourcesConfig.from_dict)
    assert {"crm_members", "orders", "returns", "events", "wechat_followers", "service_tickets",
            "email_events", "sms_reports", "email_responses", "sms_responses", "products"} <= set(config.sources)
    orders = config.sources["orders"]
    assert orders.resolve("buyer.phone")[0].type == "string"
    leaf, array = orders.resolve("items[].qty")
    assert (leaf.name, leaf.type, leaf.required, array) == ("qty", "int", True, "items")


@pytest.mark.parametrize(("path", "value", "message"), [
    (["sources", "shop", "identifiers"], [{"type": "phone", "field": "buyer.mobile"}],
     r"sources\.shop\.identifiers\[0\]\.field: field 'buyer\.mobile' is not in the source schema"),
    (["sources", "shop", "order_lines", "product_id"], "items[].code",
     r"sources\.shop\.order_lines\.product_id: field 'items\[\]\.code' is not in the source schema"),
    (["sources", "shop", "order_lines", "explode"], "buyer",
     r"sources\.shop\.order_lines\.explode: 'buyer' is not an array"),
    (["sources", "shop", "identifiers"], [{"type": "sku", "field": "items[].sku"}],
     r"sources\.shop\.identifiers\[0\]\.field: 'items\[\]\.sku' is inside array 'items'"),
    (["sources", "shop", "format"], "xml", r"sources\.shop\.format: 'xml' is not one of"),
    (["sources", "shop", "record_id"], "missing", r"sources\.shop\.record_id: field 'missing'"),
    (["sources", "shop", "fields", "at"], {"type": "timestamp", "format": "epoch_s", "colour": 1},
     r"sources\.shop\.fields\.at: unknown keys \['colour'\]"),
    (["sources", "shop", "events"], [{"event_type": {"value": "clicked"}, "event_time": "at"}],
     r"sources\.shop\.events\[0\]\.event_type: values \['clicked'\] are not among"),
    (["sources", "shop", "events"], [{"event_type": {"value": "login"}}],
     r"sources\.shop\.events\[0\]: required canonical columns \['event_time'\]"),
    (["sources", "shop", "encoding"], "klingon-8", r"sources\.shop\.encoding: unknown encoding"),
    # features leave cancelled orders out: an orders section that does not say where status comes from
    # would give every order a NULL status, which a filter could drop without a word
    (["sources", "shop", "orders"], {"order_id": "id", "order_time": "at", "channel": {"value": "pos"}},
     r"sources\.shop\.orders\.status: not mapped; features filter on orders status.*status: \{value: paid\}"),
    (["sources", "shop", "orders"], {"order_id": "id", "order_time": "at", "status": {"value": "paid"}},
     r"sources\.shop\.orders\.channel: not mapped; features filter on orders channel"),
    (["sources", "shop", "events"], [{"event_type": {"value": "login"}, "event_time": "at"}],
     r"sources\.shop\.events\[0\]\.channel: not mapped; features filter on events channel"),
])
def test_bad_declarations_name_file_and_key(tmp_path: Path, path: list, value, message: str) -> None:
    file = tmp_path / "sources.yaml"
    file.write_text(yaml.safe_dump(_with(path, value), allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"sources\.yaml: {message}"):
        parse_file(file, SourcesConfig.from_dict)


def test_good_declaration_parses() -> None:
    config = SourcesConfig.from_dict(GOOD)
    (section,) = config.sources["shop"].sections
    assert (section.table, section.explode) == ("order_lines", "items")
