"""Bronze records -> canonical silver rows: record ids, deduplication (latest record wins) and the
identifier, attribute, event and table mappings a source declares.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.sources.parsing import _blank, convert, date_to_timestamp
from cdp.sources.spec import (
    CANONICAL_SCHEMAS,
    CONTENT_HASH_ID,
    FALSE_VALUES,
    FILE_LINE_ID,
    METADATA_COLUMNS,
    TRUE_VALUES,
    SectionSpec,
    SourceSpec,
    ValueSpec,
    input_column,
)


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
    value = convert(_path_column(path), leaf)
    # a date-only value as a time keeps its day (parsing.date_to_timestamp)
    return date_to_timestamp(value) if leaf.type == "date" else value


def _typed_as(source: SourceSpec, path: str, data_type: str) -> Column:
    leaf, _ = source.resolve(path)
    if leaf.type == "date" and data_type != "timestamp":
        return convert(_path_column(path), leaf).cast(data_type)
    return typed_value(source, path).cast(data_type)


def with_expression_inputs(frame: DataFrame, source: SourceSpec, specs: Sequence[ValueSpec]) -> DataFrame:
    """``frame`` plus the typed field values the specs' expressions read (:func:`input_column`).
    For a section that explodes an array, call it on the exploded frame."""
    paths = sorted({path for spec in specs for inner in spec.walk() for path in inner.inputs})
    if not paths:
        return frame
    return frame.withColumns({input_column(path): _typed_as(source, path, _expression_type(source, path))
                              for path in paths})


def _expression_type(source: SourceSpec, path: str) -> str:
    leaf, _ = source.resolve(path)
    return {"int": "int", "long": "bigint", "double": "double", "boolean": "boolean", "date": "date",
            "timestamp": "timestamp"}.get(leaf.type, "string")


def map_key(source: SourceSpec, spec: ValueSpec) -> Column:
    """What a spec's ``map`` looks up (or, without a map, its value as text before any cast): the
    trimmed raw text of a field, an expression's result as text, then the ``extract`` of either."""
    if spec.kind == "field":
        key = F.trim(raw_value(source, str(spec.field)))
    elif spec.kind == "expr":
        key = F.expr(str(spec.expr_sql)).cast("string")
    else:
        raise ValueError(f"a {spec.kind} value has no map key")
    if spec.extract is not None:
        group = 1 if re.compile(spec.extract).groups else 0
        extracted = F.regexp_extract(key, spec.extract, group)
        key = F.when(extracted != "", extracted)
    return key


def unmapped_column(source: SourceSpec, spec: ValueSpec) -> Column:
    """True when the spec's value is present but its ``map`` does not cover it."""
    if spec.map is None:
        return F.lit(False)
    key = map_key(source, spec)
    covered = key.isin(*spec.map.keys()) if spec.map else F.lit(False)
    return F.coalesce(key.isNotNull() & ~covered, F.lit(False))


def value_column(source: SourceSpec, spec: ValueSpec, data_type: str) -> Column:
    """A canonical column from a ValueSpec: constant, typed field value, expression, coalesce,
    presence test, each optionally extracted and mapped. Expressions read the columns
    :func:`with_expression_inputs` adds."""
    if spec.kind == "value":
        return F.lit(spec.value).cast(data_type)
    if spec.kind == "coalesce":
        return F.coalesce(*[value_column(source, item, data_type) for item in spec.coalesce])
    if spec.kind == "present":
        top = next((f for f in source.fields if f.name == spec.present), None)
        column = F.col(f"`{spec.present}`")
        if top is not None and top.type == "array":
            present = column.isNotNull() & (F.size(column) > 0)
        elif top is not None and top.type == "struct":
            present = column.isNotNull()
        else:  # a usable value: not blank, of its type, keeping its rules
            present = typed_value(source, str(spec.present)).isNotNull()
        return present.cast(data_type)
    if spec.map is not None:
        key = map_key(source, spec)
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
    if spec.kind == "expr" or spec.extract is not None:
        value = map_key(source, spec) if spec.extract is not None else F.expr(str(spec.expr_sql))
        value = value.try_cast(data_type) if data_type != "string" else value.cast("string")
    else:
        value = _typed_as(source, str(spec.field), data_type)
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
    return typed_value(source, source.event_time)  # a date field keeps its day: midnight UTC


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
    qualifiers = [spec.qualifier for spec in source.identifiers if spec.qualifier is not None]
    records = with_expression_inputs(records, source, qualifiers)
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
    exploded = with_expression_inputs(_explode(records, section), source,
                                      [*section.columns.values(), *section.attributes.values()])
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


UNMAPPED_SCHEMA = ("source string, record_id string, _source_file string, _line long, field string, "
                   "value string, mapping string, action string")


def unmapped_values(records: DataFrame, source: SourceSpec) -> DataFrame:
    """Every value a ``map`` of the source's mappings does not cover, one row per occurrence.

    Returns:
        source, record_id, _source_file, _line, field (the field path, or those an expression reads),
        value, mapping (where the map is: ``orders.status``), action: ``quarantine`` (the record
        goes to quarantine), ``default`` (the map's default replaces it) or ``drop`` (``unmapped: drop``:
        the value is left null).
    """
    specs: list[tuple[SectionSpec | None, str, ValueSpec]] = [
        (None, f"identifiers[{i}].qualifier", spec.qualifier) for i, spec in enumerate(source.identifiers)
        if spec.qualifier is not None]
    for section in source.sections:
        specs += [(section, f"{section.where}.{name}", spec) for name, spec in section.columns.items()]
        specs += [(section, f"{section.where}.attributes.{name}", spec) for name, spec in section.attributes.items()]
    # One pass per section (its own explode): every map of it checked in one select, not a frame per map
    by_section: dict[str | None, tuple[SectionSpec | None, list[tuple[str, ValueSpec]]]] = {}
    for section, where, spec in specs:
        key = section.explode if section is not None else None
        entry = by_section.setdefault(key, (section, []))
        entry[1].extend((where, inner) for inner in spec.walk() if inner.map is not None)
    frames = []
    for section, checks in by_section.values():
        if not checks:
            continue
        frame = _explode(records, section) if section is not None else records
        frame = with_expression_inputs(frame, source, [inner for _, inner in checks])
        found = F.array(*[F.when(unmapped_column(source, inner), F.struct(
            F.lit(inner.field if inner.kind == "field" else ", ".join(inner.inputs)).alias("field"),
            map_key(source, inner).alias("value"), F.lit(where).alias("mapping"),
            F.lit("default" if inner.default is not None else inner.unmapped).alias("action")))
            for where, inner in checks])
        frames.append(frame.select("source", "record_id", "_source_file", "_line",
                                   F.explode(F.filter(found, lambda row: row.isNotNull())).alias("_u"))
                      .select("source", "record_id", "_source_file", "_line", "_u.*"))
    if not frames:
        return records.sparkSession.createDataFrame([], UNMAPPED_SCHEMA)
    return reduce(DataFrame.unionByName, frames)
