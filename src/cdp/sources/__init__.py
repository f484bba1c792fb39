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
    * :func:`unmapped_values` - values a ``map`` does not cover (quarantined, defaulted or dropped; counted).
    * :func:`map_identifiers`, :func:`map_attributes`, :func:`map_events`, :func:`map_table` (orders,
      order_lines, returns, consent, products) - deduplicated records -> canonical rows (identifiers
      before normalisation, which ``jobs/standardize.py`` applies).

The package is three modules, re-exported here so ``from cdp.sources import ...`` keeps working:
:mod:`cdp.sources.spec` (``conf/sources.yaml`` as typed, validated specs and the canonical model's
names and allowed values), :mod:`cdp.sources.parsing` (raw lines -> bronze columns and quarantine
reasons) and :mod:`cdp.sources.mapping` (bronze records -> canonical silver rows).
"""
from __future__ import annotations

from cdp.sources.mapping import (
    IDENTIFIER_RAW_SCHEMA,
    Deduplicated,
    content_hash_column,
    deduplicate,
    map_attributes,
    map_events,
    map_identifiers,
    map_table,
    observed_at_column,
    raw_value,
    record_id_column,
    typed_value,
    unmapped_values,
    value_column,
    with_expression_inputs,
)
from cdp.sources.parsing import (
    bronze_schema,
    convert,
    date_to_timestamp,
    parse_lines,
    record_schema,
    validation_reasons,
)
from cdp.sources.spec import (
    ALLOWED_VALUES,
    CANONICAL_SCHEMAS,
    CONSENT_CHANNELS,
    CONTENT_HASH_ID,
    DERIVED_RECORD_IDS,
    ENUMS,
    EVENT_CHANNELS,
    EVENT_TYPES,
    FALSE_VALUES,
    FIELD_TYPES,
    FILE_LINE_ID,
    FILTERED_CANONICAL,
    FORMATS,
    LEAF_TYPES,
    METADATA_COLUMNS,
    ON_DUPLICATE_KEY,
    ORDER_CHANNELS,
    ORDER_STATUSES,
    REQUIRED_CANONICAL,
    RULES,
    TIME_FORMATS,
    TRUE_VALUES,
    FieldRule,
    FieldSpec,
    IdentifierSpec,
    LookupReader,
    SectionSpec,
    SourcesConfig,
    SourceSpec,
    ValueSpec,
    spark_pattern_problem,
)

__all__ = [
    "ALLOWED_VALUES",
    "CANONICAL_SCHEMAS",
    "CONSENT_CHANNELS",
    "CONTENT_HASH_ID",
    "DERIVED_RECORD_IDS",
    "ENUMS",
    "EVENT_CHANNELS",
    "EVENT_TYPES",
    "FALSE_VALUES",
    "FIELD_TYPES",
    "FILE_LINE_ID",
    "FILTERED_CANONICAL",
    "FORMATS",
    "FieldRule",
    "FieldSpec",
    "LookupReader",
    "RULES",
    "IDENTIFIER_RAW_SCHEMA",
    "IdentifierSpec",
    "LEAF_TYPES",
    "METADATA_COLUMNS",
    "ON_DUPLICATE_KEY",
    "ORDER_CHANNELS",
    "ORDER_STATUSES",
    "REQUIRED_CANONICAL",
    "SectionSpec",
    "SourceSpec",
    "SourcesConfig",
    "TIME_FORMATS",
    "TRUE_VALUES",
    "ValueSpec",
    "bronze_schema",
    "content_hash_column",
    "date_to_timestamp",
    "convert",
    "Deduplicated",
    "deduplicate",
    "map_attributes",
    "map_events",
    "map_identifiers",
    "map_table",
    "observed_at_column",
    "parse_lines",
    "raw_value",
    "record_id_column",
    "record_schema",
    "spark_pattern_problem",
    "typed_value",
    "unmapped_values",
    "validation_reasons",
    "value_column",
    "with_expression_inputs",
]
