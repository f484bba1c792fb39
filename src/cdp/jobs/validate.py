"""``cdp validate [--conf DIR]``: every config file parsed and cross-checked, without starting Spark.

Exit 0 when the configuration is consistent; exit 2 listing every problem found, each naming its file
and key. ``cdp run`` runs the same checks before its first step (:func:`validate_conf_cached`).

Each file is parsed with the same typed loaders the jobs use (so an error reads the same here and in a
job), then the files are checked against each other:

- identifier types used by sources exist in ``identity.yaml`` (date and timestamp patterns Spark
  cannot parse are refused by the sources loader itself, naming ``sources.<source>.fields.<field>.format``);
- tags read features of ``features.yaml`` or other tags; rule and model-population SQL parses
  (Spark's dialect, with sqlglot) and names only known columns; models read known features;
- audiences read known tags, profile attributes, event types (``sources.yaml``'s, with its ``enums``
  extensions) and journey steps;
- journeys (``conf/journeys/*.yaml``) are checked on load (unknown step kinds and next steps,
  unreachable steps, cycles without a wait, sends to a channel without a destination), then read known
  tags, profile attributes, event types and entry audiences; ``conf/journeys/_policy.yaml`` parses;
- quality suites' identifier types, patterns and enums come from ``identity.yaml`` and ``sources.yaml``
  (``$identifier_types``, ``$event_channels``... :func:`quality_vocabulary`); a literal list that
  differs from them, or an unknown term, is a problem;
- identity.yaml normaliser options, sources.yaml field rules, derived values (expressions parsed with
  sqlglot, their fields checked), lookup CSVs and enums are checked by their loaders.

Problems are collected, not raised one at a time: a person fixes them all in one go.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cdp.runtime.config import (
    ConfigError,
    JobContext,
    load_profile,
    load_yaml,
    lookup_reader,
    parse_file,
    sql_references,
)

logger = logging.getLogger("cdp.jobs.validate")  # not __name__: under spark-submit this module is __main__

T = TypeVar("T")


@dataclass(frozen=True)
class ConfigReport:
    """What validation found: ``problems`` (each names file and key) and what was checked."""

    problems: tuple[str, ...]
    checked: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def sql_columns(sql: str) -> list[str]:
    """Column names a Spark SQL expression reads (lambda variables excluded); ValueError if it does not parse."""
    _, references = sql_references(sql)
    return [parts[0] for parts in references if len(parts) == 1]


class _Collector:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: list[str] = []

    def parse(self, path: Path, parser: Callable[[Any], T]) -> T | None:
        self.checked.append(str(path))
        try:
            return parse_file(path, parser)
        except ConfigError as exc:
            self.problems.append(str(exc))
            return None

    def add(self, file: Path | str, key: str, message: str) -> None:
        self.problems.append(f"{file}: {key}: {message}")


def validate_conf(conf_dir: Path) -> ConfigReport:
    """Parse every config file under ``conf_dir`` and cross-check them; no Spark session is started."""
    from cdp.audiences.language import Audience, validate_audience, validate_campaign_references
    from cdp.expectations.quality import QualityConfig
    from cdp.features.config import FeatureConfig
    from cdp.identity.config import PROFILE_ATTRIBUTES, IdentityConfig
    from cdp.journeys import validate_journey
    from cdp.sources import EVENT_TYPES, SourcesConfig

    found = _Collector()
    for path in sorted((conf_dir / "profiles").glob("*.yaml")):
        found.checked.append(str(path))
        try:
            load_profile(conf_dir, path.stem)
        except ConfigError as exc:
            found.problems.append(str(exc))

    identity = found.parse(conf_dir / "identity.yaml", IdentityConfig.from_dict)
    id_types = set(identity.type_names) if identity else None

    sources = found.parse(conf_dir / "sources.yaml", lambda data: SourcesConfig.from_dict(
        data, lookup_reader(conf_dir / "sources.yaml")))
    if sources:
        for source in sources.sources.values():
            for i, identifier in enumerate(source.identifiers):
                if id_types is not None and identifier.type not in id_types:
                    found.add(conf_dir / "sources.yaml", f"sources.{source.name}.identifiers[{i}].type",
                              f"unknown identifier type {identifier.type!r}; identity.yaml defines {sorted(id_types)}")

    features = found.parse(conf_dir / "features.yaml", FeatureConfig.from_dict)
    feature_names = {f.name for f in features.features} | {"customer_id", "as_of"} if features else None
    tag_names = _check_tags(found, conf_dir, features, feature_names)

    audiences: list[Audience] = []
    for path in sorted((conf_dir / "audiences").glob("*.yaml")):
        audience = found.parse(path, lambda data, stem=path.stem: Audience.from_dict(data, default_name=stem))
        if audience is not None:
            audiences.append(audience)
    journeys = _parse_journeys(found, conf_dir)
    steps = {journey.name: journey.step_ids for _, journey in journeys}
    event_types = frozenset(sources.enums["event_types"]) if sources else EVENT_TYPES  # with its extensions
    if tag_names is not None:
        for audience in audiences:
            path = conf_dir / "audiences" / f"{audience.name}.yaml"
            for problem in validate_audience(audience, tags=tag_names, profile_attributes=PROFILE_ATTRIBUTES,
                                             event_types=event_types, journeys=steps):
                found.problems.append(f"{path}: {problem}")
        for path, journey in journeys:
            for problem in validate_journey(journey, tags=tag_names, profile_attributes=PROFILE_ATTRIBUTES,
                                            event_types=event_types, audiences={a.name for a in audiences},
                                            journeys=steps):
                found.problems.append(f"{path}: {problem}")
    for audience in audiences:  # past-campaign conditions name other audiences and their goals
        for problem in validate_campaign_references(audience, audiences):
            found.problems.append(f"{conf_dir / 'audiences' / f'{audience.name}.yaml'}: {problem}")

    if (conf_dir / "engage.yaml").exists():
        from cdp.engage import EngageConfig

        found.parse(conf_dir / "engage.yaml", EngageConfig.from_dict)

    quality_path = conf_dir / "quality.yaml"
    vocabulary = quality_vocabulary(identity, sources) if identity and sources else None
    if found.parse(quality_path, lambda data: QualityConfig.from_dict(data, "local", vocabulary)) is not None \
            and id_types:
        _check_quality_types(found, quality_path, load_yaml(quality_path), id_types)
    return ConfigReport(problems=tuple(found.problems), checked=tuple(found.checked))


def _parse_journeys(found: _Collector, conf_dir: Path) -> list[tuple[Path, Any]]:
    """Every journey file parsed (with its load-time checks) and the policy file; duplicate names refused."""
    from cdp.journeys import POLICY_FILE, Journey, JourneyPolicy

    folder = conf_dir / "journeys"
    if (folder / POLICY_FILE).exists():
        found.parse(folder / POLICY_FILE, JourneyPolicy.from_dict)
    journeys: list[tuple[Path, Any]] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        journey = found.parse(path, lambda data, stem=path.stem: Journey.from_dict(data, default_name=stem))
        if journey is None:
            continue
        if journey.name in seen:
            found.add(path, "name", f"journey {journey.name!r} is also defined in {seen[journey.name]}")
            continue
        seen[journey.name] = path
        journeys.append((path, journey))
    return journeys


def quality_vocabulary(identity: Any, sources: Any) -> dict[str, Any]:
    """What ``$name`` in conf/quality.yaml may name besides thresholds: identity.yaml's identifier
    types and validity patterns, sources.yaml's canonical enums (with its ``enums`` extensions)."""
    return {
        "identifier_types": list(identity.type_names),
        "identifier_patterns": {t.name: t.pattern for t in identity.types if t.pattern},
        **{name: list(values) for name, values in sources.enums.items()},
    }


def load_quality(ctx: JobContext) -> Any:
    """``conf/quality.yaml`` for the context's profile, its vocabulary taken from identity.yaml and
    sources.yaml (errors name file and key)."""
    from cdp.identity.config import IdentityConfig
    from cdp.jobs.land import read_sources
    from cdp.runtime.gates import load_quality_config

    identity = parse_file(ctx.conf_path("identity.yaml"), IdentityConfig.from_dict)
    return load_quality_config(ctx, quality_vocabulary(identity, read_sources(ctx.conf_path("sources.yaml"))))


def _check_tags(found: _Collector, conf_dir: Path, features: Any, feature_names: set[str] | None) -> set[str] | None:
    """Parse the tag catalogue; check its names and SQL against the features. Returns the tag names."""
    from cdp.tagging.algorithms import REGISTRY
    from cdp.tagging.catalogue import CatalogueError, merge
    from cdp.tagging.catalogue import parse_file as parse_catalogue_file

    files = sorted((conf_dir / "tags").glob("*.yaml"))
    found.checked.extend(str(path) for path in files)
    if not files:
        found.problems.append(f"{conf_dir / 'tags'}: no tag catalogue files (*.yaml)")
        return None
    if features is None:
        return None
    try:
        catalogue = merge(parse_catalogue_file(str(path), load_yaml(path), features.lists) for path in files)
    except (CatalogueError, ConfigError) as exc:
        found.problems.append(str(exc))
        return None
    tags = {tag.name for tag in catalogue.tags}
    known = (feature_names or set()) | tags
    for tag in catalogue.tags:
        if feature_names and tag.name in feature_names:
            found.problems.append(f"{tag.where()}: the name is already a feature")
        for name in tag.declared_inputs:
            if name not in known:
                found.problems.append(f"{tag.where()}: inputs: unknown feature or tag {name!r}")
        if tag.kind == "rule":
            _check_sql(found, tag.where() + ": sql", tag.sql or "", known - {tag.name})
        elif tag.kind == "algorithmic":
            algo = catalogue.algorithms.get(tag.algorithm or "")
            if algo is None:
                found.problems.append(f"{tag.where()}: algorithm: unknown instance {tag.algorithm!r}; "
                                      f"known: {sorted(catalogue.algorithms)}")
                continue
            impl = REGISTRY.get(algo.type)
            if impl is None:
                found.problems.append(f"{algo.file}: algorithms.{algo.name}.type: unknown type {algo.type!r}; "
                                      f"known: {sorted(REGISTRY)}")
                continue
            try:
                inputs = impl.inputs(algo.params, features.lists, f"{algo.file}: algorithms.{algo.name}")
            except ValueError as exc:
                found.problems.append(str(exc))
                continue
            for name in inputs:
                if feature_names and name not in feature_names:
                    found.problems.append(f"{algo.file}: algorithms.{algo.name}: unknown feature {name!r}")
        elif tag.model not in catalogue.models:
            found.problems.append(f"{tag.where()}: model: unknown model {tag.model!r}; known: {sorted(catalogue.models)}")
    for spec in catalogue.models.values():
        for name in spec.inputs:
            if feature_names and name not in feature_names:
                found.problems.append(f"{spec.file}: models.{spec.name}.features: unknown feature {name!r}")
        _check_sql(found, f"{spec.file}: models.{spec.name}.population", spec.population, feature_names or set())
    return tags


def _check_sql(found: _Collector, where: str, sql: str, known: set[str]) -> None:
    try:
        columns = sql_columns(sql)
    except ValueError as exc:
        found.problems.append(f"{where}: {exc}")
        return
    unknown = [name for name in columns if name not in known]
    if unknown:
        found.problems.append(f"{where}: unknown column(s) {unknown}")


def _check_quality_types(found: _Collector, path: Path, data: Any, id_types: set[str]) -> None:
    """Identifier types named by the quality suites (value sets over id_type, format patterns) are identity.yaml's."""
    for key, node in _walk(data, ""):
        if not isinstance(node, dict):
            continue
        kwargs = node.get("kwargs")
        if isinstance(kwargs, dict) and kwargs.get("column") == "id_type" and isinstance(kwargs.get("value_set"), list):
            listed = set(map(str, kwargs["value_set"]))
            if listed != id_types:
                found.add(path, f"{key}.kwargs.value_set",
                          f"identifier types {sorted(listed)} differ from identity.yaml's {sorted(id_types)} "
                          f"(missing {sorted(id_types - listed)}, unknown {sorted(listed - id_types)})")
        patterns = (node.get("params") or {}).get("patterns") if node.get("view") == "identifier_formats" else None
        if isinstance(patterns, dict):
            for name in patterns:
                if name not in id_types:
                    found.add(path, f"{key}.params.patterns.{name}", f"unknown identifier type {name!r}; "
                              f"identity.yaml defines {sorted(id_types)}")


def _walk(node: Any, key: str) -> Iterable[tuple[str, Any]]:
    yield key, node
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _walk(child, f"{key}.{child_key}" if key else str(child_key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _walk(child, f"{key}[{i}]")


_CACHE: dict[tuple[str, tuple[tuple[str, int, int], ...]], ConfigReport] = {}
_CACHE_LOCK = threading.Lock()  # a caller waits for a validation under way (cdp run starts one early)


def validate_conf_cached(conf_dir: Path) -> ConfigReport:
    """:func:`validate_conf`, computed once per state of the folder's files (path, size, mtime) per process."""
    files = sorted(p for p in Path(conf_dir).rglob("*.yaml") if p.is_file())
    key = (str(Path(conf_dir).resolve()), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = validate_conf(Path(conf_dir))
        return _CACHE[key]


def run(spark: Any, ctx: JobContext) -> int:
    """Validate ``ctx.conf_dir``; log every problem; return the exit code (0 ok, 2 problems)."""
    started = time.perf_counter()
    report = validate_conf(ctx.conf_dir)
    seconds = time.perf_counter() - started
    if report.ok:
        logger.info("configuration %s is consistent: %d files checked in %.1f s", ctx.conf_dir,
                    len(report.checked), seconds)
        return 0
    for problem in report.problems:
        logger.error("%s", problem)
    logger.error("configuration %s: %d problem(s) in %d files checked", ctx.conf_dir, len(report.problems),
                 len(report.checked))
    return 2


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    return run(spark, ctx)


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("validate", argv, _run_from_args, description="check every config file (no Spark)",
                    needs_spark=False)


if __name__ == "__main__":
    sys.exit(main())
