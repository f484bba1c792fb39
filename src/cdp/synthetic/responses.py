"""Channel responses to real exports (``cdp generate --responses-from LAKE``), with a known effect.

:func:`cdp.synthetic.generate` simulates its own campaign sends (its bytes depend on its parameters
only). This module closes the loop over a lake instead: given the sends a lake's ``cdp export``
actually made (:class:`ExportSend`: the message id, who was sent it, and the audience's control
members, who were not), it writes what the channel and the shop would deliver back, into the raw
folder the next ``cdp run`` lands:

- ``responses/<channel>/<YYYY-MM>/export_<message_id>.csv`` (the ``email_responses`` /
  ``sms_responses`` sources): sent, delivered or bounced, opened (e-mail only), clicked,
  unsubscribed and converted events of every recipient, echoing the send's message id; plus
  ``unknown_per_send`` responses naming a message no export sent (``<audience>.unknown.v<version>``),
  which ``cdp standardize`` must leave unlinked;
- ``orders/<YYYY-MM>/export_<message_id>.jsonl``: every conversion as a paid online order whose buyer
  is the member's e-mail or phone (so identity resolution puts it on the member's customer).

Each member has two potential outcomes within ``window_days`` of the send: Y0 ~ Bernoulli(base_rate)
(an order anyway) and Y1 = Y0 or (delivered and an ``uplift`` draw). Control members get Y0 as an
order and no response; recipients get Y1, and a ``converted`` response when the message caused it.
The true lift is the members' mean of Y1 - Y0, written to ``_truth/sends/<message_id>.json`` with
the member rows in ``_truth/sends/<message_id>.csv`` (customer_id, recipient, group, delivered,
converted_without, converted_with). A customer who is a member of several sends gets each send's
outcome independently, so per-audience measurements match the truth only when sends do not share
members.

Bytes depend on the sends and the parameters only (each send draws from a generator seeded by the
seed and a hash of its message id). A send whose truth JSON exists is skipped: running the command
again after a later export adds the new sends' files and rewrites nothing. Files are written to a
temporary name and renamed, the truth JSON last, so a killed run leaves no half file the next land
would load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cdp.synthetic import CATEGORIES, PAYMENT, _csv_line, iso_cst, make_products

logger = logging.getLogger(__name__)

RESPONSE_HEADER = ["response_id", "message_id", "campaign", "recipient", "event", "event_time", "order_no", "amount"]
MEMBER_HEADER = ["customer_id", "recipient", "group", "delivered", "converted_without", "converted_with"]
RESPONSE_CHANNELS = ("email", "sms")  # the channels whose gateways send response files (conf/sources.yaml)


@dataclass(frozen=True)
class ExportSend:
    """One send of a lake: what ``cdp export`` wrote for an audience's publish and one destination.

    ``recipients`` and ``control``: (customer_id, recipient) pairs, the recipient being the normalised
    e-mail (email channel) or E.164 phone (sms) as the export file and the audience table hold it.
    ``sent_at``: when the members entered (the publish's as-of instant), UTC.
    """

    message_id: str
    audience: str
    destination: str
    channel: str
    publish_version: int
    sent_at: datetime
    recipients: tuple[tuple[str, str], ...]
    control: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ResponseParams:
    out: Path
    seed: int = 42
    uplift: float = 0.10      # chance a delivered recipient who would not have bought buys because of it
    base_rate: float = 0.05   # chance any member buys within the window anyway (Y0)
    window_days: int = 7
    bounce_rate: float = 0.03
    unknown_per_send: int = 2  # responses naming a message no export sent (left unlinked)

    def check(self) -> None:
        for name in ("uplift", "base_rate", "bounce_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"--{name.replace('_', '-')}: expected a probability in [0, 1], got {value}")
        if self.window_days < 1:
            raise ValueError(f"--window-days: expected a positive number of days, got {self.window_days}")
        if self.unknown_per_send < 0:
            raise ValueError(f"--unknown-responses: expected a count >= 0, got {self.unknown_per_send}")


@dataclass(frozen=True)
class SendTruth:
    """``_truth/sends/<message_id>.json``: a simulated send's parameters, counts and true lift."""

    message_id: str
    audience: str
    destination: str
    channel: str
    publish_version: int
    sent_at: str
    window_days: int
    uplift: float
    base_rate: float
    treatment: int
    control: int
    conversions_treatment: int
    conversions_control: int
    true_abs_lift: float  # members' mean of Y1 - Y0
    responses: int        # lines naming the send's message id
    unknown_responses: int
    orders: int


@dataclass
class ResponsesResult:
    out: Path
    sends: list[SendTruth] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # answered by an earlier run


def send_seed(seed: int, message_id: str) -> list[int]:
    """The generator seed of one send: the run's seed and a hash of the message id (stable across runs)."""
    return [seed, int.from_bytes(hashlib.sha256(message_id.encode("utf-8")).digest()[:8], "big")]


def _period(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def simulate_send(send: ExportSend, params: ResponseParams, products: Sequence[dict[str, Any]]
                  ) -> tuple[list[str], list[str], list[list[Any]], SendTruth]:
    """One send's response lines, order lines, member truth rows and summary (nothing written).

    Members are taken in (group, recipient) order and every draw comes from the send's own generator,
    so the output depends on the send and ``params`` only.
    """
    rng = np.random.default_rng(send_seed(params.seed, send.message_id))
    start = send.sent_at.timestamp()
    window = params.window_days * 86400
    tag = hashlib.sha256(send.message_id.encode("utf-8")).hexdigest()[:10].upper()
    by_category: dict[str, list[dict[str, Any]]] = {}
    for product in products:
        by_category.setdefault(product["category"], []).append(product)
    categories = list(CATEGORIES)
    members = ([("treatment", c, r) for c, r in sorted(send.recipients, key=lambda m: (m[1], m[0]))]
               + [("control", c, r) for c, r in sorted(send.control, key=lambda m: (m[1], m[0]))])
    u = rng.random((len(members), 8))
    responses: list[str] = []
    orders: list[str] = []
    truth: list[list[Any]] = []
    counters = {"response": 0, "order": 0}

    def response(recipient: str, message: str, event: str, at: float, order_no: str = "", amount: str = "") -> None:
        counters["response"] += 1
        responses.append(_csv_line([f"RX{tag}{counters['response']:07d}", message, send.audience, recipient, event,
                                    _utc(at), order_no, amount]))

    def order(recipient: str, at: float, draw: float) -> tuple[str, float]:
        counters["order"] += 1
        order_no = f"SX{tag}{counters['order']:07d}"
        category = categories[int(draw * len(categories))]
        product = by_category[category][int(draw * 7919) % len(by_category[category])]
        buyer = {"email": recipient} if send.channel == "email" else {"phone": recipient}
        created = iso_cst(at)
        record = {"order_no": order_no, "channel": "online", "store_id": None, "created_at": created,
                  "updated_at": created, "status": "PAID", "buyer": buyer,
                  "items": [{"sku": product["sku"], "category": category, "qty": 1, "price": product["price"],
                             "discount": 0.0}],
                  "coupon_code": None, "pay_amount": product["price"], "discount_amount": 0.0,
                  "payment_method": PAYMENT[int(draw * 997) % len(PAYMENT)], "currency": "CNY"}
        orders.append(json.dumps(record, ensure_ascii=False))
        return order_no, float(product["price"])

    totals = {"treatment": [0, 0, 0], "control": [0, 0, 0]}  # members, Y0, Y1
    for k, (group, customer_id, recipient) in enumerate(members):
        draws = u[k]
        delivered = bool(draws[1] >= params.bounce_rate)
        without = bool(draws[0] < params.base_rate)
        caused = not without and delivered and bool(draws[2] < params.uplift)
        with_ = without or caused
        totals[group][0] += 1
        totals[group][1] += without
        totals[group][2] += with_
        truth.append([customer_id, recipient, group, int(delivered), int(without), int(with_)])
        # the order (if any) lands strictly inside (sent_at, sent_at + window], away from both ends
        bought = start + 3600 + int(draws[7] * (window - 2 * 3600))
        if group == "control":
            if without:
                order(recipient, bought, draws[6])
            continue
        at = start + 60 + int(draws[6] * 1800)
        response(recipient, send.message_id, "sent", at)
        if not delivered:
            response(recipient, send.message_id, "bounced", at + 20)
            if without:
                order(recipient, bought, draws[6])
            continue
        response(recipient, send.message_id, "delivered", at + 20)
        seen = at + 600 + int(draws[5] * 3 * 3600)
        opened = send.channel == "email" and (caused or draws[3] < 0.3)
        if opened:
            response(recipient, send.message_id, "opened", seen)
        if caused or draws[4] < (0.1 if send.channel == "email" else 0.04):
            response(recipient, send.message_id, "clicked", seen + 45)
        elif draws[4] > 0.995:
            response(recipient, send.message_id, "unsubscribed", seen + 90)
        if with_:
            order_no, amount = order(recipient, max(bought, seen + 300), draws[6])
            if caused:  # the channel attributes an order only to the message that caused it
                response(recipient, send.message_id, "converted", max(bought, seen + 300), order_no, f"{amount:.2f}")
    linked = counters["response"]
    unknown = f"{send.audience}.unknown.v{send.publish_version}"
    for k in range(min(params.unknown_per_send, len(send.recipients))):
        recipient = members[k][2]
        response(recipient, unknown, "clicked", start + 7200 + k)
    treatment, control = totals["treatment"], totals["control"]
    members_count = treatment[0] + control[0]
    lift = (treatment[2] - treatment[1] + control[2] - control[1]) / members_count if members_count else 0.0
    summary = SendTruth(
        message_id=send.message_id, audience=send.audience, destination=send.destination, channel=send.channel,
        publish_version=send.publish_version, sent_at=send.sent_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        window_days=params.window_days, uplift=params.uplift, base_rate=params.base_rate, treatment=treatment[0],
        control=control[0], conversions_treatment=treatment[2], conversions_control=control[1],
        true_abs_lift=round(lift, 6), responses=linked, unknown_responses=counters["response"] - linked,
        orders=counters["order"])
    return responses, orders, truth, summary


def simulate_responses(sends: Sequence[ExportSend], params: ResponseParams) -> ResponsesResult:
    """Write response files, orders and truth for every send not answered before (module docstring)."""
    params.check()
    products = make_products(params.seed)  # SKU ids are the same for every seed; prices follow the seed
    result = ResponsesResult(out=params.out)
    truth_dir = params.out / "_truth" / "sends"
    for send in sorted(sends, key=lambda s: s.message_id):
        if send.channel not in RESPONSE_CHANNELS:
            raise ValueError(f"{send.message_id}: channel {send.channel!r} sends no response files")
        summary_path = truth_dir / f"{send.message_id}.json"
        if summary_path.is_file():
            result.skipped.append(send.message_id)
            continue
        responses, orders, truth, summary = simulate_send(send, params, products)
        period = _period(send.sent_at)
        name = f"export_{send.message_id}"
        _write_atomically(params.out / "responses" / send.channel / period / f"{name}.csv",
                          "".join(f"{line}\n" for line in [_csv_line(RESPONSE_HEADER), *responses]))
        if orders:
            _write_atomically(params.out / "orders" / period / f"{name}.jsonl", "".join(f"{o}\n" for o in orders))
        _write_atomically(truth_dir / f"{send.message_id}.csv",
                          "".join(f"{_csv_line(row)}\n" for row in [MEMBER_HEADER, *truth]))
        _write_atomically(summary_path, json.dumps(asdict(summary), indent=2) + "\n")
        result.sends.append(summary)
        logger.info("%s: %d recipients, %d control, %d responses (+%d naming no send), %d orders, true lift %+.4f",
                    send.message_id, summary.treatment, summary.control, summary.responses,
                    summary.unknown_responses, summary.orders, summary.true_abs_lift)
    return result


def read_send_truth(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every ``_truth/sends/*.json`` summary and the member rows of every send (message_id added), for
    tests, benchmarks and notebooks (no job reads the truth)."""
    import csv

    summaries, members = [], []
    for path in sorted((out / "_truth" / "sends").glob("*.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        summaries.append(summary)
        with path.with_suffix(".csv").open(encoding="utf-8") as handle:
            members += [{"message_id": summary["message_id"], **row} for row in csv.DictReader(handle)]
    return summaries, members


__all__ = ["MEMBER_HEADER", "RESPONSE_CHANNELS", "RESPONSE_HEADER", "ExportSend", "ResponseParams", "ResponsesResult",
           "SendTruth", "read_send_truth", "send_seed", "simulate_responses", "simulate_send"]
