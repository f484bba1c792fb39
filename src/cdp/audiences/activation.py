"""Export shaping: what a published audience looks like for an activation destination.

Ad platforms match on SHA-256 of normalised identifiers: e-mail trimmed and lower-cased, phone in
E.164 (``+8613800138000``). Hashes are lower-case hex. Both come from :mod:`cdp.identity.normalize`,
so an exported hash equals the one identity, suppression and ``cdp forget`` compute.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from cdp.identity.normalize import (
    NORMALIZERS,
    Normalizer,
    identifier_hash,
    identifier_hash_column,
    normalize_email,
    normalize_phone,
    phone_column,
)

# Identifier columns a channel sends (others are not exported even if present).
CHANNEL_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("email",),
    "sms": ("phone",),
    "wechat": ("wechat_openid",),
    "ads": ("email", "phone", "device_id"),
}
# Identifiers that are hashed for hashed destinations (open ids and device ids are already
# pseudonymous and are sent as they are).
HASHED_FIELDS = ("email", "phone")
# The normalisers conf/identity.yaml gives the identifiers that are sent as they are.
_PSEUDONYMOUS_NORMALIZERS = {"wechat_openid": "trim", "device_id": "trim_lower"}


# One normaliser per identifier type: the ones identity uses (cdp.identity.normalize), under the names
# this module has always exported.
normalise_email = normalize_email
normalise_phone = normalize_phone


def sha256_hex(value: str | None) -> str | None:
    """:func:`cdp.identity.normalize.identifier_hash`, None for None."""
    return None if value is None else identifier_hash(value)


def message_id(audience: str, destination: str, publish_version: int) -> str:
    """The id of one send: an audience's publish version written for one destination.

    ``cdp export`` writes it into every file row and the manifest; channels echo it in their delivery
    and response files, and ``cdp standardize`` links those responses back to the send through it
    (:func:`cdp.engage.link_responses`). Audience and destination names are snake_case, so the dots
    separate them unambiguously: ``vip_winback_email.esp.v3``.
    """
    return f"{audience}.{destination}.v{publish_version}"


def email_column(column: str | Column) -> Column:
    """Canonical e-mail (as ``cdp standardize`` makes it), null when it is not one."""
    return NORMALIZERS["email"](F.col(column) if isinstance(column, str) else column)


def export_frame(members: DataFrame, channel: str, *, hashed: bool, default_region: str = "CN",
                 normalizers: Mapping[str, Normalizer] | None = None) -> DataFrame:
    """Rows for a destination file: the channel's identifiers, normalised, hashed when asked.

    Args:
        members: a published ``audience_<name>`` table already filtered to the people to send
            (customer_id, email, phone, wechat_openid, device_id, ...).
        channel: the audience's channel; only its identifiers are kept.
        hashed: hash e-mails and phones (column names get a ``_sha256`` suffix).
        default_region: the destination's region for phones written without a country code.
        normalizers: id_type -> normaliser of conf/identity.yaml (``IdentityConfig.normalizers``), so
            exported values and hashes are identity's canonical ones; default: the preset normalisers.

    Returns:
        customer_id, then per channel field either ``<field>`` or ``<field>_sha256``; rows with
        no usable identifier left after normalisation are dropped.
    """
    fields = CHANNEL_FIELDS[channel]
    cols: list[Column] = [F.col("customer_id")]
    names: list[str] = []
    for name in fields:
        configured = (normalizers or {}).get(name)
        if configured is not None:
            if configured.kind == "phone":
                configured = dataclasses.replace(configured, default_region=default_region)
            value = configured.column(F.col(name))
        elif name == "email":
            value = email_column("email")
        elif name == "phone":
            value = phone_column("phone", default_region)
        else:
            value = NORMALIZERS[_PSEUDONYMOUS_NORMALIZERS[name]](F.col(name))
        if hashed and name in HASHED_FIELDS:
            value, name = identifier_hash_column(value), f"{name}_sha256"
        cols.append(value.alias(name))
        names.append(name)
    shaped = members.select(*cols)
    any_identifier = F.lit(False)
    for name in names:
        any_identifier = any_identifier | F.col(name).isNotNull()
    return shaped.filter(any_identifier)


__all__ = ["CHANNEL_FIELDS", "email_column", "export_frame", "message_id", "normalise_email", "normalise_phone",
           "phone_column", "sha256_hex"]
