"""Profiling a sample of a raw export: what a person needs to write its ``conf/sources.yaml`` block.

Pure functions over records already read (dicts, nested as in the export); ``cdp sources profile``
(:mod:`cdp.jobs.sources`) reads the sample and prints. Per field path (``buyer.phone``,
``items[].sku``): inferred type, null share, distinct count, top values, detected formats (ISO times
with or without offsets, date-only values, epoch seconds / milliseconds, phones, e-mails, nesting and
arrays), whether it is a candidate key, and values repeated suspiciously often (candidates for blocked
lists or shared devices). :func:`draft_source_yaml` turns the profile into a draft mapping.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

TOP_VALUES = 5
# A type or format is inferred when at least this share of a field's values conform (the others are
# what cdp land will quarantine, or null with on_invalid: null).
CONFORMING_SHARE = 0.98
# A candidate key: present in at least KEY_PRESENT_SHARE of records, distinct in at least
# KEY_DISTINCT_SHARE of them (re-delivered updates of a record repeat its key).
KEY_PRESENT_SHARE = 0.95
KEY_DISTINCT_SHARE = 0.95
# An identifier value that shares records with at least this many distinct values of another identifier
# field (one phone on the orders of 3+ members) is suspicious: a shared device, a store's phone, a placeholder.
SHARED_MIN_PARTNERS = 3
SHOWN_SHARED = 5  # suspicious values printed per field
# Contact points that a shared device, a store's phone or a placeholder makes look alike across people,
# and the account fields (one per person) they are checked against.
_CONTACT_NAME = re.compile(r"phone|mobile|tel|email|mail|device|cookie|openid|unionid|idfa|imei", re.IGNORECASE)
_ACCOUNT_NAME = re.compile(r"member|crm|customer|user|account|buyer_id|uid", re.IGNORECASE)

_ISO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")
_ISO_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_SLASH_LOCAL = re.compile(r"^\d{4}/\d{1,2}/\d{1,2} \d{1,2}:\d{2}(:\d{2})?$")
_DATE_DASH = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_SLASH = re.compile(r"^\d{4}/\d{1,2}/\d{1,2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z0-9-]{2,}$")
_PHONE = re.compile(r"^\+?[\d\s()\-－＋０-９]{7,20}$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_BOOL = {"true", "false", "t", "f", "yes", "no", "y", "n"}
# epoch bounds: 2000-01-01 .. 2050-01-01 in seconds, the same instants in milliseconds (a wider range
# takes 10-digit service numbers such as 400 8123 123 for times)
_EPOCH_S = (946_684_800, 2_524_608_000)
_EPOCH_MS = (946_684_800_000, 2_524_608_000_000)
# all-digit values read as phones: mobiles (1 + 10 digits), area codes (0...), service lines (400 / 800),
# country prefixes (86..., +...)
_DIGIT_PHONE = re.compile(r"^(\+\d{7,15}|1\d{10}|0\d{6,11}|[48]00\d{7}|86\d{11})$")

# detected format -> (sources.yaml type, sources.yaml format)
FORMAT_MAPPING: dict[str, tuple[str, str | None]] = {
    "iso8601 with offset": ("timestamp", "iso8601"),
    "iso8601 local time": ("timestamp", "iso8601"),
    "yyyy/M/d H:mm:ss": ("timestamp", "yyyy/M/d H:mm:ss"),
    "epoch seconds": ("timestamp", "epoch_s"),
    "epoch milliseconds": ("timestamp", "epoch_ms"),
    "date yyyy-MM-dd": ("date", "yyyy-MM-dd"),
    "date yyyy/M/d": ("date", "yyyy/M/d"),
}
IDENTIFIER_FORMATS = {"e-mail": "email", "phone": "phone"}


@dataclass(frozen=True)
class FieldProfile:
    """What a sample says about one field path."""

    path: str
    type: str  # string int long double boolean date timestamp struct array
    records: int  # records in the sample
    present: int  # records where the field holds a non-null, non-blank value
    distinct: int
    top_values: tuple[tuple[str, int], ...]
    formats: tuple[str, ...]  # detected formats, most common first
    candidate_key: bool
    unique_share: float = 0.0  # distinct values / values (per record; per element inside arrays)
    shared: tuple[tuple[str, str, int], ...] = ()  # (value, other identifier field, distinct partners)

    @property
    def null_share(self) -> float:
        return 1 - self.present / self.records if self.records else 0.0


@dataclass(frozen=True)
class SourceProfile:
    name: str
    records: int
    fields: tuple[FieldProfile, ...] = field(default_factory=tuple)

    def field(self, path: str) -> FieldProfile:
        return next(f for f in self.fields if f.path == path)


def _leaves(record: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any, str]]:
    """(path, value, kind) for every field of a record; arrays of structs as ``name[].child``."""
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield path, value, "struct"
            yield from _leaves(value, f"{path}.")
        elif isinstance(value, list):
            yield path, value, "array"
            for element in value:
                if isinstance(element, Mapping):
                    yield from _leaves(element, f"{path}[].")
        else:
            yield path, value, "leaf"


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def detect_format(value: Any) -> str | None:
    """The format one raw value is written in (see :data:`FORMAT_MAPPING` and identifiers), or None."""
    if isinstance(value, bool):
        return None
    text = str(value).strip()
    if isinstance(value, int | float) or _INT.match(text):
        try:
            number = int(float(text))
        except ValueError:
            return None
        if _EPOCH_MS[0] <= number <= _EPOCH_MS[1] and len(text) == 13:
            return "epoch milliseconds"
        if _EPOCH_S[0] <= number <= _EPOCH_S[1] and len(text) in (9, 10):
            return "epoch seconds"
        return "phone" if _DIGIT_PHONE.match(text) else None
    for pattern, name in ((_ISO_OFFSET, "iso8601 with offset"), (_ISO_LOCAL, "iso8601 local time"),
                          (_SLASH_LOCAL, "yyyy/M/d H:mm:ss"), (_DATE_DASH, "date yyyy-MM-dd"),
                          (_DATE_SLASH, "date yyyy/M/d"), (_EMAIL, "e-mail")):
        if pattern.match(text):
            return name
    digits = sum(ch.isdigit() or "０" <= ch <= "９" for ch in text)
    if _PHONE.match(text) and 7 <= digits <= 15:
        return "phone"
    return None


def _conforms(values: Sequence[Any], test) -> bool:  # noqa: ANN001 - a predicate
    return sum(1 for v in values if test(v)) >= CONFORMING_SHARE * len(values)


def infer_type(values: Sequence[Any]) -> tuple[str, tuple[str, ...]]:
    """The sources.yaml type of a field's non-blank values and its formats (date/timestamp), most common first."""
    detected = Counter(detect_format(v) for v in values)
    by_type: dict[str, Counter[str]] = {}
    for name, count in detected.items():
        if name in FORMAT_MAPPING:
            kind, fmt = FORMAT_MAPPING[name]
            by_type.setdefault(kind, Counter())[fmt or name] += count
    if sum(detected[name] for name in IDENTIFIER_FORMATS) >= 0.5 * len(values):
        return "string", ()  # phones and e-mails stay text (leading zeros, +, spellings)
    for kind in ("timestamp", "date"):
        formats = by_type.get(kind)
        if formats and sum(formats.values()) >= CONFORMING_SHARE * len(values):
            return kind, tuple(f for f, _ in formats.most_common())
    if _conforms(values, lambda v: isinstance(v, bool) or str(v).strip().lower() in _BOOL | {"0", "1"}):
        return "boolean", ()
    if _conforms(values, lambda v: not isinstance(v, bool) and _INT.match(str(v).strip())):
        small = all(abs(int(str(v).strip())) <= 2**31 - 1 for v in values if _INT.match(str(v).strip()))
        return ("int" if small else "long"), ()
    if _conforms(values, lambda v: not isinstance(v, bool) and _FLOAT.match(str(v).strip())):
        return "double", ()
    return "string", ()


def _is_contact(f: FieldProfile) -> bool:
    return "[]" not in f.path and (bool(set(f.formats[:1]) & set(IDENTIFIER_FORMATS))
                                   or bool(_CONTACT_NAME.search(f.path.rsplit(".", 1)[-1])))


def _is_account(f: FieldProfile) -> bool:
    return "[]" not in f.path and bool(_ACCOUNT_NAME.search(f.path.rsplit(".", 1)[-1]))


def profile_records(name: str, records: Sequence[Mapping[str, Any]]) -> SourceProfile:
    """Profile a sample of records (as read from the export: nested dicts and lists)."""
    by_path: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    presence: Counter[str] = Counter()
    for record in records:
        seen_here: set[str] = set()
        for path, value, kind in _leaves(record):
            kinds.setdefault(path, kind)
            by_path.setdefault(path, [])
            if kind == "leaf" and not _blank(value):
                by_path[path].append(value)
                seen_here.add(path)
            elif kind != "leaf" and value:
                seen_here.add(path)
        presence.update(seen_here)
    total = len(records)
    profiles: dict[str, FieldProfile] = {}
    for path, kind in kinds.items():
        present = presence.get(path, 0)
        if kind != "leaf":
            profiles[path] = FieldProfile(path, kind, total, present, 0, (), ("nested " + kind,), False)
            continue
        values = by_path[path]
        counts = Counter(str(v).strip() for v in values)
        detected = Counter(f for f in (detect_format(v) for v in values) if f)
        field_type, _ = infer_type(values) if values else ("string", ())
        unique_share = len(counts) / len(values) if values else 0.0
        profiles[path] = FieldProfile(
            path=path, type=field_type, records=total, present=present, distinct=len(counts),
            top_values=tuple(counts.most_common(TOP_VALUES)), formats=tuple(f for f, _ in detected.most_common()),
            candidate_key=("[]" not in path and total > 1 and present >= KEY_PRESENT_SHARE * total
                           and unique_share >= KEY_DISTINCT_SHARE),
            unique_share=unique_share)
    leaves = [f for f in profiles.values() if f.type not in ("struct", "array")]
    contacts = {f.path for f in leaves if _is_contact(f)}
    partner_fields = contacts | {f.path for f in leaves if _is_account(f)}
    partners: dict[tuple[str, str, str], set[str]] = {}
    for record in records:
        values = {path: str(value).strip() for path, value, kind in _leaves(record)
                  if kind == "leaf" and path in partner_fields and not _blank(value)}
        for path in contacts & set(values):
            for other, other_value in values.items():
                if other != path:
                    partners.setdefault((path, values[path], other), set()).add(other_value)
    for path in contacts:
        shared = sorted(((value, other, len(found)) for (p, value, other), found in partners.items()
                         if p == path and len(found) >= SHARED_MIN_PARTNERS), key=lambda s: (-s[2], s[0], s[1]))
        profiles[path] = replace(profiles[path], shared=tuple(shared))
    return SourceProfile(name=name, records=total, fields=tuple(profiles.values()))


def _field_yaml(profile: SourceProfile, prefix: str = "") -> dict[str, Any]:
    """The ``fields`` mapping for the children of ``prefix`` (top level when empty)."""
    fields: dict[str, Any] = {}
    for f in profile.fields:
        if not f.path.startswith(prefix):
            continue
        rest = f.path[len(prefix):]
        if "." in rest.replace("[].", "."):
            continue  # a grandchild: written inside its parent
        if f.type == "struct":
            fields[rest] = {"type": "struct", "fields": _field_yaml(profile, f"{f.path}.")}
        elif f.type == "array":
            children = _field_yaml(profile, f"{f.path}[].")
            fields[rest] = {"type": "array", "fields": children} if children else "string"
        else:
            entry: dict[str, Any] = {"type": f.type}
            if f.type in ("date", "timestamp"):
                formats = list(dict.fromkeys(FORMAT_MAPPING[name][1] for name in f.formats if name in FORMAT_MAPPING
                                             and FORMAT_MAPPING[name][0] == f.type))
                entry["format"] = formats[0] if len(formats) == 1 else formats
            if f.candidate_key:
                entry["required"] = True
            fields[rest] = entry if len(entry) > 1 else f.type
    return fields


def draft_source_yaml(profile: SourceProfile, *, path: str, file_format: str, encoding: str = "utf-8") -> str:
    """A draft ``sources:`` block for conf/sources.yaml from the profile (to be read and edited)."""
    keys = [f for f in profile.fields if f.candidate_key]
    times = [f for f in profile.fields if f.type == "timestamp" and "[]" not in f.path]
    block: dict[str, Any] = {"path": path, "format": file_format}
    if encoding.lower() != "utf-8":
        block["encoding"] = encoding
    if keys:
        block["record_id"] = keys[0].path
    if times:
        block["event_time"] = max(times, key=lambda f: f.present).path
    block["fields"] = _field_yaml(profile)
    identifiers = [{"type": IDENTIFIER_FORMATS[f.formats[0]], "field": f.path} for f in profile.fields
                   if f.formats and f.formats[0] in IDENTIFIER_FORMATS and "[]" not in f.path]
    if identifiers:
        block["identifiers"] = identifiers
    return yaml.safe_dump({"sources": {profile.name: block}}, allow_unicode=True, sort_keys=False,
                          default_flow_style=False)


def render_profile(profile: SourceProfile) -> str:
    """The profile as a plain-text table for a terminal."""
    lines = [f"source {profile.name}: {profile.records} records sampled", "",
             f"{'field':<28} {'type':<9} {'null%':>6} {'distinct':>8} {'unique%':>7}  {'key':<3}  formats / top values"]
    for f in profile.fields:
        top = ", ".join(f"{value[:24]} ({n})" for value, n in f.top_values[:3])
        described = "; ".join(f.formats) + (" | " if f.formats and top else "") + top
        lines.append(f"{f.path:<28} {f.type:<9} {100 * f.null_share:>5.1f}% {f.distinct:>8} "
                     f"{100 * f.unique_share:>6.1f}%  {'yes' if f.candidate_key else '':<3}  {described}")
        for value, other, n in f.shared[:SHOWN_SHARED]:
            lines.append(f"{'':<28} ! {value!r} appears with {n} different {other}: a shared device, a store's "
                         "line or a placeholder? (conf/identity.yaml blocked lists)")
        if len(f.shared) > SHOWN_SHARED:
            lines.append(f"{'':<28} ! and {len(f.shared) - SHOWN_SHARED} more")
    return "\n".join(lines)
