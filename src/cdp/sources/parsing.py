"""Raw text lines -> bronze columns: the bronze layout (every leaf a raw string), conversion of raw
strings to typed values, and the quarantine reason of each invalid line (the field it names).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.sources.spec import (
    _ZONE_LETTERS,
    FALSE_VALUES,
    NUMERIC_TYPES,
    TRUE_VALUES,
    FieldRule,
    FieldSpec,
    SourceSpec,
    is_date_only_pattern,
)


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


def date_to_timestamp(day: Column) -> Column:
    """A date as the timestamp of its midnight in UTC: the day kept as written, whatever the zone.

    A date-only value has no time of day; reading it as local midnight and shifting it to UTC would
    move it to the day before for every zone east of UTC (2025-03-09 in Asia/Shanghai would become
    2025-03-08 16:00 UTC). Silver keeps the day; the session time zone plays no part.
    """
    return F.timestamp_seconds(F.unix_date(day).cast("bigint") * F.lit(86400))


def _parse_timestamp(raw: Column, fmt: str, timezone: str) -> Column:
    text = F.trim(raw)
    if fmt == "epoch_s":
        return F.timestamp_seconds(text.try_cast("bigint"))
    if fmt == "epoch_ms":
        return F.timestamp_millis(text.try_cast("bigint"))
    if fmt == "iso8601":
        parsed = text.try_cast("timestamp")
        has_zone = text.rlike(r"(Z|[+-]\d{2}:?\d{2})$")
        date_only = text.rlike(r"^\d{4}-\d{2}-\d{2}$")
        return (F.when(has_zone, parsed).when(date_only, date_to_timestamp(text.try_cast("date")))
                .otherwise(F.to_utc_timestamp(parsed, timezone)))
    parsed = F.try_to_timestamp(text, F.lit(fmt))
    if is_date_only_pattern(fmt):
        return date_to_timestamp(parsed.cast("date"))
    if _ZONE_LETTERS.search(fmt.replace("'", "")):
        return parsed
    return F.to_utc_timestamp(parsed, timezone)


def convert(raw: Column, spec: FieldSpec) -> Column:
    """The typed value of a raw string field; null when blank, not valid for the type, or failing one
    of the field's rules (``min``, ``max``, ``allowed``, ``regex``, ``max_length``, ``not_after``)."""
    typed = _typed(raw, spec)
    if not spec.rules:
        return typed
    failed = F.lit(False)
    for rule in spec.rules:
        failed = failed | rule_fails(raw, typed, spec, rule)
    return F.when(~failed, typed)


def _bound(rule: FieldRule, spec: FieldSpec) -> Column:
    if rule.value == "now":
        return F.current_date() if spec.type == "date" else F.current_timestamp()
    if spec.type == "timestamp":
        return F.lit(str(rule.value)).try_cast("timestamp")
    if spec.type == "date":
        return F.lit(str(rule.value)).try_cast("date")
    return F.lit(rule.value).cast("double")


def rule_fails(raw: Column, typed: Column, spec: FieldSpec, rule: FieldRule) -> Column:
    """True when a value of the right type breaks ``rule`` (false for blanks and type errors)."""
    text = F.trim(raw)
    comparable = typed.cast("double") if spec.type in NUMERIC_TYPES else typed
    if rule.name == "min":
        broken = comparable < _bound(rule, spec)
    elif rule.name in ("max", "not_after"):
        broken = comparable > _bound(rule, spec)
    elif rule.name == "allowed":
        if spec.type == "string":
            broken = ~text.isin(*rule.value)
        else:
            broken = ~typed.isin(*[F.lit(v).try_cast(typed_spark_type(spec)) for v in rule.value])
    elif rule.name == "regex":
        broken = ~text.rlike(str(rule.value))
    else:  # max_length
        broken = F.length(text) > F.lit(int(rule.value))
    return F.coalesce(typed.isNotNull() & broken, F.lit(False))


def typed_spark_type(spec: FieldSpec) -> str:
    return {"int": "int", "long": "bigint", "double": "double", "boolean": "boolean", "date": "date",
            "timestamp": "timestamp"}.get(spec.type, "string")


def _typed(raw: Column, spec: FieldSpec) -> Column:
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


def _rule_reason(path: str, rule: FieldRule, value: Column) -> Column:
    return F.concat(F.lit(f"{path}: rule {rule.describe()} failed: '"), F.substring(value, 1, 80), F.lit("'"))


def _leaf_reasons(spec: FieldSpec, raw: Column, path: str) -> list[Column]:
    reasons = []
    if spec.required:
        reasons.append(F.when(_blank(raw), F.lit(f"{path}: required field is missing")))
    if spec.on_invalid != "quarantine":
        return reasons
    typed = _typed(raw, spec)
    if spec.type != "string":
        what = spec.type + (f" ({' | '.join(spec.formats)})" if spec.formats else "")
        reasons.append(F.when(~_blank(raw) & typed.isNull(),
                              F.concat(F.lit(f"{path}: invalid {what}: '"), F.substring(raw, 1, 80),
                                       F.lit("'"))))
    for rule in spec.rules:
        reasons.append(F.when(rule_fails(raw, typed, spec, rule), _rule_reason(path, rule, raw)))
    return reasons


def nulled_fields(source: SourceSpec, record: Column) -> Column:
    """array<string>: the paths of fields whose value the record loses to ``on_invalid: null`` (a
    type error or a broken rule): kept, but counted by ``cdp land``."""
    flags: list[Column] = []

    def walk(specs: tuple[FieldSpec, ...], parent: Column, prefix: str) -> None:
        for spec in specs:
            column = parent.getField(spec.name)
            if spec.type == "struct":
                walk(spec.fields, column, f"{prefix}{spec.name}.")
            elif spec.type == "array":
                for child in spec.fields:
                    if child.on_invalid == "null" and child.type not in ("struct", "array"):
                        flags.append(F.when(F.exists(column, _invalid_in(child)),
                                            F.lit(f"{prefix}{spec.name}[].{child.name}")))
            elif spec.on_invalid == "null" and (spec.type != "string" or spec.rules):
                flags.append(F.when(~_blank(column) & convert(column, spec).isNull(), F.lit(f"{prefix}{spec.name}")))

    walk(source.fields, record, "")
    if not flags:
        return F.array().cast("array<string>")
    return F.filter(F.array(*flags), lambda flag: flag.isNotNull())


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


def _invalid_type_in(spec: FieldSpec):
    def predicate(element: Column) -> Column:
        value = element.getField(spec.name)
        return ~_blank(value) & _typed(value, spec).isNull()
    return predicate


def _breaks_in(spec: FieldSpec, rule: FieldRule):
    def predicate(element: Column) -> Column:
        value = element.getField(spec.name)
        return rule_fails(value, _typed(value, spec), spec, rule)
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
                        bad = _invalid_type_in(child)
                        first_bad = F.filter(column, bad).getItem(0).getField(child.name)
                        reasons.append(F.when(F.exists(column, bad), F.concat(
                            F.lit(f"{child_path}: invalid {child.type}: '"),
                            F.substring(first_bad, 1, 80), F.lit("'"))))
                    for rule in child.rules if child.on_invalid == "quarantine" else ():
                        breaks = _breaks_in(child, rule)
                        first = F.filter(column, breaks).getItem(0).getField(child.name)
                        reasons.append(F.when(F.exists(column, breaks), _rule_reason(child_path, rule, first)))
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
        The record fields (raw strings), ``_source_file``, ``_line``, ``_text``, ``_reason``
        (null for a good record; otherwise why it goes to quarantine, naming the field) and
        ``_nulled`` (paths of fields whose invalid value becomes null under ``on_invalid: null``).
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
                    "_source_file", "_line", "_text", "_reason",
                    nulled_fields(source, F.col("_record")).alias("_nulled")))
