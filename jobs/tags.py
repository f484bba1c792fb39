"""``cdp tags list`` / ``cdp tags show NAME``: the tag catalogue and each tag's lineage.

Also the one place jobs load and validate the catalogue (``load_catalogue``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from features import FeatureConfig, feature_schema
from jobs.config import ConfigError, JobContext, load_yaml, parse_file
from jobs.entry import job_main
from tagging import Catalogue, CatalogueError, merge, validate_catalogue
from tagging import parse_file as parse_catalogue_file

logger = logging.getLogger(__name__)


def load_catalogue(spark: SparkSession, ctx: JobContext, config: FeatureConfig,
                   schema: T.StructType | None = None) -> Catalogue:
    """Parse every ``conf/tags/*.yaml`` and validate it against the feature schema (the given one, or
    the one derived from conf/features.yaml). Errors become ConfigError naming file and tag."""
    folder = ctx.conf_path("tags")
    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        raise ConfigError(f"{folder}: no tag catalogue files (*.yaml)")
    try:
        catalogue = merge(parse_catalogue_file(str(path), load_yaml(path), config.lists) for path in files)
        schema = schema or feature_schema(spark, config)
        validated = validate_catalogue(catalogue, schema, config.lists, spark)
    except CatalogueError as exc:
        raise ConfigError(str(exc)) from exc
    logger.info("tag catalogue: %d tags from %d files (%s)", len(validated.tags), len(files),
                ", ".join(f"{k} {len(validated.of_kind(k))}" for k in ("rule", "algorithmic", "predictive")))
    return validated


def describe(catalogue: Catalogue, name: str, config: FeatureConfig) -> str:
    tag = catalogue.get(name)
    lines = [f"{tag.name}  ({tag.kind}, {tag.value_type})", f"  {tag.display_en} / {tag.display_zh}",
             f"  {tag.description}", f"  category: {tag.category}   owner: {tag.owner}   file: {tag.file}",
             f"  version: {catalogue.version(tag) if tag.kind != 'predictive' else 'model version at scoring'}"]
    if tag.kind == "rule":
        lines.append(f"  sql: {tag.sql}")
    elif tag.kind == "algorithmic":
        algo = catalogue.algorithms[tag.algorithm or ""]
        lines.append(f"  algorithm: {algo.name} ({algo.type}) output {tag.output}; params {dict(algo.params)}")
    else:
        spec = catalogue.models[tag.model or ""]
        lines.append(f"  model: models:/{spec.name}@{tag.alias} ({spec.task}, horizon {spec.horizon_days} days, "
                     f"population: {spec.population})")
    lines.append("  lineage:")
    lines += _lineage(catalogue, tag.name, config, depth=2, seen=set())
    used_by = [t.name for t in catalogue.tags if tag.name in t.inputs]
    if used_by:
        lines.append(f"  used by: {', '.join(used_by)}")
    return "\n".join(lines)


def _lineage(catalogue: Catalogue, name: str, config: FeatureConfig, depth: int, seen: set[str]) -> list[str]:
    tag = catalogue.get(name)
    out = []
    for dep in tag.inputs:
        pad = "  " * depth
        try:
            sub = catalogue.get(dep)
        except KeyError:
            try:
                feature = config.feature(dep)
                out.append(f"{pad}feature {dep} [{feature.family}/{feature.source}] {feature.description}")
            except KeyError:
                out.append(f"{pad}feature {dep}")
            continue
        out.append(f"{pad}tag {dep} ({sub.kind})")
        if dep not in seen:
            seen.add(dep)
            out += _lineage(catalogue, dep, config, depth + 1, seen)
    return out


def run(spark: SparkSession, ctx: JobContext, command: str, name: str | None = None) -> int:
    config = parse_file(ctx.conf_path("features.yaml"), FeatureConfig.from_dict)
    catalogue = load_catalogue(spark, ctx, config)
    if command == "list":
        for tag in catalogue.tags:
            print(f"{tag.name:<44} {tag.kind:<12} {tag.value_type:<8} {tag.category:<13} "  # noqa: T201 - CLI output
                  f"{tag.display_en} / {tag.display_zh}")
        print(f"{len(catalogue.tags)} tags")  # noqa: T201
        return 0
    try:
        print(describe(catalogue, name or "", config))  # noqa: T201
    except KeyError:
        print(f"cdp tags: unknown tag {name!r}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("command", choices=["list", "show"])
        parser.add_argument("name", nargs="?", help="tag name (for show)")

    return job_main("tags", argv, lambda spark, ctx, args: run(spark, ctx, args.command, args.name), add,
                    description="list / show the tag catalogue and lineage")


if __name__ == "__main__":
    sys.exit(main())
