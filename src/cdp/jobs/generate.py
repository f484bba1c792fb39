"""``cdp generate``: write realistic raw exports of every source system (:mod:`cdp.synthetic`).

Two modes:

- ``cdp generate --out RAW --customers N [--seed S]``: a fresh raw folder, every source's files and the
  ground truth apart in ``RAW/_truth/`` (the folder must be empty).
- ``cdp generate --responses-from LAKE --out RAW [--uplift U] [--base-rate B] ...``: the channels'
  answers to what the lake actually exported (:mod:`cdp.synthetic.responses`). For every e-mail and SMS
  send in ``export_messages`` not answered before, the recipients are read from the send's
  ``snapshot`` file under ``LAKE/_exports/`` and its control members from the audience's publish
  (``audience_<name>`` at the send's version); response files (echoing the message id), the orders
  they convert into and the truth (groups, both potential outcomes, the true lift) are added to RAW,
  usually the folder the lake was landed from. The next ``cdp run`` lands them, links them to the sends
  and measures the lift. Reads the lake, never writes it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, date
from pathlib import Path
from typing import Any

from cdp.runtime.config import JobContext
from cdp.synthetic import (
    DEFAULT_CHUNK,
    DEFAULT_END,
    ExportSend,
    GenerateParams,
    GenerateResult,
    ResponseParams,
    ResponsesResult,
    generate,
    simulate_responses,
)
from cdp.synthetic.responses import RESPONSE_CHANNELS

logger = logging.getLogger("cdp.jobs.generate")
# the identifier column of an export file a channel's gateway addresses its recipients by
RECIPIENT_COLUMNS = {"email": "email", "sms": "phone"}


def run(spark: Any, ctx: JobContext, *, out: str, customers: int, seed: int = 42, end: str = DEFAULT_END,
        chunk_size: int = DEFAULT_CHUNK, workers: int = 2) -> GenerateResult:
    """Generate raw exports (no Spark needed; ``spark`` is accepted for the common job signature)."""
    if customers <= 0:
        raise ValueError("--customers must be positive")
    params = GenerateParams(out=Path(out), customers=customers, seed=seed, end=date.fromisoformat(end),
                            chunk_size=chunk_size, workers=max(1, workers))
    return generate(params)


def export_sends(lake: Any, audiences: Sequence[str] | None = None) -> list[ExportSend]:
    """Every e-mail and SMS send of the lake's committed ``export_messages`` (of ``audiences`` only, when
    named), with its recipients (the rows of its snapshot file) and the control members of the publish
    it sent (customer ids from the audience table, matched on the normalised recipient as ``cdp export``
    wrote it)."""
    from pyspark.sql import functions as F

    from cdp.audiences.activation import export_frame
    from cdp.engage import MESSAGES_TABLE
    from cdp.jobs.audiences import audience_table
    from cdp.jobs.export import EXPORTS_DIR
    from cdp.jobs.measure import publishes

    if not lake.exists(MESSAGES_TABLE):
        return []
    messages = lake.read(MESSAGES_TABLE).filter(F.col("channel").isin(*RESPONSE_CHANNELS))
    if audiences:
        messages = messages.filter(F.col("audience").isin(*audiences))
    messages = (messages
                .select("message_id", "audience", "destination", "channel", "publish_version")
                .dropDuplicates(["message_id"]).orderBy("message_id").collect())
    sends: list[ExportSend] = []
    entered: dict[str, dict[int, Any]] = {}
    for message in messages:
        audience, destination, channel, version = (message["audience"], message["destination"], message["channel"],
                                                   int(message["publish_version"]))
        table = audience_table(audience)
        if table not in entered:
            entered[table] = dict(publishes(lake, table)) if lake.exists(table) else {}
        sent_at = entered[table].get(version)
        folder = f"{lake.root}/{EXPORTS_DIR}/{audience}/{destination}/v{version}"
        if sent_at is None:
            logger.warning("%s: the publish it sent records no as-of instant: no responses", message["message_id"])
            continue
        manifest = lake.spark.read.option("multiLine", True).json(f"{folder}/manifest.json").first()
        if manifest["hashed"]:
            logger.warning("%s: a hashed destination cannot be addressed by a %s gateway: no responses",
                           message["message_id"], channel)
            continue
        reader = lake.spark.read
        snapshot_uri = f"{folder}/snapshot.{manifest['format']}"
        sent = (reader.option("header", True).csv(snapshot_uri) if manifest["format"] == "csv"
                else reader.parquet(snapshot_uri) if manifest["format"] == "parquet" else reader.json(snapshot_uri))
        column = RECIPIENT_COLUMNS[channel]
        published = lake.read(table, version=version)
        members = (export_frame(published, channel, hashed=False)
                   .join(published.select("customer_id", "in_control"), on="customer_id", how="inner")
                   .select("customer_id", F.col(column).alias("recipient"), "in_control"))
        recipients = (members.filter(~F.col("in_control"))
                      .join(sent.select(F.col(column).alias("recipient")).distinct(), on="recipient", how="left_semi"))
        control = members.filter(F.col("in_control"))
        sends.append(ExportSend(
            message_id=message["message_id"], audience=audience, destination=destination, channel=channel,
            publish_version=version, sent_at=sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=UTC),  # lake: UTC
            recipients=tuple((r["customer_id"], r["recipient"]) for r in recipients.collect()),
            control=tuple((r["customer_id"], r["recipient"]) for r in control.collect())))
    return sends


def responses(spark: Any, ctx: JobContext, *, lake_root: str, out: str, seed: int = 42, uplift: float = 0.10,
              base_rate: float = 0.05, window_days: int = 7, unknown_per_send: int = 2,
              audiences: Sequence[str] | None = None) -> ResponsesResult:
    """Responses and conversions for every send of the lake at ``lake_root`` (of ``audiences``, when named)
    not answered before, into ``out``."""
    from cdp.lake import Lake

    params = ResponseParams(out=Path(out), seed=seed, uplift=uplift, base_rate=base_rate, window_days=window_days,
                            unknown_per_send=unknown_per_send)
    params.check()
    sends = export_sends(Lake(spark, lake_root), audiences)
    if not sends:
        logger.warning("lake %s has no e-mail or SMS send in export_messages: nothing to answer", lake_root)
    return simulate_responses(sends, params)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="directory for the raw exports (must be empty, except with --responses-from: the raw "
                             "folder the lake is landed from)")
    parser.add_argument("--customers", type=int, help="number of persons to simulate (a fresh raw folder)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (output is a function of it)")
    parser.add_argument("--end", default=DEFAULT_END, help="last day of the two-year history (YYYY-MM-DD)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="persons per part file")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    answers = parser.add_argument_group(
        "responses to a lake's exports",
        "--responses-from LAKE answers every e-mail and SMS send LAKE exported and no earlier call answered: "
        "response files naming the send's message id, the orders it converted (treatment more than control by "
        "the uplift), the truth in OUT/_truth/sends/; the next `cdp run` lands and links them and `cdp measure` "
        "measures the lift")
    answers.add_argument("--responses-from", metavar="LAKE", help="lake whose exports to answer")
    answers.add_argument("--audience", action="append", dest="audiences", metavar="NAME",
                         help="answer only this audience's sends (repeat for several; default: every audience)")
    answers.add_argument("--uplift", type=float, default=0.10,
                         help="chance that a delivered recipient who would not have bought buys (default 0.10)")
    answers.add_argument("--base-rate", type=float, default=0.05,
                         help="chance that any member, control or not, buys in the window anyway (default 0.05)")
    answers.add_argument("--window-days", type=int, default=7, help="days after the send orders fall in (default 7)")
    answers.add_argument("--unknown-responses", type=int, default=2,
                         help="responses per send naming a message no export sent, left unlinked (default 2)")


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    try:
        if args.responses_from:
            answered = responses(spark, ctx, lake_root=args.responses_from, out=args.out, seed=args.seed,
                                 uplift=args.uplift, base_rate=args.base_rate, window_days=args.window_days,
                                 unknown_per_send=args.unknown_responses, audiences=args.audiences)
            logger.info("answered %d sends (%d answered before): %s", len(answered.sends), len(answered.skipped),
                        json.dumps({s.message_id: s.true_abs_lift for s in answered.sends}, sort_keys=True))
            return 0
        if args.customers is None:
            raise ValueError("--customers is required (or --responses-from LAKE to answer a lake's exports)")
        result = run(spark, ctx, out=args.out, customers=args.customers, seed=args.seed, end=args.end,
                     chunk_size=args.chunk_size, workers=args.workers)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("records per source: %s", json.dumps(result.records, sort_keys=True))
    return 0


def _needs_spark(args: argparse.Namespace) -> bool:
    return bool(args.responses_from)  # reading a lake's exports takes a session; generating data does not


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("generate", argv, _run_from_args, _add_arguments,
                    description="write realistic raw exports of every source system, or the channels' "
                                "responses to a lake's exports (--responses-from)", needs_spark=_needs_spark)


if __name__ == "__main__":
    sys.exit(main())
