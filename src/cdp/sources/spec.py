"""``conf/sources.yaml`` as typed config: fields, values, identifier mappings, sections, sources.

Also the canonical silver model's column names, required columns and allowed values that a
source's mappings are checked against. Errors raise ``ValueError`` naming the key path.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from sqlglot import expressions as exp

from cdp.runtime.config import require, require_regex, sql_references

# Reads a lookup table named in the YAML (a CSV beside it) as {key: value}; supplied by the loader.
LookupReader = Callable[[str], Mapping[str, str]]

LEAF_TYPES = ("string", "int", "long", "double", "boolean", "date", "timestamp")
FIELD_TYPES = LEAF_TYPES + ("struct", "array")
FORMATS = ("csv", "jsonl", "parquet")
TIME_FORMATS = ("iso8601", "epoch_s", "epoch_ms")
METADATA_COLUMNS = ("_source_file", "_line", "_load_id", "_ingested_at")
# record_id may name fields, or be derived: a hash of the record's content, or its file and line
CONTENT_HASH_ID = "$content_hash"
FILE_LINE_ID = "$file_line"
DERIVED_RECORD_IDS = (CONTENT_HASH_ID, FILE_LINE_ID)
# what happens to records that share a record id but differ in content
ON_DUPLICATE_KEY = ("quarantine", "latest", "error")
TRUE_VALUES = ("true", "t", "1", "y", "yes")
FALSE_VALUES = ("false", "f", "0", "n", "no")

EVENT_TYPES = frozenset({
    "page_view", "product_view", "search", "add_to_cart", "remove_from_cart", "checkout", "login",
    "app_open", "mini_program_open", "email_sent", "email_open", "email_click", "email_bounce",
    "email_unsubscribe", "sms_sent", "sms_click", "sms_bounce", "sms_unsubscribe", "wechat_follow",
    "wechat_unfollow", "ticket_opened",
    # delivery and response files of campaign sends (sources email_responses, sms_responses)
    "email_delivered", "email_conversion", "sms_delivered", "sms_conversion",
})
EVENT_CHANNELS = frozenset({"web", "app", "mini_program", "email", "sms", "wechat", "service"})
ORDER_CHANNELS = frozenset({"online", "pos", "mini_program", "app"})
ORDER_STATUSES = frozenset({"paid", "cancelled", "returned", "partially_returned"})
CONSENT_CHANNELS = frozenset({"email", "sms", "wechat", "ads"})

# Canonical columns per silver table (besides source / record_id, which every table but
# products carries): name -> Spark type. Order is the table's column order.
CANONICAL_SCHEMAS: dict[str, dict[str, str]] = {
    "attributes": {"name": "string", "gender": "string", "birth_date": "date", "city": "string",
                   "province": "string", "city_tier": "int", "member_level": "string",
                   "member_since": "date"},
    "events": {"event_type": "string", "channel": "string", "event_time": "timestamp",
               "session_id": "string", "product_id": "string", "category": "string"},
    "orders": {"order_id": "string", "order_time": "timestamp", "channel": "string",
               "store_id": "string", "status": "string", "total_amount": "double",
               "discount_amount": "double", "coupon_code": "string", "payment_method": "string",
               "currency": "string"},
    "order_lines": {"order_id": "string", "line_no": "int", "product_id": "string",
                    "category": "string", "quantity": "int", "unit_price": "double",
                    "line_amount": "double"},
    "returns": {"return_id": "string", "order_id": "string", "product_id": "string",
                "quantity": "int", "refund_amount": "double", "return_time": "timestamp"},
    "consent": {"channel": "string", "granted": "boolean", "event_time": "timestamp"},
    "products": {"product_id": "string", "name": "string", "category": "string",
                 "subcategory": "string", "brand": "string", "price": "double"},
}
REQUIRED_CANONICAL: dict[str, tuple[str, ...]] = {
    "attributes": (),
    "events": ("event_type", "event_time"),
    "orders": ("order_id", "order_time"),
    "order_lines": ("order_id", "product_id"),
    "returns": ("return_id", "order_id"),
    "consent": ("channel", "granted", "event_time"),
    "products": ("product_id",),
}
# Canonical columns the features filter on (cancelled orders, order and event channels, event types):
# a section must map each, from a field or as a constant, so that no feature silently loses rows to a
# NULL nobody chose. Checked when the config is loaded.
FILTERED_CANONICAL: dict[str, dict[str, str]] = {  # table -> column -> an example constant
    "orders": {"status": "paid", "channel": "online"},
    "events": {"event_type": "page_view", "channel": "web"},
}
# Canonical enums a source's `enums:` may extend (sources.yaml top level): name -> (table, column).
ENUMS: dict[str, tuple[str, str]] = {
    "event_types": ("events", "event_type"),
    "event_channels": ("events", "channel"),
    "order_channels": ("orders", "channel"),
    "order_statuses": ("orders", "status"),
    "consent_channels": ("consent", "channel"),
}
# Allowed constant / mapped values, checked when the config is loaded.
ALLOWED_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("events", "event_type"): EVENT_TYPES,
    ("events", "channel"): EVENT_CHANNELS,
    ("orders", "channel"): ORDER_CHANNELS,
    ("orders", "status"): ORDER_STATUSES,
    ("consent", "channel"): CONSENT_CHANNELS,
    ("attributes", "gender"): frozenset({"F", "M"}),
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Spark's datetime pattern letters ("Datetime Patterns" of Spark 3+); week-based letters (Y, w, W, e, c)
# and other java.time letters are refused by Spark's parser, so they are refused when the config loads.
SPARK_PATTERN_LETTERS = frozenset("GyDMLdQqEFahKkHmsSVzOXxZu")
_QUOTED = re.compile(r"'[^']*'")
_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ZONE_LETTERS = re.compile(r"[XxZOV]")


# Spark pattern letters of a time of day: a pattern without any reads a date only.
_TIME_OF_DAY_LETTERS = frozenset("aHhKkmsSn")
RULES = ("min", "max", "allowed", "regex", "max_length", "not_after")
NUMERIC_TYPES = ("int", "long", "double")


def is_date_only_pattern(pattern: str) -> bool:
    """True for a Spark datetime pattern without a time of day (``yyyy-MM-dd``, ``yyyyMMdd``)."""
    return pattern not in TIME_FORMATS and not (set(_QUOTED.sub("", pattern)) & _TIME_OF_DAY_LETTERS)


@dataclass(frozen=True)
class FieldRule:
    """One rule a field's value must keep: ``min``, ``max``, ``allowed``, ``regex``, ``max_length`` or
    ``not_after`` (``now`` or an ISO date / time). ``value`` is as written (a number, a list, text)."""

    name: str
    value: Any

    def describe(self) -> str:
        shown = ", ".join(map(str, self.value)) if isinstance(self.value, list) else self.value
        return f"{self.name} {shown}"


def _parse_rule(name: str, value: Any, kind: str, where: str) -> FieldRule:
    rw = f"{where}.{name}"
    if name in ("min", "max"):
        if kind in NUMERIC_TYPES:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{rw}: expected a number for a {kind} field, got {value!r}")
        elif kind in ("date", "timestamp"):
            value = _iso_bound(value, rw)
        else:
            raise ValueError(f"{rw}: {name} applies to numbers, dates and timestamps, not {kind}")
    elif name == "allowed":
        if not isinstance(value, list) or not value or any(isinstance(v, (dict, list)) for v in value):
            raise ValueError(f"{rw}: expected a non-empty list of values")
        value = [str(v) for v in value]
    elif name == "regex":
        require_regex(value, rw)
    elif name == "max_length":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{rw}: expected a positive integer, got {value!r}")
    else:  # not_after
        if kind not in ("date", "timestamp"):
            raise ValueError(f"{rw}: not_after applies to dates and timestamps, not {kind}")
        if value != "now":
            value = _iso_bound(value, rw)
    return FieldRule(name=name, value=value)


def _iso_bound(value: Any, where: str) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: expected an ISO date or time (2025-01-01, 2025-01-01T08:00:00), "
                         f"got {value!r}") from None
    return str(value)


def spark_pattern_problem(pattern: str) -> str | None:
    """Why Spark cannot parse this datetime pattern, or None when it can."""
    if pattern.count("'") % 2:
        return f"unbalanced quote in pattern {pattern!r}"
    letters = {c for c in _QUOTED.sub("", pattern) if c.isalpha()}
    unknown = sorted(letters - SPARK_PATTERN_LETTERS)
    if unknown:
        return (f"pattern {pattern!r} uses {', '.join(repr(c) for c in unknown)}, which Spark's datetime "
                "patterns do not support (week-based letters Y, w, W, e, c are refused)")
    return None


@dataclass(frozen=True)
class FieldSpec:
    """One field of a source record. ``struct`` holds ``fields``; ``array`` holds struct elements."""

    name: str
    type: str = "string"
    required: bool = False
    formats: tuple[str, ...] = ()
    timezone: str = "UTC"
    on_invalid: Literal["quarantine", "null"] = "quarantine"
    fields: tuple[FieldSpec, ...] = ()
    rules: tuple[FieldRule, ...] = ()

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str, timezone: str) -> FieldSpec:
        if not _NAME.match(name):
            raise ValueError(f"{where}: invalid field name {name!r}")
        if isinstance(data, str):
            data = {"type": data}
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a type name or a mapping, got {data!r}")
        unknown = set(data) - {"type", "required", "format", "timezone", "on_invalid", "fields", *RULES}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        kind = data.get("type", "string")
        if kind not in FIELD_TYPES:
            raise ValueError(f"{where}.type: {kind!r} is not one of {list(FIELD_TYPES)}")
        rules = tuple(_parse_rule(rule, data[rule], kind, where) for rule in RULES if rule in data)
        if rules and kind in ("struct", "array"):
            raise ValueError(f"{where}: rules apply to values, not to a {kind}")
        raw_formats = data.get("format", [])
        formats = tuple([raw_formats] if isinstance(raw_formats, str) else raw_formats)
        if kind in ("date", "timestamp") and not formats:
            formats = ("iso8601",) if kind == "timestamp" else ("yyyy-MM-dd",)
        if formats and kind not in ("date", "timestamp"):
            raise ValueError(f"{where}.format: only date and timestamp fields take a format")
        if kind == "date" and any(f in ("epoch_s", "epoch_ms") for f in formats):
            raise ValueError(f"{where}.format: a date takes a pattern, not an epoch")
        for pattern in formats:
            problem = None if pattern in TIME_FORMATS else spark_pattern_problem(str(pattern))
            if problem:
                raise ValueError(f"{where}.format: {problem}")
        on_invalid = data.get("on_invalid", "quarantine")
        if on_invalid not in ("quarantine", "null"):
            raise ValueError(f"{where}.on_invalid: use 'quarantine' or 'null', not {on_invalid!r}")
        children: tuple[FieldSpec, ...] = ()
        if kind in ("struct", "array"):
            sub = require(data, "fields", where, dict)
            tz = data.get("timezone", timezone)
            children = tuple(cls.from_dict(str(k), v, f"{where}.fields.{k}", tz) for k, v in sub.items())
        elif "fields" in data:
            raise ValueError(f"{where}.fields: only struct and array fields have fields")
        return cls(name=name, type=kind, required=bool(data.get("required", False)), formats=formats,
                   timezone=str(data.get("timezone", timezone)), on_invalid=on_invalid,
                   fields=children, rules=rules)

    def child(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


VALUE_KINDS = ("field", "value", "expr", "coalesce", "present")
_VALUE_KEYS = {*VALUE_KINDS, "map", "default", "extract", "unmapped"}


def input_column(path: str) -> str:
    """The column holding the typed value of field ``path`` for expressions (``items[].sku``)."""
    return "__in_" + re.sub(r"[^0-9A-Za-z]", "_", path)


@dataclass(frozen=True)
class ValueSpec:
    """Where a canonical column's value comes from.

    Exactly one of: ``field`` (a path), ``value`` (a constant), ``expr`` (Spark SQL over the record's
    typed fields: ``upper(substring(sku, 1, 2))``; in a section that explodes ``items``, its elements'
    fields are ``items.sku``), ``coalesce`` (the first non-null of several values) or ``present`` (true
    when the field holds a value). Then optionally ``extract`` (a regex; its first group, else the
    match) and ``map`` (a lookup: inline, or a CSV file of key,value rows beside sources.yaml). A
    value the map does not cover is quarantined with the record unless ``default:`` replaces it or
    ``unmapped: drop`` leaves it null; either way it is counted.
    """

    field: str | None = None
    value: Any = None
    map: Mapping[str, Any] | None = None
    default: Any = None
    kind: str = "field"
    expr: str | None = None
    expr_sql: str | None = None  # ``expr`` over :func:`input_column` names (set when the source checks it)
    inputs: tuple[str, ...] = ()  # field paths ``expr`` reads
    coalesce: tuple[ValueSpec, ...] = ()
    present: str | None = None
    extract: str | None = None
    unmapped: Literal["quarantine", "drop"] = "quarantine"

    @classmethod
    def from_dict(cls, data: Any, where: str, read_lookup: LookupReader | None = None) -> ValueSpec:
        if isinstance(data, str):
            return cls(field=data)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a field path or a mapping, got {data!r}")
        unknown = set(data) - _VALUE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(_VALUE_KEYS)}")
        kinds = [k for k in VALUE_KINDS if k in data]
        if len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of {', '.join(VALUE_KINDS)}")
        kind = kinds[0]
        extract = data.get("extract")
        if extract is not None:
            if kind not in ("field", "expr"):
                raise ValueError(f"{where}.extract: a regex applied to a field or an expression")
            require_regex(extract, f"{where}.extract")
        mapping = data.get("map")
        if mapping is not None:
            if kind not in ("field", "expr"):
                raise ValueError(f"{where}.map: a map looks up the value of a field or an expression")
            if isinstance(mapping, str):
                if read_lookup is None:
                    raise ValueError(f"{where}.map: lookup file {mapping!r} given, but no folder to read it from")
                try:
                    mapping = read_lookup(mapping)
                except ValueError as exc:
                    raise ValueError(f"{where}.map: {exc}") from None
            if not isinstance(mapping, dict):
                raise ValueError(f"{where}.map: expected a mapping or the name of a CSV file")
            mapping = {str(k): v for k, v in mapping.items()}
        unmapped = data.get("unmapped", "quarantine")
        if unmapped not in ("quarantine", "drop"):
            raise ValueError(f"{where}.unmapped: use 'quarantine' or 'drop', not {unmapped!r}")
        if "unmapped" in data and (mapping is None or "default" in data):
            raise ValueError(f"{where}.unmapped: only for a map without a default (a default replaces unmapped values)")
        coalesce: tuple[ValueSpec, ...] = ()
        if kind == "coalesce":
            items = data["coalesce"]
            if not isinstance(items, list) or len(items) < 2:
                raise ValueError(f"{where}.coalesce: expected a list of two or more values")
            coalesce = tuple(cls.from_dict(item, f"{where}.coalesce[{i}]", read_lookup) for i, item in enumerate(items))
        for key in ("expr", "present"):
            if kind == key and not isinstance(data[key], str):
                raise ValueError(f"{where}.{key}: expected a string")
        return cls(field=data.get("field"), value=data.get("value"), map=mapping, default=data.get("default"),
                   kind=kind, expr=data.get("expr"), coalesce=coalesce, present=data.get("present"),
                   extract=extract, unmapped=unmapped)

    def outputs(self) -> list[Any]:
        """Every constant this spec can produce (for checking against allowed values)."""
        if self.kind == "value":
            return [self.value]
        if self.kind == "coalesce":
            return [v for item in self.coalesce for v in item.outputs()]
        values = list(self.map.values()) if self.map is not None else []
        return values + ([self.default] if self.default is not None else [])

    @property
    def unchecked(self) -> bool:
        """Its values cannot be known when the config loads (an expression or extract without a map)."""
        if self.kind == "coalesce":
            return any(item.unchecked for item in self.coalesce)
        return self.kind in ("expr", "present") and self.map is None or (self.extract is not None and self.map is None)

    def walk(self) -> list[ValueSpec]:
        """This spec and the ones it coalesces."""
        return [self, *[inner for item in self.coalesce for inner in item.walk()]]


@dataclass(frozen=True)
class IdentifierSpec:
    type: str
    field: str
    qualifier: ValueSpec | None = None  # prefixed to the value as "<qualifier>:<value>"


@dataclass(frozen=True)
class SectionSpec:
    """A mapping onto one canonical table: canonical column -> value, optionally per array element."""

    table: str
    columns: Mapping[str, ValueSpec]
    explode: str | None = None
    attributes: Mapping[str, ValueSpec] = field(default_factory=dict)  # events only (map column)
    where: str = ""  # its key in sources.yaml (``orders``, ``events[1]``), for messages


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: str
    format: Literal["csv", "jsonl", "parquet"]
    encoding: str
    csv_options: Mapping[str, str]
    record_id: tuple[str, ...]
    event_time: str | None
    timezone: str
    fields: tuple[FieldSpec, ...]
    identifiers: tuple[IdentifierSpec, ...] = ()
    sections: tuple[SectionSpec, ...] = ()
    on_duplicate_key: Literal["quarantine", "latest", "error"] = "quarantine"

    @property
    def bronze_table(self) -> str:
        return f"bronze_{self.name}"

    def sections_for(self, table: str) -> list[SectionSpec]:
        return [s for s in self.sections if s.table == table]

    def resolve(self, path: str) -> tuple[FieldSpec, str | None]:
        """The leaf field at ``path`` and the array it sits in (``items`` for ``items[].sku``)."""
        return _resolve(self.fields, path)

    @classmethod
    def from_dict(cls, name: str, data: Any, defaults: Mapping[str, Any], read_lookup: LookupReader | None = None,
                  allowed: Mapping[tuple[str, str], frozenset[str]] = ALLOWED_VALUES) -> SourceSpec:
        where = f"sources.{name}"
        if not _SOURCE_NAME.match(name):
            raise ValueError(f"{where}: source names are lower snake_case")
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping")
        known = {"path", "format", "encoding", "csv", "record_id", "event_time", "timezone", "fields",
                 "identifiers", "attributes", "events", "orders", "order_lines", "returns", "consent",
                 "products", "description", "on_duplicate_key"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        path = require(data, "path", where, str)
        fmt = require(data, "format", where, str)
        if fmt not in FORMATS:
            raise ValueError(f"{where}.format: {fmt!r} is not one of {list(FORMATS)}")
        encoding = str(data.get("encoding", defaults.get("encoding", "utf-8")))
        try:
            "".encode(encoding)
        except LookupError as exc:
            raise ValueError(f"{where}.encoding: unknown encoding {encoding!r}") from exc
        csv_options = data.get("csv") or {}
        if not isinstance(csv_options, dict):
            raise ValueError(f"{where}.csv: expected a mapping of CSV options")
        timezone = str(data.get("timezone", defaults.get("timezone", "UTC")))
        raw_fields = require(data, "fields", where, dict)
        fields = tuple(FieldSpec.from_dict(str(k), v, f"{where}.fields.{k}", timezone)
                       for k, v in raw_fields.items())
        if fmt == "csv":
            nested = [f.name for f in fields if f.type in ("struct", "array")]
            if nested:
                raise ValueError(f"{where}.fields: CSV fields cannot be struct or array: {nested}")
        raw_rid = require(data, "record_id", where, (str, list))
        record_id = tuple([raw_rid] if isinstance(raw_rid, str) else [str(p) for p in raw_rid])
        if any(part in DERIVED_RECORD_IDS for part in record_id) and len(record_id) > 1:
            raise ValueError(f"{where}.record_id: {' or '.join(DERIVED_RECORD_IDS)} stands alone, not in a list")
        on_duplicate_key = data.get("on_duplicate_key", "quarantine")
        if on_duplicate_key not in ON_DUPLICATE_KEY:
            raise ValueError(f"{where}.on_duplicate_key: expected one of {list(ON_DUPLICATE_KEY)}, "
                             f"got {on_duplicate_key!r}")
        event_time = data.get("event_time")
        spec = cls(name=name, path=path, format=fmt, encoding=encoding,
                   csv_options={str(k): str(v) for k, v in csv_options.items()},
                   record_id=record_id, event_time=event_time, timezone=timezone, fields=fields)
        for i, part in enumerate(record_id):
            if part not in DERIVED_RECORD_IDS:
                spec._check_path(part, f"{where}.record_id" + (f"[{i}]" if len(record_id) > 1 else ""))
        if event_time is not None:
            leaf, _ = spec._check_path(event_time, f"{where}.event_time")
            if leaf.type not in ("timestamp", "date"):
                raise ValueError(f"{where}.event_time: field {event_time!r} is {leaf.type}, not timestamp or date")
        identifiers = []
        for i, item in enumerate(data.get("identifiers") or []):
            iw = f"{where}.identifiers[{i}]"
            id_type = require(item, "type", iw, str)
            id_field = require(item, "field", iw, str)
            spec._check_path(id_field, f"{iw}.field")
            qualifier = None
            if item.get("qualifier") is not None:
                qualifier = ValueSpec.from_dict(item["qualifier"], f"{iw}.qualifier", read_lookup)
                qualifier = spec._check_value(qualifier, f"{iw}.qualifier", None)
            unknown = set(item) - {"type", "field", "qualifier"}
            if unknown:
                raise ValueError(f"{iw}: unknown keys {sorted(unknown)}")
            identifiers.append(IdentifierSpec(type=id_type, field=id_field, qualifier=qualifier))
        sections: list[SectionSpec] = []
        for table in ("attributes", "orders", "order_lines", "returns", "products"):
            if data.get(table) is not None:
                sections.append(spec._section(table, data[table], f"{where}.{table}", read_lookup, allowed))
        for table in ("events", "consent"):
            items = data.get(table) or []
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list):
                raise ValueError(f"{where}.{table}: expected a list of mappings")
            sections.extend(spec._section(table, item, f"{where}.{table}[{i}]", read_lookup, allowed)
                            for i, item in enumerate(items))
        return cls(name=name, path=path, format=fmt, encoding=encoding, csv_options=spec.csv_options,
                   record_id=record_id, event_time=event_time, timezone=timezone, fields=fields,
                   identifiers=tuple(identifiers), sections=tuple(sections), on_duplicate_key=on_duplicate_key)

    # -- validation helpers --------------------------------------------------------------------
    def _check_path(self, path: str, where: str, explode: str | None = None) -> tuple[FieldSpec, str | None]:
        try:
            leaf, array = self.resolve(path)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if array is not None and array != explode:
            raise ValueError(f"{where}: {path!r} is inside array {array!r}; only a section with "
                             f"'explode: {array}' may use it")
        return leaf, array

    def _check_value(self, spec: ValueSpec, where: str, explode: str | None) -> ValueSpec:
        """The spec with its paths checked against the schema and its expression resolved."""
        if spec.kind == "field":
            self._check_path(str(spec.field), where, explode)
        elif spec.kind == "present":
            top = next((f for f in self.fields if f.name == spec.present), None)
            if top is None or top.type not in ("struct", "array"):
                self._check_path(str(spec.present), f"{where}.present", explode)
        elif spec.kind == "coalesce":
            return dataclasses.replace(spec, coalesce=tuple(
                self._check_value(item, f"{where}.coalesce[{i}]", explode) for i, item in enumerate(spec.coalesce)))
        elif spec.kind == "expr":
            return self._resolve_expr(spec, f"{where}.expr", explode)
        return spec

    def _resolve_expr(self, spec: ValueSpec, where: str, explode: str | None) -> ValueSpec:
        """Parse the expression (Spark SQL, with sqlglot), check the fields it reads, and point it at
        the typed input columns (:func:`input_column`)."""
        try:
            tree, references = sql_references(str(spec.expr))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        paths: dict[tuple[str, ...], str] = {}
        for parts in references:
            top = next((f for f in self.fields if f.name == parts[0]), None)
            path = ".".join(parts)
            if top is not None and top.type == "array" and len(parts) > 1:
                path = f"{parts[0]}[]." + ".".join(parts[1:])
            self._check_path(path, where, explode)
            paths[parts] = path

        def point(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Column):
                parts = tuple(part.name for part in node.parts)
                if parts in paths:
                    return exp.column(input_column(paths[parts]), quoted=True)
            return node

        sql = tree.transform(point).sql(dialect="spark")
        return dataclasses.replace(spec, expr_sql=sql, inputs=tuple(paths.values()))

    def _section(self, table: str, data: Any, where: str, read_lookup: LookupReader | None = None,
                 allowed_by_column: Mapping[tuple[str, str], frozenset[str]] = ALLOWED_VALUES) -> SectionSpec:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping")
        data = dict(data)
        explode = data.pop("explode", None)
        if explode is not None:
            top = next((f for f in self.fields if f.name == explode), None)
            if top is None or top.type != "array":
                raise ValueError(f"{where}.explode: {explode!r} is not an array field of the schema")
        extra_attributes = data.pop("attributes", None) if table == "events" else None
        allowed = CANONICAL_SCHEMAS[table]
        unknown = set(data) - set(allowed)
        if unknown:
            raise ValueError(f"{where}: unknown canonical columns {sorted(unknown)}; "
                             f"{table} has {list(allowed)}")
        columns = {}
        for column, raw in data.items():
            spec = ValueSpec.from_dict(raw, f"{where}.{column}", read_lookup)
            spec = self._check_value(spec, f"{where}.{column}", explode)
            allowed_values = allowed_by_column.get((table, column))
            if allowed_values is not None:
                bad = [v for v in spec.outputs() if v is not None and v not in allowed_values]
                if bad:
                    enum = next((k for k, v in ENUMS.items() if v == (table, column)), None)
                    extend = f"; a new kind goes in sources.yaml enums.{enum}" if enum else ""
                    raise ValueError(f"{where}.{column}: values {bad} are not among {sorted(allowed_values)}{extend}")
                if spec.unchecked:
                    raise ValueError(f"{where}.{column}: {table}.{column} takes only {sorted(allowed_values)}; "
                                     "map the expression's results (map: {...}) so each value is checked")
            columns[column] = spec
        missing = [c for c in REQUIRED_CANONICAL[table] if c not in columns
                   and not (table == "order_lines" and c == "line_no")]
        if missing:
            raise ValueError(f"{where}: required canonical columns {missing} are not mapped")
        for column, example in FILTERED_CANONICAL.get(table, {}).items():
            if column not in columns:
                raise ValueError(
                    f"{where}.{column}: not mapped; features filter on {table} {column}, so a NULL would "
                    f"silently leave rows out. Map it from a field (with `default:` for unmapped values) "
                    f"or give the value every record has, e.g. {column}: {{value: {example}}}")
        attributes = {}
        if extra_attributes:
            if not isinstance(extra_attributes, dict):
                raise ValueError(f"{where}.attributes: expected a mapping of name -> field")
            for key, raw in extra_attributes.items():
                spec = ValueSpec.from_dict(raw, f"{where}.attributes.{key}", read_lookup)
                attributes[str(key)] = self._check_value(spec, f"{where}.attributes.{key}", explode)
        return SectionSpec(table=table, columns=columns, explode=explode, attributes=attributes,
                           where=where.split(".", 2)[-1])


@dataclass(frozen=True)
class SourcesConfig:
    sources: Mapping[str, SourceSpec]
    # canonical enums (ENUMS names) as extended by sources.yaml `enums:`: name -> sorted values
    enums: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {name: tuple(sorted(ALLOWED_VALUES[key])) for name, key in ENUMS.items()})

    @classmethod
    def from_dict(cls, data: Any, read_lookup: LookupReader | None = None) -> SourcesConfig:
        """``read_lookup`` reads the CSV lookup tables a map names (the loader supplies it: files
        beside sources.yaml); without it, a map given as a file name is an error."""
        if not isinstance(data, dict):
            raise ValueError("expected a mapping with a 'sources' key")
        unknown = set(data) - {"sources", "defaults", "anchors", "enums"}
        if unknown:
            raise ValueError(f"unknown top-level keys {sorted(unknown)}; use sources, defaults, anchors, enums")
        raw_sources = require(data, "sources", "(top)", dict)
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ValueError("defaults: expected a mapping")
        extra = data.get("enums") or {}
        if not isinstance(extra, dict):
            raise ValueError("enums: expected a mapping of enum name -> list of extra values")
        allowed = dict(ALLOWED_VALUES)
        for name, values in extra.items():
            if name not in ENUMS:
                raise ValueError(f"enums.{name}: unknown enum; extendable: {sorted(ENUMS)}")
            if not isinstance(values, list) or not all(isinstance(v, str) and _NAME.match(v) for v in values):
                raise ValueError(f"enums.{name}: expected a list of snake_case names, got {values!r}")
            allowed[ENUMS[name]] = allowed[ENUMS[name]] | frozenset(values)
        sources = {str(name): SourceSpec.from_dict(str(name), spec, defaults, read_lookup, allowed)
                   for name, spec in raw_sources.items()}
        return cls(sources=sources, enums={name: tuple(sorted(allowed[key])) for name, key in ENUMS.items()})

    def allowed_values(self, table: str, column: str) -> frozenset[str] | None:
        """The values a canonical column may take (enums included), or None when any value may."""
        enum = next((name for name, key in ENUMS.items() if key == (table, column)), None)
        if enum is not None:
            return frozenset(self.enums[enum])
        return ALLOWED_VALUES.get((table, column))

    def select(self, names: list[str] | None) -> list[SourceSpec]:
        """The named sources (all when ``names`` is empty); unknown names raise ``ValueError``."""
        if not names:
            return list(self.sources.values())
        unknown = [n for n in names if n not in self.sources]
        if unknown:
            raise ValueError(f"sources.{unknown[0]}: unknown source; known: {sorted(self.sources)}")
        return [self.sources[n] for n in names]


def _resolve(fields: tuple[FieldSpec, ...], path: str) -> tuple[FieldSpec, str | None]:
    parts = path.split(".")
    current: FieldSpec | None = None
    level = fields
    array: str | None = None
    walked: list[str] = []
    for i, part in enumerate(parts):
        is_array = part.endswith("[]")
        name = part[:-2] if is_array else part
        current = next((f for f in level if f.name == name), None)
        walked.append(part)
        if current is None:
            raise ValueError(f"field {'.'.join(walked)!r} is not in the source schema")
        if is_array:
            if current.type != "array":
                raise ValueError(f"field {name!r} is {current.type}, not an array")
            if i > 0:
                raise ValueError(f"{path!r}: only top-level arrays can be exploded")
            array = name
        elif current.type == "array":
            raise ValueError(f"field {name!r} is an array: write {name}[].<field>")
        level = current.fields
    assert current is not None
    if current.type in ("struct", "array"):
        raise ValueError(f"{path!r} is a {current.type}, not a value")
    return current, array
