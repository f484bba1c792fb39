"""``cdp land``: raw exports -> one bronze Delta table per source, plus quarantine and a load log.

For each source in ``conf/sources.yaml`` the files matching its glob under ``--raw`` (a local folder or
an object-store URI such as ``s3a://bucket/raw``) are listed and fingerprinted (SHA-256, computed by
Spark tasks). Files whose fingerprint is already in ``load_log`` are skipped, so a re-run
over the same files adds nothing. New files are read by Spark tasks (one Python reader per file that
keeps line numbers and decodes with the source's encoding) and parsed by Spark (``from_json`` /
``from_csv`` with a corrupt-record column, then per-field checks; a quoted CSV field may span
lines). Good records go to
``bronze_<source>`` with every field as its raw string; the others go to ``quarantine`` with the
file, line, raw text and a reason naming the field. Every raw record ends up in exactly one of the
two, or is dropped because it carries an identifier of a forgotten person (``suppression_list``):
``raw = bronze + quarantine + suppressed`` is checked per file against the rows the tables hold for
the load (counted back from bronze and quarantine, not from what the job meant to write), and reported.

A load is identified by its content: ``load_id`` is ``<source>-<16 hex of the SHA-256 over the sorted
SHA-256s of its files>``, never a counter a re-run could reuse for other files; the bronze commit
carries the files' checksums in its metadata. What was loaded is what the committed ``load_log``
lists: ``cdp land`` is one step of the lake's step commits (``cdp.lake``), so bronze, quarantine
and load_log become current together. A run killed between those writes leaves versions no reader
sees; the next land restores each table to its committed version before writing and loads every
file the committed load log does not list. (No Delta app transactions here: a restore keeps the
dead commit's transaction, which would then skip the re-run's write.)

The tasks open raw files through ``pyarrow.fs`` (:func:`cdp.lake.storage.filesystem`), with the
object-store settings the driver resolved, so raw folders need not be mounted on every node.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import dataclasses
import glob
import hashlib
import io
import logging
import os
import posixpath
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.connect import default_parallelism
from cdp.jobs.entry import JobFailed
from cdp.lake.storage import ObjectStore, filesystem
from cdp.runtime.config import ConfigError, JobContext, lookup_reader, parse_file
from cdp.sources import SourcesConfig, SourceSpec, bronze_schema, parse_lines

logger = logging.getLogger(__name__)

LOAD_LOG = "load_log"
QUARANTINE = "quarantine"
SUPPRESSION_LIST = "suppression_list"
LINES_SCHEMA = T.StructType([
    T.StructField("_source_file", T.StringType()),
    T.StructField("_line", T.LongType()),
    T.StructField("_text", T.StringType()),
    T.StructField("_decode_error", T.StringType()),
])
QUARANTINE_SCHEMA = T.StructType([
    T.StructField("source", T.StringType()),
    T.StructField("stage", T.StringType()),
    T.StructField("load_id", T.StringType()),
    T.StructField("file", T.StringType()),
    T.StructField("line", T.LongType()),
    T.StructField("field", T.StringType()),
    T.StructField("raw", T.StringType()),
    T.StructField("reason", T.StringType()),
    T.StructField("quarantined_at", T.TimestampType()),
])
LOAD_LOG_SCHEMA = T.StructType([
    T.StructField("source", T.StringType()),
    T.StructField("load_id", T.StringType()),
    T.StructField("seq", T.LongType()),
    T.StructField("file", T.StringType()),
    T.StructField("path", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("mtime", T.TimestampType()),
    T.StructField("sha256", T.StringType()),
    T.StructField("raw_records", T.LongType()),
    T.StructField("bronze_rows", T.LongType()),
    T.StructField("quarantined_rows", T.LongType()),
    T.StructField("loaded_at", T.TimestampType()),
    T.StructField("run_id", T.StringType()),
    T.StructField("suppressed_rows", T.LongType()),
])
_BATCH_LINES = 20_000
MAX_RECORD_LINES = 100  # a quoted CSV field may span this many lines at most


@dataclass(frozen=True)
class RawFile:
    """A raw file: ``path`` is an absolute local path or a URI (``s3a://bucket/raw/crm/a.csv``)."""

    relpath: str
    path: str
    size: int
    mtime: datetime
    sha256: str


@dataclass
class SourceLoad:
    """What one landing run did for one source."""

    source: str
    load_id: str | None = None
    files_found: int = 0
    files_loaded: int = 0
    files_skipped: int = 0
    raw_records: int = 0
    bronze_rows: int = 0
    quarantined_rows: int = 0
    suppressed_rows: int = 0  # records carrying a forgotten identifier: dropped, never written
    # field path -> records landed with that field's value nulled (on_invalid: null: a type error or a rule)
    nulled: dict[str, int] = field(default_factory=dict)


@dataclass
class LandResult:
    loads: dict[str, SourceLoad] = field(default_factory=dict)

    @property
    def raw_records(self) -> int:
        return sum(load.raw_records for load in self.loads.values())

    @property
    def bronze_rows(self) -> int:
        return sum(load.bronze_rows for load in self.loads.values())

    @property
    def quarantined_rows(self) -> int:
        return sum(load.quarantined_rows for load in self.loads.values())

    @property
    def suppressed_rows(self) -> int:
        return sum(load.suppressed_rows for load in self.loads.values())


def read_sources(path: Path) -> SourcesConfig:
    """``sources.yaml`` as typed config, with the lookup CSVs its maps name read from beside it."""
    return parse_file(path, lambda data: SourcesConfig.from_dict(data, lookup_reader(path)))


def load_sources(ctx: JobContext) -> tuple[Path, SourcesConfig]:
    path = ctx.conf_path("sources.yaml")
    return path, read_sources(path)


# -- files ----------------------------------------------------------------------------------------

def _open_raw(path: str, store: ObjectStore | None) -> io.BufferedReader:
    """A raw file's bytes, as stored (no decompression by extension), locally or in an object store."""
    files_fs, inner = filesystem(path, store)
    return io.BufferedReader(files_fs.open_input_stream(inner, compression=None), buffer_size=1 << 20)


def _sha256(path: str, store: ObjectStore | None = None) -> str:
    digest = hashlib.sha256()
    with _open_raw(path, store) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``glob.glob(pattern, recursive=True)`` semantics over relative POSIX paths: ``*``, ``?`` and
    ``[...]`` stay within a folder, ``**`` spans zero or more folders, hidden names match only when
    the pattern names them with a leading dot."""
    segments = pattern.split("/")
    regex = ""
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            regex += r"(?:(?!\.)[^/]+(?:/(?!\.)[^/]+)*)?" if last else r"(?:(?!\.)[^/]+/)*"
            continue
        regex += "" if segment.startswith(".") else r"(?!\.)"
        position = 0
        while position < len(segment):
            char = segment[position]
            closing = segment.find("]", position + 2) if char == "[" else -1
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif closing != -1:
                inner = segment[position + 1:closing]
                inner = "^" + inner[1:] if inner.startswith("!") else inner
                regex += "[" + inner.replace("\\", "\\\\") + "]"
                position = closing
            else:
                regex += re.escape(char)
            position += 1
        regex += "" if last else "/"
    return re.compile(regex + r"\Z", re.DOTALL)


def _fingerprints(spark: SparkSession, paths: list[str], store: ObjectStore) -> dict[str, str]:
    """SHA-256 of each file, computed by Spark tasks that read the files where they are."""
    if not paths:
        return {}

    def digest(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            chosen = [paths[i] for i in batch.column("id").to_pylist()]
            yield pa.RecordBatch.from_arrays(
                [pa.array(chosen, pa.string()), pa.array([_sha256(p, store) for p in chosen], pa.string())],
                names=["path", "sha256"])

    tasks = max(1, min(len(paths), default_parallelism(spark) * 2))
    rows = spark.range(0, len(paths), 1, tasks).mapInArrow(digest, "path string, sha256 string").collect()
    return {row["path"]: row["sha256"] for row in rows}


def discover_files(source: SourceSpec, raw_root: str | os.PathLike[str], conf_file: Path,
                   spark: SparkSession | None = None, store: ObjectStore | None = None) -> list[RawFile]:
    """The files matching the source's glob, sorted by relative path, with size, mtime and SHA-256.

    ``raw_root`` is a local folder or an object-store URI; the listing is one call on the driver and
    the fingerprints are computed by Spark tasks when ``spark`` is given (else here).
    """
    from pyarrow import fs as pafs

    root = str(raw_root)
    store = store if store is not None else ObjectStore.for_session(spark)
    raw_fs, base = filesystem(root, store)
    local = isinstance(raw_fs, pafs.LocalFileSystem)
    shown_root = base if local else root.rstrip("/")
    fixed_parts = [part for part in Path(source.path).parts
                   if not glob.has_magic(part)][:_fixed_depth(source.path)]
    fixed = posixpath.join(base, *fixed_parts)
    if raw_fs.get_file_info(fixed).type != pafs.FileType.Directory:
        shown_fixed = posixpath.join(shown_root, *fixed_parts)
        raise ConfigError(f"{conf_file}: sources.{source.name}.path: {shown_fixed} does not exist "
                          f"(raw root {shown_root})")
    pattern = _glob_regex(source.path)
    listed = []
    for info in raw_fs.get_file_info(pafs.FileSelector(fixed, recursive=True)):
        relpath = info.path[len(base):].lstrip("/")
        if info.type != pafs.FileType.File or not pattern.match(relpath):
            continue
        path = info.path if local else f"{shown_root}/{relpath}"
        if local and not os.access(path, os.R_OK):
            raise ConfigError(f"{conf_file}: sources.{source.name}.path: {path} is not readable")
        mtime = info.mtime if info.mtime is not None else datetime.now(UTC)
        listed.append((relpath, path, int(info.size), mtime.astimezone(UTC)))
    listed.sort()
    if spark is not None:
        digests = _fingerprints(spark, [path for _, path, _, _ in listed], store)
    else:
        digests = {path: _sha256(path, store) for _, path, _, _ in listed}
    files = [RawFile(relpath=relpath, path=path, size=size, mtime=mtime, sha256=digests[path])
             for relpath, path, size, mtime in listed]
    if not files:
        logger.warning("%s: no files match %s", source.name, posixpath.join(shown_root, source.path))
    return files


def _fixed_depth(path: str) -> int:
    parts = Path(path).parts
    for depth, part in enumerate(parts):
        if glob.has_magic(part):
            return depth
    return max(len(parts) - 1, 0)


def read_header(raw_file: RawFile, encoding: str, sep: str, store: ObjectStore | None = None) -> list[str]:
    """The CSV header of one file (first line), decoded with the source's encoding."""
    with _open_raw(raw_file.path, store) as handle:
        first = handle.readline()
    text = first.decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\r\n")
    return next(csv.reader([text], delimiter=sep), [])


def _line_reader(encoding: str, skip_header: bool, files: list[tuple[str, str]], csv_dialect: tuple[str, str] | None,
                 store: ObjectStore | None = None):
    """A ``mapInArrow`` function: file indexes in, (file, line number, text, decode error) out."""

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                path, relpath = files[index]
                yield from _read_file(path, relpath, encoding, skip_header, csv_dialect, store)

    return read


def _opens_quoted_field(text: str, csv_dialect: tuple[str, str]) -> bool:
    """True when ``text`` ends inside a quoted CSV field (RFC 4180: the record goes on on the next line)."""
    sep, quote = csv_dialect
    if quote not in text:
        return False
    try:
        for _ in csv.reader([text], delimiter=sep, quotechar=quote, strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _physical_lines(path: str, encoding: str, skip_header: bool,
                    store: ObjectStore | None = None) -> Iterator[tuple[int, str, str | None]]:
    """(line number, decoded text, decode error) of every line but a skipped header; BOM removed."""
    utf8 = codecs.lookup(encoding).name.startswith("utf-8")
    with _open_raw(path, store) as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                if utf8 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                if skip_header:
                    continue
            try:
                yield number, raw.decode(encoding).rstrip("\r\n"), None
            except UnicodeDecodeError as exc:
                yield (number, raw.decode(encoding, errors="replace").rstrip("\r\n"),
                       f"undecodable bytes for encoding {encoding} at byte {exc.start} of the line")


def _records(path: str, encoding: str, skip_header: bool, csv_dialect: tuple[str, str] | None,
             store: ObjectStore | None = None) -> Iterator[tuple[int, str, str | None]]:
    """(first line number, record text, decode error) per record; blank lines are not records.

    With ``csv_dialect`` (separator, quote), a quoted field may hold line breaks: its lines are
    joined into one record, numbered by its first line. A quote still open after
    ``MAX_RECORD_LINES`` lines or at the end of the file is a broken record, not a multi-line one:
    its lines are then given back one by one, so one stray quote never swallows good records.
    """
    pending: list[tuple[int, str, str | None]] = []
    for number, text, error in _physical_lines(path, encoding, skip_header, store):
        if pending:
            pending.append((number, text, error))
            joined = "\n".join(part for _, part, _ in pending)
            if not _opens_quoted_field(joined, csv_dialect):  # type: ignore[arg-type]
                first_error = next((e for _, _, e in pending if e), None)
                yield pending[0][0], joined, first_error
                pending = []
            elif len(pending) >= MAX_RECORD_LINES:
                yield from (line for line in pending if line[1].strip())
                pending = []
            continue
        if not text.strip():
            continue
        if csv_dialect is not None and _opens_quoted_field(text, csv_dialect):
            pending = [(number, text, error)]
            continue
        yield number, text, error
    yield from (line for line in pending if line[1].strip())


def _read_file(path: str, relpath: str, encoding: str, skip_header: bool,
               csv_dialect: tuple[str, str] | None = None, store: ObjectStore | None = None) -> Iterator[pa.RecordBatch]:
    names, numbers, texts, errors = [], [], [], []
    for number, text, error in _records(path, encoding, skip_header, csv_dialect, store):
        names.append(relpath)
        numbers.append(number)
        texts.append(text)
        errors.append(error)
        if len(texts) >= _BATCH_LINES:
            yield _lines_batch(names, numbers, texts, errors)
            names, numbers, texts, errors = [], [], [], []
    if texts:
        yield _lines_batch(names, numbers, texts, errors)


def _lines_batch(files: list[str], numbers: list[int], texts: list[str], errors: list[str | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(files, pa.string()), pa.array(numbers, pa.int64()), pa.array(texts, pa.string()),
         pa.array(errors, pa.string())],
        names=["_source_file", "_line", "_text", "_decode_error"])


def read_lines(spark: SparkSession, files: list[RawFile], encoding: str, skip_header: bool,
               csv_dialect: tuple[str, str] | None = None, store: ObjectStore | None = None) -> DataFrame:
    """Records of ``files`` as a DataFrame, read in parallel (one task per group of files).

    One record per line; with ``csv_dialect`` (separator, quote) a quoted CSV field may span lines.
    The tasks open the files with ``store``'s settings (default: the session's and the environment's).
    """
    store = store if store is not None else ObjectStore.for_session(spark)
    listed = [(f.path, f.relpath) for f in files]
    # spark.range keeps the file list in the JVM (no Python serialisation, no shuffle); each task
    # reads its files with one Python reader.
    partitions = max(1, min(len(files), default_parallelism(spark) * 2))
    return (spark.range(0, len(files), 1, partitions)
            .mapInArrow(_line_reader(encoding, skip_header, listed, csv_dialect, store), LINES_SCHEMA))


def parse_source(spark: SparkSession, source: SourceSpec, files: list[RawFile],
                 store: ObjectStore | None = None) -> DataFrame:
    """Raw files -> record fields (raw strings) + _source_file, _line, _text, _reason."""
    store = store if store is not None else ObjectStore.for_session(spark)
    if source.format == "jsonl":
        return parse_lines(read_lines(spark, files, source.encoding, skip_header=False, store=store), source)
    if source.format == "csv":
        sep = source.csv_options.get("sep", source.csv_options.get("delimiter", ","))
        by_header: dict[tuple[str, ...], list[RawFile]] = {}
        for raw_file in files:
            by_header.setdefault(tuple(read_header(raw_file, source.encoding, sep, store)), []).append(raw_file)
        parts = []
        for header, group in by_header.items():
            missing = [f.name for f in source.fields if f.required and f.name not in header]
            if missing:
                logger.warning("%s: files %s lack required columns %s; their rows go to quarantine",
                               source.name, [f.relpath for f in group][:3], missing)
            lines = read_lines(spark, group, source.encoding, skip_header=True,
                               csv_dialect=(sep, source.csv_options.get("quote", '"')), store=store)
            parts.append(parse_lines(lines, source, list(header)))
        result = parts[0]
        for part in parts[1:]:
            result = result.unionByName(part)
        return result
    # parquet: each row becomes a JSON object text, then follows the JSON path (line = row number).
    rows = spark.read.parquet(*[f.path for f in files])
    # Spark reports "file:/a/b" for local files, other tools "file:///a/b": accept both spellings.
    roots = {uri: f.relpath for f in files
             for uri in ((Path(f.path).as_uri(), f"file:{f.path}", f.path) if f.path.startswith("/") else (f.path,))}
    mapping = F.create_map(*[item for uri, rel in roots.items() for item in (F.lit(uri), F.lit(rel))])
    lines = rows.select(
        F.coalesce(F.element_at(mapping, F.col("_metadata.file_path")), F.col("_metadata.file_path")).alias("_source_file"),
        (F.col("_metadata.row_index") + 1).alias("_line"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in rows.columns])).alias("_text"),
        F.lit(None).cast("string").alias("_decode_error"))
    return parse_lines(lines, dataclasses.replace(source, format="jsonl"))


# -- the job --------------------------------------------------------------------------------------

def _loaded_fingerprints(lake: Any, source: str) -> tuple[set[str], int]:
    """Checksums of the source's files in the committed load log, and its number of loads."""
    if not lake.exists(LOAD_LOG):
        return set(), 0
    rows = (lake.read(LOAD_LOG).filter(F.col("source") == source)
            .select("sha256", "seq").collect())
    return {row["sha256"] for row in rows}, max((row["seq"] for row in rows), default=0)


def _suppression(lake: Any) -> DataFrame | None:
    """The erasure suppression list, or None when nobody was ever forgotten."""
    from cdp.privacy import ERASURE_LIST

    if not lake.exists(SUPPRESSION_LIST):
        return None
    suppression = lake.read(SUPPRESSION_LIST).filter(F.col("list") == ERASURE_LIST)
    return suppression if suppression.limit(1).count() else None


def drop_forgotten(parsed: DataFrame, source: SourceSpec, suppression: DataFrame,
                   identity_file: Path) -> tuple[DataFrame, int]:
    """Parsed records without those carrying a forgotten identifier, normalised as ``cdp standardize``
    normalises them (the type's normaliser in conf/identity.yaml), and how many were dropped."""
    from cdp.jobs.standardize import load_normalizers, normalize_identifiers  # standardize imports land
    from cdp.privacy import drop_suppressed_records
    from cdp.sources import map_identifiers, record_id_column

    if not source.identifiers:
        return parsed, 0
    keyed = (parsed.withColumn("source", F.lit(source.name)).withColumn("record_id", record_id_column(source))
             .withColumn("observed_at", F.lit(None).cast("timestamp")))
    identifiers = normalize_identifiers(map_identifiers(keyed, source), load_normalizers(identity_file))
    return drop_suppressed_records(parsed, identifiers, suppression, keys=["_source_file", "_line"])


def load_id_of(source: str, files: list[RawFile]) -> str:
    """The load's identity: its source and the set of its files' contents (order and names aside)."""
    digest = hashlib.sha256("\n".join(sorted(f.sha256 for f in files)).encode("ascii")).hexdigest()
    return f"{source}-{digest[:16]}"


def _rows_per_file(frame: DataFrame, file_column: str) -> dict[str, int]:
    return {row[file_column]: int(row["n"]) for row in
            frame.groupBy(file_column).agg(F.count(F.lit(1)).alias("n")).collect()}


def _landed_per_file(lake: Any, source: SourceSpec, load_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Rows the load's id holds per file in bronze and in quarantine, counted back from both tables in
    one Spark job (a job per table and source was most of a small land's fixed cost)."""
    landed = lake.read(source.bronze_table).filter(F.col("_load_id") == load_id).select(
        F.col("_source_file").alias("file"), F.lit("bronze").alias("table"))
    if lake.exists(QUARANTINE):
        landed = landed.unionByName(
            lake.read(QUARANTINE).filter((F.col("stage") == "land") & (F.col("load_id") == load_id))
            .select("file", F.lit(QUARANTINE).alias("table")))
    counts: dict[str, dict[str, int]] = {"bronze": {}, QUARANTINE: {}}
    for row in landed.groupBy("table", "file").agg(F.count(F.lit(1)).alias("n")).collect():
        counts[row["table"]][row["file"]] = int(row["n"])
    return counts["bronze"], counts[QUARANTINE]


def land_source(spark: SparkSession, lake: Any, source: SourceSpec, raw_root: str | os.PathLike[str],
                conf_file: Path, run_id: str, store: ObjectStore | None = None) -> SourceLoad:
    result = SourceLoad(source=source.name)
    store = store if store is not None else ObjectStore.for_session(spark)
    files = discover_files(source, raw_root, conf_file, spark, store)
    result.files_found = len(files)
    loaded, last_seq = _loaded_fingerprints(lake, source.name)
    suppression = _suppression(lake)
    new_files: list[RawFile] = []
    seen: set[str] = set()
    for raw_file in files:
        if raw_file.sha256 in loaded or raw_file.sha256 in seen:
            result.files_skipped += 1
            logger.debug("%s: %s already loaded (same content), skipped", source.name, raw_file.relpath)
            continue
        seen.add(raw_file.sha256)
        new_files.append(raw_file)
    if not new_files:
        logger.info("%s: nothing new (%d files already loaded)", source.name, result.files_skipped)
        return result
    seq = last_seq + 1  # the load's place among the source's loads: for people, never an identity
    load_id = load_id_of(source.name, new_files)
    result.load_id = load_id
    now = datetime.now(UTC).replace(tzinfo=None)
    parsed = (parse_source(spark, source, new_files, store)
              .withColumn("_load_id", F.lit(load_id))
              .withColumn("_ingested_at", F.lit(now).cast("timestamp"))
              .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        # raw records per file, whether any goes to quarantine or has a value nulled: one pass over them
        raw_per_file, meant_quarantined, any_nulled = {}, 0, False
        for row in (parsed.groupBy("_source_file")
                    .agg(F.count(F.lit(1)).alias("n"), F.count("_reason").alias("bad"),
                         F.max(F.when(F.col("_reason").isNull(), F.size("_nulled"))).alias("nulled")).collect()):
            raw_per_file[row["_source_file"]] = int(row["n"])
            meant_quarantined += int(row["bad"])
            any_nulled = any_nulled or bool(row["nulled"])
        suppressed_per_file: dict[str, int] = {}
        if suppression is not None:
            kept, dropped = drop_forgotten(parsed, source, suppression, conf_file.parent / "identity.yaml")
            if dropped:
                kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
                kept_per_file = _rows_per_file(kept, "_source_file")
                suppressed_per_file = {name: raw - kept_per_file.get(name, 0) for name, raw in raw_per_file.items()}
                parsed.unpersist()
                parsed = kept
                meant_quarantined = parsed.filter(F.col("_reason").isNotNull()).limit(1).count()
                logger.info("%s: %d records carry a forgotten identifier: dropped", source.name, dropped)
        if any_nulled:  # per field, over the records kept (a job only when some value was nulled)
            result.nulled = {row["field"]: int(row["n"]) for row in (
                parsed.filter(F.col("_reason").isNull()).select(F.explode("_nulled").alias("field"))
                .groupBy("field").agg(F.count(F.lit(1)).alias("n")).collect())}
            logger.info("%s: values set to null (on_invalid: null), records per field: %s", source.name,
                        dict(sorted(result.nulled.items())))
        metadata = {"run_id": run_id, "load_id": load_id, "files": len(new_files)}
        bronze = parsed.filter(F.col("_reason").isNull()).select(*bronze_schema(source).fieldNames())
        lake.write(bronze, source.bronze_table, "append",
                   metadata={**metadata, "sha256": ",".join(sorted(f.sha256 for f in new_files))})
        if meant_quarantined:
            quarantine = parsed.filter(F.col("_reason").isNotNull()).select(
                F.lit(source.name).alias("source"), F.lit("land").alias("stage"),
                F.lit(load_id).alias("load_id"), F.col("_source_file").alias("file"),
                F.col("_line").alias("line"),
                F.regexp_extract("_reason", r"^([A-Za-z0-9_.\[\]]+):", 1).alias("field"),
                F.col("_text").alias("raw"), F.col("_reason").alias("reason"),
                F.col("_ingested_at").alias("quarantined_at"))
            quarantine = quarantine.withColumn("field", F.when(F.col("field") != "", F.col("field")))
            lake.write(quarantine, QUARANTINE, "append", partition_by=["stage"], metadata=metadata)
    finally:
        parsed.unpersist()
    # raw = bronze + quarantine, per file, against what the tables now hold for this load
    bronze_per_file, quarantined_per_file = _landed_per_file(lake, source, load_id)
    unbalanced = [f"{f.relpath}: raw {raw_per_file.get(f.relpath, 0)} != bronze {bronze_per_file.get(f.relpath, 0)}"
                  f" + quarantine {quarantined_per_file.get(f.relpath, 0)}"
                  f" + suppressed {suppressed_per_file.get(f.relpath, 0)}" for f in new_files
                  if raw_per_file.get(f.relpath, 0) != bronze_per_file.get(f.relpath, 0)
                  + quarantined_per_file.get(f.relpath, 0) + suppressed_per_file.get(f.relpath, 0)]
    if unbalanced:
        raise JobFailed(f"{source.name}: load {load_id} does not balance, load log not written: "
                        + "; ".join(unbalanced))
    result.raw_records = sum(raw_per_file.values())
    result.bronze_rows = sum(bronze_per_file.values())
    result.quarantined_rows = sum(quarantined_per_file.values())
    result.suppressed_rows = sum(suppressed_per_file.values())
    log_rows = [(source.name, load_id, seq, f.relpath, f.path, f.size, f.mtime.replace(tzinfo=None), f.sha256,
                 raw_per_file.get(f.relpath, 0), bronze_per_file.get(f.relpath, 0),
                 quarantined_per_file.get(f.relpath, 0), now, run_id, suppressed_per_file.get(f.relpath, 0))
                for f in new_files]
    # evolve_schema: load logs written before suppressed_rows existed gain the column
    lake.write(spark.createDataFrame(log_rows, LOAD_LOG_SCHEMA), LOAD_LOG, "append", evolve_schema=True,
               metadata={"run_id": run_id, "load_id": load_id})
    result.files_loaded = len(new_files)
    logger.info("%s: load %s: %d files, raw %d = bronze %d + quarantine %d + suppressed %d (%d files skipped)",
                source.name, load_id, len(new_files), result.raw_records, result.bronze_rows,
                result.quarantined_rows, result.suppressed_rows, result.files_skipped)
    return result


def run(spark: SparkSession, ctx: JobContext, *, raw: str, sources: list[str] | None = None,
        lake: Any = None) -> LandResult:
    """Land every (or the named) source's new raw files under ``raw``."""
    from cdp.lake import Lake

    conf_file, config = load_sources(ctx)
    try:
        selected = config.select(sources)
    except ValueError as exc:
        raise ConfigError(f"{conf_file}: {exc}") from exc
    from pyarrow import fs as pafs

    store = ObjectStore.for_session(spark)
    raw_fs, raw_path = filesystem(raw, store)
    if raw_fs.get_file_info(raw_path).type != pafs.FileType.Directory:
        raise ConfigError(f"--raw {raw}: raw directory does not exist or is not a directory")
    lake = lake or Lake(spark, ctx.lake_root)
    result = LandResult()
    for source in selected:
        result.loads[source.name] = land_source(spark, lake, source, raw, conf_file, ctx.run_id, store)
    logger.info("landed: raw %d = bronze %d + quarantine %d + suppressed %d", result.raw_records,
                result.bronze_rows, result.quarantined_rows, result.suppressed_rows)
    return result


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", required=True,
                        help="root folder of the raw exports: a local path or a URI (s3a://bucket/raw)")
    parser.add_argument("--source", action="append", dest="sources",
                        help="land only this source (repeatable; default: all in sources.yaml)")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    result = run(spark, ctx, raw=args.raw, sources=args.sources)
    logger.info("%-18s %6s %7s %10s %10s %10s %10s", "source", "files", "skipped", "raw", "bronze", "quarantine",
                "suppressed")
    for load in result.loads.values():
        logger.info("%-18s %6d %7d %10d %10d %10d %10d", load.source, load.files_loaded, load.files_skipped,
                    load.raw_records, load.bronze_rows, load.quarantined_rows, load.suppressed_rows)
    logger.info("%-18s %6s %7s %10d %10d %10d %10d", "total", "", "", result.raw_records, result.bronze_rows,
                result.quarantined_rows, result.suppressed_rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("land", argv, _run_from_args, _add_arguments,
                    description="raw files -> bronze Delta tables (+ quarantine, load log)")


if __name__ == "__main__":
    sys.exit(main())
