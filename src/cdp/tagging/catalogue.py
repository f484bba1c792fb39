"""The tag catalogue: ``conf/tags/*.yaml`` parsed into typed definitions, expanded and validated.

A file holds ``tags`` (single definitions), ``templates`` (one definition expanded over lists: the
feature lists of ``conf/features.yaml`` or ``lists`` declared in the file) and ``algorithms``
(named algorithm instances with their parameters, referenced by algorithmic tags). Predictive
tag files also declare the ``models`` that ``cdp train`` trains.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

from cdp.tagging.clv import CLV_INPUTS

KINDS = ("rule", "algorithmic", "predictive")
VALUE_TYPES = ("boolean", "int", "double", "string")
SPARK_TYPES = {"boolean": "boolean", "int": "int", "double": "double", "string": "string"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
IDENTIFIER = re.compile(r"`?([A-Za-z_][A-Za-z0-9_]*)`?")

Kind = Literal["rule", "algorithmic", "predictive"]
ValueType = Literal["boolean", "int", "double", "string"]


class CatalogueError(ValueError):
    """A tag definition is invalid; the message names the file and the tag."""


@dataclass(frozen=True)
class Tag:
    name: str
    display_zh: str
    display_en: str
    description: str
    category: str
    kind: Kind
    value_type: ValueType
    owner: str
    file: str
    sql: str | None = None  # rule
    algorithm: str | None = None  # algorithmic: instance name in the file's `algorithms`
    output: str | None = None  # algorithmic: which output of the instance
    model: str | None = None  # predictive: registered model name
    alias: str = "champion"
    declared_inputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # resolved lineage: features and tags read (filled by validation)

    @property
    def definition(self) -> dict[str, Any]:
        if self.kind == "rule":
            return {"sql": self.sql, "type": self.value_type}
        if self.kind == "algorithmic":
            return {"algorithm": self.algorithm, "output": self.output, "type": self.value_type}
        return {"model": self.model, "alias": self.alias, "type": self.value_type}

    def where(self) -> str:
        return f"{self.file}: tag {self.name!r}"


@dataclass(frozen=True)
class Algorithm:
    name: str
    type: str
    params: Mapping[str, Any]
    file: str

    @property
    def version(self) -> str:
        payload = json.dumps({"type": self.type, "params": self.params}, sort_keys=True, default=str)
        return "def:" + hashlib.sha1(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ModelSpec:
    """A predictive model trained by ``cdp train``."""

    name: str  # registered model name
    task: Literal["churn", "purchase", "clv"]
    horizon_days: int
    population: str  # SQL over features selecting who is scored/trained
    features: tuple[str, ...]
    file: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The feature columns the model is fitted on and scores from (CLV: its fixed RFM inputs)."""
        return CLV_INPUTS if self.task == "clv" else self.features


@dataclass(frozen=True)
class Catalogue:
    tags: tuple[Tag, ...]
    algorithms: Mapping[str, Algorithm]
    models: Mapping[str, ModelSpec]

    def get(self, name: str) -> Tag:
        for tag in self.tags:
            if tag.name == name:
                return tag
        raise KeyError(name)

    def of_kind(self, kind: str) -> list[Tag]:
        return [t for t in self.tags if t.kind == kind]

    def version(self, tag: Tag) -> str:
        payload: dict[str, Any] = dict(tag.definition)
        if tag.kind == "algorithmic" and tag.algorithm in self.algorithms:
            payload["algorithm_version"] = self.algorithms[tag.algorithm].version
        return "def:" + hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _namespace(item: Any) -> Any:
    if isinstance(item, dict):
        fields = {str(k): v for k, v in item.items()}
        if "slug" not in fields and "value" in fields:
            fields["slug"] = re.sub(r"[^a-z0-9]+", "_", str(fields["value"]).lower()).strip("_")
        return SimpleNamespace(**fields)
    if hasattr(item, "fields"):
        return SimpleNamespace(**item.fields())
    return item


def _fill(text: Any, values: Mapping[str, Any], where: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return text.format_map(values)
    except (KeyError, AttributeError, IndexError, ValueError) as exc:
        raise CatalogueError(f"{where}: cannot expand {text!r}: {exc!r}") from exc


def parse_file(file: str, data: Any, lists: Mapping[str, Iterable[Any]]) -> Catalogue:
    """Parse one catalogue file's content (``file`` names it in errors). ``lists``: the feature lists."""
    if not isinstance(data, dict):
        raise CatalogueError(f"{file}: expected a mapping with 'tags', 'templates', 'algorithms'")
    unknown = set(data) - {"defaults", "lists", "tags", "templates", "algorithms", "models"}
    if unknown:
        raise CatalogueError(f"{file}: unknown top-level keys {sorted(unknown)}")
    defaults = data.get("defaults") or {}
    all_lists: dict[str, list[Any]] = {k: [_namespace(i) for i in v] for k, v in lists.items()}
    for name, items in (data.get("lists") or {}).items():
        if not isinstance(items, list) or not items:
            raise CatalogueError(f"{file}: lists.{name}: expected a non-empty list")
        all_lists[str(name)] = [_namespace(i) for i in items]
    tags: list[Tag] = []
    for i, raw in enumerate(data.get("tags") or []):
        tags.append(_parse_tag(file, raw, defaults, {}, f"tags[{i}]"))
    for i, template in enumerate(data.get("templates") or []):
        where = f"{file}: templates[{i}]"
        if not isinstance(template, dict) or not isinstance(template.get("for_each"), dict):
            raise CatalogueError(f"{where}: expected a mapping with for_each: {{variable: list}}")
        variables = template["for_each"]
        pools = []
        for var, list_name in variables.items():
            if list_name not in all_lists:
                raise CatalogueError(f"{where}.for_each.{var}: unknown list {list_name!r}; known: {sorted(all_lists)}")
            pools.append([(str(var), item) for item in all_lists[list_name]])
        body = {k: v for k, v in template.items() if k not in ("for_each", "when")}
        for combo in itertools.product(*pools):
            values = dict(combo)
            when = template.get("when")
            if when is not None and not _eval_when(when, values, where):
                continue
            expanded = {k: _fill(v, values, where) for k, v in body.items()}
            tags.append(_parse_tag(file, expanded, defaults, values, f"templates[{i}]"))
    algorithms: dict[str, Algorithm] = {}
    for name, spec in (data.get("algorithms") or {}).items():
        if not isinstance(spec, dict) or "type" not in spec:
            raise CatalogueError(f"{file}: algorithms.{name}: expected a mapping with 'type'")
        params = {k: v for k, v in spec.items() if k != "type"}
        algorithms[str(name)] = Algorithm(name=str(name), type=str(spec["type"]), params=params, file=file)
    models: dict[str, ModelSpec] = {}
    for name, spec in (data.get("models") or {}).items():
        where = f"{file}: models.{name}"
        if not isinstance(spec, dict):
            raise CatalogueError(f"{where}: expected a mapping")
        task = spec.get("task")
        if task not in ("churn", "purchase", "clv"):
            raise CatalogueError(f"{where}.task: {task!r} is not churn | purchase | clv")
        horizon = spec.get("horizon_days")
        if not isinstance(horizon, int) or horizon <= 0:
            raise CatalogueError(f"{where}.horizon_days: expected a positive integer")
        feats = spec.get("features") or []
        if task != "clv" and (not isinstance(feats, list) or not feats):
            raise CatalogueError(f"{where}.features: expected a non-empty list of feature names")
        if spec.get("age_convention", "as_of") not in ("as_of", "last_day"):
            raise CatalogueError(f"{where}.age_convention: {spec['age_convention']!r} is not as_of | last_day")
        band = spec.get("calibration_band", [0.8, 1.25])
        if not (isinstance(band, list) and len(band) == 2 and all(isinstance(b, int | float) for b in band)
                and 0 < band[0] <= 1 <= band[1]):
            raise CatalogueError(f"{where}.calibration_band: expected [low, high] with 0 < low <= 1 <= high, "
                                 f"got {band!r}")
        models[str(name)] = ModelSpec(
            name=str(name), task=task, horizon_days=horizon, population=str(spec.get("population", "true")),
            features=tuple(str(f) for f in feats), file=file,
            params={k: v for k, v in spec.items() if k not in ("task", "horizon_days", "population", "features")})
    return Catalogue(tags=tuple(tags), algorithms=algorithms, models=models)


def _eval_when(when: Any, values: Mapping[str, Any], where: str) -> bool:
    """``when: "{a.slug} != {b.slug}"``-style filters on template combinations (string comparison)."""
    text = _fill(when, values, where)
    for op in ("!=", "=="):
        if op in text:
            left, right = (part.strip() for part in text.split(op, 1))
            return (left != right) if op == "!=" else (left == right)
    raise CatalogueError(f"{where}.when: expected 'x == y' or 'x != y', got {when!r}")


def _parse_tag(file: str, raw: Any, defaults: Mapping[str, Any], values: Mapping[str, Any], index: str) -> Tag:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{file}: {index}: expected a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CatalogueError(f"{file}: {index}: name {name!r} is not lower snake_case")
    where = f"{file}: tag {name!r}"
    merged = {**defaults, **raw}
    allowed = {"name", "zh", "en", "description", "category", "kind", "type", "owner", "sql", "algorithm",
               "output", "model", "alias", "inputs"}
    unknown = set(raw) - allowed
    if unknown:
        raise CatalogueError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("zh", "en", "description", "category", "kind", "type", "owner"):
        if not merged.get(key):
            raise CatalogueError(f"{where}: required key {key!r} is missing")
    kind, value_type = merged["kind"], merged["type"]
    if kind not in KINDS:
        raise CatalogueError(f"{where}: kind {kind!r} is not one of {list(KINDS)}")
    if value_type not in VALUE_TYPES:
        raise CatalogueError(f"{where}: type {value_type!r} is not one of {list(VALUE_TYPES)}")
    required = {"rule": ("sql",), "algorithmic": ("algorithm", "output"), "predictive": ("model",)}[kind]
    for key in required:
        if not merged.get(key):
            raise CatalogueError(f"{where}: a {kind} tag needs {key!r}")
    inputs = merged.get("inputs") or []
    if not isinstance(inputs, list):
        raise CatalogueError(f"{where}: inputs must be a list of feature or tag names")
    return Tag(name=name, display_zh=str(merged["zh"]), display_en=str(merged["en"]),
               description=str(merged["description"]), category=str(merged["category"]), kind=kind,
               value_type=value_type, owner=str(merged["owner"]), file=file,
               sql=str(merged["sql"]).strip() if kind == "rule" else None,
               algorithm=merged.get("algorithm") if kind == "algorithmic" else None,
               output=merged.get("output") if kind == "algorithmic" else None,
               model=merged.get("model") if kind == "predictive" else None,
               alias=str(merged.get("alias", "champion")),
               declared_inputs=tuple(str(i) for i in inputs))


def merge(catalogues: Iterable[Catalogue]) -> Catalogue:
    tags: list[Tag] = []
    algorithms: dict[str, Algorithm] = {}
    models: dict[str, ModelSpec] = {}
    seen: dict[str, str] = {}
    for catalogue in catalogues:
        for tag in catalogue.tags:
            if tag.name in seen:
                raise CatalogueError(f"{tag.where()}: also defined in {seen[tag.name]}")
            seen[tag.name] = tag.file
            tags.append(tag)
        for name, algo in catalogue.algorithms.items():
            if name in algorithms:
                raise CatalogueError(f"{algo.file}: algorithms.{name}: also defined in {algorithms[name].file}")
            algorithms[name] = algo
        for name, spec in catalogue.models.items():
            if name in models:
                raise CatalogueError(f"{spec.file}: models.{name}: also defined in {models[name].file}")
            models[name] = spec
    return Catalogue(tags=tuple(tags), algorithms=algorithms, models=models)
