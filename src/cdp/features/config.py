"""Typed feature configuration (``conf/features.yaml``), parsed from a plain dict.

A family declares aggregates over one source table and derived expressions over aggregates. The
compiler expands templates (``for_each`` over a named list, ``{w}`` over windows) into concrete
features, so the whole catalogue of columns is known without running a job.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

SOURCES = ("orders", "order_lines", "returns", "events", "consent", "profile")
AGGS = ("count", "sum", "avg", "max", "min", "count_distinct", "collect_set", "max_by", "min_by")
# aggregates whose "no activity" value is 0 rather than null
ZERO_FILLED = ("count", "sum", "count_distinct")
LIFETIME = "lifetime"
_NAME = re.compile(r"^_?[a-z][a-z0-9_]*$")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Source = Literal["orders", "order_lines", "returns", "events", "consent", "profile"]


def window_suffix(window: int | str) -> str:
    return LIFETIME if window == LIFETIME else f"{window}d"


def _windows(value: Any, where: str, all_windows: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """``all`` -> every window, ``none`` -> no window (no suffix), else a list of days / 'lifetime'."""
    if value is None or value == "none":
        return None
    if value == "all":
        return all_windows
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}.windows: expected 'all', 'none' or a list of days / 'lifetime'")
    out: list[int | str] = []
    for item in value:
        if item != LIFETIME and not (isinstance(item, int) and item in all_windows):
            raise ValueError(f"{where}.windows: {item!r} is not one of {list(all_windows)}")
        out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class Feature:
    """One concrete (expanded) feature column."""

    name: str
    family: str
    source: Source
    description: str
    window: int | str | None  # days, 'lifetime', or None for point-in-time values
    agg: str | None = None  # aggregates: one of AGGS; derived/profile columns: None
    expr: str = "1"  # SQL over the source's columns (aggregates) or over features (derived)
    where: str | None = None
    by: str | None = None  # ordering expression of max_by / min_by
    internal: bool = False  # helper column, dropped from the output

    @property
    def is_aggregate(self) -> bool:
        return self.agg is not None


@dataclass(frozen=True)
class ListItem:
    value: str
    slug: str
    zh: str
    en: str

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ListItem:
        if isinstance(data, (str, int)):
            text = str(data)
            return cls(value=text, slug=_slug(text), zh=text, en=text)
        if not isinstance(data, dict) or "value" not in data:
            raise ValueError(f"{where}: expected a value or a mapping with 'value'")
        value = str(data["value"])
        slug = str(data.get("slug") or _slug(value))
        if not _NAME.match(slug):
            raise ValueError(f"{where}.slug: {slug!r} is not lower snake_case")
        return cls(value=value, slug=slug, zh=str(data.get("zh", value)), en=str(data.get("en", value)))

    def fields(self) -> dict[str, str]:
        return {"value": self.value, "slug": self.slug, "zh": self.zh, "en": self.en}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


@dataclass(frozen=True)
class FeatureConfig:
    windows: tuple[int | str, ...]  # days windows plus 'lifetime'
    lists: dict[str, tuple[ListItem, ...]]
    features: tuple[Feature, ...]

    @classmethod
    def from_dict(cls, data: Any) -> FeatureConfig:
        if not isinstance(data, dict):
            raise ValueError("features: expected a mapping")
        raw_windows = data.get("windows")
        if not isinstance(raw_windows, list) or not all(isinstance(w, int) and w > 0 for w in raw_windows):
            raise ValueError("windows: expected a list of positive day counts")
        windows: tuple[int | str, ...] = (*sorted(raw_windows), LIFETIME)
        lists: dict[str, tuple[ListItem, ...]] = {}
        for list_name, items in (data.get("lists") or {}).items():
            if not isinstance(items, list) or not items:
                raise ValueError(f"lists.{list_name}: expected a non-empty list")
            parsed = tuple(ListItem.from_dict(item, f"lists.{list_name}[{i}]") for i, item in enumerate(items))
            slugs = [p.slug for p in parsed]
            if len(set(slugs)) != len(slugs):
                raise ValueError(f"lists.{list_name}: duplicate slugs {sorted(slugs)}")
            lists[str(list_name)] = parsed
        families = data.get("families")
        if not isinstance(families, dict) or not families:
            raise ValueError("families: expected a mapping of family name -> definition")
        features: list[Feature] = []
        for family, spec in families.items():
            features.extend(_parse_family(str(family), spec, windows, lists))
        seen: dict[str, str] = {}
        for feature in features:
            if feature.name in seen:
                raise ValueError(f"families.{feature.family}: feature {feature.name!r} is also defined in "
                                 f"family {seen[feature.name]!r}")
            seen[feature.name] = feature.family
        return cls(windows=windows, lists=lists, features=tuple(features))

    def public_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if not f.internal)

    def only(self, names: Iterable[str]) -> FeatureConfig:
        """The configuration reduced to ``names`` and every feature their expressions read (a derived
        feature reads other features), in declaration order. A snapshot built from it computes only
        the aggregates those columns need: training reads a few dozen of several hundred features.

        Raises:
            KeyError: a name that is not a feature of this configuration.
        """
        by_name = {f.name: f for f in self.features}
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise KeyError(f"features: no feature named {', '.join(map(repr, unknown))}")
        kept: set[str] = set()
        while wanted:
            name = wanted.pop()
            if name in kept:
                continue
            kept.add(name)
            feature = by_name[name]
            if not feature.is_aggregate:
                wanted.extend(n for n in IDENTIFIER.findall(feature.expr) if n in by_name and n not in kept)
        return replace(self, features=tuple(f for f in self.features if f.name in kept))

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def _parse_family(family: str, spec: Any, windows: tuple[int | str, ...],
                  lists: dict[str, tuple[ListItem, ...]]) -> list[Feature]:
    where = f"families.{family}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping")
    source = spec.get("source")
    if source not in SOURCES:
        raise ValueError(f"{where}.source: {source!r} is not one of {list(SOURCES)}")
    out: list[Feature] = []
    for section in ("aggregates", "derived", "columns"):
        for i, item in enumerate(spec.get(section) or []):
            item_where = f"{where}.{section}[{i}]"
            if not isinstance(item, dict) or "name" not in item:
                raise ValueError(f"{item_where}: expected a mapping with 'name'")
            if section == "aggregates":
                agg = item.get("agg")
                if agg not in AGGS:
                    raise ValueError(f"{item_where}.agg: {agg!r} is not one of {list(AGGS)}")
                if agg in ("max_by", "min_by") and not item.get("by"):
                    raise ValueError(f"{item_where}.by: required for {agg}")
                if source == "profile":
                    raise ValueError(f"{item_where}: the profile source has columns, not aggregates")
            elif "expr" not in item:
                raise ValueError(f"{item_where}.expr: required key is missing")
            item_windows = _windows(item.get("windows", "none" if section == "columns" else "all"),
                                    item_where, windows)
            if section == "columns" and item_windows is not None:
                raise ValueError(f"{item_where}.windows: profile columns are point-in-time")
            for_each = item.get("for_each")
            if for_each is not None and for_each not in lists:
                raise ValueError(f"{item_where}.for_each: unknown list {for_each!r}; known: {sorted(lists)}")
            variants: list[dict[str, str]] = [item_fields.fields() for item_fields in lists[for_each]] \
                if for_each else [{}]
            for variant in variants:
                for window in (item_windows or (None,)):
                    values = {**variant, "w": window_suffix(window) if window is not None else ""}

                    def fill(text: Any, key: str, values: dict[str, str] = values, item_where: str = item_where) -> str | None:
                        if text is None:
                            return None
                        try:
                            return str(text).format_map(values)
                        except (KeyError, IndexError) as exc:
                            raise ValueError(f"{item_where}.{key}: unknown placeholder {exc}") from exc

                    name = fill(item["name"], "name") or ""
                    if window is not None and "{w}" not in str(item["name"]):
                        name = f"{name}_{window_suffix(window)}"
                    if not _NAME.match(name):
                        raise ValueError(f"{item_where}.name: {name!r} is not lower snake_case")
                    out.append(Feature(
                        name=name, family=family, source=source,
                        description=fill(item.get("description", ""), "description") or "",
                        window=window,
                        agg=item.get("agg") if section == "aggregates" else None,
                        expr=fill(item.get("expr", "1"), "expr") or "1",
                        where=fill(item.get("where"), "where"),
                        by=fill(item.get("by"), "by"),
                        internal=name.startswith("_"),
                    ))
    return out
