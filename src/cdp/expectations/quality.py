"""Quality gates: Great Expectations suites declared in ``conf/quality.yaml``, run on Spark frames.

``conf/quality.yaml``::

    thresholds:                      # named numbers; "$name" in a suite refers to one
      audience_min_ratio: 0.5
    profiles:                        # per environment (the --profile of the job)
      local: {thresholds: {audience_min_ratio: 0.0}, warn_only: [tags_wide]}
    suites:
      audience:                      # suite name, passed by the job that publishes
        warn_only: false             # true: failures are reported, never block
        checks:
          - view: table              # the candidate itself, or a view from VIEWS
            id_columns: [customer_id]        # identify sample failing rows
            expectations:
              - expectation: expect_table_row_count_to_be_between
                kwargs: {min_value: 0}
                relative: {min_ratio: $audience_min_ratio, max_ratio: 2.0}   # vs the previous version
                warn_only: false

"$name" may also name a **vocabulary** term: values that come from the other config files, not from
lists written here (``$identifier_types`` and ``$identifier_patterns`` from ``identity.yaml``;
``$event_types``, ``$event_channels``, ``$order_statuses``, ``$order_channels``, ``$consent_channels``
from ``sources.yaml`` with its ``enums`` extensions). The caller that has those files passes them
(``cdp.jobs.validate.load_quality``); parsed without them, a suite that uses one refuses to run.

``relative`` bounds are computed from the same metric on the same view of the table's previous
(current) version: ``min_ratio`` / ``max_ratio`` multiply it, ``max_abs_change`` adds and subtracts.
Without a previous version the static kwargs apply; with neither the expectation is skipped.

Views turn a table into the frame to validate (e.g. customers per identifier type). Views that
need other tables (consent for audience members) get them from the job through ``inputs``.
"""
from __future__ import annotations

import html
import json
import logging
import math
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

logger = logging.getLogger(__name__)

RELATIVE_METRICS = {
    "expect_table_row_count_to_be_between": "row_count",
    "expect_column_mean_to_be_between": "mean",
    "expect_column_max_to_be_between": "max",
    "expect_column_min_to_be_between": "min",
    "expect_column_sum_to_be_between": "sum",
    "expect_column_median_to_be_between": "median",
    "expect_column_unique_value_count_to_be_between": "unique_count",
}
SAMPLE_ROWS = 20


# -- config ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectationSpec:
    expectation: str
    kwargs: dict[str, Any]
    relative: dict[str, float] | None = None
    warn_only: bool = False
    path: str = ""


@dataclass(frozen=True)
class CheckSpec:
    view: str
    expectations: tuple[ExpectationSpec, ...]
    params: dict[str, Any] = field(default_factory=dict)
    id_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    checks: tuple[CheckSpec, ...]
    warn_only: bool = False
    description: str = ""


@dataclass(frozen=True)
class VocabularyRef:
    """A ``$name`` of the vocabulary left unresolved (the config was parsed without the vocabulary)."""

    name: str
    path: str


@dataclass(frozen=True)
class QualityConfig:
    profile: str
    suites: dict[str, SuiteSpec]
    thresholds: dict[str, float]

    def suite(self, name: str) -> SuiteSpec:
        if name not in self.suites:
            raise ValueError(f"suites.{name}: no such suite (known: {sorted(self.suites)})")
        return self.suites[name]

    @classmethod
    def from_dict(cls, data: Any, profile: str = "local",
                  vocabulary: Mapping[str, Any] | None = None) -> QualityConfig:
        """Parse ``conf/quality.yaml`` for one environment profile; errors name the key path.

        ``vocabulary``: name -> list or mapping that ``$name`` references resolve to (identifier
        types and patterns, canonical enums); without it they stay unresolved (:class:`VocabularyRef`).
        """
        if not isinstance(data, Mapping):
            raise ValueError("quality: expected a mapping with thresholds, profiles, suites")
        unknown = sorted(set(data) - {"thresholds", "profiles", "suites"})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (expected thresholds, profiles, suites)")
        thresholds = dict(_mapping(data.get("thresholds"), "thresholds"))
        profiles = _mapping(data.get("profiles"), "profiles")
        overrides = _mapping(profiles.get(profile), f"profiles.{profile}")
        bad = sorted(set(overrides) - {"thresholds", "warn_only"})
        if bad:
            raise ValueError(f"profiles.{profile}.{bad[0]}: unknown key (expected thresholds, warn_only)")
        for key, value in _mapping(overrides.get("thresholds"), f"profiles.{profile}.thresholds").items():
            if key not in thresholds:
                raise ValueError(f"profiles.{profile}.thresholds.{key}: not declared in thresholds")
            thresholds[key] = value
        for key, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"thresholds.{key}: expected a number, got {value!r}")
        warn_suites = overrides.get("warn_only") or []
        if not isinstance(warn_suites, list):
            raise ValueError(f"profiles.{profile}.warn_only: expected a list of suite names")
        suites_raw = _mapping(data.get("suites"), "suites")
        for name in warn_suites:
            if name not in suites_raw:
                raise ValueError(f"profiles.{profile}.warn_only: unknown suite {name!r}")
        clash = sorted(set(thresholds) & set(vocabulary or {}))
        if clash:
            raise ValueError(f"thresholds.{clash[0]}: the name is also a vocabulary term; rename the threshold")
        terms: dict[str, Any] = {**thresholds, **(vocabulary or {})}
        suites = {name: _parse_suite(name, raw, terms, name in warn_suites, vocabulary is None)
                  for name, raw in suites_raw.items()}
        return cls(profile=profile, suites=suites, thresholds=thresholds)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected a mapping")
    return value


def _substitute(value: Any, thresholds: Mapping[str, Any], path: str, lazy: bool = False) -> Any:
    """``$name`` -> the threshold or vocabulary term; with ``lazy`` (no vocabulary given) an unknown
    name stays a :class:`VocabularyRef`, which :func:`validate_suite` refuses."""
    if isinstance(value, str) and value.startswith("$"):
        key = value[1:]
        if key not in thresholds:
            if lazy:
                return VocabularyRef(key, path)
            raise ValueError(f"{path}: unknown threshold {value!r}, nor a vocabulary term (declared: "
                             f"{sorted(thresholds)})")
        return thresholds[key]
    if isinstance(value, list):
        return [_substitute(v, thresholds, f"{path}[{i}]", lazy) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _substitute(v, thresholds, f"{path}.{k}", lazy) for k, v in value.items()}
    return value


def unresolved(value: Any) -> list[VocabularyRef]:
    """The vocabulary references left in a parsed value (kwargs, params)."""
    if isinstance(value, VocabularyRef):
        return [value]
    if isinstance(value, list):
        return [ref for item in value for ref in unresolved(item)]
    if isinstance(value, Mapping):
        return [ref for item in value.values() for ref in unresolved(item)]
    return []


def _parse_suite(name: str, raw: Any, thresholds: Mapping[str, Any], profile_warn: bool, lazy: bool = False) -> SuiteSpec:
    path = f"suites.{name}"
    raw = _mapping(raw, path)
    bad = sorted(set(raw) - {"warn_only", "checks", "description"})
    if bad:
        raise ValueError(f"{path}.{bad[0]}: unknown key (expected warn_only, checks, description)")
    checks_raw = raw.get("checks")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise ValueError(f"{path}.checks: expected a non-empty list")
    checks = []
    for i, check in enumerate(checks_raw):
        cpath = f"{path}.checks[{i}]"
        check = _mapping(check, cpath)
        bad = sorted(set(check) - {"view", "params", "id_columns", "expectations"})
        if bad:
            raise ValueError(f"{cpath}.{bad[0]}: unknown key (expected view, params, id_columns, expectations)")
        view = check.get("view", "table")
        if view not in VIEWS:
            raise ValueError(f"{cpath}.view: unknown view {view!r} (known: {sorted(VIEWS)})")
        exps_raw = check.get("expectations")
        if not isinstance(exps_raw, list) or not exps_raw:
            raise ValueError(f"{cpath}.expectations: expected a non-empty list")
        exps = tuple(_parse_expectation(e, thresholds, f"{cpath}.expectations[{j}]", lazy)
                     for j, e in enumerate(exps_raw))
        ids = check.get("id_columns") or []
        if not isinstance(ids, list):
            raise ValueError(f"{cpath}.id_columns: expected a list of column names")
        checks.append(CheckSpec(view=view, expectations=exps,
                                params=dict(_substitute(dict(_mapping(check.get("params"), f"{cpath}.params")),
                                                        thresholds, f"{cpath}.params", lazy)),
                                id_columns=tuple(ids)))
    warn = raw.get("warn_only", False)
    if not isinstance(warn, bool):
        raise ValueError(f"{path}.warn_only: expected true or false")
    return SuiteSpec(name=name, checks=tuple(checks), warn_only=warn or profile_warn,
                     description=str(raw.get("description") or ""))


def _parse_expectation(raw: Any, thresholds: Mapping[str, Any], path: str, lazy: bool = False) -> ExpectationSpec:
    raw = _mapping(raw, path)
    bad = sorted(set(raw) - {"expectation", "kwargs", "relative", "warn_only"})
    if bad:
        raise ValueError(f"{path}.{bad[0]}: unknown key (expected expectation, kwargs, relative, warn_only)")
    name = raw.get("expectation")
    if not isinstance(name, str):
        raise ValueError(f"{path}.expectation: required key is missing")
    if not _known_expectation(name):
        raise ValueError(f"{path}.expectation: unknown Great Expectations expectation {name!r}")
    kwargs = dict(_substitute(dict(_mapping(raw.get("kwargs"), f"{path}.kwargs")), thresholds, f"{path}.kwargs", lazy))
    relative = raw.get("relative")
    if relative is not None:
        if name not in RELATIVE_METRICS:
            raise ValueError(f"{path}.relative: only for {sorted(RELATIVE_METRICS)}")
        relative = dict(_substitute(dict(_mapping(relative, f"{path}.relative")), thresholds, f"{path}.relative"))
        bad = sorted(set(relative) - {"min_ratio", "max_ratio", "max_abs_change"})
        if bad or not relative:
            raise ValueError(f"{path}.relative: use min_ratio, max_ratio and/or max_abs_change")
        for key, value in relative.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path}.relative.{key}: expected a number, got {value!r}")
    warn = raw.get("warn_only", False)
    if not isinstance(warn, bool):
        raise ValueError(f"{path}.warn_only: expected true or false")
    return ExpectationSpec(expectation=name, kwargs=kwargs, relative=relative, warn_only=warn, path=path)


def _known_expectation(name: str) -> bool:
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        get_expectation_impl(name)
    except Exception:  # noqa: BLE001 - GX raises its own not-found error types
        return False
    return True


# -- views ----------------------------------------------------------------------------------------
View = Callable[[DataFrame, Mapping[str, Any], Mapping[str, DataFrame]], DataFrame]


def view_table(df: DataFrame, params: Mapping[str, Any], inputs: Mapping[str, DataFrame]) -> DataFrame:
    return df


def view_identity_type_counts(df: DataFrame, params: Mapping[str, Any],
                              inputs: Mapping[str, DataFrame]) -> DataFrame:
    """identity_map -> customer_id, id_type, n_values, type_limit, over_limit (shared ids not counted).

    params: ``limits`` {id_type: max distinct values per customer} (from conf/identity.yaml).
    """
    limits = dict(params.get("limits") or {})
    counts = (df.filter(~F.coalesce(F.col("is_shared"), F.lit(False)))
              .groupBy("customer_id", "id_type").agg(F.countDistinct("id_value").alias("n_values")))
    limit_col = F.lit(None).cast("long")
    for id_type, limit in limits.items():
        limit_col = F.when(F.col("id_type") == id_type, F.lit(int(limit))).otherwise(limit_col)
    return (counts.withColumn("type_limit", limit_col)
            .withColumn("over_limit", F.coalesce(F.col("n_values") > F.col("type_limit"), F.lit(False))))


def view_member_ids_per_customer(df: DataFrame, params: Mapping[str, Any],
                                 inputs: Mapping[str, DataFrame]) -> DataFrame:
    """identity_map -> customer_id, member_ids (distinct member ids; customers without none absent)."""
    id_type = params.get("id_type", "member_id")
    return (df.filter(F.col("id_type") == id_type).groupBy("customer_id")
            .agg(F.countDistinct("id_value").alias("member_ids")))


def view_identity_summary(df: DataFrame, params: Mapping[str, Any],
                          inputs: Mapping[str, DataFrame]) -> DataFrame:
    """identity_map -> one row: identifiers, customers, merge_rate, mean/p99/max component size.

    merge_rate = 1 - customers / identifiers (0 when nothing merged); component size = identifiers
    per customer.
    """
    sizes = df.groupBy("customer_id").agg(F.count(F.lit(1)).alias("size"))
    return sizes.agg(
        F.sum("size").cast("long").alias("identifiers"),
        F.count(F.lit(1)).alias("customers"),
        (F.lit(1.0) - F.count(F.lit(1)) / F.sum("size")).alias("merge_rate"),
        F.avg("size").alias("mean_component_size"),
        F.percentile_approx("size", 0.99).cast("double").alias("p99_component_size"),
        F.max("size").cast("double").alias("max_component_size"),
    )


def view_tag_coverage(df: DataFrame, params: Mapping[str, Any], inputs: Mapping[str, DataFrame]) -> DataFrame:
    """tags_wide -> tag, coverage (non-null share). params: ``exclude`` extra columns to skip.

    ``inputs['tag_profile']`` (tag, coverage, mean of every tag of ``df``), when the caller computed
    it already, saves a pass over the table.
    """
    skip = {"customer_id", "as_of", "computed_at", "run_id", *(params.get("exclude") or [])}
    return _tag_stats(df, skip, inputs.get("tag_profile")).select("tag", "coverage")


def view_audience_compliance(df: DataFrame, params: Mapping[str, Any],
                             inputs: Mapping[str, DataFrame]) -> DataFrame:
    """audience members -> customer_id, has_consent, is_forgotten.

    params: ``channel``. inputs: ``consent_current`` (customer_id, channel, granted) and
    ``forgotten`` (customer_id of people on the suppression list).
    """
    channel = params.get("channel")
    if channel is None or "consent_current" not in inputs:
        raise ValueError("view audience_compliance needs params.channel and inputs['consent_current']")
    granted = (inputs["consent_current"].filter((F.col("channel") == channel) & F.col("granted"))
               .select("customer_id", F.lit(True).alias("has_consent")))
    frame = df.select("customer_id").join(granted, on="customer_id", how="left")
    if "forgotten" in inputs:
        frame = frame.join(inputs["forgotten"].select("customer_id", F.lit(True).alias("is_forgotten")).distinct(),
                           on="customer_id", how="left")
    else:
        frame = frame.withColumn("is_forgotten", F.lit(False))
    return frame.select("customer_id", F.coalesce("has_consent", F.lit(False)).alias("has_consent"),
                        F.coalesce("is_forgotten", F.lit(False)).alias("is_forgotten"))


def view_identifier_formats(df: DataFrame, params: Mapping[str, Any],
                            inputs: Mapping[str, DataFrame]) -> DataFrame:
    """silver_identifiers -> source, record_id, id_type, id_value, valid_format.

    params: ``patterns`` {id_type: regex}; types without a pattern are valid when non-empty.
    """
    patterns = dict(params.get("patterns") or {})
    valid = F.col("id_value").isNotNull() & (F.length(F.trim(F.col("id_value"))) > 0)
    check = F.lit(True)
    for id_type, pattern in patterns.items():
        check = F.when(F.col("id_type") == id_type, F.col("id_value").rlike(str(pattern))).otherwise(check)
    return df.select("source", "record_id", "id_type", "id_value",
                     F.coalesce(valid & check, F.lit(False)).alias("valid_format"))


# per candidate frame: the statistics rows of each skip set. The tags_wide and tags_drift gates audit
# the same staged frame; without this, each would unpivot the whole table again.
_TAG_STATS_BY_FRAME: weakref.WeakKeyDictionary[DataFrame, dict[frozenset[str], list[tuple]]] = \
    weakref.WeakKeyDictionary()


def _tag_stats(df: DataFrame, skip: set[str], profile: DataFrame | None = None) -> DataFrame:
    """tag, coverage, mean (numeric and boolean columns) of every column not in ``skip``.

    The wide table is unpivoted into (column index, present, value) rows, aggregated by column, and
    the small result is collected and returned as a local frame. One SQL expression builds the
    unpivot: hundreds of Column objects would cost a py4j round trip each, and hundreds of aggregates
    per row (or the same left lazy and joined, as view_tag_drift does) exhaust the planner's heap
    with the real catalogue (OutOfMemoryError with 4g for ~660 tags). The rows are computed once per
    frame object and skip set (frames of a published or staged table do not change under them).

    ``profile``: the same statistics computed by the caller (a small frame with tag, coverage, mean);
    used when it covers exactly the columns asked for, otherwise they are computed here.
    """
    schema = "tag string, coverage double, mean double"
    if profile is not None:
        wanted = {c for c in df.columns if c not in skip}
        given = {row["tag"]: (row["coverage"], row["mean"]) for row in profile.select("tag", "coverage", "mean").collect()}
        if set(given) == wanted:
            return df.sparkSession.createDataFrame(
                [(c, *given[c]) for c in df.columns if c in wanted], schema)
        logger.warning("supplied tag statistics do not match the table (%d tags missing, %d not in it); "
                       "computing them from the table", len(wanted - set(given)), len(set(given) - wanted))
    memo = _TAG_STATS_BY_FRAME.setdefault(df, {})
    key = frozenset(skip)
    if key not in memo:
        memo[key] = _tag_stats_rows(df, skip)
    return df.sparkSession.createDataFrame(memo[key], schema)


def _tag_stats_rows(df: DataFrame, skip: set[str]) -> list[tuple]:
    numeric = ("int", "bigint", "double", "float", "boolean", "smallint", "tinyint", "decimal")
    tags = [(c, t) for c, t in df.dtypes if c not in skip]
    if not tags:
        return []
    entries = ", ".join(
        f"named_struct('i', {i}, 'present', `{name}` IS NOT NULL, 'x', "
        f"{f'CAST(`{name}` AS DOUBLE)' if dtype.startswith(numeric) else 'CAST(NULL AS DOUBLE)'})"
        for i, (name, dtype) in enumerate(tags))
    rows = {row["i"]: row for row in df.select(F.expr(f"inline(array({entries}))")).groupBy("i").agg(
        F.count(F.lit(1)).alias("rows"), F.count(F.when(F.col("present"), 1)).alias("covered"),
        F.avg("x").alias("mean")).collect()}
    stats = []
    for i, (name, _) in enumerate(tags):
        row = rows.get(i)  # none when the table is empty: coverage undefined
        coverage = int(row["covered"]) / int(row["rows"]) if row is not None else None
        stats.append((name, coverage, _as_float(row["mean"]) if row is not None else None))
    return stats


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def view_tag_drift(df: DataFrame, params: Mapping[str, Any], inputs: Mapping[str, DataFrame]) -> DataFrame:
    """tags_wide -> per tag: coverage, mean (numeric/boolean), and their change vs the previous run.

    Output: tag, coverage, previous_coverage, coverage_change (absolute, null on the first run),
    mean, previous_mean, mean_change (|mean - previous| / max(|previous|, 1e-9), null when undefined).
    ``inputs['previous']`` (the published version) is supplied by :func:`validate_suite`;
    ``inputs['tag_profile']`` and ``inputs['previous_tag_profile']`` (tag, coverage, mean), when the
    caller has them (``cdp tag`` keeps them in ``tag_stats``), save a pass over each table.
    """
    skip = {"customer_id", "as_of", "computed_at", "run_id", *(params.get("exclude") or [])}
    now = _tag_stats(df, skip, inputs.get("tag_profile"))
    if "previous" in inputs:
        before = _tag_stats(inputs["previous"], skip, inputs.get("previous_tag_profile")).select(
            "tag", F.col("coverage").alias("previous_coverage"), F.col("mean").alias("previous_mean"))
    else:
        before = now.select("tag", F.lit(None).cast("double").alias("previous_coverage"),
                            F.lit(None).cast("double").alias("previous_mean"))
    joined = now.join(before, on="tag", how="left")
    return joined.select(
        "tag", "coverage", "previous_coverage",
        F.abs(F.col("coverage") - F.col("previous_coverage")).alias("coverage_change"),
        "mean", "previous_mean",
        (F.abs(F.col("mean") - F.col("previous_mean"))
         / F.greatest(F.abs(F.col("previous_mean")), F.lit(1e-9))).alias("mean_change"))


# inputs computed from the candidate itself; a view of the previous version must not read them
CANDIDATE_INPUTS = frozenset({"tag_profile"})

VIEWS: dict[str, View] = {
    "table": view_table,
    "identity_type_counts": view_identity_type_counts,
    "member_ids_per_customer": view_member_ids_per_customer,
    "identity_summary": view_identity_summary,
    "tag_coverage": view_tag_coverage,
    "tag_drift": view_tag_drift,
    "identifier_formats": view_identifier_formats,
    "audience_compliance": view_audience_compliance,
}


# -- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpectationOutcome:
    view: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    warn_only: bool
    observed_value: Any = None
    element_count: int | None = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample: tuple[dict[str, Any], ...] = ()
    note: str = ""
    skipped: bool = False

    @property
    def blocking(self) -> bool:
        return not self.success and not self.warn_only and not self.skipped


@dataclass(frozen=True)
class DataDocsPage:
    """Great Expectations' own Data Docs page for the validation of one check (one view)."""
    view: str
    html: str


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    table: str
    outcomes: tuple[ExpectationOutcome, ...]
    warn_only: bool
    evaluated_at: datetime
    run_id: str = ""
    data_docs: tuple[DataDocsPage, ...] = ()

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.blocking] if not self.warn_only else []

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and not o.skipped and o not in self.failures]

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        failed = [o for o in self.outcomes if not o.success and not o.skipped]
        if not failed:
            return f"suite {self.suite} on {self.table}: all {len(self.outcomes)} expectations passed"
        parts = [f"{o.view}:{o.expectation}({_short_kwargs(o.kwargs)}) observed={_fmt(o.observed_value)} "
                 f"unexpected={o.unexpected_count}" for o in failed]
        kind = "FAILED" if self.failures else "warnings"
        return f"suite {self.suite} on {self.table} {kind}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "table": self.table, "run_id": self.run_id, "success": self.success,
            "warn_only": self.warn_only, "evaluated_at": self.evaluated_at.isoformat(),
            "outcomes": [{**o.__dict__, "sample": list(o.sample), "blocking": o.blocking} for o in self.outcomes],
        }


def _short_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# -- validation -----------------------------------------------------------------------------------
_CONTEXT: Any = None


def _gx_context() -> Any:
    """One ephemeral GX context per process, progress bars off (batch jobs, CI logs)."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _CONTEXT = gx.get_context(mode="ephemeral")
        _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False)
    return _CONTEXT


def metric_value(df: DataFrame, expectation: str, kwargs: Mapping[str, Any]) -> float | None:
    """The metric a ``relative`` bound compares (row count, column mean, ...) on ``df``."""
    metric = RELATIVE_METRICS[expectation]
    if metric == "row_count":
        return float(df.count())
    column = F.col(f"`{kwargs['column']}`")
    agg = {"mean": F.avg(column), "max": F.max(column), "min": F.min(column), "sum": F.sum(column),
           "median": F.percentile_approx(column, 0.5), "unique_count": F.countDistinct(column)}[metric]
    value = df.agg(agg.cast("double").alias("v")).first()["v"]
    return None if value is None else float(value)


def _relative_bounds(spec: ExpectationSpec, previous_value: float) -> tuple[float | None, float | None]:
    rel = spec.relative or {}
    low = high = None
    if "min_ratio" in rel:
        low = previous_value * float(rel["min_ratio"])
    if "max_ratio" in rel:
        high = previous_value * float(rel["max_ratio"])
    if "max_abs_change" in rel:
        change = float(rel["max_abs_change"])
        low = previous_value - change if low is None else max(low, previous_value - change)
        high = previous_value + change if high is None else min(high, previous_value + change)
    return low, high


_ROW_COUNT_EXPECTATIONS = {"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"}


def columns_needed(check: CheckSpec) -> set[str] | None:
    """The view columns a check's expectations and id columns read, or None when some expectation
    may read others (table-level expectations on the columns, multi-column ones, row conditions)."""
    needed = set(check.id_columns)
    for spec in check.expectations:
        if spec.expectation in _ROW_COUNT_EXPECTATIONS:
            continue
        named = [spec.kwargs[k] for k in ("column", "column_A", "column_B") if k in spec.kwargs]
        if not spec.expectation.startswith("expect_column_") or not named or "row_condition" in spec.kwargs \
                or not all(isinstance(name, str) for name in named):
            return None
        needed.update(named)
    return needed


_BOUNDS = (("min_value", "strict_min"), ("max_value", "strict_max"))


def exact_expectation(expectation_class: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
    """The GX expectation for ``kwargs``, comparing its bounds exactly as written.

    GX declares some bounds as integers (row counts, distinct counts, value lengths) and its model
    truncates a fractional bound to one: ``min_value: 1.5`` became 1, so an observed 1 passed.
    Those metrics are whole numbers, so the exact comparison is ``>= ceil(min)`` and ``<= floor(max)``
    (a fractional bound is never reached, so strictness no longer matters); the expectation is
    rebuilt with those bounds. A bound GX would change in any other way is refused.

    Returns:
        the expectation and a note saying how fractional bounds are compared ("" when none were).
    """
    expectation = expectation_class(**kwargs)
    exact = dict(kwargs)
    notes = []
    for bound, strict in _BOUNDS:
        wanted = kwargs.get(bound)
        if isinstance(wanted, bool) or not isinstance(wanted, (int, float)):
            continue  # absent, or a suite parameter GX resolves itself
        held = getattr(expectation, bound, wanted)
        if held == wanted:
            continue  # the same number (an int bound held as a float is still exact)
        if not isinstance(held, int) or isinstance(wanted, int) or wanted != wanted:
            raise ValueError(f"{bound}: {wanted!r} would be compared as {held!r}")
        exact[bound] = math.ceil(wanted) if bound == "min_value" else math.floor(wanted)
        if strict in kwargs or hasattr(expectation, strict):
            exact[strict] = False
        notes.append(f"{bound} {wanted:g} compared exactly as {'>=' if bound == 'min_value' else '<='} "
                     f"{exact[bound]} (whole-number metric)")
    if not notes:
        return expectation, ""
    return expectation_class(**exact), "; ".join(notes)


def validate_suite(suite: SuiteSpec, candidate: DataFrame, *, table: str,
                   previous: DataFrame | None = None, inputs: Mapping[str, DataFrame] | None = None,
                   params: Mapping[str, Mapping[str, Any]] | None = None, run_id: str = "") -> SuiteResult:
    """Run every check of ``suite`` on ``candidate`` (and ``previous`` for relative bounds).

    Args:
        suite: the parsed suite.
        candidate: the table about to be published.
        table: its name (for the report).
        previous: the currently published version, if any.
        inputs: other frames views need (e.g. ``consent_current``).
        params: runtime view params per view name, merged over the YAML params
            (e.g. ``{"identity_type_counts": {"limits": {...}}}``).
    """
    import great_expectations as gx
    from great_expectations.expectations.registry import get_expectation_impl

    missing = [ref for check in suite.checks
               for ref in unresolved(check.params) + [r for spec in check.expectations for r in unresolved(spec.kwargs)]]
    if missing:
        raise ValueError(f"{missing[0].path}: ${missing[0].name} is not a threshold and the suite was parsed without "
                         "the vocabulary of identity.yaml / sources.yaml (cdp.jobs.validate.load_quality)")
    inputs = dict(inputs or {})
    if previous is not None:
        inputs.setdefault("previous", previous)
    params = dict(params or {})
    outcomes: list[ExpectationOutcome] = []
    pages: list[DataDocsPage] = []
    context = _gx_context()
    source = context.data_sources.add_spark(name=f"cdp_{uuid.uuid4().hex[:12]}")
    try:
        for check in suite.checks:
            view_params = {**check.params, **dict(params.get(check.view, {}))}
            view = VIEWS[check.view]
            view_df = view(candidate, view_params, inputs)
            needed = columns_needed(check)
            if needed is not None and needed <= set(view_df.columns):
                # cache only what the expectations read: a wide table (tags_wide) would be cached whole
                view_df = view_df.select(*[c for c in view_df.columns if c in needed])
            view_df = view_df.cache()
            # the previous version's view only serves relative bounds; views such as tag_drift scan
            # whole tables, so a check without relative bounds does not build it
            needs_previous = previous is not None and any(spec.relative is not None for spec in check.expectations)
            # inputs that describe the candidate (CANDIDATE_INPUTS) do not hold for the previous version
            previous_inputs = {k: v for k, v in inputs.items() if k not in CANDIDATE_INPUTS}
            previous_view = view(previous, view_params, previous_inputs) if needs_previous else None
            gx_suite = gx.ExpectationSuite(name=f"{suite.name}.{check.view}.{uuid.uuid4().hex[:8]}")
            planned: list[tuple[ExpectationSpec, dict[str, Any], str]] = []
            for spec in check.expectations:
                kwargs, note = dict(spec.kwargs), ""
                if spec.relative is not None:
                    before = metric_value(previous_view, spec.expectation, kwargs) if previous_view is not None else None
                    if before is not None and before != 0:
                        low, high = _relative_bounds(spec, before)
                        if low is not None:
                            kwargs["min_value"] = max(low, kwargs["min_value"]) if "min_value" in kwargs else low
                        if high is not None:
                            kwargs["max_value"] = min(high, kwargs["max_value"]) if "max_value" in kwargs else high
                        note = f"bounds from the previous version's value {_fmt(before)}"
                    else:
                        note = "no previous value: relative bounds not applied"
                    if kwargs.get("min_value") is None and kwargs.get("max_value") is None:
                        outcomes.append(ExpectationOutcome(view=check.view, expectation=spec.expectation,
                                                           kwargs=kwargs, success=True, warn_only=spec.warn_only,
                                                           note=note, skipped=True))
                        continue
                try:
                    expectation, exact_note = exact_expectation(get_expectation_impl(spec.expectation), kwargs)
                except Exception as exc:  # noqa: BLE001 - bad kwargs are a config error for this key
                    raise ValueError(f"{spec.path}.kwargs: {exc}") from exc
                gx_suite.add_expectation(expectation)
                if exact_note:
                    note = f"{note}; {exact_note}" if note else exact_note
                planned.append((spec, kwargs, note))
            if planned:
                id_columns = [c for c in check.id_columns if c in view_df.columns]
                result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
                if id_columns:
                    result_format["unexpected_index_column_names"] = id_columns
                asset = source.add_dataframe_asset(name=f"{check.view}_{uuid.uuid4().hex[:8]}")
                batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
                    batch_parameters={"dataframe": view_df})
                validation = batch.validate(gx_suite, result_format=result_format)
                for (spec, kwargs, note), res in zip(planned, validation.results, strict=True):
                    outcomes.append(_outcome(check.view, spec, kwargs, note, res))
                page = render_data_docs(validation, f"{table}: {suite.name} / {check.view}")
                if page is not None:
                    pages.append(DataDocsPage(view=check.view, html=page))
            view_df.unpersist()
    finally:
        context.data_sources.delete(source.name)
    return SuiteResult(suite=suite.name, table=table, outcomes=tuple(outcomes), warn_only=suite.warn_only,
                       evaluated_at=datetime.now(UTC), run_id=run_id, data_docs=tuple(pages))


def render_data_docs(validation: Any, title: str) -> str | None:
    """Great Expectations' Data Docs HTML for one validation result (the page its Data Docs site shows).

    Rendered with GX's own renderer and page view, straight from the result, so no GX project or
    stores are needed. Returns None (and logs why) when GX cannot render it: the gate's own report
    still has every outcome.
    """
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    try:
        document = ValidationResultsPageRenderer().render(validation)
        return DefaultJinjaPageView().render(document)
    except Exception:  # noqa: BLE001 - a rendering bug in GX must not block publishing
        logger.warning("Great Expectations could not render Data Docs for %s", title, exc_info=True)
        return None


def _outcome(view: str, spec: ExpectationSpec, kwargs: dict[str, Any], note: str, res: Any) -> ExpectationOutcome:
    result = dict(res.result or {})
    sample = result.get("partial_unexpected_index_list") or [
        {"value": v} for v in (result.get("partial_unexpected_list") or [])]
    exception = (res.exception_info or {}) if hasattr(res, "exception_info") else {}
    if exception.get("raised_exception"):
        note = (note + "; " if note else "") + f"error: {exception.get('exception_message')}"
    return ExpectationOutcome(
        view=view, expectation=spec.expectation, kwargs=kwargs, success=bool(res.success),
        warn_only=spec.warn_only, observed_value=_jsonable(result.get("observed_value")),
        element_count=result.get("element_count"), unexpected_count=result.get("unexpected_count"),
        unexpected_percent=result.get("unexpected_percent"),
        sample=tuple(_jsonable(dict(row)) for row in sample[:SAMPLE_ROWS]), note=note)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# -- report ---------------------------------------------------------------------------------------
def render_report_html(result: SuiteResult, data_docs_links: Mapping[str, str] | None = None) -> str:
    """A self-contained HTML page: each expectation, its outcome, counts and sample failing rows.

    ``data_docs_links`` (view -> relative URL) adds links to the Great Expectations Data Docs pages.
    """
    status = "PASSED" if result.success and not result.warnings else "FAILED" if not result.success else "WARNINGS"
    colour = {"PASSED": "#2e7d32", "FAILED": "#c62828", "WARNINGS": "#ef6c00"}[status]
    rows = []
    for o in result.outcomes:
        state = "skipped" if o.skipped else "passed" if o.success else ("warning" if not o.blocking else "FAILED")
        sample_html = ""
        if o.sample:
            columns = list(dict.fromkeys(k for row in o.sample for k in row))
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(row.get(c)))}</td>" for c in columns) + "</tr>"
                           for row in o.sample)
            sample_html = f"<table class='sample'><tr>{head}</tr>{body}</table>"
        rows.append(
            f"<tr class='{state.lower()}'><td>{html.escape(o.view)}</td><td>{html.escape(o.expectation)}</td>"
            f"<td><code>{html.escape(json.dumps(o.kwargs, default=str))}</code></td><td>{state}</td>"
            f"<td>{html.escape(_fmt(o.observed_value))}</td><td>{o.element_count if o.element_count is not None else ''}</td>"
            f"<td>{o.unexpected_count if o.unexpected_count is not None else ''}</td>"
            f"<td>{html.escape(o.note)}{sample_html}</td></tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Quality report: {html.escape(result.suite)} on {html.escape(result.table)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
tr.failed td {{ background: #ffebee; }} tr.warning td {{ background: #fff3e0; }} tr.skipped td {{ color: #777; }}
table.sample {{ margin-top: 4px; font-size: 90%; }}
</style></head><body>
<h1>Quality gate <span style="color:{colour}">{status}</span></h1>
<p>Suite <b>{html.escape(result.suite)}</b> on table <b>{html.escape(result.table)}</b>, run {html.escape(result.run_id)},
evaluated {html.escape(result.evaluated_at.isoformat())}{' (warn-only suite)' if result.warn_only else ''}.</p>
<p>{len(result.outcomes)} expectations, {len(result.failures)} blocking failures, {len(result.warnings)} warnings.</p>
{_data_docs_list(data_docs_links)}
<table><tr><th>view</th><th>expectation</th><th>arguments</th><th>result</th><th>observed</th><th>rows</th>
<th>unexpected</th><th>notes / sample failing rows</th></tr>
{''.join(rows)}
</table></body></html>
"""


def _data_docs_list(links: Mapping[str, str] | None) -> str:
    if not links:
        return ""
    items = "".join(f"<li><a href='{html.escape(url)}'>{html.escape(view)}</a></li>" for view, url in links.items())
    return f"<p>Great Expectations Data Docs, per view:</p><ul>{items}</ul>"


__all__ = ["VIEWS", "VocabularyRef", "CheckSpec", "DataDocsPage", "ExpectationOutcome", "ExpectationSpec", "QualityConfig", "SuiteResult",
           "SuiteSpec", "metric_value", "render_data_docs", "render_report_html", "validate_suite"]
