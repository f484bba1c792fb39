"""Channel responses linked back to the send that caused them.

Delivery and response files (sent, delivered, bounced, opened, clicked, unsubscribed, converted) are
ordinary sources (``conf/sources.yaml``): they land and standardise into ``silver_events`` like any
other, with the message id the channel echoed in ``attributes['message_id']``. ``cdp export`` writes
that id into every file it sends and records each send in ``export_messages``; this module joins the
two, so a response event says which audience, destination and publish version it answers.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# the table `cdp export` appends one row per send to, keyed by message id
MESSAGES_TABLE = "export_messages"
# silver event types of each kind of response, over the channels' sources (conf/sources.yaml maps
# each channel's raw event names onto these); the audience language's {message: M, response: R} reads them
RESPONSE_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "sent": ("email_sent", "sms_sent"),
    "delivered": ("email_delivered", "sms_delivered"),
    "bounced": ("email_bounce", "sms_bounce"),
    "opened": ("email_open",),
    "clicked": ("email_click", "sms_click"),
    "unsubscribed": ("email_unsubscribe", "sms_unsubscribe"),
    "converted": ("email_conversion", "sms_conversion"),
}
# keys a linked response event gets in its attributes map (any value the source put there is replaced)
LINK_KEYS = ("audience", "destination", "publish_version")


def link_responses(events: DataFrame, messages: DataFrame | None) -> DataFrame:
    """Add the send's audience, destination and publish version to events answering an exported message.

    Args:
        events: ``silver_events`` rows (attributes map<string,string>, possibly with ``message_id``).
        messages: ``export_messages`` (message_id, audience, destination, publish_version); None when
            nothing was ever exported.

    Returns:
        ``events`` with the same columns and rows; the attributes of an event whose ``message_id`` is a
        known send also hold ``audience``, ``destination`` and ``publish_version`` (as text). Events
        without a message id, or with one no export sent, are unchanged.
    """
    if messages is None:
        return events
    sends = (messages.select(F.col("message_id").alias("_message_id"), F.col("audience").alias("_audience"),
                             F.col("destination").alias("_destination"),
                             F.col("publish_version").cast("string").alias("_publish_version"))
             .dropDuplicates(["_message_id"]))
    joined = events.join(F.broadcast(sends), on=F.col("attributes")["message_id"] == F.col("_message_id"),
                         how="left")
    kept = F.map_filter(F.col("attributes"), lambda key, _: ~key.isin(*LINK_KEYS))
    linked = F.map_concat(kept, F.create_map(F.lit("audience"), F.col("_audience"), F.lit("destination"),
                                             F.col("_destination"), F.lit("publish_version"),
                                             F.col("_publish_version")))
    attributes = F.when(F.col("_message_id").isNotNull(), linked).otherwise(F.col("attributes"))
    return joined.select(*[attributes.alias(c) if c == "attributes" else F.col(c) for c in events.columns])


def response_links(events: DataFrame) -> DataFrame:
    """How many response events answer a known send, and how many name a message no export sent.

    Returns:
        One row per source whose events carry a message id: source, linked long, unlinked long.
    """
    answered = events.filter(F.col("attributes")["message_id"].isNotNull())
    return answered.groupBy("source").agg(
        F.count(F.when(F.col("attributes")["audience"].isNotNull(), 1)).alias("linked"),
        F.count(F.when(F.col("attributes")["audience"].isNull(), 1)).alias("unlinked"))
