"""Bronze records -> canonical silver rows: record ids, deduplication (latest record wins) and the
identifier, attribute, event and table mappings a source declares.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.sources.parsing import _blank, convert
from cdp.sources.spec import CANONICAL_SCHEMAS, FALSE_VALUES, TRUE_VALUES, SectionSpec, SourceSpec, ValueSpec


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


def record_id_column(source: SourceSpec) -> Column:
    parts = [F.trim(raw_value(source, p)) for p in source.record_id]
    return parts[0] if len(parts) == 1 else F.concat_ws(":", *parts)


def observed_at_column(source: SourceSpec) -> Column:
    if source.event_time is None:
        return F.lit(None).cast("timestamp")
    return typed_value(source, source.event_time)


def dedupe_records(bronze: DataFrame, source: SourceSpec) -> DataFrame:
    """One row per record id: the latest by event time, then by load order and file position.

    Adds ``source``, ``record_id`` and ``observed_at``; keeps the bronze columns.
    """
    with_keys = (bronze
                 .withColumn("source", F.lit(source.name))
                 .withColumn("record_id", record_id_column(source))
                 .withColumn("observed_at", observed_at_column(source))
                 .filter(F.col("record_id").isNotNull() & (F.col("record_id") != "")))
    latest = Window.partitionBy("record_id").orderBy(
        F.col("observed_at").desc_nulls_last(), F.col("_ingested_at").desc(), F.col("_load_id").desc(),
        F.col("_source_file").desc(), F.col("_line").desc())
    return with_keys.withColumn("_rank", F.row_number().over(latest)).filter("_rank = 1").drop("_rank")


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
