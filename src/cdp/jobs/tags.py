"""``cdp tags list`` / ``cdp tags show NAME``: the tag catalogue and each tag's lineage;
``cdp tags changes NAME``: how a tag's values changed since the previous ``cdp tag`` run.

Also the one place jobs load and validate the catalogue (``load_catalogue``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from cdp.features import FeatureConfig, feature_schema
from cdp.jobs.entry import job_main
from cdp.lake import Lake
from cdp.runtime.config import ConfigError, JobContext, load_yaml, parse_file
from cdp.tagging import Catalogue, CatalogueError, Tag, clustering_instances, merge, validate_catalogue
from cdp.tagging import parse_file as parse_catalogue_file
from cdp.tagging.changes import tag_transitions

logger = logging.getLogger(__name__)

TAGS_WIDE = "tags_wide"


def parse_catalogue(ctx: JobContext, config: FeatureConfig) -> Catalogue:
    """Every ``conf/tags/*.yaml`` parsed and merged, not validated against the features (no Spark).
    Errors become ConfigError naming file and tag."""
    folder = ctx.conf_path("tags")
    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        raise ConfigError(f"{folder}: no tag catalogue files (*.yaml)")
    try:
        return merge(parse_catalogue_file(str(path), load_yaml(path), config.lists) for path in files)
    except CatalogueError as exc:
        raise ConfigError(str(exc)) from exc


def load_catalogue(spark: SparkSession, ctx: JobContext, config: FeatureConfig,
                   schema: T.StructType | None = None) -> Catalogue:
    """Parse every ``conf/tags/*.yaml`` and validate it against the feature schema (the given one, or
    the one derived from conf/features.yaml). Errors become ConfigError naming file and tag."""
    catalogue = parse_catalogue(ctx, config)
    try:
        schema = schema or feature_schema(spark, config)
        validated = validate_catalogue(catalogue, schema, config.lists, spark)
    except CatalogueError as exc:
        raise ConfigError(str(exc)) from exc
    logger.info("tag catalogue: %d tags from %d files (%s)", len(validated.tags), len({t.file for t in validated.tags}),
                ", ".join(f"{k} {len(validated.of_kind(k))}" for k in ("rule", "algorithmic", "predictive")))
    return validated


def _version_text(catalogue: Catalogue, tag: Tag) -> str:
    if tag.kind == "predictive":
        return "model version at scoring"
    if tag.algorithm in clustering_instances(catalogue):
        return f"model version at scoring ({catalogue.version(tag)} when fitted for the run)"
    return catalogue.version(tag)


def describe(catalogue: Catalogue, name: str, config: FeatureConfig) -> str:
    tag = catalogue.get(name)
    lines = [f"{tag.name}  ({tag.kind}, {tag.value_type})", f"  {tag.display_en} / {tag.display_zh}",
             f"  {tag.description}", f"  category: {tag.category}   owner: {tag.owner}   file: {tag.file}",
             f"  version: {_version_text(catalogue, tag)}"]
    if tag.kind == "rule":
        lines.append(f"  sql: {tag.sql}")
    elif tag.kind == "algorithmic":
        algo = catalogue.algorithms[tag.algorithm or ""]
        lines.append(f"  algorithm: {algo.name} ({algo.type}) output {tag.output}; params {dict(algo.params)}")
        if algo.name in clustering_instances(catalogue):
            lines.append(f"  model: models:/{algo.name}@{algo.params.get('alias', 'champion')} (fitted by cdp train; "
                         "fitted for the run when none is registered)")
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


def _version_label(df: DataFrame, version: int) -> str:
    first = df.select("run_id", "as_of").limit(1).collect()
    return f"v{version}" + (f" (run {first[0]['run_id']}, as of {first[0]['as_of']})" if first else " (empty)")


def changes(spark: SparkSession, ctx: JobContext, name: str, against: int | None = None, top: int = 20) -> int:
    """Print how ``name`` changed between the latest tags_wide and an earlier version (default: the one
    before it): customers whose value changed, and the most common (previous -> current) transitions."""
    lake = Lake(spark, ctx.lake_root)
    if not lake.exists(TAGS_WIDE):
        print(f"cdp tags changes: no {TAGS_WIDE} table in {ctx.lake_root}; run `cdp tag` first", file=sys.stderr)  # noqa: T201
        return 2
    latest = lake.version(TAGS_WIDE)
    against = latest - 1 if against is None else against
    if not 0 <= against < latest:
        print(f"cdp tags changes: {TAGS_WIDE} has versions 0..{latest}; nothing earlier than v{latest} to compare "  # noqa: T201
              f"with as v{against}", file=sys.stderr)
        return 2
    current, previous = lake.read(TAGS_WIDE), lake.read(TAGS_WIDE, version=against)
    if name not in current.columns and name not in previous.columns:
        print(f"cdp tags changes: tag {name!r} is in neither {TAGS_WIDE} v{latest} nor v{against}", file=sys.stderr)  # noqa: T201
        return 2
    transitions = tag_transitions(current, previous, name).collect()
    total = sum(r["customers"] for r in transitions)
    changed = sum(r["customers"] for r in transitions if r["changed"])
    lines = [f"tag {name}: {TAGS_WIDE} {_version_label(current, latest)} against {_version_label(previous, against)}",
             f"{total:,} customers; {changed:,} changed value ({changed / max(total, 1):.1%})",
             f"{'previous':<28} {'current':<28} {'customers':>12}"]
    changed_rows = [r for r in transitions if r["changed"]]
    lines += [f"{_shown(r['previous']):<28} {_shown(r['current']):<28} {r['customers']:>12,}"
              for r in changed_rows[:top]]
    if len(changed_rows) > top:
        lines.append(f"... {len(changed_rows) - top} more transitions")
    print("\n".join(lines))  # noqa: T201 - CLI output
    return 0


def _shown(value: str | None) -> str:
    return "null" if value is None else value[:28]


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
        parser.add_argument("command", choices=["list", "show", "changes"])
        parser.add_argument("name", nargs="?", help="tag name (for show and changes)")
        parser.add_argument("--against", type=int, default=None,
                            help="changes: the tags_wide version to compare with (default: the one before the latest)")
        parser.add_argument("--top", type=int, default=20, help="changes: transitions shown (default 20)")

    def run_from_args(spark: SparkSession, ctx: JobContext, args: argparse.Namespace) -> int:
        if args.command == "changes":
            if not args.name:
                print("cdp tags changes: give a tag name", file=sys.stderr)  # noqa: T201
                return 2
            return changes(spark, ctx, args.name, args.against, args.top)
        return run(spark, ctx, args.command, args.name)

    return job_main("tags", argv, run_from_args, add,
                    description="list / show the tag catalogue and lineage; what changed in a tag since the last run")


if __name__ == "__main__":
    sys.exit(main())
