"""Consent, suppression and PII masking: pure transforms over Spark DataFrames.

Hashing convention (shared with ``cdp forget``, ``cdp standardize`` and ``cdp export``): an
identifier's hash is the lower-case hex SHA-256 of its *normalised* value's UTF-8 bytes (the
``id_value`` of ``silver_identifiers`` / ``identity_map``), with no salt and no type prefix, so it
equals Spark's ``sha2(id_value, 256)`` and what ad platforms expect for emails and phones.

Three modules, re-exported here: :mod:`cdp.privacy.consent` (current consent, channel contacts,
eligibility), :mod:`cdp.privacy.suppression` (the suppression list and erasure matching) and
:mod:`cdp.privacy.masking` (PII masking for analysts).
"""
from __future__ import annotations

from cdp.identity.normalize import identifier_hash as sha256_hex
from cdp.identity.normalize import identifier_hash_column as hash_column
from cdp.privacy.consent import (
    CONSENT_SCHEMA,
    channel_contacts,
    consent_current,
    eligibility,
)
from cdp.privacy.masking import (
    DEFAULT_PII_COLUMNS,
    mask_pii,
)
from cdp.privacy.suppression import (
    ERASURE_LIST,
    SUPPRESSION_SCHEMA,
    drop_records,
    drop_suppressed_records,
    suppress,
    suppressed_customers,
    suppressed_records,
)

__all__ = [
    "CONSENT_SCHEMA",
    "DEFAULT_PII_COLUMNS",
    "ERASURE_LIST",
    "SUPPRESSION_SCHEMA",
    "channel_contacts",
    "consent_current",
    "drop_records",
    "drop_suppressed_records",
    "eligibility",
    "hash_column",
    "mask_pii",
    "sha256_hex",
    "suppress",
    "suppressed_customers",
    "suppressed_records",
]
