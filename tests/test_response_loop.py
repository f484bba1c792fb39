"""The loop closed over two runs: what run 1 exported is answered, run 2 lands, links and measures it.

Run 1 (`cdp run` on generated data, as of 2025-07-01) publishes and exports one e-mail audience with a
control group and an order goal; `cdp generate --responses-from LAKE` (its job function, in this
session) writes the channel's responses to exactly those sends and the orders they convert into
(recipients more than control members, by a known uplift) into the same raw folder; run 2 (as of
2025-07-10) lands them, links them to the send, and features, tags and `cdp measure` see them. The
generated history ends on 2025-06-30, so every order in the goal's window is one the responses added:
the measured conversions must be exactly the truth's.

Both runs are child `cdp run` processes with their own driver (tests/pipelines.py): run 2's features
inside the test session's 2 GB driver, after the rest of the suite, ran out of execution memory
(UNABLE_TO_ACQUIRE_MEMORY) in CI.
"""
from __future__ import annotations

import csv
import shutil
from datetime import datetime
from pathlib import Path

from pipelines import cdp_run, context
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from cdp.engage import response_links
from cdp.jobs import generate as generate_job
from cdp.lake import Lake
from cdp.synthetic import GenerateParams, generate, read_send_truth

CUSTOMERS = 200  # enough for an audience with both groups and a few conversions in each
SEED = 3
RUN_1_AS_OF, RUN_2_AS_OF = "2025-07-01", "2025-07-10"
# run 1 publishes and exports (the audience reads the profile only: no features or tags needed);
# run 2 lands the answers and computes what reads them
RUN_1_STEPS = ("land", "standardize", "stitch", "audiences", "export")
RUN_2_STEPS = ("land", "standardize", "stitch", "features", "tag", "measure")
AUDIENCE = "loop_email"
AUDIENCE_YAML = f"""
name: {AUDIENCE}
channel: email
description: everyone with e-mail consent, a third held out
where: {{profile: city_tier, "<=": 5}}
control_group: {{percent: 30}}
goals:
  - {{name: order_7d, kind: order, within_days: 7}}
destinations:
  - {{name: esp, format: csv, hashed: false}}
"""
EVENT_TYPES = {"sent": "email_sent", "delivered": "email_delivered", "bounced": "email_bounce",
               "opened": "email_open", "clicked": "email_click", "unsubscribed": "email_unsubscribe",
               "converted": "email_conversion"}


def _conf(cli_conf: Path, target: Path) -> Path:
    """The child runs' conf (:func:`pipelines.cli_conf`) with one audience of ours instead of the
    shipped ones, and no journeys."""
    shutil.copytree(cli_conf, target)
    for path in [*(target / "audiences").glob("*.yaml"), *(target / "journeys").glob("[!_]*.yaml")]:
        path.unlink()
    (target / "audiences" / f"{AUDIENCE}.yaml").write_text(AUDIENCE_YAML, encoding="utf-8")
    return target


def _response_rows(paths: list[Path]) -> list[dict[str, str]]:
    rows = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def test_responses_to_run_1_exports_are_linked_and_measured_in_run_2(spark: SparkSession, cli_conf: Path,
                                                                     tmp_path: Path) -> None:
    raw, lake_root = tmp_path / "raw", tmp_path / "lake"
    conf = _conf(cli_conf, tmp_path / "conf")
    generate(GenerateParams(out=raw, customers=CUSTOMERS, seed=SEED, end=datetime(2025, 6, 30).date(),
                            chunk_size=CUSTOMERS, workers=1))
    cdp_run(conf, lake_root, raw, backend="embedded", log=tmp_path / "cdp.log", run_id="loop-1", steps=RUN_1_STEPS,
            as_of=RUN_1_AS_OF)
    lake = Lake(spark, str(lake_root), backend="embedded")
    version = lake.version(f"audience_{AUDIENCE}")
    message = f"{AUDIENCE}.esp.v{version}"

    answered = generate_job.responses(spark, context(conf, lake_root, "loop-answer"), lake_root=str(lake_root),
                                      out=str(raw), seed=SEED, uplift=0.3, base_rate=0.1)
    summaries, members = read_send_truth(raw)
    assert [s.message_id for s in answered.sends] == [s["message_id"] for s in summaries] == [message]
    truth = summaries[0]
    assert truth["treatment"] > 0 and truth["control"] > 0 and truth["conversions_treatment"] > 0, truth
    # answering again adds nothing: the send is answered already
    again = generate_job.responses(spark, context(conf, lake_root, "loop-answer-2"), lake_root=str(lake_root),
                                   out=str(raw), seed=SEED, uplift=0.3, base_rate=0.1)
    assert (again.sends, again.skipped) == ([], [message])
    # the recipients are exactly the rows of the export file
    with next((lake_root / "_exports" / AUDIENCE / "esp").glob(f"v{version}/snapshot.csv")).open() as handle:
        exported = sorted(row["email"] for row in csv.DictReader(handle))
    assert sorted(m["recipient"] for m in members if m["group"] == "treatment") == exported

    cdp_run(conf, lake_root, raw, backend="embedded", log=tmp_path / "cdp.log", run_id="loop-2", steps=RUN_2_STEPS,
            as_of=RUN_2_AS_OF)

    # linked: every response naming the send, whole; unlinked: the generator's own simulated campaigns
    # (message ids no export sent) and the deliberately unknown ones
    answers = _response_rows(sorted((raw / "responses" / "email").rglob("export_*.csv")))
    simulated = _response_rows([p for p in sorted((raw / "responses" / "email").rglob("*.csv"))
                                if not p.name.startswith("export_")])
    events = lake.read("silver_events")
    counts = {r["source"]: (r["linked"], r["unlinked"]) for r in response_links(events).collect()}
    assert counts["email_responses"] == (truth["responses"], len(simulated) + truth["unknown_responses"])
    assert sum(1 for row in answers if row["message_id"] != message) == truth["unknown_responses"]
    linked = (events.filter(F.col("attributes")["audience"].isNotNull())
              .select("record_id", "event_type", "event_time", F.col("attributes")["message_id"].alias("message_id"),
                      F.col("attributes")["audience"].alias("audience"),
                      F.col("attributes")["destination"].alias("destination"),
                      F.col("attributes")["publish_version"].alias("publish_version"),
                      F.col("attributes")["order_id"].alias("order_id")))
    expected = spark.createDataFrame(
        [(row["response_id"], EVENT_TYPES[row["event"]], datetime.strptime(row["event_time"], "%Y-%m-%dT%H:%M:%SZ"),
          message, AUDIENCE, "esp", str(version), row["order_no"] or None)
         for row in answers if row["message_id"] == message],
        "record_id string, event_type string, event_time timestamp, message_id string, audience string, "
        "destination string, publish_version string, order_id string")
    assertDataFrameEqual(linked, expected)

    # measure: run 1's publish, its window closed by run 2, counts exactly the truth's outcomes
    performance = (lake.read("audience_performance")
                   .filter((F.col("audience") == AUDIENCE) & (F.col("publish_version") == version))
                   .select("goal", "status", "members_treatment", "members_control", "conversions_treatment",
                           "conversions_control").collect())
    assert [r.asDict() for r in performance] == [{
        "goal": "order_7d", "status": "closed", "members_treatment": truth["treatment"],
        "members_control": truth["control"], "conversions_treatment": truth["conversions_treatment"],
        "conversions_control": truth["conversions_control"]}]

    # features and tags of run 2 see the responses: every recipient who opened is an e-mail opener
    openers = {row["recipient"] for row in answers if row["message_id"] == message and row["event"] == "opened"}
    opener_ids = sorted({m["customer_id"] for m in members if m["recipient"] in openers})
    assert opener_ids
    features = (lake.read("features_daily").filter(F.col("as_of") == RUN_2_AS_OF)
                .filter(F.col("customer_id").isin(opener_ids)).select("customer_id", "eng_email_open_30d").collect())
    assert len(features) == len(opener_ids) and all(r["eng_email_open_30d"] >= 1 for r in features), features
    tagged = (lake.read("tags_wide").filter(F.col("customer_id").isin(opener_ids))
              .select("customer_id", "email_opener_30d").collect())
    assert sorted(r["customer_id"] for r in tagged if r["email_opener_30d"]) == opener_ids
