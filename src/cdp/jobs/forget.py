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
   ``quarantine`` rows whose raw text contains one of their values. The keys are SHA-256 hashes
   handed to ``Lake.erase`` as data: no commit ever holds a predicate with the person's values.
4. Expire every table's history (``Lake.expire_history``): unreferenced data files vacuumed, a
   checkpoint written and the log entries before it removed, since old commits' predicates and
   per-file min/max statistics can still hold the person. Export files under ``<lake>/_exports``
   are rewritten without their rows (manifests updated); text reports under ``<lake>/_reports``
   have their values replaced by ``[erased]``.
5. Append their identifiers, hashed, to ``suppression_list`` (list ``erasure``) so a later load does
   not re-create them (``cdp land`` drops such records, ``cdp standardize`` too), and an audit row
   without PII to ``privacy_audit``.

``--dry-run`` prints what would be erased, per table and data file, and the export and report files,
without writing anything.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.contracts import tables_without_personal_data
from cdp.identity import IdentityConfig
from cdp.jobs.entry import JobFailed
from cdp.privacy import ERASURE_LIST, SUPPRESSION_SCHEMA, sha256_hex
from cdp.runtime.config import ConfigError, JobContext, parse_file

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

    @property
    def search_values(self) -> tuple[str, ...]:
        """Every spelling known of the person's identifiers: raw as they came in, and normalised."""
        return tuple(sorted({*self.raw_values, *(value for _, value in self.identifiers)}))


@dataclass
class ForgetResult:
    request_id: str
    person: Person
    rows_deleted: dict[str, int] = field(default_factory=dict)
    vacuumed: list[str] = field(default_factory=list)
    export_files_rewritten: int = 0
    export_files: list[str] = field(default_factory=list)
    report_files: list[str] = field(default_factory=list)
    planned: dict[str, dict[str, int]] = field(default_factory=dict)  # dry run: table -> data file -> rows


# -- resolving the person -----------------------------------------------------------------------------
def normalise_identifier(ctx: JobContext, id_type: str, raw: str) -> str:
    """Normalise like ``cdp standardize`` (the type's normaliser in conf/identity.yaml)."""
    path = ctx.conf_path("identity.yaml")
    normalizers = parse_file(path, IdentityConfig.from_dict).normalizers
    if id_type not in normalizers:
        raise ConfigError(f"{path}: types.{id_type}: unknown identifier type (known: {sorted(normalizers)})")
    value = normalizers[id_type].python(raw)
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


# -- keys ---------------------------------------------------------------------------------------------
# Rows are matched on SHA-256 hashes supplied as data (``Lake.erase``), never through a SQL predicate:
# a predicate is stored in the Delta log in clear text, where ``history()`` shows it to every reader.
def identifier_pairs(columns: Sequence[str]) -> list[tuple[str, str]]:
    """(type column, value column) pairs: id_type/id_value, a_type/a_value, b_type/b_value, ..."""
    pairs = []
    for col in columns:
        if col.endswith("_type"):
            stem = col[: -len("_type")]
            if f"{stem}_value" in columns:
                pairs.append((col, f"{stem}_value"))
    return pairs


def hashed_keys(spark: SparkSession, rows: Iterable[Sequence[str]], columns: Sequence[str]) -> DataFrame:
    """Rows of values -> one frame of their SHA-256 hashes (hex), columns named ``columns``."""
    data = sorted({tuple(sha256_hex(str(value)) for value in row) for row in rows})
    return spark.createDataFrame(data, ", ".join(f"`{c}` string" for c in columns))


def erase_keys(spark: SparkSession, columns: Sequence[str], person: Person) -> list[DataFrame]:
    """The hashed keys that find the person's rows in a table with these columns (none: nothing to match).

    By ``customer_id``; ``(source, record_id)``; every ``<x>_type/<x>_value`` pair; ``order_id``.
    """
    keys: list[DataFrame] = []
    if "customer_id" in columns and person.customer_ids:
        keys.append(hashed_keys(spark, [(c,) for c in person.customer_ids], ["customer_id"]))
    if {"source", "record_id"} <= set(columns) and person.records:
        keys.append(hashed_keys(spark, person.records, ["source", "record_id"]))
    for type_col, value_col in identifier_pairs(columns):
        if person.identifiers:
            keys.append(hashed_keys(spark, person.identifiers, [type_col, value_col]))
    if "order_id" in columns and person.order_ids:
        keys.append(hashed_keys(spark, [(o,) for o in person.order_ids], ["order_id"]))
    return keys


def _row_keys(rows: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Hashed key frame of ``rows`` on ``columns`` (the rows' own values, computed in Spark)."""
    return rows.select(*[F.sha2(F.col(f"`{c}`").cast("string"), 256).alias(c) for c in columns]).distinct()


BRONZE_ROW = ("_load_id", "_source_file", "_line")


def bronze_keys(spark: SparkSession, lake: Any, ctx: JobContext, person: Person) -> dict[str, list[DataFrame]]:
    """Bronze tables keep raw fields only: the person's rows are those with one of their record ids
    (the source's ``record_id`` in conf/sources.yaml), keyed by their load, file and line."""
    path = ctx.conf_path("sources.yaml")
    if not path.exists():
        return {}
    from cdp.jobs.land import read_sources
    from cdp.sources import record_id_column

    sources = read_sources(path)
    keys: dict[str, list[DataFrame]] = {}
    for source in sources.sources.values():
        table = source.bronze_table
        if not lake.exists(table):
            continue
        record_ids = sorted({rid for s, rid in person.records if s == source.name})
        keys[table] = []
        if not record_ids:
            continue
        wanted = spark.createDataFrame([(rid,) for rid in record_ids], "_cdp_record_id string")
        doomed = (lake.read(table).withColumn("_cdp_record_id", record_id_column(source))
                  .join(F.broadcast(wanted), on="_cdp_record_id", how="left_semi"))
        keys[table].append(_row_keys(doomed, BRONZE_ROW))
    return keys


def quarantine_keys(spark: SparkSession, lake: Any, person: Person) -> list[DataFrame]:
    """Quarantined lines whose raw text holds one of the person's values (case-insensitive), keyed by
    their raw text; the values are matched as data in Spark, never written into a predicate."""
    if not lake.exists("quarantine"):
        return []
    quarantine = lake.read("quarantine")
    values = sorted({v.strip().lower() for v in person.search_values if len(v.strip()) >= 5})
    if "raw" not in quarantine.columns or not values:
        return []
    needles = spark.createDataFrame([(v,) for v in values], "_cdp_value string")
    doomed = quarantine.join(F.broadcast(needles), F.lower(F.col("raw")).contains(F.col("_cdp_value")),
                             how="left_semi")
    return [_row_keys(doomed, ["raw"])]



def _rewrite_exports(lake: Any, person: Person, *, dry_run: bool = False) -> list[str]:
    """Drop the person's rows from export files (hashed or clear identifiers); update manifests.

    Returns the files (relative to the lake root) that held the person's rows.
    """
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
        return []
    values = {v for _, v in person.identifiers} | set(person.customer_ids)
    values |= {sha256_hex(v) for _, v in person.identifiers}
    rewritten: list[str] = []
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
        rewritten.append(info.path[len(base) + 1:])
        if dry_run:
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


REPORTS_DIR = "_reports"
ERASED_MARK = "[erased]"
_TEXT_SUFFIXES = (".html", ".json", ".csv", ".txt", ".md", ".jsonl")


def _redact_reports(lake: Any, person: Person, *, dry_run: bool = False) -> list[str]:
    """Replace the person's values in the text files under ``<lake>/_reports`` (run and gate reports
    quote sample rows); returns the files (relative to the lake root) that held any."""
    from pyarrow import fs as pafs

    from cdp.jobs.export import _filesystem

    filesystem, base = _filesystem(lake.root)
    root = f"{base}/{REPORTS_DIR}"
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    values = sorted({v for v in (*person.search_values, *person.customer_ids) if len(v.strip()) >= 5},
                    key=len, reverse=True)  # longest first: a value inside another goes after it
    if not values:
        return []
    pattern = re.compile("|".join(re.escape(v) for v in values), re.IGNORECASE)
    touched = []
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(_TEXT_SUFFIXES):
            continue
        with filesystem.open_input_stream(info.path) as stream:
            text = stream.read().decode("utf-8", errors="surrogateescape")
        redacted, hits = pattern.subn(ERASED_MARK, text)
        if not hits:
            continue
        touched.append(info.path[len(base) + 1:])
        if not dry_run:
            with filesystem.open_output_stream(info.path) as out:
                out.write(redacted.encode("utf-8", errors="surrogateescape"))
    return touched


def erasure_plan(spark: SparkSession, lake: Any, ctx: JobContext, person: Person) -> dict[str, list[DataFrame]]:
    """Table -> the hashed key frames that find the person's rows in it (tables without any left out)."""
    plan: dict[str, list[DataFrame]] = {}
    bronze = bronze_keys(spark, lake, ctx, person)
    for table in lake_tables(lake, ctx):
        if table in SKIP_TABLES:
            continue
        if table in bronze:
            keys = bronze[table]
        elif table == "quarantine":
            keys = quarantine_keys(spark, lake, person)
        else:
            keys = erase_keys(spark, lake.read(table).columns, person)
        if keys:
            plan[table] = keys
    return plan


def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None, identifier: str | Sequence[str] | None = None,
        customer_id: str | None = None, request_id: str | None = None, dry_run: bool = False) -> ForgetResult:
    """Erase the person designated by ``identifier`` (``TYPE=VALUE``, or several naming one person)
    or ``customer_id``.

    With ``dry_run`` nothing is written: ``result.planned`` holds, per table, the data files that hold
    the person's rows and how many, and ``result.export_files`` / ``result.report_files`` the files
    that would be rewritten.
    """
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    if (identifier is None) == (customer_id is None):
        raise ConfigError("give exactly one of --identifier TYPE=VALUE or --customer-id ID")
    request_id = request_id or f"erasure-{uuid.uuid4().hex[:12]}"
    extra: list[tuple[str, str]] = []
    raws: list[str] = []
    customers: list[str] = []
    if identifier is not None:
        for given in [identifier] if isinstance(identifier, str) else list(identifier):
            if "=" not in given:
                raise ConfigError(f"--identifier {given!r}: expected TYPE=VALUE, e.g. email=jane@example.com")
            id_type, raw = given.split("=", 1)
            extra.append((id_type.strip(), normalise_identifier(ctx, id_type.strip(), raw)))
            raws.append(raw.strip())
        if lake.exists("identity_map"):
            matches = lake.read("identity_map").join(
                hashed_keys(spark, extra, ["_t", "_v"]),
                (F.sha2(F.col("id_type"), 256) == F.col("_t")) & (F.sha2(F.col("id_value"), 256) == F.col("_v")),
                how="left_semi").collect()
            shared = sorted({r["id_type"] for r in matches if r["is_shared"]})
            if shared:
                raise JobFailed(f"the given {', '.join(shared)} is a shared identifier (several people); "
                                "erase by --customer-id instead")
            customers = sorted({r["customer_id"] for r in matches})
    else:
        customers = [customer_id]  # type: ignore[list-item]
    if customers and lake.exists("identity_map"):
        person = resolve_person(lake, customer_ids=customers)
    else:
        person = Person(customer_ids=tuple(customers), identifiers=(), records=(), order_ids=(), raw_values=())
    if raws:
        person = replace(person, raw_values=tuple(sorted({*person.raw_values, *raws})))
    if not customers:
        logger.warning("%s: no customer found for the identifier; suppressing it so it is never loaded",
                       request_id)
    result = ForgetResult(request_id=request_id, person=person)
    metadata = {"run_id": ctx.run_id, "operation_reason": "erasure", "request_id": request_id}

    plan = erasure_plan(spark, lake, ctx, person)
    if dry_run:
        for table, keys in plan.items():
            files = lake.matching_files(table, keys)
            if files:
                result.planned[table] = files
        result.export_files = _rewrite_exports(lake, person, dry_run=True)
        result.report_files = _redact_reports(lake, person, dry_run=True)
        return result
    for table, keys in plan.items():
        deleted = lake.erase(table, keys, metadata=metadata)
        if deleted:
            result.rows_deleted[table] = deleted
    # Every table that may ever have held the person loses its history, touched now or not: older
    # versions (and their log entries' statistics) still hold the person wherever they once were.
    for table in lake_tables(lake, ctx):
        if table not in SKIP_TABLES:
            lake.expire_history(table)
            result.vacuumed.append(table)
    result.export_files = _rewrite_exports(lake, person)
    result.export_files_rewritten = len(result.export_files)
    result.report_files = _redact_reports(lake, person)

    suppression = suppression_rows(spark, person, extra, request_id)
    if suppression.count():
        lake.write(suppression, SUPPRESSION_TABLE, mode="append", metadata=metadata)
    audit = spark.createDataFrame([(
        request_id, datetime.now(UTC).replace(tzinfo=None), [sha256_hex(c) for c in person.customer_ids],
        len(set(person.identifiers) | set(extra)), len(person.records), dict(result.rows_deleted),
        list(result.vacuumed), result.export_files_rewritten, ctx.run_id)], AUDIT_SCHEMA)
    lake.write(audit, AUDIT_TABLE, mode="append", metadata=metadata)
    logger.info("%s: erased %d customer(s), %d identifiers, %d records; rows deleted %s; history expired in %d "
                "tables; %d export files rewritten, %d report files redacted", request_id,
                len(person.customer_ids), len(person.identifiers), len(person.records), result.rows_deleted,
                len(result.vacuumed), result.export_files_rewritten, len(result.report_files))
    return result


def format_plan(result: ForgetResult) -> str:
    """What a dry run found: per table its data files and rows, then export and report files."""
    lines = [f"cdp forget --dry-run ({result.request_id}): {len(result.person.customer_ids)} customer(s), "
             f"{len(result.person.identifiers)} identifiers, {len(result.person.records)} records; nothing erased"]
    for table in sorted(result.planned):
        files = result.planned[table]
        lines.append(f"  table {table}: {sum(files.values())} rows in {len(files)} files")
        lines += [f"    {path}: {rows} rows" for path, rows in sorted(files.items())]
    lines += [f"  export file {path}" for path in result.export_files]
    lines += [f"  report file {path}" for path in result.report_files]
    if len(lines) == 1:
        lines.append("  nothing found")
    return "\n".join(lines) + "\n"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--identifier", action="append",
                     help="TYPE=VALUE, e.g. email=jane@example.com or phone=+8613800138000; repeat it for "
                          "each identifier the request names")
    who.add_argument("--customer-id", help="the customer id to erase")
    parser.add_argument("--request-id", help="reference of the erasure request (default: generated)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be erased, per table and file, and erase nothing")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    result = run(spark, ctx, identifier=args.identifier, customer_id=args.customer_id, request_id=args.request_id,
                 dry_run=args.dry_run)
    if args.dry_run:
        sys.stdout.write(format_plan(result))
        return 0
    logger.info("erasure %s done: %d tables touched", result.request_id, len(result.rows_deleted))
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("forget", argv, _run_from_args, _add_arguments, description="erase a person from every layer")


if __name__ == "__main__":
    sys.exit(main())
