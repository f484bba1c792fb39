"""The HTML run report: one self-contained folder per run, charts as PNG files, no server needed.

``<lake>/_reports/runs/<run_id>/index.html`` (and the same under ``_reports/runs/latest/``) with
sections for the run's steps and timings, source volumes, quarantine reasons, silver volumes,
identity component sizes, merges and splits, tag coverage, model metrics, audience sizes and
changes, audience performance (treatment vs control per publish, from ``audience_performance``), and
quality gate results. Each section reads the tables it needs through the lake; when a
table is absent the section says so instead of failing, so a partial pipeline still gets a report.

``python -m cdp.jobs.report [--for-run ID]`` (or ``spark-submit jobs/report.py``) renders it for a run
(default: the latest run in the ``runs`` table).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cdp.lake.inventory import list_tables, table_rows
from cdp.lake.paths import is_local
from cdp.runtime import mlflow as mlflow_store

logger = logging.getLogger(__name__)

REPORTS_DIR = "_reports/runs"
QUALITY_DIR = "_reports/quality"
LATEST = "latest"
_STATUS_COLORS = {"ok": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e", "not_run": "#cfcfcf"}
_BLUE, _ORANGE, _RED, _GREY = "#1f6fb2", "#f28e2b", "#c62828", "#9e9e9e"


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, an optional CSS class and link."""

    text: str
    cls: str | None = None
    href: str | None = None


@dataclass(frozen=True)
class Table:
    kind: ClassVar[str] = "table"  # the template's switch
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Paragraph:
    kind: ClassVar[str] = "paragraph"  # the template's switch
    text: str


@dataclass(frozen=True)
class Heading:
    kind: ClassVar[str] = "heading"  # the template's switch
    text: str


@dataclass(frozen=True)
class RunStatus:
    """The run's headline: ``Run <id>: <b>STATUS</b> in N s, started ...``."""

    kind: ClassVar[str] = "run_status"  # the template's switch
    run_id: str
    status: str
    seconds: float
    started_at: datetime


Block = Table | Paragraph | Heading | RunStatus


@dataclass
class Section:
    """One report section: a title, its blocks (rendered by templates/report.html.j2), its charts."""

    key: str
    title: str
    lead: list[Block] = field(default_factory=list)  # one-line summary shown above the charts
    body: list[Block] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    absent: str | None = None  # why the section has nothing to show


@dataclass
class _Inputs:
    spark: Any
    lake: Any
    run_id: str
    tables: list[str]
    out: Path

    def has(self, *names: str) -> str | None:
        """None when every table exists, else the 'absent' message."""
        missing = [name for name in names if name not in self.tables]
        return None if not missing else f"table{'s' if len(missing) > 1 else ''} {', '.join(missing)} not in the lake"

    def read(self, section: Section, name: str) -> DataFrame | None:
        """Table ``name`` for ``section``; None when it is absent, and then the section says so."""
        if absent := self.has(name):
            section.absent = absent
            return None
        return self.lake.read(name)

    def of_this_run(self, frame: DataFrame) -> DataFrame | None:
        """The rows of ``frame`` (a table with a ``run_id``) written by the reported run; None when it wrote none."""
        rows = frame.filter(F.col("run_id") == self.run_id)
        return rows if rows.limit(1).count() else None


# -- charts -------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    _pyplot().close(fig)
    return name


def _height(n: int) -> float:
    return max(1.8, 0.32 * n + 0.9)


def barh(out: Path, name: str, labels: Sequence[str], series: dict[str, Sequence[float]], *, title: str,
         xlabel: str, colors: Sequence[str] | None = None, bar_colors: Sequence[str] | None = None,
         log: bool = False, annotate: bool = True) -> str:
    """Horizontal bars, stacked when ``series`` has several entries; first label on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, _height(len(labels))))
    positions = list(range(len(labels)))[::-1]
    left = [0.0] * len(labels)
    for index, (series_name, values) in enumerate(series.items()):
        color = bar_colors if bar_colors is not None else (colors[index] if colors else None)
        ax.barh(positions, values, left=left, color=color, label=series_name, height=0.7)
        left = [a + float(b or 0) for a, b in zip(left, values, strict=True)]
    if annotate:
        for y, total in zip(positions, left, strict=True):
            ax.text(total, y, f" {_short(total)}", va="center", fontsize=8)
    ax.set_yticks(positions, [_clip(label, 40) for label in labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10, loc="left")
    if log:
        ax.set_xscale("log")
    else:  # at most six ticks, large counts as 15k / 1.4M: 16000-wide axes overprinted their labels
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _short(value) if value >= 0 else ""))
    if len(series) > 1:
        ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.12)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out, name)


def columns(out: Path, name: str, labels: Sequence[str], series: dict[str, Sequence[float]], *, title: str,
            ylabel: str, colors: Sequence[str] | None = None, log: bool = False) -> str:
    """Vertical bars side by side per label (one group per label)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 3.0))
    width = 0.8 / max(1, len(series))
    for index, (series_name, values) in enumerate(series.items()):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width=width, label=series_name, color=colors[index] if colors else None)
    ax.set_xticks(range(len(labels)), [_clip(label, 18) for label in labels], fontsize=8,
                  rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out, name)


def lines(out: Path, name: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
          xlabel: str, ylabel: str, colors: Sequence[str] | None = None, diagonal: bool = False,
          xticks: Sequence[str] | None = None) -> str:
    """One line with markers per series (x values, y values); ``diagonal``: the y = x reference of a
    calibration plot; ``xticks``: category labels for x = 0, 1, ..."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 3.0))
    for index, (series_name, (xs, ys)) in enumerate(series.items()):
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=series_name,
                color=colors[index] if colors else None)
    if diagonal:
        top = max([max(list(xs) + list(ys), default=0.0) for xs, ys in series.values()], default=1.0)
        ax.plot([0, top], [0, top], color=_GREY, linestyle="--", linewidth=0.8, label="perfect")
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), list(xticks), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out, name)


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _clip(text: Any, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = ()) -> list[Block]:
    """A table block: ints with thousands separators, floats to 3 places, numeric columns right-aligned.
    A cell may also be a ready :class:`Cell` (a class, a link)."""
    return [Table(tuple(headers), tuple(
        tuple(value if isinstance(value, Cell) else Cell(_shown(value), "num" if index in numeric else None)
              for index, value in enumerate(row))
        for row in rows))]


def _p(text: str) -> list[Block]:
    return [Paragraph(text)]


# -- sections -----------------------------------------------------------------------------------

def section_run(inp: _Inputs) -> Section:
    section = Section("run", "Run and step timings")
    runs = inp.read(section, "runs")
    if runs is None:
        return section
    rows = runs.filter(F.col("run_id") == inp.run_id).orderBy("started_at").collect()
    steps = [r for r in rows if r["step"] != "run"]
    if not steps:
        section.absent = f"no steps recorded for run {inp.run_id} in the runs table"
        return section
    total = next((r for r in rows if r["step"] == "run"), None)
    status = total["status"] if total else ("failed" if any(r["status"] == "failed" for r in steps) else "running")
    seconds = total["seconds"] if total else sum(r["seconds"] or 0 for r in steps)
    section.lead = [RunStatus(inp.run_id, status, seconds, steps[0]["started_at"])]
    section.charts.append(barh(
        inp.out, "step_timings.png", [r["step"] for r in steps], {"seconds": [r["seconds"] or 0 for r in steps]},
        title="Wall time per step (colour = status)", xlabel="seconds",
        bar_colors=[_STATUS_COLORS.get(r["status"], _GREY) for r in steps]))
    table_rows = []
    for r in steps:
        note = (r["error"] or "").splitlines()[0] if r["error"] else r["detail"]
        versions = ", ".join(f"{k}@v{v}" for k, v in sorted((r["versions"] or {}).items()))
        table_rows.append([r["step"], r["status"], f"{r['seconds'] or 0:.1f}", r["rows_in"], r["rows_out"],
                           versions, note])
    section.body = _table(["step", "status", "seconds", "rows in", "rows out", "versions written", "detail"],
                           table_rows, numeric=(2, 3, 4))
    history = (inp.lake.read("runs").filter(F.col("step") == "run").orderBy(F.col("started_at").desc())
               .limit(12).collect())[::-1]
    if len(history) > 1:
        section.charts.append(columns(
            inp.out, "run_history.png", [r["run_id"][-13:] for r in history],
            {"seconds": [r["seconds"] or 0 for r in history]}, title="Recent runs: total wall time", ylabel="seconds"))
    return section


def section_sources(inp: _Inputs) -> Section:
    section = Section("sources", "Source volumes")
    log = inp.read(section, "load_log")
    if log is None:
        return section
    this_run, scope = inp.of_this_run(log), f"files landed by run {inp.run_id}"
    if this_run is None:
        this_run, scope = log, "all files ever landed (this run landed none)"
    rows = (this_run.groupBy("source").agg(F.count(F.lit(1)).alias("files"), F.sum("raw_records").alias("raw"),
                                           F.sum("bronze_rows").alias("bronze"),
                                           F.sum("quarantined_rows").alias("quarantined"))
            .orderBy(F.col("raw").desc()).collect())
    labels = [r["source"] for r in rows]
    section.lead = _p(f"Raw records per source = bronze + quarantine; {scope}.")
    section.charts.append(barh(inp.out, "source_volumes.png", labels,
                               {"bronze": [r["bronze"] or 0 for r in rows],
                                "quarantine": [r["quarantined"] or 0 for r in rows]},
                               title="Records landed per source", xlabel="records", colors=[_BLUE, _RED]))
    section.body = _table(["source", "files", "raw", "bronze", "quarantined"],
                           [[r["source"], r["files"], r["raw"], r["bronze"], r["quarantined"]] for r in rows],
                           numeric=(1, 2, 3, 4))
    return section


def section_quarantine(inp: _Inputs) -> Section:
    section = Section("quarantine", "Quarantine by reason")
    quarantine = inp.read(section, "quarantine")
    if quarantine is None:
        return section
    if "load_id" in quarantine.columns and "load_log" in inp.tables:
        loads = inp.lake.read("load_log").filter(F.col("run_id") == inp.run_id).select("load_id").distinct()
        ours = quarantine.join(loads, on="load_id", how="left_semi")
        if ours.limit(1).count():
            quarantine = ours
    # reasons carry details after a colon ("bad timestamp: 2024-13-01"); group on the kind of problem
    kind = F.regexp_replace(F.substring_index(F.col("reason"), ":", 1), r"\s+", " ")
    rows = (quarantine.groupBy("source", kind.alias("reason")).count()
            .orderBy(F.col("count").desc()).limit(15).collect())
    if not rows:
        section.absent = "the quarantine table is empty: every record parsed"
        return section
    labels = [f"{r['source']}: {r['reason']}" for r in rows]
    section.charts.append(barh(inp.out, "quarantine_reasons.png", labels, {"records": [r["count"] for r in rows]},
                               title="Quarantined records, top reasons", xlabel="records", colors=[_RED]))
    total = quarantine.count()
    section.lead = _p(f"{total:,} quarantined records; the 15 most frequent (source, reason) pairs are shown.")
    return section


def section_silver(inp: _Inputs) -> Section:
    section = Section("silver", "Silver tables")
    silver = [t for t in inp.tables if t.startswith("silver_")]
    if not silver:
        section.absent = "no silver_* tables in the lake"
        return section
    counts = sorted(((t, table_rows(inp.lake, t)) for t in silver), key=lambda item: -item[1])
    section.charts.append(barh(inp.out, "silver_rows.png", [t for t, _ in counts], {"rows": [c for _, c in counts]},
                               title="Rows per silver table", xlabel="rows (log scale)", colors=[_BLUE], log=True))
    return section


_SIZE_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, 10**12))


def _bucket_label(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"{low}+" if high >= 10**12 else f"{low}-{high}"


def section_identity(inp: _Inputs) -> Section:
    section = Section("identity", "Identity: component sizes")
    identity_map = inp.read(section, "identity_map")
    if identity_map is None:
        return section
    sizes = identity_map.groupBy("customer_id").agg(F.count(F.lit(1)).alias("size"))
    bucket = F.lit(None).cast("string")
    for low, high in reversed(_SIZE_BUCKETS):
        bucket = F.when((F.col("size") >= low) & (F.col("size") <= high), F.lit(_bucket_label(low, high))) \
            .otherwise(bucket)
    counted = {r["bucket"]: r["customers"] for r in
               sizes.groupBy(bucket.alias("bucket")).agg(F.count(F.lit(1)).alias("customers")).collect()}
    labels = [_bucket_label(low, high) for low, high in _SIZE_BUCKETS]
    stats = sizes.agg(F.count(F.lit(1)).alias("customers"), F.max("size").alias("largest"),
                      F.avg("size").alias("mean")).first()
    section.charts.append(columns(inp.out, "component_sizes.png", labels, {"customers": [counted.get(b, 0) for b in labels]},
                                  title="Customers by number of identifiers", ylabel="customers (log)",
                                  colors=[_BLUE], log=True))
    by_type = identity_map.groupBy("id_type").agg(
        F.count(F.lit(1)).alias("identifiers"),
        F.sum(F.col("is_shared").cast("int")).alias("shared") if "is_shared" in identity_map.columns
        else F.lit(0).alias("shared")).orderBy(F.col("identifiers").desc()).collect()
    section.charts.append(barh(inp.out, "identifiers_by_type.png", [r["id_type"] for r in by_type],
                               {"linked": [r["identifiers"] - (r["shared"] or 0) for r in by_type],
                                "shared (not joining persons)": [r["shared"] or 0 for r in by_type]},
                               title="Identifiers by type", xlabel="identifiers", colors=[_BLUE, _ORANGE]))
    section.lead = _p(f"{stats['customers']:,} customers; {stats['mean']:.2f} identifiers per customer on "
                      f"average; the largest holds {stats['largest']:,}.")
    return section


def run_started_label(run_id: str) -> str:
    """'20261126T165126Z-a07391' -> '11-26 16:51' (a run id starts with its UTC start time)."""
    try:
        started = datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ")
    except ValueError:
        return run_id[-13:]
    return f"{started:%m-%d %H:%M}"


def section_merges(inp: _Inputs) -> Section:
    section = Section("merges", "Identity: merges and splits")
    history = inp.read(section, "identity_history")
    if history is None:
        return section
    # run ids start with their UTC start time, so they sort in time order
    runs = [r["run_id"] for r in history.select("run_id").distinct().orderBy(F.col("run_id").desc())
            .limit(8).collect()][::-1]
    counts = {(r["run_id"], r["event"]): r["count"] for r in
              history.filter(F.col("run_id").isin(runs)).groupBy("run_id", "event").count().collect()}
    events = sorted({event for _, event in counts})
    if not runs:
        section.absent = "identity_history is empty"
        return section
    palette = {"new": _BLUE, "merge": _ORANGE, "split": _RED, "move": "#8e6bbf", "retire": _GREY}
    section.charts.append(columns(inp.out, "identity_events.png", [run_started_label(r) for r in runs],
                                  {e: [counts.get((r, e), 0) for r in runs] for e in events},
                                  title="Identity events per run", ylabel="customers (log)",
                                  colors=[palette.get(e, _GREY) for e in events], log=True))
    ours = (history.filter(F.col("run_id") == inp.run_id).filter(F.col("event") != "new")
            .groupBy("event", "reason").count().orderBy(F.col("count").desc()).limit(12).collect())
    if ours:
        section.body = _table(["event", "reason", "customers"], [[r["event"], r["reason"], r["count"]] for r in ours],
                              numeric=(2,))
    else:
        section.body = _p(f"No merges, splits, moves or retirements in run {inp.run_id}.")
    return section


def section_tags(inp: _Inputs) -> Section:
    section = Section("tags", "Tag coverage")
    stats = inp.read(section, "tag_stats")
    if stats is None:
        return section
    latest, scope = inp.of_this_run(stats), f"run {inp.run_id}"
    if latest is None:
        last = stats.agg(F.max("computed_at").alias("at")).first()["at"]
        latest = stats.filter(F.col("computed_at") == last)
        scope = "the latest tag run (this run computed no tags)"
    rows = latest.select("tag", "kind", "coverage", "customers", "version").collect()
    if not rows:
        section.absent = "tag_stats is empty"
        return section
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 2.8))
    kinds = sorted({r["kind"] for r in rows})
    ax.hist([[100 * (r["coverage"] or 0) for r in rows if r["kind"] == k] for k in kinds], bins=20, range=(0, 100),
            stacked=True, label=kinds, color=[_BLUE, _ORANGE, "#59a14f"][: len(kinds)])
    ax.set_xlabel("coverage (% of customers with a value)")
    ax.set_ylabel("tags")
    ax.set_title(f"Tag coverage, {len(rows)} tags", fontsize=10, loc="left")
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    section.charts.append(_save(fig, inp.out, "tag_coverage.png"))
    by_kind = {k: sum(1 for r in rows if r["kind"] == k) for k in kinds}
    lowest = sorted(rows, key=lambda r: (r["coverage"] or 0, r["tag"]))[:10]
    section.body = (_p(f"Tags of {scope}: " + ", ".join(f"{n} {k}" for k, n in by_kind.items()) +
                       f"; {rows[0]['customers']:,} customers.") +
                    [Heading("Lowest coverage")] +
                    _table(["tag", "kind", "coverage", "version"],
                           [[r["tag"], r["kind"], r["coverage"], r["version"]] for r in lowest], numeric=(2,)))
    return section


# The figure that ranks a model, on the later held-out window (eval_*) when logged: AUC for a
# classifier, Spearman rank correlation for a regression such as CLV (both: 1 is perfect).
HEADLINE_METRICS = ("auc", "spearman")


def headline_metric(metrics: dict[str, float]) -> tuple[str, float] | None:
    """(name, value) of a run's headline metric: eval_<name> first, else any metric ending in <name>."""
    for key in HEADLINE_METRICS:
        value = metrics.get(f"eval_{key}", next((v for k, v in sorted(metrics.items()) if k.lower().endswith(key)),
                                                 None))
        if value is not None:
            return key, float(value)
    return None


def section_models(inp: _Inputs) -> Section:
    section = Section("models", "Predictive models (MLflow)")
    uri = mlflow_store.tracking_uri(inp.lake.root)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        section.absent = f"no MLflow tracking store at {uri}"
        return section
    client = mlflow_store.client(inp.lake.root)
    models = [m for m in client.search_registered_models() if m.name.startswith("cdp_")]
    if not models:
        section.absent = f"no cdp_* models registered in {uri}"
        return section
    rows, labels, scores = [], [], []
    for model in sorted(models, key=lambda m: m.name):
        aliases = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version))[-4:]
        if not versions:  # cdp train skipped it: the reason is the registered model's last status
            rows.append([model.name, 0, "", "", (model.tags or {}).get("cdp_status", "")])
        for version in versions:
            run = client.get_run(version.run_id) if version.run_id else None
            metrics = run.data.metrics if run else {}
            label = f"{model.name} v{version.version}" + (" ★" if "champion" in aliases.get(str(version.version), []) else "")
            headline = headline_metric(metrics)
            labels.append(f"{label} · {headline[0]}" if headline else label)
            scores.append(headline[1] if headline else 0.0)
            shown = ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items(), key=lambda kv: (not kv[0].startswith("eval_"), kv[0]))[:6])
            # the promotion verdict: model vs the baseline and the champion on the same window
            verdict = run.data.tags.get("promotion", "") if run else ""
            rows.append([model.name, int(version.version), ", ".join(aliases.get(str(version.version), [])), shown,
                         verdict])
    for model in sorted(models, key=lambda m: m.name):
        champion = (model.aliases or {}).get("champion")
        if champion is not None:
            section.charts.extend(diagnostic_charts(inp.out, model.name, client,
                                                    client.get_model_version(model.name, champion).run_id))
    if any(scores):
        section.charts.insert(0, barh(inp.out, "model_metrics.png", labels, {"held-out score": scores},
                                   title="Held-out score per model version (★ = champion)",
                                   xlabel="AUC (classifiers) or Spearman (CLV); 1 is perfect", colors=[_BLUE]))
    section.body = _table(["model", "version", "aliases", "metrics", "promotion (vs baseline and champion)"], rows,
                          numeric=(1,))
    return section


def diagnostic_charts(out: Path, model: str, client: Any, run_id: str | None) -> list[str]:
    """The champion's diagnostics that ``cdp train`` logged (``diagnostics/*.csv`` in its MLflow run),
    as charts: CLV, actual vs predicted purchases by calibration-period repeat purchases (the BG/NBD
    paper's figure); classifiers, the calibration curve; both, lift by decile against the baseline."""
    import tempfile

    import pandas as pd

    if run_id is None:
        return []
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(client.download_artifacts(run_id, "diagnostics", folder))
        except Exception as exc:  # noqa: BLE001 - a run logged before diagnostics existed has none
            logger.info("report: no diagnostics for %s (run %s): %s", model, run_id, exc)
            return []
        tables = {p.stem: pd.read_csv(p) for p in local.glob("*.csv")}
    charts = []
    if "purchases_by_frequency" in tables:
        table = tables["purchases_by_frequency"]
        positions = list(range(len(table)))
        charts.append(lines(out, f"diag_{model}_frequency.png",
                            {"actual": (positions, table["actual_mean"]),
                             "predicted (BG/NBD)": (positions, table["predicted_mean"])},
                            title=f"{model}: purchases, actual vs predicted (eval window)",
                            xlabel="repeat purchases in the calibration period", ylabel="mean purchases",
                            colors=[_BLUE, _ORANGE], xticks=[str(v) for v in table["repeat_purchases"]]))
    curves = {label: tables[f"calibration_curve_{key}"] for key, label in (("model", "model"), ("baseline", "baseline"))
              if f"calibration_curve_{key}" in tables}
    if curves:
        charts.append(lines(out, f"diag_{model}_calibration.png",
                            {label: (t["mean_predicted"], t["observed_rate"]) for label, t in curves.items()},
                            title=f"{model}: calibration on the evaluation window", xlabel="mean predicted",
                            ylabel="observed rate", colors=[_BLUE, _GREY], diagonal=True))
    lifts = {label: tables[f"lift_by_decile_{key}"]["lift"] for key, label in (("model", "model"), ("baseline", "baseline"))
             if f"lift_by_decile_{key}" in tables}
    if lifts:
        deciles = [str(d) for d in tables["lift_by_decile_model" if "model" in lifts else "lift_by_decile_baseline"]["decile"]]
        charts.append(columns(out, f"diag_{model}_lift.png", deciles, {k: list(v) for k, v in lifts.items()},
                              title=f"{model}: lift by decile (1 = top scores)", ylabel="lift over the mean",
                              colors=[_BLUE, _GREY]))
    return charts


def section_audiences(inp: _Inputs) -> Section:
    section = Section("audiences", "Audiences: sizes and changes")
    stats = inp.read(section, "audience_stats")
    if stats is None:
        return section
    newest = Window.partitionBy("audience").orderBy(F.col("computed_at").desc())
    rows = (stats.withColumn("_n", F.row_number().over(newest)).filter(F.col("_n") == 1)
            .orderBy(F.col("members").desc()).collect())
    labels = [r["audience"] for r in rows]
    section.charts.append(barh(inp.out, "audience_sizes.png", labels,
                               {"members": [r["members"] - (r["in_control"] or 0) for r in rows],
                                "control group": [r["in_control"] or 0 for r in rows]},
                               title="Published audience size", xlabel="customers", colors=[_BLUE, _GREY]))
    section.charts.append(barh(inp.out, "audience_exclusions.png", labels,
                               {"no consent": [r["no_consent"] or 0 for r in rows],
                                "unreachable": [r["unreachable"] or 0 for r in rows],
                                "suppressed": [r["suppressed"] or 0 for r in rows]},
                               title="Matched but not published", xlabel="customers",
                               colors=[_ORANGE, _GREY, _RED]))
    if "audience_changes" in inp.tables:
        changes = {(r["audience"], r["change"]): r["count"] for r in
                   inp.lake.read("audience_changes").filter(F.col("run_id") == inp.run_id)
                   .groupBy("audience", "change").count().collect()}
        if changes:
            section.charts.append(barh(inp.out, "audience_changes.png", labels,
                                       {"entered": [changes.get((a, "entered"), 0) for a in labels],
                                        "exited": [changes.get((a, "exited"), 0) for a in labels]},
                                       title="Entered + exited in this run", xlabel="customers",
                                       colors=["#59a14f", _RED]))
    section.body = _table(["audience", "channel", "matched", "published", "control", "version", "computed at"],
                          [[r["audience"], r["channel"], r["matched"], r["members"], r["in_control"],
                            r["publish_version"], f"{r['computed_at']:%Y-%m-%d %H:%M}"] for r in rows],
                          numeric=(2, 3, 4, 5))
    return section


def rate_chart(out: Path, name: str, versions: Sequence[int], groups: dict[str, Sequence[tuple[float, float, float]]],
               *, title: str, colors: Sequence[str]) -> str:
    """Conversion rate per publish version, one series per group, each point with its interval bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 2.8))
    offset = 0.08 * max(1, len(versions) / 4)
    for index, (group, points) in enumerate(groups.items()):
        xs = [v + (index - (len(groups) - 1) / 2) * offset for v in versions]
        rates = [100 * rate for rate, _, _ in points]
        below = [100 * (rate - low) for rate, low, _ in points]
        above = [100 * (high - rate) for rate, _, high in points]
        ax.errorbar(xs, rates, yerr=[below, above], fmt="o-" if len(versions) > 1 else "o", capsize=3,
                    color=colors[index], label=group, markersize=4, linewidth=1)
    ax.set_xticks(list(versions), [f"v{v}" for v in versions], fontsize=8)
    ax.set_xlabel("publish version")
    ax.set_ylabel("conversion rate (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=8)
    ax.margins(x=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, out, name)


def _lift_text(row: Any) -> str:
    if row["abs_lift"] is None:
        return "n/a"
    return (f"{100 * row['abs_lift']:+.2f} pp [{100 * row['abs_lift_low']:+.2f}, "
            f"{100 * row['abs_lift_high']:+.2f}]")


def _group_text(row: Any, group: str) -> str:
    """conversions / members of a closed result; an open one has members only (nothing counted yet)."""
    members = row[f"members_{group}"] or 0
    if row["status"] != "closed":
        return f"{members:,} members"
    return f"{row[f'conversions_{group}'] or 0:,} / {members:,}"


def section_performance(inp: _Inputs) -> Section:
    """Per audience and goal: the conversion rate of treatment and control over publishes (cdp measure)."""
    section = Section("performance", "Audience performance: treatment vs control")
    if absent := inp.has("audience_performance"):
        section.absent = absent
        return section
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from cdp.engage import rate_interval

    performance = inp.lake.read("audience_performance")
    # a closed result is written once; an open one again on every run until it closes: keep the newest
    newest = Window.partitionBy("audience", "publish_version", "goal").orderBy(
        F.when(F.col("status") == "closed", 0).otherwise(1), F.col("measured_at").desc())
    rows = (performance.withColumn("_n", F.row_number().over(newest)).filter(F.col("_n") == 1)
            .orderBy("audience", "goal", "publish_version").collect())
    if not rows:
        section.absent = "audience_performance is empty"
        return section
    closed = [r for r in rows if r["status"] == "closed"]
    pairs = sorted({(r["audience"], r["goal"]) for r in closed})
    for audience, goal in pairs:
        points = [r for r in closed if (r["audience"], r["goal"]) == (audience, goal)
                  and r["members_treatment"] and r["members_control"]]
        if not points:
            continue
        groups = {"treatment": [rate_interval(r["conversions_treatment"], r["members_treatment"]) for r in points],
                  "control": [rate_interval(r["conversions_control"], r["members_control"]) for r in points]}
        section.charts.append(rate_chart(
            inp.out, f"performance_{audience}_{goal}.png", [r["publish_version"] for r in points], groups,
            title=f"{audience} · {goal}: conversion rate, 95% interval", colors=[_BLUE, _GREY]))
    opened = len(rows) - len(closed)
    section.lead = _p(f"{len(closed)} closed and {opened} open results (a result closes when its conversion "
                      "window has passed); rates with Wilson 95% intervals, absolute lift with the Wald interval.")
    section.body = _table(
        ["audience", "goal", "version", "status", "treatment", "control", "absolute lift [95%]", "conclusive"],
        [[r["audience"], r["goal"], r["publish_version"],
          r["status"] if r["status"] == "closed" else f"open until {r['window_end']:%Y-%m-%d}",
          *[_group_text(r, group) for group in ("treatment", "control")],
          _lift_text(r) if r["status"] == "closed" else "", "yes" if r["conclusive"] else "no"] for r in rows],
        numeric=(2,))
    return section


def _read_quality_reports(root: str, run_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The gate JSON reports of ``run_id`` (else of the newest run that has some)."""
    if not is_local(root):
        return None, []
    base = Path(root) / QUALITY_DIR
    if not base.is_dir():
        return None, []
    folders = [base / run_id] if (base / run_id).is_dir() else sorted(
        (p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)[-1:]
    for folder in folders:
        reports = [{**json.loads(p.read_text(encoding="utf-8")), "_file": p.stem} for p in sorted(folder.glob("*.json"))]
        if reports:
            return folder.name, reports
    return None, []


def section_gates(inp: _Inputs) -> Section:
    section = Section("gates", "Quality gates")
    gate_run, reports = _read_quality_reports(inp.lake.root, inp.run_id)
    if not reports:
        section.absent = f"no gate reports under {QUALITY_DIR}/ in the lake"
        return section
    labels, passed, warned, failed, rows = [], [], [], [], []
    for report in reports:
        outcomes = [o for o in report.get("outcomes", []) if not o.get("skipped")]
        n_fail = sum(1 for o in outcomes if not o["success"] and o.get("blocking"))
        n_warn = sum(1 for o in outcomes if not o["success"] and not o.get("blocking"))
        name = report.get("_file", report["table"])
        labels.append(report["table"] if name == report["table"] else f"{report['table']} ({report['suite']})")
        passed.append(sum(1 for o in outcomes if o["success"]))
        warned.append(n_warn)
        failed.append(n_fail)
        link = f"../../../{QUALITY_DIR}/{gate_run}/{name}.html"
        worst = next((o for o in outcomes if not o["success"]), None)
        rows.append((report["table"], report["suite"], "passed" if report["success"] else "FAILED", n_fail, n_warn,
                     f"{worst['view']}: {worst['expectation']}" if worst else "", link))
    section.charts.append(barh(inp.out, "gates.png", labels, {"passed": passed, "warning": warned, "failed": failed},
                               title="Expectations per gate", xlabel="expectations",
                               colors=["#59a14f", _ORANGE, _RED]))
    section.lead = _p(f"Gates of run {gate_run}" + ("" if gate_run == inp.run_id else
                                                           f" (the newest with gate reports; this is {inp.run_id})") + ".")
    section.body = _table(["table", "suite", "result", "failed", "warnings", "first problem", "details"],
                          [[table, suite, Cell(result, "ok" if result == "passed" else "failed"), n_fail, n_warn,
                            worst, Cell("report", href=link)]
                           for table, suite, result, n_fail, n_warn, worst, link in rows], numeric=(3, 4))
    return section


def draw_identity_graph(edges: Any, *, title: str = "identity graph", ax: Any = None) -> Any:
    """Draw identity-graph edges (a pandas frame with a_type, a_value, b_type, b_value, status) on a circle.

    Active edges are solid; cut ones (shared identifier, limit, quarantine) are dashed and red. For
    notebooks: a customer's graph has a handful of nodes, so a circular layout reads well.
    """
    import math

    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))
    nodes = sorted({(r.a_type, r.a_value) for r in edges.itertuples()} | {(r.b_type, r.b_value) for r in edges.itertuples()})
    where = {node: (math.cos(2 * math.pi * i / max(1, len(nodes))), math.sin(2 * math.pi * i / max(1, len(nodes))))
             for i, node in enumerate(nodes)}
    for r in edges.itertuples():
        (x1, y1), (x2, y2) = where[(r.a_type, r.a_value)], where[(r.b_type, r.b_value)]
        active = r.status == "active"
        ax.plot([x1, x2], [y1, y2], color=_BLUE if active else _RED, linestyle="-" if active else "--",
                linewidth=1.5 if active else 1.0, zorder=1)
    for (id_type, value), (x, y) in where.items():
        ax.scatter([x], [y], s=120, color=_ORANGE, zorder=2)
        ax.annotate(f"{id_type}\n{_clip(value, 22)}", (x, y), textcoords="offset points", xytext=(0, 9),
                    ha="center", fontsize=7)
    ax.set_title(f"{title} ({len(nodes)} identifiers, {len(edges)} edges; dashed = cut)", fontsize=10, loc="left")
    ax.set_axis_off()
    ax.margins(0.25)
    return ax


SECTIONS: tuple[Callable[[_Inputs], Section], ...] = (
    section_run, section_sources, section_quarantine, section_silver, section_identity, section_merges,
    section_tags, section_models, section_audiences, section_performance, section_gates,
)

@lru_cache(maxsize=1)
def _templates() -> Any:
    import jinja2

    # PackageLoader also reads the templates from a wheel shipped to a cluster as a zip (--py-files).
    return jinja2.Environment(loader=jinja2.PackageLoader("cdp.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_html(run_id: str, lake_root: str, sections: Sequence[Section], generated_at: datetime) -> str:
    """The report page (``templates/report.html.j2``, styles in ``templates/report.css``); every text is
    escaped by Jinja2's autoescaping."""
    env = _templates()
    css = env.loader.get_source(env, "report.css")[0]
    return env.get_template("report.html.j2").render(run_id=run_id, lake_root=lake_root, sections=sections,
                                                     generated_at=generated_at, css=css)


def latest_run_id(lake: Any) -> str | None:
    if not lake.exists("runs"):
        return None
    row = lake.read("runs").orderBy(F.col("started_at").desc()).select("run_id").first()
    return row["run_id"] if row else None


def build_report(spark: Any, lake: Any, run_id: str, out: Path) -> list[Section]:
    """Render every section's charts into ``out``; return the sections (for the HTML)."""

    out.mkdir(parents=True, exist_ok=True)
    inputs = _Inputs(spark=spark, lake=lake, run_id=run_id, tables=list_tables(lake), out=out)
    sections = []
    for build in SECTIONS:
        try:
            sections.append(build(inputs))
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            logger.exception("report section %s failed", build.__name__)
            sections.append(Section(build.__name__.removeprefix("section_"), build.__name__.removeprefix("section_"),
                                    absent=f"could not be rendered: {type(exc).__name__}: {exc}"))
    return sections


