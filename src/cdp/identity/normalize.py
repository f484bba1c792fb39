"""Identifier normalisers: pure-Python functions and their Spark column counterparts.

``NORMALIZERS`` maps the names used in ``conf/identity.yaml`` (``types.<type>.normalizer``) to
functions ``Column -> Column``. Every Spark normaliser agrees with its Python twin in
``PY_NORMALIZERS`` value for value (tests check this on real examples): a value that is not a
valid identifier after normalisation becomes null.

This module is the one place identifier values are made canonical: ``cdp standardize`` (identity),
export hashing (:mod:`cdp.audiences.activation`), suppression (:mod:`cdp.privacy`) and ``cdp forget``
all call these functions, and hash the canonical value with :func:`identifier_hash` (Python) or
:func:`identifier_hash_column` (Spark), which agree.

Full-width forms (U+FF01..U+FF5E, the ideographic space U+3000) and the no-break space are first
mapped to their ASCII counterparts, the way Chinese input methods and Excel exports produce them.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache

import pandas as pd
import phonenumbers
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

__all__ = [
    "NORMALIZERS",
    "PYTHON_NORMALIZERS",
    "PY_NORMALIZERS",
    "fullwidth_to_ascii",
    "identifier_hash",
    "identifier_hash_column",
    "normalize_email",
    "normalize_phone",
    "normalize_text",
    "phone_column",
    "qualified",
    "qualified_column",
]

# U+FF01..U+FF5E are the full-width twins of ASCII 0x21..0x7E; U+3000 and U+00A0 are spaces.
_FULLWIDTH = "".join(chr(c) for c in range(0xFF01, 0xFF5F)) + "\u3000\u00a0"
_HALFWIDTH = "".join(chr(c) for c in range(0x21, 0x7F)) + "  "
_FULLWIDTH_TABLE = str.maketrans(_FULLWIDTH, _HALFWIDTH)
# Python's str.strip() also strips Unicode spaces; Spark's regex \s does not. Strip exactly these.
_STRIP_CHARS = " \t\r\n\f\v"
_STRIP_REGEX = r"^[ \t\r\n\f\u000B]+|[ \t\r\n\f\u000B]+$"
# Deliberately simple: one @, no whitespace, a dot in the domain, a 2+ letter top-level domain.
_EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$"
_EMAIL_PATTERN = re.compile(_EMAIL_REGEX)
_MAX_PHONE_LENGTH = 64  # anything longer is not a phone number; keeps phonenumbers fast


def fullwidth_to_ascii(raw: str) -> str:
    """Map full-width ASCII forms and Unicode spaces to plain ASCII (``１３８`` -> ``138``)."""
    return raw.translate(_FULLWIDTH_TABLE)


def normalize_text(raw: str | None, case: str | None = None) -> str | None:
    """Half-width, stripped, optionally upper/lower-cased text; None when nothing is left."""
    if raw is None:
        return None
    value = fullwidth_to_ascii(str(raw)).strip(_STRIP_CHARS)
    if case == "upper":
        value = value.upper()
    elif case == "lower":
        value = value.lower()
    return value or None


def normalize_email(raw: str | None) -> str | None:
    """Lower-cased, trimmed e-mail address, or None when it does not look like one.

    >>> normalize_email("  Wang.Fang@QQ.COM ")
    'wang.fang@qq.com'
    """
    value = normalize_text(raw, "lower")
    if value is None or not _EMAIL_PATTERN.match(value):
        return None
    return value


@lru_cache(maxsize=1 << 18)
def normalize_phone(raw: str | None, default_region: str = "CN") -> str | None:
    """E.164 form of a phone number (``+8613800138000``), or None when it is not a valid number.

    Accepts what people and systems type: ``+86 138 0013 8000``, ``0086-138...``, ``86 138...``,
    full-width digits, landlines with area codes (``021-6234 5678``). Never raises.
    """
    value = normalize_text(raw)
    if value is None or len(value) > _MAX_PHONE_LENGTH:
        return None
    digits = re.sub(r"[\s\-().]", "", value)
    # "86" + an 11-digit mobile without "+" is the most common export slip; phonenumbers would
    # read it as a 13-digit national number.
    if default_region == "CN" and re.fullmatch(r"861[3-9]\d{9}", digits):
        value = "+" + digits
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# -- Spark ----------------------------------------------------------------------------------------

def _clean_text(column: Column) -> Column:
    value = F.regexp_replace(F.translate(column.cast("string"), _FULLWIDTH, _HALFWIDTH), _STRIP_REGEX, "")
    return F.when(value != "", value)


def _trim(column: Column) -> Column:
    return _clean_text(column)


def _trim_upper(column: Column) -> Column:
    return F.upper(_clean_text(column))


def _trim_lower(column: Column) -> Column:
    return F.lower(_clean_text(column))


def _email(column: Column) -> Column:
    value = F.lower(_clean_text(column))
    return F.when(value.rlike(_EMAIL_REGEX), value)


def phone_column(column: str | Column, default_region: str = "CN") -> Column:
    """Spark twin of :func:`normalize_phone` (a pandas UDF: each distinct value once per batch).

    The UDF is made at each call, never at import nor cached: PySpark picks its classic or Spark
    Connect implementation when a UDF is made, and one process may use both kinds of session.
    """
    def normalize(raw: pd.Series) -> pd.Series:
        # Only distinct values go through phonenumbers; its lru_cache also spans batches of one worker.
        uniques = raw.dropna().unique()
        mapping = {value: normalize_phone(value, default_region) for value in uniques}
        return raw.map(mapping).astype("object")

    col = F.col(column) if isinstance(column, str) else column
    return F.pandas_udf(normalize, T.StringType())(col.cast("string"))


def _phone(column: Column) -> Column:
    return phone_column(column)


NORMALIZERS: dict[str, Callable[[Column], Column]] = {
    "trim": _trim,
    "trim_upper": _trim_upper,
    "trim_lower": _trim_lower,
    "email": _email,
    "phone": _phone,
}

# Normalisers that run in Python workers: worth applying once per distinct value, not per row.
# The others are Spark expressions, cheaper to apply to every row than to join a lookup back.
PYTHON_NORMALIZERS = frozenset({"phone"})

PY_NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    "trim": normalize_text,
    "trim_upper": lambda raw: normalize_text(raw, "upper"),
    "trim_lower": lambda raw: normalize_text(raw, "lower"),
    "email": normalize_email,
    "phone": normalize_phone,
}


# -- qualifiers and hashes ------------------------------------------------------------------------

def qualified(value: str | None, qualifier: str | None) -> str | None:
    """``<qualifier>:<value>`` (a WeChat open id under its official account's app id), or ``value``
    when there is no qualifier; None when ``value`` is None. Python twin of :func:`qualified_column`."""
    if value is None or qualifier is None:
        return value
    return f"{qualifier.strip(_STRIP_CHARS)}:{value}"


def qualified_column(value: Column, qualifier: Column) -> Column:
    """Spark twin of :func:`qualified`."""
    return F.when(qualifier.isNotNull() & value.isNotNull(),
                  F.concat(F.regexp_replace(qualifier, _STRIP_REGEX, ""), F.lit(":"), value)).otherwise(value)


def identifier_hash(value: str) -> str:
    """Lower-case hex SHA-256 of a canonical identifier's UTF-8 bytes (no salt, no type prefix): what
    the suppression list stores and ad platforms match. Equals :func:`identifier_hash_column`."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def identifier_hash_column(column: str | Column) -> Column:
    """Spark twin of :func:`identifier_hash` (``sha2(value, 256)``)."""
    return F.sha2(F.col(column) if isinstance(column, str) else column, 256)
