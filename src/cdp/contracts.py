"""The lake's table contracts in one registry: schema, keys, PII columns and erasure keys per table.

docs/ARCHITECTURE.md describes these tables in prose; this module is the same contract as data, read
by the code that needs it: ``cdp standardize`` writes the silver tables with these schemas,
:func:`cdp.privacy.mask_pii` masks the PII columns listed here, and ``cdp forget`` leaves alone the
tables that hold no one's personal data. Imports nothing of ``cdp``, so every package may read it.

A contract whose ``name`` ends in ``*`` covers a family of tables (``bronze_<source>``,
``audience_<name>``). ``schema`` is a Spark DDL string, or None where the columns come from
configuration (feature and tag catalogues, source declarations, audience fields).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableContract:
    """One table's contract.

    Attributes:
        name: the table name, or a prefix ending in ``*``.
        schema: Spark DDL of the columns, or None when configuration decides them.
        keys: columns that identify a row (the table's natural key).
        pii: columns holding personal data that analysts see masked.
        forget_keys: column groups ``cdp forget`` matches a person's rows on (a group matches when
            all its columns match one of the person's values); empty when the table holds no one's
            personal data, or must survive the erasure itself.
        kept_on_erasure: the table records the erasure (hashes only) and is never erased from.
    """

    name: str
    schema: str | None
    keys: tuple[str, ...]
    pii: tuple[str, ...] = ()
    forget_keys: tuple[tuple[str, ...], ...] = ()
    kept_on_erasure: bool = False

    @property
    def personal(self) -> bool:
        """Whether ``cdp forget`` must look into this table."""
        return bool(self.forget_keys)

    @property
    def columns(self) -> tuple[str, ...] | None:
        """Column names of the schema (None when configuration decides them)."""
        if self.schema is None:
            return None
        return tuple(_split_top_level(self.schema))


def _split_top_level(ddl: str) -> list[str]:
    """Column names of a DDL string (commas inside ``<...>`` belong to a type, not a new column)."""
    names, depth, start = [], 0, 0
    for index, char in enumerate(ddl + ","):
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "," and depth == 0:
            names.append(ddl[start:index].strip().split()[0])
            start = index + 1
    return names


_RECORD = ("source", "record_id")
_IDENTIFIER = ("id_type", "id_value")

CONTRACTS: tuple[TableContract, ...] = (
    # -- landing ---------------------------------------------------------------------------------
    TableContract("bronze_*", None, ("_source_file", "_line"), pii=(),
                  # matched by the record id its source declares in conf/sources.yaml
                  forget_keys=(("record_id",),)),
    TableContract("quarantine", "source string, stage string, load_id string, file string, line long, "
                                "field string, raw string, reason string, quarantined_at timestamp",
                  ("source", "stage", "file", "line", "field"), pii=("raw",),
                  # matched by containment of the person's raw identifiers in `raw`
                  forget_keys=(("raw",),)),
    TableContract("load_log", None, ("source", "load_id")),
    # -- silver (cdp standardize) ----------------------------------------------------------------
    # non_personal: why a valid value links nobody (a toll-free or shared-cost service line), else null
    TableContract("silver_identifiers", "source string, record_id string, id_type string, id_value string, "
                                        "raw_value string, observed_at timestamp, non_personal string",
                  (*_RECORD, *_IDENTIFIER), pii=("id_value", "raw_value"), forget_keys=(_RECORD, _IDENTIFIER)),
    TableContract("silver_customer_attributes", "source string, record_id string, observed_at timestamp, "
                                                "name string, gender string, birth_date date, city string, "
                                                "province string, city_tier int, member_level string, "
                                                "member_since date",
                  _RECORD, pii=("name", "birth_date"), forget_keys=(_RECORD,)),
    TableContract("silver_events", "event_id string, source string, record_id string, event_type string, "
                                   "channel string, event_time timestamp, session_id string, product_id string, "
                                   "category string, attributes map<string,string>",
                  ("event_id",), forget_keys=(_RECORD,)),
    TableContract("silver_orders", "order_id string, source string, record_id string, order_time timestamp, "
                                   "channel string, store_id string, status string, total_amount double, "
                                   "discount_amount double, coupon_code string, payment_method string, "
                                   "currency string",
                  ("order_id",), forget_keys=(_RECORD, ("order_id",))),
    TableContract("silver_order_lines", "order_id string, line_no int, product_id string, category string, "
                                        "quantity int, unit_price double, line_amount double",
                  ("order_id", "line_no"), forget_keys=(("order_id",),)),
    TableContract("silver_returns", "return_id string, order_id string, product_id string, quantity int, "
                                    "refund_amount double, return_time timestamp",
                  ("return_id",), forget_keys=(("order_id",),)),
    TableContract("silver_consent", "source string, record_id string, channel string, granted boolean, "
                                    "event_time timestamp",
                  (*_RECORD, "channel", "event_time"), forget_keys=(_RECORD,)),
    TableContract("silver_products", "product_id string, name string, category string, subcategory string, "
                                     "brand string, price double",
                  ("product_id",)),
    # -- identity (cdp stitch) -------------------------------------------------------------------
    TableContract("identity_map", "id_type string, id_value string, customer_id string, is_shared boolean, "
                                  "updated_run string, created_run string, component_id long",
                  (*_IDENTIFIER, "customer_id"), pii=("id_value",), forget_keys=(("customer_id",), _IDENTIFIER)),
    TableContract("customer_records", "source string, record_id string, customer_id string", _RECORD,
                  forget_keys=(("customer_id",), _RECORD)),
    TableContract("identity_graph", "a long, a_type string, a_value string, b long, b_type string, b_value string, "
                                    "priority int, n_records long, n_sources int, sources array<string>, "
                                    "first_seen timestamp, last_seen timestamp, first_source string, "
                                    "first_record_id string, rule string, status string, status_reason string",
                  ("a", "b"), pii=("a_value", "b_value"),
                  forget_keys=(("a_type", "a_value"), ("b_type", "b_value"))),
    TableContract("identity_history", None, ("run_id", "customer_id"), forget_keys=(("customer_id",),)),
    TableContract("identity_quarantine", "component long, size long, type_counts map<string,bigint>, "
                                         "top_identifiers array<string>, reason string, run_id string",
                  ("run_id", "component"), pii=("top_identifiers",)),
    # customer_id, name, gender, birth_date, city, province, city_tier, member_level, member_since, email,
    # phone, plus one <attr>_source column per attribute (conf/identity.yaml survivorship)
    TableContract("customer_profile", None, ("customer_id",), pii=("name", "birth_date", "email", "phone"),
                  forget_keys=(("customer_id",),)),
    # -- downstream ------------------------------------------------------------------------------
    TableContract("consent_current", "customer_id string, channel string, granted boolean, event_time timestamp, "
                                     "source string, record_id string",
                  ("customer_id", "channel"), forget_keys=(("customer_id",), _RECORD)),
    TableContract("features_daily", None, ("customer_id", "as_of"), forget_keys=(("customer_id",),)),
    TableContract("tags_wide", None, ("customer_id",), forget_keys=(("customer_id",),)),
    TableContract("tags_long", "customer_id string, tag string, value string, kind string, version string, "
                               "computed_at timestamp, as_of date, run_id string",
                  ("customer_id", "tag", "value"), forget_keys=(("customer_id",),)),
    TableContract("tag_stats", None, ("run_id", "tag")),
    TableContract("audience_*", None, ("customer_id",), pii=("email", "phone", "wechat_openid", "device_id"),
                  forget_keys=(("customer_id",),)),
    TableContract("audience_stats", None, ("run_id", "audience")),
    # one row per send (cdp export): what response events' message ids link back to; no personal data
    TableContract("export_messages", "message_id string, audience string, destination string, channel string, "
                                     "publish_version long, recipients long, run_id string, exported_at timestamp",
                  ("message_id",)),
    # -- journeys (cdp journeys) -----------------------------------------------------------------
    TableContract("journey_state", "journey string, customer_id string, step string, entered_step_at timestamp, "
                                   "path array<string>, version string, status string, entered_at timestamp, "
                                   "exited_at timestamp, exit_reason string, entries int, updated_at timestamp",
                  ("journey", "customer_id"), forget_keys=(("customer_id",),)),
    TableContract("journey_events", "journey string, customer_id string, as_of timestamp, seq int, event string, "
                                    "from_step string, to_step string, detail string, channel string, "
                                    "message string, version string, run_id string, recorded_at timestamp",
                  ("journey", "customer_id", "as_of", "seq"), forget_keys=(("customer_id",),)),
    TableContract("journey_runs", "journey string, as_of date, version string, run_id string, "
                                  "counts map<string,bigint>, active long, recorded_at timestamp",
                  ("journey", "as_of")),
    TableContract("runs", None, ("run_id", "step")),
    # -- privacy (cdp forget) --------------------------------------------------------------------
    TableContract("suppression_list", "id_type string, id_hash string, list string, added_at timestamp, "
                                      "request_id string",
                  ("id_type", "id_hash", "list"), kept_on_erasure=True),
    TableContract("privacy_audit", "request_id string, requested_at timestamp, subject_hashes array<string>, "
                                   "identifiers long, records long, rows_deleted map<string,bigint>, "
                                   "tables_vacuumed array<string>, export_files_rewritten long, run_id string",
                  ("request_id",), kept_on_erasure=True),
)

_EXACT = {c.name: c for c in CONTRACTS if not c.name.endswith("*")}
_FAMILIES = tuple(c for c in CONTRACTS if c.name.endswith("*"))


def contract_for(table: str) -> TableContract | None:
    """The contract of ``table`` (a family's for ``bronze_<source>``, ``audience_<name>``), or None."""
    if table in _EXACT:
        return _EXACT[table]
    return next((c for c in _FAMILIES if table.startswith(c.name[:-1])), None)


def pii_columns() -> tuple[str, ...]:
    """Every column any contract lists as PII, sorted: what masking hides when told no table."""
    return tuple(sorted({column for contract in CONTRACTS for column in contract.pii}))


def tables_without_personal_data() -> frozenset[str]:
    """Tables ``cdp forget`` never erases from: they hold no one's personal data, or record erasures."""
    return frozenset(c.name for c in CONTRACTS if not c.personal and not c.name.endswith("*"))


def schema_of(table: str) -> str:
    """The DDL schema of ``table``.

    Raises:
        KeyError: the table has no contract, or configuration decides its columns.
    """
    contract = contract_for(table)
    if contract is None or contract.schema is None:
        raise KeyError(f"{table}: no fixed schema in cdp.contracts")
    return contract.schema


__all__ = ["CONTRACTS", "TableContract", "contract_for", "pii_columns", "schema_of",
           "tables_without_personal_data"]
