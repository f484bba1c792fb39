"""Write-audit-publish: stage a candidate table, validate it with its quality suite, then publish.

Any job that publishes a table behind a gate calls :func:`publish_with_gates`::

    outcome = publish_with_gates(lake, customers_df, "identity_map", "identity_map", ctx,
                                 params={"identity_type_counts": {"limits": limits}},
                                 metadata={"run_id": ctx.run_id})

1. the candidate is written to ``_staging_<table>`` (so what is validated is exactly what gets
   published, even when the frame is not deterministic);
2. the suite from ``conf/quality.yaml`` runs on the staged table, with relative bounds taken from
   the currently published version;
3. an HTML and a JSON report go to ``<lake>/_reports/quality/<run_id>/<table>.{html,json}``, with
   Great Expectations' Data Docs page of each check under ``data_docs/<table>/``;
4. on success the staged data is written to ``<table>`` (``mode="overwrite"`` unless told
   otherwise); on a blocking failure nothing is published, the last good version stays current and
   :class:`cdp.runtime.errors.GateFailed` (a ``JobFailed``) is raised (the job exits 1).
"""
from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame

from cdp.expectations.quality import QualityConfig, SuiteResult, render_report_html, validate_suite
from cdp.lake import Lake
from cdp.lake.paths import is_local, local_path
from cdp.runtime.config import JobContext, parse_file
from cdp.runtime.errors import GateFailed

logger = logging.getLogger(__name__)

STAGING_PREFIX = "_staging_"
REPORTS_DIR = "_reports/quality"


@dataclass(frozen=True)
class GateOutcome:
    table: str
    version: int | None  # None when the write was skipped as an idempotent re-run
    result: SuiteResult  # the first suite's
    report_path: str
    results: tuple[SuiteResult, ...] = ()  # every suite's, in order


@lru_cache(maxsize=8)
def _load_config(path: str, profile: str, mtime: float, vocabulary: str) -> QualityConfig:
    terms = json.loads(vocabulary) if vocabulary else None
    return parse_file(path, lambda data: QualityConfig.from_dict(data, profile, terms))


def load_quality_config(ctx: JobContext, vocabulary: Mapping[str, Any] | None = None) -> QualityConfig:
    """``conf/quality.yaml`` resolved for the context's profile (errors name file and key).

    ``vocabulary``: the ``$name`` terms from identity.yaml and sources.yaml
    (``cdp.jobs.validate.load_quality`` builds them); without it, suites that use one cannot run.
    """
    path = ctx.conf_path("quality.yaml")
    mtime = path.stat().st_mtime if path.exists() else 0.0
    key = json.dumps(vocabulary, sort_keys=True) if vocabulary is not None else ""
    return _load_config(str(path), ctx.profile.name, mtime, key)


def staging_name(table: str) -> str:
    return f"{STAGING_PREFIX}{table}"


def write_text(root: str, relative: str, text: str) -> str:
    """Write a text file under the lake root (local path or any URI pyarrow can open)."""
    if not is_local(root):
        from cdp.lake.storage import filesystem as open_filesystem

        filesystem, base = open_filesystem(root)
        path = posixpath.join(base, relative)
        filesystem.create_dir(posixpath.dirname(path), recursive=True)
        with filesystem.open_output_stream(path) as out:
            out.write(text.encode("utf-8"))
        return f"{root.rstrip('/')}/{relative}"
    path = Path(local_path(root)) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def write_report(lake: Lake, run_id: str, result: SuiteResult, name: str | None = None) -> str:
    """HTML (for people) and JSON (for tools) reports of one gate; returns the HTML path.

    Files are ``<name>.html`` / ``<name>.json`` (default name: the table), plus Great Expectations'
    Data Docs page of each check under ``data_docs/<name>/<n>_<view>.html``, linked from the HTML.
    """
    folder = f"{REPORTS_DIR}/{run_id}"
    name = name or result.table
    links = {}
    for number, page in enumerate(result.data_docs, start=1):
        relative = f"data_docs/{name}/{number:02d}_{page.view}.html"
        write_text(lake.root, f"{folder}/{relative}", page.html)
        links[f"{number:02d} {page.view}"] = relative
    write_text(lake.root, f"{folder}/{name}.json", json.dumps(result.to_dict(), indent=2, default=str))
    return write_text(lake.root, f"{folder}/{name}.html", render_report_html(result, links))


def audit(lake: Lake, candidate: DataFrame, table: str, suite_name: str, ctx: JobContext, *,
          inputs: Mapping[str, DataFrame] | None = None,
          params: Mapping[str, Mapping[str, Any]] | None = None,
          config: QualityConfig | None = None, report_name: str | None = None) -> tuple[SuiteResult, str]:
    """Validate ``candidate`` against the suite (previous = the published ``table``); write the report.

    Use it for a second suite on the same candidate before :func:`publish_with_gates` (e.g.
    ``tags_drift`` on tags_wide, with ``report_name="tags_wide.tags_drift"``); raise ``GateFailed``
    yourself when ``not result.success``.
    """
    config = config or load_quality_config(ctx)
    suite = config.suite(suite_name)
    previous = lake.read(table) if lake.exists(table) else None
    result = validate_suite(suite, candidate, table=table, previous=previous, inputs=inputs, params=params,
                            run_id=ctx.run_id)
    report = write_report(lake, ctx.run_id, result, report_name)
    for outcome in result.warnings:
        logger.warning("%s: gate warning %s %s observed=%s unexpected=%s", table, outcome.view,
                       outcome.expectation, outcome.observed_value, outcome.unexpected_count)
    return result, report


def publish_with_gates(lake: Lake, df: DataFrame, table: str, suite_name: str | Sequence[str], ctx: JobContext, *,
                       inputs: Mapping[str, DataFrame] | None = None,
                       params: Mapping[str, Mapping[str, Any]] | None = None,
                       config: QualityConfig | None = None,
                       candidate_inputs: Callable[[DataFrame], Mapping[str, DataFrame]] | None = None,
                       **write_kwargs: Any) -> GateOutcome:
    """Stage, validate and (only when every gate passes) publish ``df`` as ``table``.

    Args:
        lake: the lake.
        df: the candidate table.
        table: the table to publish.
        suite_name: a suite of ``conf/quality.yaml``, or several run on the same staged candidate
            (the first one's report is ``<table>.html``, the others' ``<table>.<suite>.html``).
        ctx: job context (conf dir, profile for thresholds, run id for the report folder).
        inputs: extra frames the suite's views need (e.g. ``consent_current``).
        params: runtime view params, e.g. ``{"identity_type_counts": {"limits": {...}}}``.
        candidate_inputs: builds more inputs from the staged candidate, once, before the suites run
            (``cdp tag`` computes its tag statistics here and keeps them for ``tag_stats``).
        write_kwargs: passed to ``lake.write`` for the publish (default ``mode="overwrite"``). A plain
            overwrite publishes with ``lake.copy_overwrite`` (the staged files, copied).

    Raises:
        GateFailed: a blocking expectation failed; the message names it and the report path.
    """
    suite_names = (suite_name,) if isinstance(suite_name, str) else tuple(suite_name)
    staging = staging_name(table)
    lake.write(df, staging, mode="overwrite", metadata={"run_id": ctx.run_id, "stage_of": table})
    candidate = lake.read(staging)
    if candidate_inputs is not None:
        inputs = {**dict(inputs or {}), **dict(candidate_inputs(candidate))}
    results, reports = [], []
    for position, name in enumerate(suite_names):
        result, report = audit(lake, candidate, table, name, ctx, inputs=inputs, params=params, config=config,
                               report_name=None if position == 0 else f"{table}.{name}")
        results.append(result)
        reports.append(report)
    failed = [(result, report) for result, report in zip(results, reports, strict=True) if not result.success]
    if failed:
        for result, report in failed:
            logger.error("%s: quality gate %s failed; %s is unchanged; report %s", table, result.suite, table, report)
        details = "; ".join(f"{result.summary()} (report: {report})" for result, report in failed)
        raise GateFailed(f"quality gate failed, {table} not published: {details}")
    write_kwargs.setdefault("mode", "overwrite")
    metadata = {"run_id": ctx.run_id, "quality_suite": ",".join(suite_names),
                **dict(write_kwargs.pop("metadata", None) or {})}
    if set(write_kwargs) == {"mode"} and write_kwargs["mode"] == "overwrite":
        # the staged table is what was audited: publish its files as they are
        version = lake.copy_overwrite(staging, table, metadata=metadata)
    else:
        version = lake.write(candidate, table, metadata=metadata, **write_kwargs)
    logger.info("%s: gates %s passed (%d expectations), published version %s", table, ", ".join(suite_names),
                sum(len(result.outcomes) for result in results), version)
    return GateOutcome(table=table, version=version, result=results[0], report_path=reports[0],
                       results=tuple(results))


__all__ = ["GateOutcome", "audit", "load_quality_config", "publish_with_gates", "staging_name", "write_report"]
