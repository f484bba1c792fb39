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
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import pandas as pd
import phonenumbers
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from cdp.runtime.config import require_regex

__all__ = [
    "EmailDomain",
    "NORMALIZERS",
    "Normalizer",
    "PHONE_TYPES",
    "PYTHON_NORMALIZERS",
    "PRESETS",
    "PY_NORMALIZERS",
    "fullwidth_to_ascii",
    "identifier_hash",
    "identifier_hash_column",
    "normalize_email",
    "normalize_phone",
    "normalize_text",
    "phone_type",
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
def normalize_phone(raw: str | None, default_region: str = "CN", country_prefix_variants: bool = True) -> str | None:
    """E.164 form of a phone number (``+8613800138000``), or None when it is not a valid number.

    Accepts what people and systems type: ``+86 138 0013 8000``, full-width digits, landlines with
    area codes (``021-6234 5678``) and, with ``country_prefix_variants``, the default region's country
    code written without "+" (``0086-138...``, ``86 138...``). Never raises.
    """
    value = normalize_text(raw)
    if value is None or len(value) > _MAX_PHONE_LENGTH:
        return None
    digits = re.sub(r"[\s\-().]", "", value)
    # "86" + an 11-digit mobile without "+" is the most common export slip; phonenumbers would
    # read it as a 13-digit national number.
    if country_prefix_variants and default_region == "CN" and re.fullmatch(r"861[3-9]\d{9}", digits):
        value = "+" + digits
    try:
        number = phonenumbers.parse(value, default_region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
        return None
    if not country_prefix_variants and number.country_code_source in _PREFIX_VARIANT_SOURCES \
            and not value.startswith("+"):
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_PREFIX_VARIANT_SOURCES = frozenset({phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD,
                                     phonenumbers.CountryCodeSource.FROM_NUMBER_WITHOUT_PLUS_SIGN})
# phonenumbers' number types, by the names conf/identity.yaml uses for them
PHONE_TYPES: dict[str, int] = {
    name.lower(): value for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)}


@lru_cache(maxsize=1 << 16)
def phone_type(canonical: str | None) -> str | None:
    """The number type (``mobile``, ``toll_free``, ``shared_cost``...) of an E.164 number; None for None."""
    if canonical is None:
        return None
    try:
        number = phonenumbers.parse(canonical, None)
    except phonenumbers.NumberParseException:
        return None
    code = phonenumbers.number_type(number)
    return next((name for name, value in PHONE_TYPES.items() if value == code), "unknown")


# -- Spark ----------------------------------------------------------------------------------------

def _clean_text(column: Column) -> Column:
    value = F.regexp_replace(F.translate(column.cast("string"), _FULLWIDTH, _HALFWIDTH), _STRIP_REGEX, "")
    return F.when(value != "", value)


def _email(column: Column) -> Column:
    value = F.lower(_clean_text(column))
    return F.when(value.rlike(_EMAIL_REGEX), value)


def phone_column(column: str | Column, default_region: str = "CN", country_prefix_variants: bool = True) -> Column:
    """Spark twin of :func:`normalize_phone` (a pandas UDF: each distinct value once per batch).

    The UDF is made at each call, never at import nor cached: PySpark picks its classic or Spark
    Connect implementation when a UDF is made, and one process may use both kinds of session.
    """
    def normalize(raw: pd.Series) -> pd.Series:
        # Only distinct values go through phonenumbers; its lru_cache also spans batches of one worker.
        uniques = raw.dropna().unique()
        mapping = {value: normalize_phone(value, default_region, country_prefix_variants) for value in uniques}
        return raw.map(mapping).astype("object")

    col = F.col(column) if isinstance(column, str) else column
    return F.pandas_udf(normalize, T.StringType())(col.cast("string"))


def _python_column(function: Callable[[str | None], str | None], column: Column) -> Column:
    """A Python normaliser as a Spark column (pandas UDF; each distinct value of a batch once)."""
    def apply(raw: pd.Series) -> pd.Series:
        mapping = {value: function(value) for value in raw.dropna().unique()}
        return raw.map(mapping).astype("object")

    return F.pandas_udf(apply, T.StringType())(column.cast("string"))


# -- configurable normalisers (conf/identity.yaml types.<type>.normalizer) -------------------------

_CASES = ("keep", "upper", "lower")
_UNICODE_FORMS = ("fullwidth", "nfkc", "none")
_OPTIONS = {
    "text": ("case", "unicode", "trim", "rewrite"),
    "email": ("plus_tags", "dots", "domains"),
    "phone": ("default_region", "personal_types", "country_prefix_variants"),
}
_EMAIL_SPLIT = r"^(.*)@([^@]*)$"


@dataclass(frozen=True)
class EmailDomain:
    """How one e-mail domain treats its addresses: an alias of another domain (whose rules then apply),
    or whether dots in the local part and ``+tag`` sub-addresses are ignored (None: the default)."""

    alias_of: str | None = None
    fold_dots: bool | None = None
    strip_plus_tags: bool | None = None


@dataclass(frozen=True)
class Normalizer:
    """How one identifier type's raw values become canonical: the graph node, what limits count,
    what export hashes and suppression match. Parsed from ``types.<type>.normalizer`` by
    :meth:`from_config` (a preset name such as ``email``, or ``{name: <preset or kind>, options...}``).

    Kinds and options:
        text: ``case`` keep | upper | lower, ``unicode`` fullwidth (full-width forms to ASCII) | nfkc |
            none, ``trim`` (true), ``rewrite`` [{pattern, replace}] regexes applied in order (Python
            ``re`` syntax; ``\\1`` in replace).
        email: lower-cased and checked; ``plus_tags`` strip | keep and ``dots`` fold | keep for every
            domain, ``domains`` {domain: {alias_of, plus_tags, dots}} per domain.
        phone: E.164; ``default_region`` (CN), ``personal_types`` (phonenumbers' types that belong to a
            person: mobile, fixed_line, fixed_line_or_mobile; other numbers such as toll_free or
            shared_cost service lines are kept in silver but never link records),
            ``country_prefix_variants`` (true: ``86 138...`` and ``0086 138...`` are the same number).
    """

    kind: Literal["text", "email", "phone"]
    name: str
    case: str = "keep"
    unicode: str = "fullwidth"
    trim: bool = True
    rewrite: tuple[tuple[str, str], ...] = ()
    strip_plus_tags: bool = False
    fold_dots: bool = False
    domains: tuple[tuple[str, EmailDomain], ...] = ()
    default_region: str = "CN"
    personal_types: tuple[str, ...] = ("fixed_line", "mobile", "fixed_line_or_mobile")
    country_prefix_variants: bool = True

    # -- parsing --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, data: Any, where: str) -> Normalizer:
        """A preset name or ``{name, options...}``; ``ValueError`` naming ``where.<key>`` otherwise."""
        if isinstance(data, str):
            if data not in PRESETS:
                raise ValueError(f"{where}: unknown normaliser {data!r}; known: {sorted(PRESETS)} "
                                 f"(or a mapping with name: {' | '.join(_OPTIONS)} and options)")
            return PRESETS[data]
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a normaliser name or a mapping, got {data!r}")
        name = data.get("name")
        base = PRESETS.get(name) if isinstance(name, str) else None
        if base is None and name not in _OPTIONS:
            raise ValueError(f"{where}.name: unknown normaliser {name!r}; known: {sorted(PRESETS)} "
                             f"or a kind {list(_OPTIONS)}")
        kind = base.kind if base is not None else str(name)
        allowed = _OPTIONS[kind]
        unknown = sorted(set(data) - {"name", *allowed})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown option of a {kind} normaliser; "
                             f"expected {list(allowed)}")
        options: dict[str, Any] = {}
        if kind == "text":
            options.update(_text_options(data, where, base))
        elif kind == "email":
            options.update(_email_options(data, where))
        else:
            options.update(_phone_options(data, where))
        start = base if base is not None else cls(kind=kind, name=kind)  # type: ignore[arg-type]
        return cls(**{**start.__dict__, **options, "name": str(name)})

    # -- applying -------------------------------------------------------------------------------
    @property
    def runs_in_python(self) -> bool:
        """Applied in Python workers (once per distinct value) rather than as a Spark expression."""
        return self.kind == "phone" or (self.kind == "text" and (self.unicode == "nfkc" or bool(self.rewrite)))

    def python(self, raw: str | None) -> str | None:
        """The canonical value of ``raw``, or None when it is not a valid identifier of the kind."""
        if self.kind == "phone":
            return normalize_phone(raw, self.default_region, self.country_prefix_variants)
        if self.kind == "email":
            value = normalize_email(raw)
            if value is None or not (self.strip_plus_tags or self.fold_dots or self.domains):
                return value
            local, domain = value.rsplit("@", 1)
            domain, fold, strip = self._domain_rule(domain)
            local = local.split("+", 1)[0] if strip else local
            local = local.replace(".", "") if fold else local
            value = f"{local}@{domain}"
            return value if _EMAIL_PATTERN.match(value) else None
        if raw is None:
            return None
        value = str(raw)
        if self.unicode == "nfkc":
            value = unicodedata.normalize("NFKC", value)
        elif self.unicode == "fullwidth":
            value = fullwidth_to_ascii(value)
        if self.trim:
            value = value.strip(_STRIP_CHARS)
        value = value.upper() if self.case == "upper" else value.lower() if self.case == "lower" else value
        for pattern, replace in self.rewrite:
            value = re.sub(pattern, replace, value)
        return value or None

    def column(self, column: Column) -> Column:
        """Spark twin of :meth:`python` (equal value for value)."""
        if self.runs_in_python:
            if self.kind == "phone":
                return phone_column(column, self.default_region, self.country_prefix_variants)
            return _python_column(self.python, column)
        if self.kind == "email":
            return self._email_column(column)
        value = column.cast("string")
        if self.unicode == "fullwidth":
            value = F.translate(value, _FULLWIDTH, _HALFWIDTH)
        if self.trim:
            value = F.regexp_replace(value, _STRIP_REGEX, "")
        value = F.upper(value) if self.case == "upper" else F.lower(value) if self.case == "lower" else value
        return F.when(value != "", value)

    def non_personal(self, canonical: str | None) -> str | None:
        """Why a canonical value belongs to no one person (a service line), or None when it may link."""
        if self.kind != "phone" or canonical is None:
            return None
        kind = phone_type(canonical)
        if kind in self.personal_types:
            return None
        return f"{kind} number, not a personal one (personal_types: {', '.join(self.personal_types)})"

    def non_personal_column(self, canonical: Column) -> Column:
        """Spark twin of :meth:`non_personal` (null for every value of a kind that has no such test)."""
        if self.kind != "phone":
            return F.lit(None).cast("string")
        return _python_column(self.non_personal, canonical)

    def _domain_rule(self, domain: str) -> tuple[str, bool, bool]:
        rules = dict(self.domains)
        rule = rules.get(domain)
        if rule is not None and rule.alias_of is not None:
            domain = rule.alias_of
            rule = rules.get(domain)
        fold = self.fold_dots if rule is None or rule.fold_dots is None else rule.fold_dots
        strip = self.strip_plus_tags if rule is None or rule.strip_plus_tags is None else rule.strip_plus_tags
        return domain, fold, strip

    def _email_column(self, column: Column) -> Column:
        value = _email(column)
        if not (self.strip_plus_tags or self.fold_dots or self.domains):
            return value
        local, domain = F.regexp_extract(value, _EMAIL_SPLIT, 1), F.regexp_extract(value, _EMAIL_SPLIT, 2)
        aliases = {d: r.alias_of for d, r in self.domains if r.alias_of is not None}
        if aliases:
            lookup = F.create_map(*[F.lit(x) for pair in sorted(aliases.items()) for x in pair])
            domain = F.coalesce(F.element_at(lookup, domain), domain)
        # the rule of each domain as written; unlisted domains take the defaults
        listed = sorted({d for d, r in self.domains if r.alias_of is None})
        fold, strip = F.lit(self.fold_dots), F.lit(self.strip_plus_tags)
        for name in listed:
            _, domain_fold, domain_strip = self._domain_rule(name)
            fold = F.when(domain == name, F.lit(domain_fold)).otherwise(fold)
            strip = F.when(domain == name, F.lit(domain_strip)).otherwise(strip)
        local = F.when(strip, F.regexp_replace(local, r"\+.*$", "")).otherwise(local)
        local = F.when(fold, F.replace(local, F.lit("."), F.lit(""))).otherwise(local)
        result = F.concat(local, F.lit("@"), domain)
        return F.when(value.isNotNull() & result.rlike(_EMAIL_REGEX), result)


def _flag(data: Mapping[str, Any], key: str, where: str, choices: tuple[str, str]) -> bool | None:
    """``key: on | off`` (e.g. ``dots: fold | keep``) as True / False; None when absent."""
    if key not in data:
        return None
    value = data[key]
    if value not in choices:
        raise ValueError(f"{where}.{key}: expected {' or '.join(choices)}, got {value!r}")
    return value == choices[0]


def _text_options(data: Mapping[str, Any], where: str, base: Normalizer | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "case" in data:
        if data["case"] not in _CASES:
            raise ValueError(f"{where}.case: expected one of {list(_CASES)}, got {data['case']!r}")
        options["case"] = data["case"]
    if "unicode" in data:
        form = str(data["unicode"]).lower()
        if form not in _UNICODE_FORMS:
            raise ValueError(f"{where}.unicode: expected one of {list(_UNICODE_FORMS)}, got {data['unicode']!r}")
        options["unicode"] = form
    if "trim" in data:
        if not isinstance(data["trim"], bool):
            raise ValueError(f"{where}.trim: expected true or false, got {data['trim']!r}")
        options["trim"] = data["trim"]
    rules = data.get("rewrite") or []
    if not isinstance(rules, list):
        raise ValueError(f"{where}.rewrite: expected a list of {{pattern, replace}}")
    rewrite = []
    for i, rule in enumerate(rules):
        rw = f"{where}.rewrite[{i}]"
        if not isinstance(rule, Mapping) or set(rule) != {"pattern", "replace"}:
            raise ValueError(f"{rw}: expected {{pattern: <regex>, replace: <text>}}, got {rule!r}")
        require_regex(rule["pattern"], f"{rw}.pattern")
        rewrite.append((str(rule["pattern"]), "" if rule["replace"] is None else str(rule["replace"])))
    if rewrite:
        options["rewrite"] = tuple(rewrite)
    return options


def _email_options(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    strip = _flag(data, "plus_tags", where, ("strip", "keep"))
    fold = _flag(data, "dots", where, ("fold", "keep"))
    if strip is not None:
        options["strip_plus_tags"] = strip
    if fold is not None:
        options["fold_dots"] = fold
    raw_domains = data.get("domains") or {}
    if not isinstance(raw_domains, Mapping):
        raise ValueError(f"{where}.domains: expected a mapping of domain -> {{alias_of, plus_tags, dots}}")
    domains: dict[str, EmailDomain] = {}
    for name, rule in raw_domains.items():
        dw = f"{where}.domains.{name}"
        rule = rule or {}
        if not isinstance(rule, Mapping):
            raise ValueError(f"{dw}: expected a mapping with alias_of, plus_tags or dots")
        unknown = sorted(set(rule) - {"alias_of", "plus_tags", "dots"})
        if unknown:
            raise ValueError(f"{dw}.{unknown[0]}: unknown option; expected alias_of, plus_tags, dots")
        alias = rule.get("alias_of")
        if alias is not None and len(rule) > 1:
            raise ValueError(f"{dw}: an alias takes the rules of {alias!r}; give no other option")
        domains[str(name).lower()] = EmailDomain(
            alias_of=None if alias is None else str(alias).lower(),
            fold_dots=_flag(rule, "dots", dw, ("fold", "keep")),
            strip_plus_tags=_flag(rule, "plus_tags", dw, ("strip", "keep")))
    for name, rule in domains.items():
        target = domains.get(rule.alias_of or "")
        if target is not None and target.alias_of is not None:
            raise ValueError(f"{where}.domains.{name}.alias_of: {rule.alias_of!r} is itself an alias")
    if domains:
        options["domains"] = tuple(sorted(domains.items()))
    return options


def _phone_options(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "default_region" in data:
        region = str(data["default_region"]).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{where}.default_region: {data['default_region']!r} is not a region phonenumbers "
                             "knows (ISO 3166 two-letter code such as CN, US, DE)")
        options["default_region"] = region
    if "personal_types" in data:
        types = data["personal_types"]
        if not isinstance(types, list) or not types:
            raise ValueError(f"{where}.personal_types: expected a non-empty list of number types")
        unknown = [t for t in types if t not in PHONE_TYPES]
        if unknown:
            raise ValueError(f"{where}.personal_types: unknown number types {unknown}; known: {sorted(PHONE_TYPES)}")
        options["personal_types"] = tuple(types)
    if "country_prefix_variants" in data:
        if not isinstance(data["country_prefix_variants"], bool):
            raise ValueError(f"{where}.country_prefix_variants: expected true or false")
        options["country_prefix_variants"] = data["country_prefix_variants"]
    return options


PRESETS: dict[str, Normalizer] = {
    "trim": Normalizer(kind="text", name="trim"),
    "trim_upper": Normalizer(kind="text", name="trim_upper", case="upper"),
    "trim_lower": Normalizer(kind="text", name="trim_lower", case="lower"),
    "email": Normalizer(kind="email", name="email"),
    "phone": Normalizer(kind="phone", name="phone"),
}

NORMALIZERS: dict[str, Callable[[Column], Column]] = {name: preset.column for name, preset in PRESETS.items()}

# Normalisers that run in Python workers: worth applying once per distinct value, not per row.
# The others are Spark expressions, cheaper to apply to every row than to join a lookup back.
PYTHON_NORMALIZERS = frozenset(name for name, preset in PRESETS.items() if preset.runs_in_python)

PY_NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    name: preset.python for name, preset in PRESETS.items()}


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
