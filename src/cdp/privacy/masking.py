"""PII masking for analysts: the PII columns of the table contracts (:mod:`cdp.contracts`) shown
masked unless the reader is entitled to see them.
"""
from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdp.contracts import contract_for, pii_columns

# Columns masked by mask_pii unless named otherwise: every PII column of the table contracts.
DEFAULT_PII_COLUMNS: tuple[str, ...] = pii_columns()


def mask_pii(df: DataFrame, columns: Iterable[str] | None = None, *, table: str | None = None,
             reveal: bool = False) -> DataFrame:
    """Mask PII columns for analyst use: ``a***@example.com``, ``***1234``, ``Z**``, hashes for ids.

    Args:
        df: any frame.
        columns: the columns to mask (default: the PII columns of ``table``'s contract in
            :mod:`cdp.contracts`, or without ``table`` :data:`DEFAULT_PII_COLUMNS`, present in ``df``).
        table: the lake table ``df`` was read from.
        reveal: return ``df`` unchanged (for people entitled to see PII).

    Raises:
        ValueError: ``table`` has no contract.

    Returns:
        ``df`` with the same columns in the same order, PII columns replaced by masked strings.
    """
    if reveal:
        return df
    if columns is None and table is not None:
        contract = contract_for(table)
        if contract is None:
            raise ValueError(f"mask_pii: table {table!r} has no contract in cdp.contracts; name the columns")
        columns = contract.pii
    targets = set(DEFAULT_PII_COLUMNS if columns is None else columns) & set(df.columns)
    out = []
    for name in df.columns:
        if name not in targets:
            out.append(F.col(f"`{name}`"))
            continue
        value = F.col(f"`{name}`").cast("string")
        if name == "email":
            masked = F.concat(F.substring(value, 1, 1), F.lit("***@"), F.substring_index(value, "@", -1))
        elif name == "phone":
            masked = F.concat(F.lit("***"), F.substring(value, -4, 4))
        elif name == "name":
            masked = F.concat(F.substring(value, 1, 1), F.lit("**"))
        else:
            masked = F.concat(F.lit("sha256:"), F.substring(F.sha2(value, 256), 1, 12))
        out.append(F.when(value.isNull(), F.lit(None).cast("string")).otherwise(masked).alias(name))
    return df.select(*out)
