"""``cdp sources profile --raw DIR [--source NAME] [--sample N]``: profile an export, draft its YAML.

Reads a sample of the raw files (no Spark: the driver reads at most ``--sample`` records through
``pyarrow.fs``, so local folders and object stores both work) and prints, per field, the inferred
type, null share, distinct count, top values, detected formats, candidate keys and suspiciously
repeated identifier values, then a draft ``sources:`` block for conf/sources.yaml
(:mod:`cdp.sources.profiling`). With ``--source`` the files and reading options are that source's in
conf/sources.yaml; without it, every csv / jsonl / parquet file under ``--raw`` is read.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import logging
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdp.runtime.config import ConfigError, JobContext
from cdp.sources.profiling import SourceProfile, draft_source_yaml, profile_records, render_profile

logger = logging.getLogger("cdp.jobs.sources")  # not __name__: under spark-submit this module is __main__

DEFAULT_SAMPLE = 10_000
FORMATS_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
ENCODINGS_TRIED = ("utf-8-sig", "gbk")  # what exports from Excel and Chinese systems are written in


@dataclass(frozen=True)
class Sample:
    records: list[dict[str, Any]]
    unreadable: list[str]  # file and line of each record that could not be read (kept out of the profile)
    files: list[str]
    path: str  # glob relative to the raw root, for the draft
    file_format: str
    encoding: str


def _filesystem(raw: str):
    from pyarrow import fs as pafs

    if "://" not in raw:
        raw = str(Path(raw).resolve())
    return pafs.FileSystem.from_uri(raw)


def list_files(raw: str, pattern: str | None = None) -> list[str]:
    """Files under ``raw`` (relative paths, sorted), optionally matching a sources.yaml glob."""
    from pyarrow import fs as pafs

    filesystem, base = _filesystem(raw)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    relative = sorted(posixpath.relpath(i.path, base) for i in infos if i.type == pafs.FileType.File)
    relative = [r for r in relative if not r.split("/")[0].startswith(("_", "."))]
    return [r for r in relative if pattern is None or fnmatch.fnmatch(r, pattern)]


def _decode(data: bytes, encoding: str | None) -> tuple[str, str]:
    """The text and the encoding it was read with (a given one, else the first of ENCODINGS_TRIED that fits)."""
    if encoding:
        return data.decode(encoding), encoding
    for candidate in ENCODINGS_TRIED:
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        if candidate == "utf-8-sig" and not data.startswith(b"\xef\xbb\xbf"):
            candidate = "utf-8"  # plain UTF-8: no byte-order mark to skip
        return text, candidate
    raise ValueError(f"could not decode as any of {ENCODINGS_TRIED}; give the source's encoding")


def _read(raw: str, relative: str, file_format: str, encoding: str | None, sep: str, limit: int,
          unreadable: list[str]) -> tuple[Iterator[dict[str, Any]], str]:
    filesystem, base = _filesystem(raw)
    with filesystem.open_input_file(posixpath.join(base, relative)) as handle:
        data = handle.read()
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return iter(pq.read_table(io.BytesIO(data)).slice(0, limit).to_pylist()), "utf-8"
    text, used = _decode(data, encoding)
    if file_format == "csv":
        return iter(csv.DictReader(io.StringIO(text), delimiter=sep)), used

    def json_lines() -> Iterator[dict[str, Any]]:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    unreadable.append(f"{relative}: line {number}: not JSON ({exc.msg})")
                    continue
                if isinstance(record, dict):
                    yield record
                else:
                    unreadable.append(f"{relative}: line {number}: a JSON {type(record).__name__}, not an object")
    return json_lines(), used


def read_sample(raw: str, *, pattern: str | None, file_format: str | None, encoding: str | None,
                sep: str = ",", limit: int = DEFAULT_SAMPLE) -> Sample:
    """At most ``limit`` records from the files under ``raw`` (matching ``pattern``), in file order."""
    files = list_files(raw, pattern)
    if file_format is None:
        files = [f for f in files if posixpath.splitext(f)[1].lower() in FORMATS_BY_SUFFIX]
    if not files:
        raise ValueError(f"{raw}: no raw files" + (f" matching {pattern!r}" if pattern else " (csv, jsonl, parquet)"))
    formats = {file_format or FORMATS_BY_SUFFIX[posixpath.splitext(f)[1].lower()] for f in files}
    if len(formats) > 1:
        raise ValueError(f"{raw}: files of several formats {sorted(formats)}; profile one source at a time "
                         "(--source NAME, or a folder holding one export)")
    chosen = formats.pop()
    records: list[dict[str, Any]] = []
    unreadable: list[str] = []
    used_files: list[str] = []
    used_encoding = encoding or "utf-8"
    for relative in files:
        if len(records) >= limit:
            break
        rows, used_encoding = _read(raw, relative, chosen, encoding, sep, limit - len(records), unreadable)
        used_files.append(relative)
        for row in rows:
            records.append(row)
            if len(records) >= limit:
                break
    return Sample(records=records, unreadable=unreadable, files=used_files, path=pattern or spark_glob(used_files), file_format=chosen,
                  encoding=used_encoding)


def spark_glob(files: list[str]) -> str:
    """A glob (as sources.yaml's ``path``) covering files that sit in one folder or in sibling folders."""
    extension = posixpath.splitext(files[0])[1]
    folders = sorted({posixpath.dirname(f) for f in files})
    if len(folders) == 1:
        return f"{folders[0]}/*{extension}" if folders[0] else f"*{extension}"
    parents = {posixpath.dirname(folder) for folder in folders}
    if len(parents) == 1:
        parent = parents.pop()
        return f"{parent}/*/*{extension}" if parent else f"*/*{extension}"
    return f"**/*{extension}"


def run(spark: Any, ctx: JobContext, *, raw: str, source: str | None = None,
        sample: int = DEFAULT_SAMPLE) -> tuple[SourceProfile, str]:
    """Profile the sample; return the profile and the draft YAML (printed by ``main``)."""
    if source:
        from cdp.jobs.land import read_sources

        config = read_sources(ctx.conf_path("sources.yaml"))
        if source not in config.sources:
            raise ConfigError(f"{ctx.conf_path('sources.yaml')}: sources.{source}: unknown source; "
                              f"known: {sorted(config.sources)}")
        spec = config.sources[source]
        taken = read_sample(raw, pattern=spec.path, file_format=spec.format, encoding=spec.encoding,
                            sep=spec.csv_options.get("sep", ","), limit=sample)
    else:
        taken = read_sample(raw, pattern=None, file_format=None, encoding=None, limit=sample)
        source = Path(raw.rstrip("/")).name.replace("-", "_").lower() or "new_source"
    profile = profile_records(source, taken.records)
    logger.info("profiled %d records of %s from %d file(s)", profile.records, source, len(taken.files))
    for problem in taken.unreadable:
        logger.warning("not profiled: %s", problem)
    if taken.unreadable:
        logger.warning("%d unreadable record(s) in the sample (cdp land quarantines them)", len(taken.unreadable))
    return profile, draft_source_yaml(profile, path=taken.path, file_format=taken.file_format,
                                      encoding=taken.encoding)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command", choices=["profile"])
    parser.add_argument("--raw", required=True, help="raw export folder or URI")
    parser.add_argument("--source", help="a source of conf/sources.yaml (its files and reading options)")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="records read at most")


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    try:
        profile, draft = run(spark, ctx, raw=args.raw, source=args.source, sample=args.sample)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(render_profile(profile) + "\n\ndraft for conf/sources.yaml (read and edit it):\n\n" + draft)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("sources", argv, _run_from_args, _add_arguments,
                    description="profile a raw export and draft its conf/sources.yaml block", needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
