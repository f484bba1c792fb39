"""Raw text lines -> bronze columns: the bronze layout (every leaf a raw string), conversion of raw
strings to typed values, and the quarantine reason of each invalid line (the field it names).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.sources.spec import _ZONE_LETTERS, FALSE_VALUES, TRUE_VALUES, FieldSpec, SourceSpec


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
