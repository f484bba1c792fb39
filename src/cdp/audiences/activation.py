"""Export shaping: what a published audience looks like for an activation destination.

Ad platforms match on SHA-256 of normalised identifiers: e-mail trimmed and lower-cased, phone in
E.164 (``+8613800138000``). Hashes are lower-case hex.
"""
from __future__ import annotations

import hashlib

import phonenumbers
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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


def normalise_email(value: str | None) -> str | None:
    """Trimmed, lower-cased e-mail; None for empty input."""
    if value is None:
        return None
    email = value.strip().lower()
    return email or None


def normalise_phone(value: str | None, default_region: str = "CN") -> str | None:
    """E.164 phone number, or None when ``value`` is not a valid number."""
    if value is None or not str(value).strip():
        return None
    try:
        number = phonenumbers.parse(str(value).strip(), default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def sha256_hex(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode("utf-8")).hexdigest()


def email_column(column: str | Column) -> Column:
    col = F.col(column) if isinstance(column, str) else column
    trimmed = F.lower(F.trim(col))
    return F.when(trimmed == "", F.lit(None)).otherwise(trimmed)


def phone_column(column: str | Column, default_region: str = "CN") -> Column:
    """E.164 in plain Spark (no Python worker): identity already stores E.164, this re-checks.

    ``+<digits>`` and ``00<digits>`` keep their country code; other numbers are national numbers of
    ``default_region`` (a leading trunk ``0`` is dropped). Full-width digits are folded. Anything
    that is not 8 to 15 digits after the ``+`` becomes null.
    """
    col = F.col(column) if isinstance(column, str) else column
    country = str(phonenumbers.country_code_for_region(default_region.upper()))
    folded = F.translate(F.trim(col.cast("string")), "０１２３４５６７８９＋", "0123456789+")
    digits = F.regexp_replace(folded, r"[^0-9]", "")
    e164 = (F.when(folded.startswith("+"), F.concat(F.lit("+"), digits))
            .when(digits.startswith("00"), F.concat(F.lit("+"), F.substring(digits, 3, 100)))
            .when(digits.startswith(country) & (F.length(digits) > 11), F.concat(F.lit("+"), digits))
            .otherwise(F.concat(F.lit("+" + country), F.regexp_replace(digits, r"^0+", ""))))
    return F.when(e164.rlike(r"^\+[1-9][0-9]{7,14}$"), e164)


def export_frame(members: DataFrame, channel: str, *, hashed: bool, default_region: str = "CN") -> DataFrame:
    """Rows for a destination file: the channel's identifiers, normalised, hashed when asked.

    Args:
        members: a published ``audience_<name>`` table already filtered to the people to send
            (customer_id, email, phone, wechat_openid, device_id, ...).
        channel: the audience's channel; only its identifiers are kept.
        hashed: hash e-mails and phones (column names get a ``_sha256`` suffix).

    Returns:
        customer_id, then per channel field either ``<field>`` or ``<field>_sha256``; rows with
        no usable identifier left after normalisation are dropped.
    """
    fields = CHANNEL_FIELDS[channel]
    cols: list[Column] = [F.col("customer_id")]
    names: list[str] = []
    for name in fields:
        if name == "email":
            value = email_column("email")
        elif name == "phone":
            value = phone_column("phone", default_region)
        else:
            value = F.trim(F.col(name))
        if hashed and name in HASHED_FIELDS:
            value, name = F.sha2(value, 256), f"{name}_sha256"
        cols.append(value.alias(name))
        names.append(name)
    shaped = members.select(*cols)
    any_identifier = F.lit(False)
    for name in names:
        any_identifier = any_identifier | F.col(name).isNotNull()
    return shaped.filter(any_identifier)


__all__ = ["CHANNEL_FIELDS", "email_column", "export_frame", "normalise_email", "normalise_phone",
           "phone_column", "sha256_hex"]
