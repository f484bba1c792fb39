"""The pipeline's step registry: what ``cdp run`` runs, in dependency order, and what each job is handed.

One :class:`Step` per pipeline step names its job module and function, what the step reads (the
runner counts those rows in), and how to build its parameters from the runner's own options
(:class:`RunOptions`): an object of the step's own type, a frozen dataclass whose fields are the
keyword arguments the runner passes to the job's function. Nothing is matched by name or annotation at run
time; ``tests/test_run.py`` binds every entry's parameters to its job's real signature, so a job
whose ``run`` changes fails there, not in the middle of a run.

A job module is imported when its step runs: a step whose module is not installed is skipped
(failed when asked for with ``--only``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date
from typing import Any

from cdp.lake import Lake
from cdp.runtime.config import ConfigError

DEFAULT_CUSTOMERS = 10_000


@dataclass(frozen=True)
class RunOptions:
    """What ``cdp run`` knows besides the job context, resolved from its command line.

    Attributes:
        lake: the runner's lake (every step writes through it, so its commits are the runner's).
        raw_dir: the raw exports folder (None: a lake off the local disk without ``--raw``).
        customers, seed, end: what ``generate`` makes (``end`` None: the generator's default).
        as_of: the snapshot date of features, train (its end of data), tag, audiences and measure
            (None: each job's own default).
        train: train even when training is not due.
    """

    lake: Lake
    raw_dir: str | None = None
    customers: int = DEFAULT_CUSTOMERS
    seed: int = 42
    end: str | None = None
    as_of: date | None = None
    train: bool = False

    def raw(self, step: str) -> str:
        """The raw folder, which ``step`` cannot do without."""
        if self.raw_dir is None:
            raise ConfigError(f"step {step}: the lake {self.lake.root} is not on a local disk, so there is no "
                              "default raw folder (<lake>/../raw); pass --raw")
        return self.raw_dir


class StepParams:
    """Base of the parameters types: a frozen dataclass whose fields are the job function's keywords."""

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments of the job's function: this object's fields by name (not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class GenerateParams(StepParams):
    """``cdp.jobs.generate.run``: write raw exports of ``customers`` persons into ``out``."""

    out: str
    customers: int
    seed: int
    end: str


@dataclass(frozen=True)
class LandParams(StepParams):
    """``cdp.jobs.land.run``: land the raw files under ``raw`` into the lake."""

    raw: str
    lake: Lake


@dataclass(frozen=True)
class _OnTheLake(StepParams):
    lake: Lake


class StandardizeParams(_OnTheLake):
    """``cdp.jobs.standardize.run``: rebuild silver from every bronze table."""


class StitchParams(_OnTheLake):
    """``cdp.jobs.stitch.run``: stitch identities (its mode stays ``auto``)."""


class ExportParams(_OnTheLake):
    """``cdp.jobs.export.run``: export every published audience."""


@dataclass(frozen=True)
class _AsOf(StepParams):
    lake: Lake
    as_of: date | None


class FeaturesParams(_AsOf):
    """``cdp.jobs.features.run``: the feature snapshot as of ``as_of`` (None: today)."""


class TagParams(_AsOf):
    """``cdp.jobs.tag.run``: tag the snapshot of ``as_of`` (None: the latest)."""


class AudiencesParams(_AsOf):
    """``cdp.jobs.audiences.run``: evaluate every audience as of ``as_of`` (None: now)."""


class JourneysParams(_AsOf):
    """``cdp.jobs.journeys.run``: advance every journey as of ``as_of`` (None: now)."""


class MeasureParams(_AsOf):
    """``cdp.jobs.measure.run``: measure publishes as of ``as_of`` (None: now)."""


@dataclass(frozen=True)
class TrainParams(StepParams):
    """``cdp.jobs.train.run``: train on data before ``end`` (``cdp train --as-of``; None: after the last order)."""

    lake: Lake
    end: date | None


def _generate_params(options: RunOptions) -> GenerateParams:
    from cdp.synthetic import DEFAULT_END

    return GenerateParams(out=options.raw("generate"), customers=options.customers, seed=options.seed,
                          end=options.end or DEFAULT_END)


def _generated_records(result: Any) -> int:
    return sum(result.records.values())


def _raw_records(result: Any) -> int:
    return int(result.raw_records)


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    Attributes:
        name: the step's name (``cdp run --only NAME``).
        does: one line for the logs and the ``runs`` table.
        module, function: the job's function, ``function(spark, ctx, **params.keywords())``.
        params: builds the step's parameters (its own :class:`StepParams` type) from the runner's options.
        reads: the tables whose rows are the step's rows in; a trailing ``*`` matches a prefix, a
            leading ``!`` excludes.
        due: a function of the module, ``(ctx) -> (due, reason)``: the step runs only when due,
            when forced (``--train``) or when named with ``--only``.
        rows_in, rows_out: the rows in (out) taken from the job's result, where no table says.
    """

    name: str
    does: str
    module: str
    params: Callable[[RunOptions], StepParams]
    function: str = "run"
    reads: tuple[str, ...] = ()
    due: str | None = None
    rows_in: Callable[[Any], int] | None = None
    rows_out: Callable[[Any], int] | None = None


STEPS: tuple[Step, ...] = (
    Step("generate", "write raw exports of every source system", "cdp.jobs.generate",
         _generate_params, rows_out=_generated_records),
    Step("land", "raw files -> bronze tables + quarantine", "cdp.jobs.land",
         lambda o: LandParams(raw=o.raw("land"), lake=o.lake), rows_in=_raw_records),
    Step("standardize", "bronze -> silver canonical tables", "cdp.jobs.standardize",
         lambda o: StandardizeParams(lake=o.lake), reads=("bronze_*",)),
    Step("stitch", "identity graph -> customer ids, identity map, golden profile", "cdp.jobs.stitch",
         lambda o: StitchParams(lake=o.lake), reads=("silver_identifiers",)),
    Step("features", "customer feature snapshot", "cdp.jobs.features",
         lambda o: FeaturesParams(lake=o.lake, as_of=o.as_of),
         reads=("customer_profile", "silver_orders", "silver_events")),
    Step("train", "train predictive tag models and the clustering, promote champions", "cdp.jobs.train",
         lambda o: TrainParams(lake=o.lake, end=o.as_of), reads=("features_daily",), due="training_due"),
    Step("tag", "compute every tag in the catalogue", "cdp.jobs.tag",
         lambda o: TagParams(lake=o.lake, as_of=o.as_of), reads=("features_daily",)),
    Step("audiences", "evaluate, gate and publish audiences", "cdp.jobs.audiences",
         lambda o: AudiencesParams(lake=o.lake, as_of=o.as_of), reads=("tags_wide",)),
    Step("journeys", "advance journeys, publish each send step's due members", "cdp.jobs.journeys",
         lambda o: JourneysParams(lake=o.lake, as_of=o.as_of), reads=("journey_state", "audience_changes")),
    Step("export", "write published audiences for their destinations", "cdp.jobs.export",
         lambda o: ExportParams(lake=o.lake),
         reads=("audience_*", "!audience_changes", "!audience_stats", "!audience_performance")),
    Step("measure", "measure audience publishes against their control groups", "cdp.jobs.measure",
         lambda o: MeasureParams(lake=o.lake, as_of=o.as_of), reads=("audience_changes",)),
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
