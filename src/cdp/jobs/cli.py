"""The ``cdp`` command: ``cdp <job> [--conf DIR] [--lake URI] [--profile NAME] ...``."""
from __future__ import annotations

import importlib
import sys

# job name -> module under jobs/ with a main(argv) function
JOBS: dict[str, tuple[str, str]] = {
    "generate": ("cdp.jobs.generate", "write realistic raw exports of every source system"),
    "land": ("cdp.jobs.land", "raw files -> bronze Delta tables (+ quarantine)"),
    "standardize": ("cdp.jobs.standardize", "bronze -> silver canonical tables"),
    "stitch": ("cdp.jobs.stitch", "identity graph -> customer ids, identity map, golden profile"),
    "features": ("cdp.jobs.features", "customer feature snapshot as of a date"),
    "train": ("cdp.jobs.train", "train and register predictive tag models in MLflow"),
    "tag": ("cdp.jobs.tag", "compute every tag in the catalogue"),
    "tags": ("cdp.jobs.tags", "list / show the tag catalogue and lineage"),
    "audiences": ("cdp.jobs.audiences", "evaluate, gate and publish audiences; preview one"),
    "journeys": ("cdp.jobs.journeys", "advance journeys by one run and publish their due sends"),
    "export": ("cdp.jobs.export", "write published audiences for their destinations"),
    "measure": ("cdp.jobs.measure", "measure audience publishes against their control groups"),
    "forget": ("cdp.jobs.forget", "erase a person from every layer"),
    "sources": ("cdp.jobs.sources", "profile a raw export and draft its conf/sources.yaml block"),
    "validate": ("cdp.jobs.validate", "parse and cross-check every config file (no Spark)"),
    "run": ("cdp.jobs.run", "run the whole pipeline in dependency order"),
    "report": ("cdp.jobs.report", "render the HTML run report"),
    "jars": ("cdp.jobs.jars", "fetch the JVM jars of jars/pom.xml into jars/lib (once, never at job start)"),
}


EXIT_CODES = """exit codes:
  0   ok
  1   a step failed (a failed quality gate says so in its message)
  2   bad configuration or usage
  75  the lake is locked by another run: retry later"""


def version() -> str:
    """The installed distribution's version (``cdp-spark``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("cdp-spark")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def usage() -> str:
    lines = ["usage: cdp <job> [--conf DIR] [--profile NAME] [--lake URI] [--log-format text|json] [job options]",
             "       cdp --version", "", "jobs:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in JOBS.items()]
    lines += ["", "cdp <job> --help shows a job's options.", "", EXIT_CODES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        print(f"cdp {version()}")
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if not argv or argv[0] not in JOBS:
        message = f"cdp: unknown job {argv[0]!r}\n\n" if argv else ""
        print(message + usage(), file=sys.stderr)
        return 2
    job, rest = argv[0], argv[1:]
    module = importlib.import_module(JOBS[job][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
