"""Identifier normalisers: real phone and e-mail examples, properties, and Spark = Python."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from cdp.identity.normalize import NORMALIZERS, PY_NORMALIZERS, normalize_email, normalize_phone

PHONES = [
    ("+86 138 0013 8000", "+8613800138000"),
    ("13800138000", "+8613800138000"),
    ("１３８００１３８０００", "+8613800138000"),  # full-width digits from a Chinese IME
    ("＋８６ １３８ ００１３ ８０００", "+8613800138000"),
    ("0086 138 0013 8000", "+8613800138000"),
    ("0086-13800138000", "+8613800138000"),
    ("86-13800138000", "+8613800138000"),
    ("8613800138000", "+8613800138000"),
    ("(+86)138-0013-8000", "+8613800138000"),
    ("138-0013-8000", "+8613800138000"),
    (" 13800138000 ", "+8613800138000"),
    ("021-6234 5678", "+862162345678"),  # Shanghai landline
    ("010 12345678", "+861012345678"),  # Beijing landline
    ("+86 10 1234 5678", "+861012345678"),
    ("+1 650-253-0000", "+16502530000"),  # foreign numbers keep their country
    ("13800000000", "+8613800000000"),  # valid format: junk is identity's blocklist, not invalid
    ("1380013800", None),  # one digit short
    ("12345", None),
    ("null", None),
    ("N/A", None),
    ("无", None),
    ("-", None),
    ("", None),
    ("   ", None),
    (None, None),
]

EMAILS = [
    ("  Wang.Fang@QQ.COM ", "wang.fang@qq.com"),
    ("wangfang@163.com", "wangfang@163.com"),
    ("ｗａｎｇ＠ｑｑ．ｃｏｍ", "wang@qq.com"),  # full-width
    ("\u3000li.na@outlook.com\u3000", "li.na@outlook.com"),  # ideographic spaces
    ("TEST@TEST.COM", "test@test.com"),  # valid format: blocked later by identity
    ("noemail", None),
    ("N/A", None),
    ("null", None),
    ("a@b", None),
    ("two@@at.com", None),
    ("with space@qq.com", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("raw", "expected"), PHONES)
def test_normalize_phone_real_examples(raw: str | None, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), EMAILS)
def test_normalize_email_real_examples(raw: str | None, expected: str | None) -> None:
    assert normalize_email(raw) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
       | st.from_regex(r"[+＋]?(00|86|0086)?[ -]?1[3-9]\d[ -]?\d{4}[ -]?\d{4}", fullmatch=True))
def test_normalize_phone_never_raises_and_is_idempotent(raw: str) -> None:
    once = normalize_phone(raw)
    assert once is None or (once.startswith("+") and once[1:].isdigit())
    if once is not None:
        assert normalize_phone(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | st.emails())
def test_normalize_email_never_raises_and_is_idempotent(raw: str) -> None:
    once = normalize_email(raw)
    if once is not None:
        assert once == once.strip().lower()
        assert normalize_email(once) == once


def test_registry_names_match_identity_yaml(conf_dir) -> None:
    from cdp.identity import IdentityConfig
    from cdp.runtime.config import parse_file

    names = {t.normalizer for t in parse_file(conf_dir / "identity.yaml", IdentityConfig.from_dict).types}
    assert names <= set(NORMALIZERS)
    assert set(NORMALIZERS) == set(PY_NORMALIZERS)


def test_spark_normalizers_agree_with_python(spark: SparkSession) -> None:
    raws = sorted({raw for raw, _ in PHONES + EMAILS if raw is not None}) + [
        " m123 ", "Ｍ１２３", "\tCookie-AB\n", "\u00a0x\u00a0", "null"]
    frame = spark.createDataFrame([(raw,) for raw in raws], "raw string")
    columns = [NORMALIZERS[name](F.col("raw")).alias(name) for name in sorted(NORMALIZERS)]
    rows = frame.select("raw", *columns).collect()
    got = {(row["raw"], name): row[name] for row in rows for name in NORMALIZERS}
    expected = {(raw, name): PY_NORMALIZERS[name](raw) for raw in raws for name in NORMALIZERS}
    assert got == expected
