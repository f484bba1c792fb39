"""Source declarations (``conf/sources.yaml``) as typed config, and the pure transforms of landing.

A source says where its raw files are, how to read them, the schema of a record (field names,
types, required fields, time formats) and how its fields map onto the canonical silver model
(``docs/ARCHITECTURE.md``). Adding a source is a YAML change: every transform here is driven by
the declaration.

Paths in mappings name schema fields: ``buyer.phone`` reaches into a nested object and
``items[].sku`` into the elements of an array that the section explodes (``explode: items``).

Transforms:
    * :func:`bronze_schema` - the bronze record layout: every leaf a raw string.
    * :func:`parse_lines` - raw text lines -> bronze columns + a quarantine ``_reason``.
    * :func:`deduplicate` - bronze -> one row per record id; exact duplicates dropped and counted,
      different contents under one id quarantined or resolved to the latest (``on_duplicate_key``).
    * :func:`map_identifiers`, :func:`map_attributes`, :func:`map_events`, :func:`map_table` (orders,
      order_lines, returns, consent, products) - deduplicated records -> canonical rows (identifiers
      before normalisation, which ``jobs/standardize.py`` applies).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.runtime.config import require

__all__ = [
    "CANONICAL_SCHEMAS",
    "map_attributes",
    "map_events",
    "map_identifiers",
    "map_table",
    "EVENT_TYPES",
    "EVENT_CHANNELS",
    "FieldSpec",
    "SourceSpec",
    "SourcesConfig",
    "ValueSpec",
    "bronze_schema",
    "convert",
    "Deduplicated",
    "deduplicate",
    "parse_lines",
]

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


# -- config ---------------------------------------------------------------------------------------

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

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str, timezone: str) -> FieldSpec:
        if not _NAME.match(name):
            raise ValueError(f"{where}: invalid field name {name!r}")
        if isinstance(data, str):
            data = {"type": data}
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a type name or a mapping, got {data!r}")
        unknown = set(data) - {"type", "required", "format", "timezone", "on_invalid", "fields"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        kind = data.get("type", "string")
        if kind not in FIELD_TYPES:
            raise ValueError(f"{where}.type: {kind!r} is not one of {list(FIELD_TYPES)}")
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
                   fields=children)

    def child(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True)
class ValueSpec:
    """Where a canonical column's value comes from: a field path, a constant, or a value map."""

    field: str | None = None
    value: Any = None
    map: Mapping[str, Any] | None = None
    default: Any = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ValueSpec:
        if isinstance(data, str):
            return cls(field=data)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a field path or a mapping, got {data!r}")
        unknown = set(data) - {"field", "value", "map", "default"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if ("field" in data) == ("value" in data):
            raise ValueError(f"{where}: give exactly one of 'field' or 'value'")
        mapping = data.get("map")
        if mapping is not None:
            if "field" not in data or not isinstance(mapping, dict):
                raise ValueError(f"{where}.map: a map needs a field and must be a mapping")
            mapping = {str(k): v for k, v in mapping.items()}
        return cls(field=data.get("field"), value=data.get("value"), map=mapping,
                   default=data.get("default"))

    def outputs(self) -> list[Any]:
        """Every constant this spec can produce (for checking against allowed values)."""
        if self.field is None:
            return [self.value]
        values = list(self.map.values()) if self.map is not None else []
        return values + ([self.default] if self.default is not None else [])


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
    def from_dict(cls, name: str, data: Any, defaults: Mapping[str, Any]) -> SourceSpec:
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
            if leaf.type != "timestamp":
                raise ValueError(f"{where}.event_time: field {event_time!r} is {leaf.type}, not timestamp")
        identifiers = []
        for i, item in enumerate(data.get("identifiers") or []):
            iw = f"{where}.identifiers[{i}]"
            id_type = require(item, "type", iw, str)
            id_field = require(item, "field", iw, str)
            spec._check_path(id_field, f"{iw}.field")
            qualifier = None
            if item.get("qualifier") is not None:
                qualifier = ValueSpec.from_dict(item["qualifier"], f"{iw}.qualifier")
                spec._check_value(qualifier, f"{iw}.qualifier", None)
            unknown = set(item) - {"type", "field", "qualifier"}
            if unknown:
                raise ValueError(f"{iw}: unknown keys {sorted(unknown)}")
            identifiers.append(IdentifierSpec(type=id_type, field=id_field, qualifier=qualifier))
        sections: list[SectionSpec] = []
        for table in ("attributes", "orders", "order_lines", "returns", "products"):
            if data.get(table) is not None:
                sections.append(spec._section(table, data[table], f"{where}.{table}"))
        for table in ("events", "consent"):
            items = data.get(table) or []
            if isinstance(items, dict):
                items = [items]
            if not isinstance(items, list):
                raise ValueError(f"{where}.{table}: expected a list of mappings")
            sections.extend(spec._section(table, item, f"{where}.{table}[{i}]")
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

    def _check_value(self, spec: ValueSpec, where: str, explode: str | None) -> None:
        if spec.field is not None:
            self._check_path(spec.field, where, explode)

    def _section(self, table: str, data: Any, where: str) -> SectionSpec:
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
            spec = ValueSpec.from_dict(raw, f"{where}.{column}")
            self._check_value(spec, f"{where}.{column}", explode)
            allowed_values = ALLOWED_VALUES.get((table, column))
            if allowed_values is not None:
                bad = [v for v in spec.outputs() if v is not None and v not in allowed_values]
                if bad:
                    raise ValueError(f"{where}.{column}: values {bad} are not among {sorted(allowed_values)}")
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
                spec = ValueSpec.from_dict(raw, f"{where}.attributes.{key}")
                self._check_value(spec, f"{where}.attributes.{key}", explode)
                attributes[str(key)] = spec
        return SectionSpec(table=table, columns=columns, explode=explode, attributes=attributes)


@dataclass(frozen=True)
class SourcesConfig:
    sources: Mapping[str, SourceSpec]

    @classmethod
    def from_dict(cls, data: Any) -> SourcesConfig:
        if not isinstance(data, dict):
            raise ValueError("expected a mapping with a 'sources' key")
        unknown = set(data) - {"sources", "defaults", "anchors"}
        if unknown:
            raise ValueError(f"unknown top-level keys {sorted(unknown)}; use sources, defaults, anchors")
        raw_sources = require(data, "sources", "(top)", dict)
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ValueError("defaults: expected a mapping")
        sources = {str(name): SourceSpec.from_dict(str(name), spec, defaults)
                   for name, spec in raw_sources.items()}
        return cls(sources=sources)

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


# -- bronze ---------------------------------------------------------------------------------------

def _bronze_type(spec: FieldSpec) -> T.DataType:
    if spec.type == "struct":
        return T.StructType([T.StructField(f.name, _bronze_type(f)) for f in spec.fields])
    if spec.type == "array":
        return T.ArrayType(T.StructType([T.StructField(f.name, _bronze_type(f)) for f in spec.fields]))
    return T.StringType()


def bronze_schema(source: SourceSpec) -> T.StructType:
    """Record fields as declared with every leaf a raw string, then the load metadata columns."""
    fields = [T.StructField(f.name, _bronze_type(f)) for f in source.fields]
    return T.StructType(fields + [
        T.StructField("_source_file", T.StringType()),
        T.StructField("_line", T.LongType()),
        T.StructField("_load_id", T.StringType()),
        T.StructField("_ingested_at", T.TimestampType()),
    ])


def record_schema(source: SourceSpec) -> T.StructType:
    return T.StructType([T.StructField(f.name, _bronze_type(f)) for f in source.fields])


# -- conversion of raw strings ----------------------------------------------------------------

def _blank(raw: Column) -> Column:
    return raw.isNull() | (F.trim(raw) == "")


def _parse_timestamp(raw: Column, fmt: str, timezone: str) -> Column:
    text = F.trim(raw)
    if fmt == "epoch_s":
        return F.timestamp_seconds(text.try_cast("bigint"))
    if fmt == "epoch_ms":
        return F.timestamp_millis(text.try_cast("bigint"))
    if fmt == "iso8601":
        parsed = text.try_cast("timestamp")
        has_zone = text.rlike(r"(Z|[+-]\d{2}:?\d{2})$")
        return F.when(has_zone, parsed).otherwise(F.to_utc_timestamp(parsed, timezone))
    parsed = F.try_to_timestamp(text, F.lit(fmt))
    if _ZONE_LETTERS.search(fmt.replace("'", "")):
        return parsed
    return F.to_utc_timestamp(parsed, timezone)


def convert(raw: Column, spec: FieldSpec) -> Column:
    """The typed value of a raw string field; null when blank or not valid for the type."""
    text = F.trim(raw)
    if spec.type == "string":
        return F.when(text != "", text)
    if spec.type in ("int", "long", "double"):
        cast = {"int": "int", "long": "bigint", "double": "double"}[spec.type]
        return text.try_cast(cast)
    if spec.type == "boolean":
        lower = F.lower(text)
        return (F.when(lower.isin(*TRUE_VALUES), F.lit(True))
                .when(lower.isin(*FALSE_VALUES), F.lit(False)))
    if spec.type == "timestamp":
        parsed = F.coalesce(*[_parse_timestamp(raw, f, spec.timezone) for f in spec.formats]) \
            if len(spec.formats) > 1 else _parse_timestamp(raw, spec.formats[0], spec.timezone)
        # Epochs of 0 and placeholder years are export bugs, not real times.
        return F.when((parsed >= F.lit("1990-01-01").cast("timestamp"))
                      & (parsed < F.lit("2100-01-01").cast("timestamp")), parsed)
    if spec.type == "date":
        parsed = F.coalesce(*[F.try_to_timestamp(text, F.lit(f)) for f in spec.formats]).cast("date")
        return F.when((parsed >= F.lit("1900-01-01").cast("date"))
                      & (parsed < F.lit("2100-01-01").cast("date")), parsed)
    raise ValueError(f"field {spec.name}: cannot convert a {spec.type}")


def _leaf_reasons(spec: FieldSpec, raw: Column, path: str) -> list[Column]:
    reasons = []
    if spec.required:
        reasons.append(F.when(_blank(raw), F.lit(f"{path}: required field is missing")))
    if spec.type != "string" and spec.on_invalid == "quarantine":
        what = spec.type + (f" ({' | '.join(spec.formats)})" if spec.formats else "")
        reasons.append(F.when(~_blank(raw) & convert(raw, spec).isNull(),
                              F.concat(F.lit(f"{path}: invalid {what}: '"), F.substring(raw, 1, 80),
                                       F.lit("'"))))
    return reasons


def _missing_in(name: str):
    # Spark inspects a lambda's arity, so element predicates are built by closures, not defaults.
    def predicate(element: Column) -> Column:
        return _blank(element.getField(name))
    return predicate


def _invalid_in(spec: FieldSpec):
    def predicate(element: Column) -> Column:
        value = element.getField(spec.name)
        return ~_blank(value) & convert(value, spec).isNull()
    return predicate


def validation_reasons(source: SourceSpec, record: Column) -> list[Column]:
    """Columns that hold a reason (naming the field) when a record breaks its schema, else null."""
    reasons: list[Column] = []

    def walk(specs: tuple[FieldSpec, ...], parent: Column, prefix: str) -> None:
        for spec in specs:
            column = parent.getField(spec.name)
            path = f"{prefix}{spec.name}"
            if spec.type == "struct":
                if spec.required:
                    reasons.append(F.when(column.isNull(), F.lit(f"{path}: required field is missing")))
                walk(spec.fields, column, f"{path}.")
            elif spec.type == "array":
                if spec.required:
                    reasons.append(F.when(column.isNull() | (F.size(column) == 0),
                                          F.lit(f"{path}: required array is missing or empty")))
                for child in spec.fields:
                    if child.type in ("struct", "array"):
                        continue  # deeper nesting inside arrays is kept but not validated
                    child_path = f"{path}[].{child.name}"
                    if child.required:
                        reasons.append(F.when(F.exists(column, _missing_in(child.name)),
                                              F.lit(f"{child_path}: required field is missing")))
                    if child.type != "string" and child.on_invalid == "quarantine":
                        bad = _invalid_in(child)
                        first_bad = F.filter(column, bad).getItem(0).getField(child.name)
                        reasons.append(F.when(F.exists(column, bad), F.concat(
                            F.lit(f"{child_path}: invalid {child.type}: '"),
                            F.substring(first_bad, 1, 80), F.lit("'"))))
            else:
                reasons.extend(_leaf_reasons(spec, column, path))

    walk(source.fields, record, "")
    return reasons


def parse_lines(lines: DataFrame, source: SourceSpec, columns: list[str] | None = None) -> DataFrame:
    """Parse raw text lines into bronze columns and a quarantine reason.

    Args:
        lines: ``_source_file``, ``_line``, ``_text``, ``_decode_error`` (null when the line decoded).
        source: the declaration; JSON lines use its nested schema, CSV lines its ``csv`` options.
        columns: for CSV, the header's column names in file order.

    Returns:
        The record fields (raw strings), ``_source_file``, ``_line``, ``_text`` and ``_reason``
        (null for a good record; otherwise why it goes to quarantine, naming the field).
    """
    record = record_schema(source)
    corrupt = "_corrupt_record"
    if source.format == "jsonl":
        schema = T.StructType(record.fields + [T.StructField(corrupt, T.StringType())])
        parsed = F.from_json(F.col("_text"), schema,
                             {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": corrupt})
        malformed_reason = "malformed JSON: not a complete JSON object"
    elif source.format == "csv":
        if columns is None:
            raise ValueError(f"source {source.name}: CSV parsing needs the header's columns")
        header_schema = T.StructType([T.StructField(c, T.StringType()) for c in columns]
                                     + [T.StructField(corrupt, T.StringType())])
        options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": corrupt,
                   **{k: v for k, v in source.csv_options.items() if k != "header"}}
        parsed = F.from_csv(F.col("_text"), header_schema.simpleString(), options)
        malformed_reason = f"malformed CSV line: expected {len(columns)} columns"
    else:
        raise ValueError(f"source {source.name}: parse_lines handles csv and jsonl, not {source.format}")
    with_record = lines.select("_source_file", "_line", "_text", "_decode_error", parsed.alias("_parsed"))
    if source.format == "csv":
        present = set(columns or [])
        record_col = F.struct(*[
            (F.col("_parsed").getField(f.name) if f.name in present else F.lit(None).cast("string")).alias(f.name)
            for f in record.fields])
    else:
        record_col = F.struct(*[F.col("_parsed").getField(f.name).alias(f.name) for f in record.fields])
    reasons = [
        F.when(F.col("_decode_error").isNotNull(), F.col("_decode_error")),
        F.when(F.col("_parsed").isNull() | F.col("_parsed").getField(corrupt).isNotNull(),
               F.lit(malformed_reason)),
    ]
    structural = F.coalesce(*reasons)
    checks = F.concat_ws("; ", *validation_reasons(source, F.col("_record")))
    return (with_record
            .withColumn("_record", record_col)
            .withColumn("_reason", F.coalesce(structural, F.when(checks != "", checks)))
            .select(*[F.col("_record").getField(f.name).alias(f.name) for f in record.fields],
                    "_source_file", "_line", "_text", "_reason"))


# -- bronze -> canonical ----------------------------------------------------------------------

def _path_column(path: str, explode_alias: str = "_element") -> Column:
    parts = path.split(".")
    if parts[0].endswith("[]"):
        column = F.col(explode_alias)
        parts = parts[1:]
    else:
        column = F.col(f"`{parts[0]}`")
        parts = parts[1:]
    for part in parts:
        column = column.getField(part)
    return column


def raw_value(source: SourceSpec, path: str) -> Column:
    """The raw string of the field at ``path`` (inside the exploded element for ``x[].y``)."""
    return _path_column(path)


def typed_value(source: SourceSpec, path: str) -> Column:
    leaf, _ = source.resolve(path)
    return convert(_path_column(path), leaf)


def value_column(source: SourceSpec, spec: ValueSpec, data_type: str) -> Column:
    """A canonical column from a ValueSpec: constant, mapped raw value, or typed field value."""
    if spec.field is None:
        return F.lit(spec.value).cast(data_type)
    if spec.map is not None:
        key = F.trim(raw_value(source, spec.field))
        mapping = F.create_map(*[item for k, v in spec.map.items()
                                 for item in (F.lit(k), F.lit(None if v is None else str(v)))])
        mapped = F.element_at(mapping, key) if spec.map else F.lit(None).cast("string")
        result = F.when(key.isNotNull() & mapped.isNotNull(), mapped)
        if spec.default is not None:
            result = F.coalesce(result, F.lit(str(spec.default)))
        if data_type == "boolean":
            lower = F.lower(result)
            return F.when(lower.isin(*TRUE_VALUES), F.lit(True)).when(lower.isin(*FALSE_VALUES), F.lit(False))
        return result.try_cast(data_type) if data_type != "string" else result
    value = typed_value(source, spec.field)
    if spec.default is not None:
        value = F.coalesce(value.cast(data_type), F.lit(spec.default).cast(data_type))
    return value.cast(data_type)


def content_hash_column(columns: Sequence[str]) -> Column:
    """SHA-256 of a record's content (its bronze fields as JSON, load metadata left out)."""
    content = [c for c in columns if c not in METADATA_COLUMNS]
    return F.sha2(F.to_json(F.struct(*[F.col(f"`{c}`") for c in content])), 256)


def record_id_column(source: SourceSpec, columns: Sequence[str] = ()) -> Column:
    """The record's id: its key fields (joined with ":"), its content hash, or ``file:line``."""
    if source.record_id == (CONTENT_HASH_ID,):
        return content_hash_column(columns)
    if source.record_id == (FILE_LINE_ID,):
        return F.concat_ws(":", F.col("_source_file"), F.col("_line").cast("string"))
    parts = [F.trim(raw_value(source, p)) for p in source.record_id]
    return parts[0] if len(parts) == 1 else F.concat_ws(":", *parts)


def observed_at_column(source: SourceSpec) -> Column:
    if source.event_time is None:
        return F.lit(None).cast("timestamp")
    return typed_value(source, source.event_time)


@dataclass(frozen=True)
class Deduplicated:
    """Bronze records resolved to one row per record id, and what was not kept.

    ``records``: the bronze columns plus ``source``, ``record_id``, ``observed_at``.
    ``rejected``: quarantine rows (stage ``standardize``) for records without an id and, under
    ``on_duplicate_key: quarantine``, every version of a record id seen with different contents.
    ``counts``: one row: source, rows, missing_id, exact_duplicates (identical content, dropped),
    superseded (older versions dropped under ``latest``), collision_keys, collision_rows.
    """

    records: DataFrame
    rejected: DataFrame
    counts: DataFrame


def deduplicate(bronze: DataFrame, source: SourceSpec, *, now: Any) -> Deduplicated:
    """One row per record id, never collapsing different contents silently (``on_duplicate_key``).

    Identical records (a re-delivered file, at-least-once events) are dropped and counted. Records
    sharing an id with different contents are all quarantined (``quarantine``, the default, reason
    "key collision") or resolved to the latest by event time, then load order and file position
    (``latest``, the older versions counted); ``error`` keeps them like ``quarantine`` and the job
    fails on a non-zero ``collision_keys``.
    """
    rid_paths = ", ".join(source.record_id)
    with_keys = (bronze
                 .withColumn("source", F.lit(source.name))
                 .withColumn("record_id", record_id_column(source, bronze.columns))
                 .withColumn("observed_at", observed_at_column(source))
                 .withColumn("_content", content_hash_column(bronze.columns)))
    has_id = F.col("record_id").isNotNull() & (F.col("record_id") != "")
    order = [F.col("observed_at").desc_nulls_last(), F.col("_ingested_at").desc(), F.col("_load_id").desc(),
             F.col("_source_file").desc(), F.col("_line").desc()]
    by_key = Window.partitionBy("record_id")
    ranked = (with_keys.filter(has_id)
              .withColumn("_copy", F.row_number().over(Window.partitionBy("record_id", "_content").orderBy(*order)))
              .withColumn("_contents", F.size(F.collect_set("_content").over(by_key)))
              .withColumn("_rank", F.row_number().over(by_key.orderBy(*order))))
    distinct_rows = ranked.filter(F.col("_copy") == 1)
    collides = F.col("_contents") > 1
    if source.on_duplicate_key == "latest":
        kept = distinct_rows.filter(F.col("_rank") == 1)
        collided = distinct_rows.filter(F.lit(False))
    else:
        kept = distinct_rows.filter(~collides)
        collided = distinct_rows.filter(collides)
    helper = ["_content", "_copy", "_contents", "_rank"]
    missing = with_keys.filter(~has_id)
    rejected = (
        missing.select("_source_file", "_line", F.lit(None).cast("string").alias("raw"),
                       F.lit(f"missing record id (record_id: {rid_paths})").alias("reason"))
        .unionByName(collided.select(
            "_source_file", "_line", F.col("record_id").alias("raw"),
            F.concat(F.lit("key collision: record id '"), F.col("record_id"), F.lit("' has "),
                     F.col("_contents").cast("string"),
                     F.lit(f" different contents in source {source.name} (on_duplicate_key: "
                           f"{source.on_duplicate_key})")).alias("reason")))
        .select(F.lit(source.name).alias("source"), F.lit("standardize").alias("stage"),
                F.lit(None).cast("string").alias("load_id"), F.col("_source_file").alias("file"),
                F.col("_line").alias("line"), F.lit("record_id").alias("field"), "raw", "reason",
                F.lit(now).cast("timestamp").alias("quarantined_at")))
    counts = ranked.agg(
        F.count(F.lit(1)).alias("with_id"),
        F.count(F.when(F.col("_copy") > 1, 1)).alias("exact_duplicates"),
        F.count(F.when((F.col("_copy") == 1) & (F.col("_rank") > 1) & F.lit(source.on_duplicate_key == "latest"),
                       1)).alias("superseded"),
        F.countDistinct(F.when(collides & F.lit(source.on_duplicate_key != "latest"), F.col("record_id")))
        .alias("collision_keys"),
        F.count(F.when(collides & (F.col("_copy") == 1) & F.lit(source.on_duplicate_key != "latest"), 1))
        .alias("collision_rows"),
    ).crossJoin(missing.agg(F.count(F.lit(1)).alias("missing_id"))).select(
        F.lit(source.name).alias("source"), (F.col("with_id") + F.col("missing_id")).alias("rows"), "missing_id",
        "exact_duplicates", "superseded", "collision_keys", "collision_rows")
    return Deduplicated(records=kept.drop(*helper), rejected=rejected, counts=counts)


def _explode(records: DataFrame, section: SectionSpec) -> DataFrame:
    if section.explode is None:
        return records
    return records.select("*", F.posexplode(F.col(f"`{section.explode}`")).alias("_position", "_element"))


def map_identifiers(records: DataFrame, source: SourceSpec) -> DataFrame:
    """Deduplicated records -> source, record_id, id_type, raw_value, qualifier, observed_at,
    plus where the value came from (field, _source_file, _line) for quarantine."""
    if not source.identifiers:
        return records.sparkSession.createDataFrame([], IDENTIFIER_RAW_SCHEMA)
    rows = []
    for spec in source.identifiers:
        qualifier = (value_column(source, spec.qualifier, "string") if spec.qualifier is not None
                     else F.lit(None).cast("string"))
        rows.append(F.struct(F.lit(spec.type).alias("id_type"), F.lit(spec.field).alias("field"),
                             raw_value(source, spec.field).alias("raw_value"),
                             qualifier.alias("qualifier")))
    exploded = records.select("source", "record_id", "observed_at", "_source_file", "_line",
                              F.explode(F.array(*rows)).alias("_id"))
    return (exploded
            .filter(~_blank(F.col("_id.raw_value")))
            .select("source", "record_id", F.col("_id.id_type").alias("id_type"),
                    F.col("_id.raw_value").alias("raw_value"), F.col("_id.qualifier").alias("qualifier"),
                    F.col("_id.field").alias("field"), "observed_at", "_source_file", "_line"))


IDENTIFIER_RAW_SCHEMA = T.StructType([
    T.StructField("source", T.StringType()), T.StructField("record_id", T.StringType()),
    T.StructField("id_type", T.StringType()), T.StructField("raw_value", T.StringType()),
    T.StructField("qualifier", T.StringType()), T.StructField("field", T.StringType()),
    T.StructField("observed_at", T.TimestampType()), T.StructField("_source_file", T.StringType()),
    T.StructField("_line", T.LongType()),
])


def _section_frame(records: DataFrame, source: SourceSpec, section: SectionSpec,
                   extra: list[Column] | None = None) -> DataFrame:
    schema = CANONICAL_SCHEMAS[section.table]
    exploded = _explode(records, section)
    columns = []
    for name, data_type in schema.items():
        spec = section.columns.get(name)
        if spec is not None:
            column = value_column(source, spec, data_type)
        elif name == "line_no" and section.explode is not None:
            column = (F.col("_position") + 1).cast("int")
        else:
            column = F.lit(None).cast(data_type)
        columns.append(column.alias(name))
    return exploded.select("source", "record_id", "observed_at", *columns, *(extra or []))


def map_attributes(records: DataFrame, source: SourceSpec) -> list[DataFrame]:
    return [_section_frame(records, source, s) for s in source.sections_for("attributes")]


def map_events(records: DataFrame, source: SourceSpec) -> list[DataFrame]:
    frames = []
    sections = source.sections_for("events")
    for index, section in enumerate(sections):
        attributes = F.map_from_entries(F.filter(F.array(*[
            F.struct(F.lit(key).alias("key"), value_column(source, spec, "string").alias("value"))
            for key, spec in sorted(section.attributes.items())]), lambda e: e.getField("value").isNotNull())) \
            if section.attributes else F.create_map().cast("map<string,string>")
        suffix = f"#{index}" if len(sections) > 1 else ""
        event_id = F.concat(F.lit(f"{source.name}:"), F.col("record_id"), F.lit(suffix))
        frames.append(_section_frame(records, source, section,
                                     [attributes.alias("attributes"), event_id.alias("event_id")]))
    return frames


def map_table(records: DataFrame, source: SourceSpec, table: str) -> list[DataFrame]:
    return [_section_frame(records, source, s) for s in source.sections_for(table)]
