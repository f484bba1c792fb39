"""``cdp forget``: erase a person from every layer of the lake, for good.

    cdp forget --identifier email=Jane.Doe@Example.com
    cdp forget --customer-id C-00042

1. Resolve the person: the identifier is normalised as ``cdp standardize`` does
   (``conf/identity.yaml`` normaliser of its type) and looked up in ``identity_map``; a shared
   identifier (a family device) is refused, since it does not designate one person.
2. Collect what belongs to them: their customer id(s), their unshared identifiers
   (``identity_map``), their records (``customer_records``) and their order ids.
3. Delete from every Delta table in the lake, by whichever keys the table has: ``customer_id``;
   ``(source, record_id)``; identifier pairs (``id_type/id_value``, ``a_type/a_value``, ...);
   ``order_id``; bronze tables by the record id their source declares in ``conf/sources.yaml``;
   ``quarantine`` rows whose raw text contains one of their raw identifiers. Export files under
   ``<lake>/_exports`` are rewritten without their rows (manifests updated).
4. Vacuum every touched table with zero retention, so time travel cannot bring them back.
5. Append their identifiers, hashed, to ``suppression_list`` (list ``erasure``) so a later load does
   not re-create them, and an audit row without PII to ``privacy_audit``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.contracts import tables_without_personal_data
from cdp.identity.normalize import PY_NORMALIZERS
from cdp.jobs.entry import JobFailed
from cdp.privacy import ERASURE_LIST, SUPPRESSION_SCHEMA, sha256_hex
from cdp.runtime.config import ConfigError, JobContext, load_yaml, parse_file

logger = logging.getLogger(__name__)

SUPPRESSION_TABLE = "suppression_list"
AUDIT_TABLE = "privacy_audit"
# Tables that never hold a person's data, or that must survive the erasure itself (cdp.contracts).
SKIP_TABLES = tables_without_personal_data()
AUDIT_SCHEMA = ("request_id string, requested_at timestamp, subject_hashes array<string>, "
                "identifiers long, records long, rows_deleted map<string,bigint>, tables_vacuumed array<string>, "
                "export_files_rewritten long, run_id string")


@dataclass(frozen=True)
class Person:
    customer_ids: tuple[str, ...]
    identifiers: tuple[tuple[str, str], ...]   # (id_type, normalised value), unshared
    records: tuple[tuple[str, str], ...]       # (source, record_id)
    order_ids: tuple[str, ...]
    raw_values: tuple[str, ...]                # raw identifier strings as they came in (for quarantine)


@dataclass
class ForgetResult:
    request_id: str
    person: Person
    rows_deleted: dict[str, int] = field(default_factory=dict)
    vacuumed: list[str] = field(default_factory=list)
    export_files_rewritten: int = 0


# -- resolving the person -----------------------------------------------------------------------------
def normalise_identifier(ctx: JobContext, id_type: str, raw: str) -> str:
    """Normalise like ``cdp standardize`` (the type's normaliser in conf/identity.yaml)."""
    path = ctx.conf_path("identity.yaml")
    types = (load_yaml(path).get("types") or {})
    if id_type not in types:
        raise ConfigError(f"{path}: types.{id_type}: unknown identifier type (known: {sorted(types)})")
    normalizer = (types[id_type] or {}).get("normalizer")
    if normalizer not in PY_NORMALIZERS:
        raise ConfigError(f"{path}: types.{id_type}.normalizer: unknown normaliser {normalizer!r}")
    value = PY_NORMALIZERS[normalizer](raw)
    if not value:
        raise ConfigError(f"--identifier {id_type}={raw!r}: not a valid {id_type} after normalisation")
    return value


def resolve_person(lake: Any, *, customer_ids: Sequence[str]) -> Person:
    identity_map = lake.read("identity_map")
    ids = [tuple(r) for r in identity_map.filter(F.col("customer_id").isin(*customer_ids)
                                                 & ~F.coalesce(F.col("is_shared"), F.lit(False)))
           .select("id_type", "id_value").distinct().collect()]
    records: list[tuple[str, str]] = []
    if lake.exists("customer_records"):
        records = [tuple(r) for r in lake.read("customer_records").filter(F.col("customer_id").isin(*customer_ids))
                   .select("source", "record_id").distinct().collect()]
    order_ids = {value for id_type, value in ids if id_type == "order_id"}
    raw_values: set[str] = {value for _, value in ids}
    if records:
        record_frame = lake.spark.createDataFrame(records, "source string, record_id string")
        if lake.exists("silver_orders"):
            order_ids |= {r.order_id for r in lake.read("silver_orders").join(
                record_frame, on=["source", "record_id"], how="left_semi").select("order_id").collect()}
        if lake.exists("silver_identifiers"):
            raw_values |= {r.raw_value for r in lake.read("silver_identifiers").join(
                record_frame, on=["source", "record_id"], how="left_semi").select("raw_value").distinct().collect()
                if r.raw_value}
    return Person(customer_ids=tuple(sorted(customer_ids)), identifiers=tuple(sorted(ids)),
                  records=tuple(sorted(records)), order_ids=tuple(sorted(order_ids)),
                  raw_values=tuple(sorted(v for v in raw_values if len(v.strip()) >= 5)))


# -- predicates ---------------------------------------------------------------------------------------
def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in(column: str, values: Iterable[str]) -> str:
    return f"`{column}` IN (" + ", ".join(_quote(v) for v in values) + ")"


def identifier_pairs(columns: Sequence[str]) -> list[tuple[str, str]]:
    """(type column, value column) pairs: id_type/id_value, a_type/a_value, b_type/b_value, ..."""
    pairs = []
    for col in columns:
        if col.endswith("_type"):
            stem = col[: -len("_type")]
            if f"{stem}_value" in columns:
                pairs.append((col, f"{stem}_value"))
    return pairs


def erase_predicate(columns: Sequence[str], person: Person) -> str | None:
    """SQL predicate matching the person's rows in a table with these columns (None: nothing to match)."""
    parts: list[str] = []
    if "customer_id" in columns and person.customer_ids:
        parts.append(_in("customer_id", person.customer_ids))
    if {"source", "record_id"} <= set(columns) and person.records:
        by_source: dict[str, list[str]] = {}
        for source, record_id in person.records:
            by_source.setdefault(source, []).append(record_id)
        parts += [f"(`source` = {_quote(s)} AND {_in('record_id', ids)})" for s, ids in sorted(by_source.items())]
    for type_col, value_col in identifier_pairs(columns):
        by_type: dict[str, list[str]] = {}
        for id_type, value in person.identifiers:
            by_type.setdefault(id_type, []).append(value)
        parts += [f"(`{type_col}` = {_quote(t)} AND {_in(value_col, vs)})" for t, vs in sorted(by_type.items())]
    if "order_id" in columns and person.order_ids:
        parts.append(_in("order_id", person.order_ids))
    return " OR ".join(parts) if parts else None


# -- erasing -------------------------------------------------------------------------------------------
def _erase_bronze(spark: SparkSession, lake: Any, ctx: JobContext, person: Person, result: ForgetResult) -> set[str]:
    """Bronze tables keep raw fields only: match records by the source's declared record id."""
    path = ctx.conf_path("sources.yaml")
    if not path.exists():
        return set()
    from cdp.sources import SourcesConfig, record_id_column

    sources = parse_file(path, SourcesConfig.from_dict)
    handled: set[str] = set()
    for source in sources.sources.values():
        table = source.bronze_table
        if not lake.exists(table):
            continue
        handled.add(table)
        record_ids = [rid for s, rid in person.records if s == source.name]
        if not record_ids:
            continue
        bronze = lake.read(table)
        hit = F.coalesce(record_id_column(source).isin(*record_ids), F.lit(False))
        n = bronze.filter(hit).count()
        if n:
            kept = bronze.filter(~hit)
            lake.write(kept, table, mode="overwrite",
                       metadata={"run_id": ctx.run_id, "operation_reason": "erasure", "request_id": result.request_id})
            result.rows_deleted[table] = n
    return handled


def _erase_quarantine(lake: Any, person: Person, result: ForgetResult, metadata: dict[str, Any]) -> None:
    if not lake.exists("quarantine") or not person.raw_values:
        return
    if "raw" not in lake.read("quarantine").columns:
        return
    condition = " OR ".join(f"`raw` LIKE {_quote('%' + v + '%')}" for v in person.raw_values)
    n = lake.read("quarantine").filter(F.expr(condition)).count()
    if n:
        lake.delete("quarantine", condition, metadata=metadata)
        result.rows_deleted["quarantine"] = n


def _rewrite_exports(lake: Any, person: Person) -> int:
    """Drop the person's rows from export files (hashed or clear identifiers); update manifests."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    from cdp.jobs.export import EXPORTS_DIR, _filesystem

    filesystem, base = _filesystem(lake.root)
    root = f"{base}/{EXPORTS_DIR}"
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return 0
    values = {v for _, v in person.identifiers}
    values |= {sha256_hex(v) for _, v in person.identifiers}
    rewritten = 0
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pafs.FileType.File or name == "manifest.json":
            continue
        ext = name.rsplit(".", 1)[-1]
        with filesystem.open_input_file(info.path) as handle:
            if ext == "csv":
                table = pacsv.read_csv(handle, convert_options=pacsv.ConvertOptions(
                    column_types={}, strings_can_be_null=True)) if info.size else None
            elif ext == "parquet":
                table = pq.read_table(handle)
            elif ext == "jsonl":
                table = pajson.read_json(handle) if info.size else None
            else:
                continue
        if table is None or table.num_rows == 0:
            continue
        mask = None
        for column in table.column_names:
            hit = pc.is_in(table[column].cast(pa.string()), value_set=pa.array(sorted(values), pa.string()))
            hit = pc.fill_null(hit, False)
            mask = hit if mask is None else pc.or_(mask, hit)
        if mask is None or not pc.any(mask).as_py():
            continue
        kept = table.filter(pc.invert(mask))
        with filesystem.open_output_stream(info.path) as out:
            if ext == "csv":
                pacsv.write_csv(kept, out)
            elif ext == "parquet":
                pq.write_table(kept, out)
            else:
                for row in kept.to_pylist():
                    out.write((json.dumps({k: v for k, v in row.items() if v is not None}) + "\n").encode())
        rewritten += 1
        _update_manifest(filesystem, info.path, kept.num_rows)
    return rewritten


def _update_manifest(filesystem: Any, file_path: str, rows: int) -> None:
    from cdp.jobs.export import _sha256

    folder, name = file_path.rsplit("/", 1)
    manifest_path = f"{folder}/manifest.json"
    try:
        with filesystem.open_input_stream(manifest_path) as stream:
            manifest = json.loads(stream.read().decode())
    except (FileNotFoundError, OSError):
        return
    checksum, size = _sha256(filesystem, file_path)
    for entry in manifest.get("files", []):
        if entry.get("file") == name:
            entry.update(rows=rows, sha256=checksum, bytes=size, redacted_at=datetime.now(UTC).isoformat())
    with filesystem.open_output_stream(manifest_path) as out:
        out.write(json.dumps(manifest, indent=2).encode())


# Tables that may hold personal data, for lakes whose folders cannot be listed (object stores).
KNOWN_TABLES = ("silver_identifiers", "silver_customer_attributes", "silver_events", "silver_orders",
                "silver_order_lines", "silver_returns", "silver_consent", "identity_map", "customer_records",
                "identity_graph", "identity_history", "identity_quarantine", "customer_profile",
                "features_daily", "tags_long", "tags_wide", "consent_current", "audience_changes")


def lake_tables(lake: Any, ctx: JobContext) -> list[str]:
    """Every table of the lake; where the root cannot be listed, the known and configured ones."""
    listed = lake.tables()
    if listed:
        return listed
    from cdp.jobs.audiences import audience_table, load_audiences
    from cdp.jobs.export import export_table
    from cdp.runtime.gates import staging_name

    names = list(KNOWN_TABLES)
    for audience in load_audiences(ctx.conf_dir):
        names += [audience_table(audience.name), staging_name(audience_table(audience.name)),
                  export_table(audience.name)]
    names += [staging_name(t) for t in KNOWN_TABLES]
    logger.warning("lake root %s cannot be listed: erasing from %d known tables", lake.root, len(names))
    return [name for name in dict.fromkeys(names) if lake.exists(name)]


def suppression_rows(spark: SparkSession, person: Person, extra: Sequence[tuple[str, str]], request_id: str) -> DataFrame:
    """The person's identifiers, hashed, for ``suppression_list`` (list ``erasure``)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    identifiers = sorted(set(person.identifiers) | set(extra))
    rows = [(id_type, sha256_hex(value), ERASURE_LIST, now, request_id) for id_type, value in identifiers]
    return spark.createDataFrame(rows, SUPPRESSION_SCHEMA)


def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None, identifier: str | None = None,
        customer_id: str | None = None, request_id: str | None = None) -> ForgetResult:
    """Erase the person designated by ``identifier`` (``TYPE=VALUE``) or ``customer_id``."""
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    if (identifier is None) == (customer_id is None):
        raise ConfigError("give exactly one of --identifier TYPE=VALUE or --customer-id ID")
    request_id = request_id or f"erasure-{uuid.uuid4().hex[:12]}"
    extra: list[tuple[str, str]] = []
    customers: list[str] = []
    if identifier is not None:
        if "=" not in identifier:
            raise ConfigError(f"--identifier {identifier!r}: expected TYPE=VALUE, e.g. email=jane@example.com")
        id_type, raw = identifier.split("=", 1)
        value = normalise_identifier(ctx, id_type.strip(), raw)
        extra.append((id_type.strip(), value))
        if lake.exists("identity_map"):
            matches = lake.read("identity_map").filter((F.col("id_type") == id_type.strip())
                                                       & (F.col("id_value") == value)).collect()
            if any(r["is_shared"] for r in matches):
                raise JobFailed(f"{id_type}=<given value> is a shared identifier (several people); "
                                "erase by --customer-id instead")
            customers = sorted({r["customer_id"] for r in matches})
    else:
        customers = [customer_id]  # type: ignore[list-item]
    if customers and lake.exists("identity_map"):
        person = resolve_person(lake, customer_ids=customers)
    else:
        person = Person(customer_ids=tuple(customers), identifiers=(), records=(), order_ids=(), raw_values=())
    if not customers:
        logger.warning("%s: no customer found for the identifier; suppressing it so it is never loaded",
                       request_id)
    result = ForgetResult(request_id=request_id, person=person)
    metadata = {"run_id": ctx.run_id, "operation_reason": "erasure", "request_id": request_id}

    bronze = _erase_bronze(spark, lake, ctx, person, result)
    for table in lake_tables(lake, ctx):
        if table in SKIP_TABLES or table in bronze or table == "quarantine":
            continue
        frame = lake.read(table)
        predicate = erase_predicate(frame.columns, person)
        if predicate is None:
            continue
        # count first (Spark SQL, same predicate): no empty commits, and exact counts for the audit
        n = frame.filter(F.expr(predicate)).count()
        if n:
            lake.delete(table, predicate, metadata=metadata)
            result.rows_deleted[table] = n
    _erase_quarantine(lake, person, result, metadata)
    for table in sorted(result.rows_deleted):
        lake.vacuum(table, retention_hours=0)
        result.vacuumed.append(table)
    result.export_files_rewritten = _rewrite_exports(lake, person)

    suppression = suppression_rows(spark, person, extra, request_id)
    if suppression.count():
        lake.write(suppression, SUPPRESSION_TABLE, mode="append", metadata=metadata)
    audit = spark.createDataFrame([(
        request_id, datetime.now(UTC).replace(tzinfo=None), [sha256_hex(c) for c in person.customer_ids],
        len(set(person.identifiers) | set(extra)), len(person.records), dict(result.rows_deleted),
        list(result.vacuumed), result.export_files_rewritten, ctx.run_id)], AUDIT_SCHEMA)
    lake.write(audit, AUDIT_TABLE, mode="append", metadata=metadata)
    logger.info("%s: erased %d customer(s), %d identifiers, %d records; rows deleted %s; vacuumed %d tables; "
                "%d export files rewritten", request_id, len(person.customer_ids), len(person.identifiers),
                len(person.records), result.rows_deleted, len(result.vacuumed), result.export_files_rewritten)
    return result


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--identifier", help="TYPE=VALUE, e.g. email=jane@example.com or phone=+8613800138000")
    who.add_argument("--customer-id", help="the customer id to erase")
    parser.add_argument("--request-id", help="reference of the erasure request (default: generated)")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    result = run(spark, ctx, identifier=args.identifier, customer_id=args.customer_id, request_id=args.request_id)
    logger.info("erasure %s done: %d tables touched", result.request_id, len(result.rows_deleted))
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("forget", argv, _run_from_args, _add_arguments, description="erase a person from every layer")


if __name__ == "__main__":
    sys.exit(main())
