"""Typed identity configuration, parsed from ``conf/identity.yaml`` by :meth:`IdentityConfig.from_dict`.

Every parse error is a ``ValueError`` whose message starts with the key path (``types.phone.limit``);
``cdp.runtime.config.parse_file`` adds the file name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cdp.identity.normalize import PRESETS, Normalizer
from cdp.runtime.config import require_regex

Engine = Literal["auto", "dataframe", "graphframes"]
Rule = Literal["most_recent", "most_frequent", "source_priority", "first_non_null"]

ENGINES: tuple[str, ...] = ("auto", "dataframe", "graphframes")
RULES: tuple[str, ...] = ("most_recent", "most_frequent", "source_priority", "first_non_null")
# Golden-record attributes: columns of silver_customer_attributes plus the two identifiers a profile shows.
PROFILE_ATTRIBUTES: tuple[str, ...] = (
    "name", "gender", "birth_date", "city", "province", "city_tier", "member_level", "member_since",
    "email", "phone",
)
IDENTIFIER_ATTRIBUTES: tuple[str, ...] = ("email", "phone")


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    return data


def _int(data: dict[str, Any], key: str, where: str, default: int | None = None, minimum: int = 0) -> int:
    path = f"{where}.{key}" if where else key
    value = data.get(key, default)
    if value is None:
        raise ValueError(f"{path}: required key is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{path}: must be >= {minimum}, got {value}")
    return value


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    return value


def _regex(value: Any, where: str) -> str:
    return require_regex(value, where)


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    out = []
    for index, item in enumerate(value):
        if item is None:
            # YAML `null` in a block list means the literal text "null" was meant.
            item = "null"
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            raise ValueError(f"{where}[{index}]: expected a string, got {item!r}")
        out.append(str(item))
    return tuple(out)


@dataclass(frozen=True)
class BlockList:
    """Values that never make an edge: exact values (compared trimmed and lower-cased) and regexes."""

    values: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BlockList:
        if data is None:
            return cls()
        data = _mapping(data, where)
        unknown = set(data) - {"values", "patterns"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected values, patterns")
        patterns = tuple(_regex(p, f"{where}.patterns[{i}]") for i, p in enumerate(data.get("patterns") or []))
        values = tuple(v.strip().lower() for v in _string_list(data.get("values"), f"{where}.values"))
        return cls(values=values, patterns=patterns)


@dataclass(frozen=True)
class IdentifierType:
    """One identifier type: how standardize normalises it and how identity trusts it.

    ``priority``: higher is more trusted (kept when a component must be split, survives hubs).
    ``limit``: how many distinct values of this type one customer may hold.
    ``pattern``: validity rule on the normalised value; invalid values never make edges.
    ``normalizer``: the normaliser's name as written; ``normalization`` what it does (preset or options,
    :class:`cdp.identity.normalize.Normalizer`): the one canonical form identity, export hashing,
    suppression and ``cdp forget`` use for this type.
    """

    name: str
    normalizer: str
    priority: int
    limit: int
    pattern: str | None = None
    blocked: BlockList = field(default_factory=BlockList)
    normalization: Normalizer = PRESETS["trim"]

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str) -> IdentifierType:
        data = _mapping(data, where)
        known = {"normalizer", "priority", "limit", "pattern", "blocked"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
        raw_normalizer = data.get("normalizer")
        if not raw_normalizer:
            raise ValueError(f"{where}.normalizer: required key is missing")
        normalization = Normalizer.from_config(raw_normalizer, f"{where}.normalizer")
        pattern = data.get("pattern")
        return cls(
            name=name,
            normalizer=normalization.name,
            normalization=normalization,
            priority=_int(data, "priority", where),
            limit=_int(data, "limit", where, minimum=1),
            pattern=None if pattern is None else _regex(pattern, f"{where}.pattern"),
            blocked=BlockList.from_dict(data.get("blocked"), f"{where}.blocked"),
        )


@dataclass(frozen=True)
class Survivorship:
    """Golden-record rules: one rule per attribute plus the source ranking used by ``source_priority``."""

    source_priority: tuple[str, ...] = ()
    rules: tuple[tuple[str, str], ...] = ()

    def rule(self, attribute: str) -> str:
        return dict(self.rules).get(attribute, "most_recent")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Survivorship:
        if data is None:
            return cls(rules=tuple((a, "most_recent") for a in PROFILE_ATTRIBUTES))
        data = _mapping(data, where)
        unknown = set(data) - {"source_priority", "attributes"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected source_priority, attributes")
        sources = _string_list(data.get("source_priority"), f"{where}.source_priority")
        attributes = _mapping(data.get("attributes") or {}, f"{where}.attributes")
        rules = []
        for attribute in PROFILE_ATTRIBUTES:
            rule = attributes.get(attribute, "most_recent")
            if rule not in RULES:
                raise ValueError(f"{where}.attributes.{attribute}: unknown rule {rule!r}; expected one of {list(RULES)}")
            rules.append((attribute, rule))
        extra = set(attributes) - set(PROFILE_ATTRIBUTES)
        if extra:
            raise ValueError(f"{where}.attributes: unknown attributes {sorted(extra)}; "
                             f"expected some of {list(PROFILE_ATTRIBUTES)}")
        return cls(source_priority=sources, rules=tuple(rules))


@dataclass(frozen=True)
class IdentityConfig:
    """Everything identity resolution needs: identifier types, guards, engine and survivorship."""

    types: tuple[IdentifierType, ...]
    blocked: BlockList = field(default_factory=BlockList)
    engine: Engine = "auto"
    checkpoint_interval: int = 2
    reliable_checkpoints: bool = False
    max_component_size: int = 10_000
    max_iterations: int = 100
    survivorship: Survivorship = field(default_factory=Survivorship)

    def type(self, name: str) -> IdentifierType:
        for identifier_type in self.types:
            if identifier_type.name == name:
                return identifier_type
        raise KeyError(f"unknown identifier type {name!r}")

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.types)

    @property
    def normalizers(self) -> dict[str, Normalizer]:
        """id_type -> its normaliser (``types.<type>.normalizer``)."""
        return {t.name: t.normalization for t in self.types}

    def fingerprint(self) -> str:
        """A hash of everything that decides components and ids: a change forces a full recompute."""
        decisive = asdict(self)
        decisive.pop("survivorship")
        decisive.pop("engine")
        decisive.pop("checkpoint_interval")
        decisive.pop("reliable_checkpoints")
        decisive.pop("max_iterations")
        text = json.dumps(decisive, sort_keys=True, default=list)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any) -> IdentityConfig:
        data = _mapping(data, "identity")
        known = {"types", "blocked", "engine", "checkpoint_interval", "reliable_checkpoints", "max_component_size", "max_iterations",
                 "survivorship"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown key; expected one of {sorted(known)}")
        types_data = data.get("types")
        if not types_data:
            raise ValueError("types: required mapping of identifier types is missing")
        types_data = _mapping(types_data, "types")
        types = tuple(IdentifierType.from_dict(str(name), spec, f"types.{name}") for name, spec in types_data.items())
        engine = data.get("engine", "auto")
        if engine not in ENGINES:
            raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
        return cls(
            types=types,
            blocked=BlockList.from_dict(data.get("blocked"), "blocked"),
            engine=engine,
            checkpoint_interval=_int(data, "checkpoint_interval", "", default=2, minimum=1),
            reliable_checkpoints=_bool(data, "reliable_checkpoints", False),
            max_component_size=_int(data, "max_component_size", "", default=10_000, minimum=2),
            max_iterations=_int(data, "max_iterations", "", default=100, minimum=1),
            survivorship=Survivorship.from_dict(data.get("survivorship"), "survivorship"),
        )
