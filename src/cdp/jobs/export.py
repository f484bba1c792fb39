"""``cdp export``: write every published audience for the destinations in its YAML.

Per audience and destination, for the audience's current publish version ``v``::

    <lake>/_exports/<audience>/<destination>/v<v>/
        snapshot.<ext>   everyone to send now
        added.<ext>      entered since the previous export of this destination
        removed.<ext>    left since the previous export (to take out of the platform's list)
        manifest.json    counts and SHA-256 checksums of the files (written last: marks completion)

Every file row and the manifest carry ``message_id`` (``<audience>.<destination>.v<version>``,
:func:`cdp.audiences.activation.message_id`): the id channels echo in their delivery and response
files, by which ``cdp standardize`` links a response to the send. ``export_messages`` (appended, one
row per send) maps each message id to its audience, destination, channel and publish version.

plus the ``export_<audience>`` Delta table (partitioned by destination) holding the current snapshot
for reverse-ETL tools. Files never carry the internal customer id; hashed destinations get SHA-256 of
the normalised e-mail (trimmed, lower case) and phone (E.164). Control-group members are not sent.
Consent and suppression are checked again at export time, so a withdrawal after the publish is
honoured. Re-running for the same publish version writes nothing (manifest present, Delta app id).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import posixpath
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cdp.audiences.activation import export_frame, message_id
from cdp.audiences.language import Audience, Destination
from cdp.engage import MESSAGES_TABLE
from cdp.identity import IdentityConfig
from cdp.jobs.audiences import audience_table, select_audiences
from cdp.jobs.entry import JobFailed
from cdp.lake.paths import is_local, local_path
from cdp.privacy import ERASURE_LIST, consent_current, suppressed_customers
from cdp.runtime.config import JobContext, parse_file

logger = logging.getLogger(__name__)

EXPORTS_DIR = "_exports"
MESSAGES_SCHEMA = ("message_id string, audience string, destination string, channel string, publish_version long, "
                   "recipients long, run_id string")
EXTENSIONS = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}
EXPORT_COLUMNS = ("destination", "customer_id", "email", "email_sha256", "phone", "phone_sha256",
                  "wechat_openid", "device_id", "publish_version", "run_id", "exported_at")


def export_table(audience: str) -> str:
    return f"export_{audience}"


# -- file system helpers (local paths or any URI pyarrow understands) --------------------------------
def _filesystem(root: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    from cdp.lake.storage import filesystem, is_object_store

    if is_object_store(root):
        return filesystem(root)  # s3a:// with the session's object-store settings
    if not is_local(root):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), local_path(root)


def _exists(filesystem: Any, path: str) -> bool:
    from pyarrow import fs as pafs

    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _sha256(filesystem: Any, path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with filesystem.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _write_single_file(df: DataFrame, fmt: str, filesystem: Any, folder: str, uri_folder: str, name: str) -> str:
    """Write ``df`` as exactly one file ``<folder>/<name>`` (Spark writes a temp dir, then we move)."""
    from pyarrow import fs as pafs

    temp_uri = f"{uri_folder}/_tmp_{name}_{uuid.uuid4().hex[:8]}"
    temp_path = f"{folder}/{posixpath.basename(temp_uri)}"
    writer = df.coalesce(1).write.mode("error")
    if fmt == "csv":
        writer.option("header", True).csv(temp_uri)
    elif fmt == "parquet":
        writer.parquet(temp_uri)
    else:
        writer.json(temp_uri)
    parts = [info.path for info in filesystem.get_file_info(pafs.FileSelector(temp_path))
             if posixpath.basename(info.path).startswith("part-") and not info.path.endswith(".crc")]
    target = f"{folder}/{name}"
    if parts:
        filesystem.move(parts[0], target)
    else:  # an empty frame: Spark may write no part file for csv/json; still deliver an (empty) file
        header = ",".join(df.columns) + "\n" if fmt == "csv" else ""
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            with filesystem.open_output_stream(target) as out:
                pq.write_table(pa.table({c: pa.array([], pa.string()) for c in df.columns}), out)
        else:
            with filesystem.open_output_stream(target) as out:
                out.write(header.encode())
    filesystem.delete_dir(temp_path)
    return target


# -- export ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DestinationExport:
    audience: str
    destination: str
    publish_version: int
    folder: str
    rows: int
    added: int
    removed: int
    skipped: bool


@dataclass
class ExportResult:
    exports: list[DestinationExport] = field(default_factory=list)

    @property
    def written(self) -> list[DestinationExport]:
        return [e for e in self.exports if not e.skipped]


def sendable_members(members: DataFrame, consent: DataFrame, suppressed: DataFrame, channel: str) -> DataFrame:
    """Published members minus the control group, minus anyone without consent now or suppressed."""
    granted = consent.filter((F.col("channel") == channel) & F.col("granted")).select("customer_id").distinct()
    return (members.filter(~F.col("in_control"))
            .join(granted, on="customer_id", how="left_semi")
            .join(suppressed.select("customer_id"), on="customer_id", how="left_anti"))


def _padded(rows: DataFrame, destination: str, version: int, run_id: str) -> DataFrame:
    cols = []
    for name in EXPORT_COLUMNS:
        if name == "destination":
            cols.append(F.lit(destination).alias(name))
        elif name == "publish_version":
            cols.append(F.lit(version).cast("long").alias(name))
        elif name == "run_id":
            cols.append(F.lit(run_id).alias(name))
        elif name == "exported_at":
            cols.append(F.current_timestamp().alias(name))
        else:
            cols.append((F.col(name) if name in rows.columns else F.lit(None)).cast("string").alias(name))
    return rows.select(*cols)


def _table_holds(lake: Any, table: str, destination: str, version: int) -> bool:
    """True when the committed export table holds this publish version for the destination."""
    if not lake.exists(table):
        return False
    exported = (lake.read(table).filter(F.col("destination") == destination)
                .agg(F.max("publish_version").alias("v")).first())
    return exported is not None and exported["v"] == version


def export_destination(lake: Any, audience: Audience, destination: Destination, members: DataFrame,
                       version: int, run_id: str, normalizers: Mapping[str, Any] | None = None) -> DestinationExport:
    filesystem, base = _filesystem(lake.root)
    relative = f"{EXPORTS_DIR}/{audience.name}/{destination.name}/v{version}"
    folder, uri_folder = f"{base}/{relative}", f"{lake.root}/{relative}"
    manifest_path = f"{folder}/manifest.json"
    table = export_table(audience.name)
    # a manifest alone proves nothing: a run killed before its step committed leaves one behind
    if _exists(filesystem, manifest_path) and _table_holds(lake, table, destination.name, version):
        logger.info("%s -> %s: publish version %d already exported, nothing to do", audience.name,
                    destination.name, version)
        return DestinationExport(audience.name, destination.name, version, folder, 0, 0, 0, skipped=True)
    message = message_id(audience.name, destination.name, version)
    rows = export_frame(members, audience.channel, hashed=destination.hashed,
                        default_region=destination.default_region, normalizers=normalizers).persist()
    previous = (lake.read(table).filter(F.col("destination") == destination.name).select("customer_id", *[
        c for c in rows.columns if c != "customer_id"]) if lake.exists(table) else None)
    file_columns = [c for c in rows.columns if c != "customer_id"]
    if previous is not None:
        added = rows.join(previous.select("customer_id"), on="customer_id", how="left_anti")
        removed = previous.join(rows.select("customer_id"), on="customer_id", how="left_anti")
    else:
        added, removed = rows, rows.limit(0)
    if _exists(filesystem, folder):  # leftovers of an interrupted export of this version
        filesystem.delete_dir(folder)
    filesystem.create_dir(folder, recursive=True)
    ext = EXTENSIONS[destination.format]
    files = []
    for kind, frame in (("snapshot", rows), ("added", added), ("removed", removed)):
        ordered = frame.select(*file_columns).orderBy(*file_columns).withColumn("message_id", F.lit(message))
        count = frame.count()
        path = _write_single_file(ordered, destination.format, filesystem, folder, uri_folder, f"{kind}.{ext}")
        checksum, size = _sha256(filesystem, path)
        files.append({"file": f"{kind}.{ext}", "kind": kind, "rows": count, "bytes": size, "sha256": checksum})
    counts = {f["kind"]: f["rows"] for f in files}
    lake.write(_padded(rows, destination.name, version, run_id), table, mode="overwrite",
               partition_by=["destination"], replace_where={"destination": destination.name},
               app_id=f"export_{audience.name}_{destination.name}", app_version=version,
               metadata={"run_id": run_id, "publish_version": version})
    sent = lake.spark.createDataFrame(
        [(message, audience.name, destination.name, audience.channel, version, counts["snapshot"], run_id)],
        MESSAGES_SCHEMA).withColumn("exported_at", F.current_timestamp())
    lake.write(sent, MESSAGES_TABLE, mode="append", app_id=f"export_messages_{audience.name}_{destination.name}",
               app_version=version, metadata={"run_id": run_id, "message_id": message})
    manifest = {
        "audience": audience.name, "destination": destination.name, "channel": audience.channel,
        "format": destination.format, "hashed": destination.hashed,
        "hashing": "sha256 hex of trimmed lower-case email / E.164 phone" if destination.hashed else None,
        "columns": [*file_columns, "message_id"], "message_id": message, "publish_version": version,
        "run_id": run_id,
        "exported_at": datetime.now(UTC).isoformat(), "files": files,
    }
    with filesystem.open_output_stream(manifest_path) as out:
        out.write(json.dumps(manifest, indent=2).encode("utf-8"))
    rows.unpersist()
    logger.info("%s -> %s: v%d snapshot %d rows (+%d / -%d) in %s", audience.name, destination.name, version,
                counts["snapshot"], counts["added"], counts["removed"], folder)
    return DestinationExport(audience.name, destination.name, version, folder, counts["snapshot"],
                             counts["added"], counts["removed"], skipped=False)


def run(spark: SparkSession, ctx: JobContext, *, lake: Any = None,
        names: Sequence[str] | None = None) -> ExportResult:
    """Export every published audience (or the named ones) to its destinations."""
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    from cdp.jobs.journeys import journey_send_audiences

    # journeys' send steps are published as audiences (audience_journey_<journey>__<step>): exported alike
    sends = journey_send_audiences(ctx.conf_dir)
    send_names = {a.name for a in sends}
    named = [n for n in names or () if n not in send_names]
    audiences = [*(select_audiences(ctx.conf_dir, named) if named or not names else []),
                 *[a for a in sends if not names or a.name in names]]
    result = ExportResult()
    todo = [a for a in audiences if a.destinations and lake.exists(audience_table(a.name))]
    for audience in audiences:
        if audience.destinations and not lake.exists(audience_table(audience.name)):
            logger.warning("audience %s has never been published: nothing to export", audience.name)
    if not todo:
        return result
    # consent as of now (not as of the publish): a withdrawal since then must be honoured
    if lake.exists("silver_consent") and lake.exists("customer_records"):
        consent = consent_current(lake.read("silver_consent"), lake.read("customer_records"))
    elif lake.exists("consent_current"):
        consent = lake.read("consent_current")
    else:
        raise JobFailed("neither silver_consent nor consent_current exists: nobody may be exported")
    # computed once for every audience: it joins silver_consent to every customer record
    consent = consent.persist(StorageLevel.MEMORY_AND_DISK)
    suppression = lake.read("suppression_list") if lake.exists("suppression_list") else None
    identity_map = lake.read("identity_map") if lake.exists("identity_map") else None
    # exported values and hashes are identity's canonical ones (conf/identity.yaml normalisers)
    normalizers = parse_file(ctx.conf_path("identity.yaml"), IdentityConfig.from_dict).normalizers
    try:
        for audience in todo:
            table = audience_table(audience.name)
            version = lake.version(table)
            if suppression is not None and identity_map is not None:
                suppressed = suppressed_customers(identity_map, suppression,
                                                  [ERASURE_LIST, *audience.suppression_lists])
            else:
                suppressed = spark.createDataFrame([], "customer_id string")
            members = sendable_members(lake.read(table, version=version), consent, suppressed, audience.channel)
            for destination in audience.destinations:
                result.exports.append(export_destination(lake, audience, destination, members, version,
                                                         ctx.run_id, normalizers))
    finally:
        consent.unpersist()
    return result


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="audiences to export (default: all with destinations)")


def _run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
    result = run(spark, ctx, names=args.names or None)
    for e in result.exports:
        logger.info("%-24s %-20s v%-4d %s", e.audience, e.destination, e.publish_version,
                    "unchanged (already exported)" if e.skipped else f"{e.rows} rows (+{e.added}/-{e.removed})")
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("export", argv, _run_from_args, _add_arguments,
                    description="write published audiences for their destinations")


if __name__ == "__main__":
    sys.exit(main())
