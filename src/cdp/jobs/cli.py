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
    "export": ("cdp.jobs.export", "write published audiences for their destinations"),
    "forget": ("cdp.jobs.forget", "erase a person from every layer"),
    "run": ("cdp.jobs.run", "run the whole pipeline in dependency order"),
    "report": ("cdp.jobs.report", "render the HTML run report"),
    "jars": ("cdp.jobs.jars", "fetch the JVM jars of jars/pom.xml into jars/lib (once, never at job start)"),
}


def usage() -> str:
    lines = ["usage: cdp <job> [--conf DIR] [--profile NAME] [--lake URI] [job options]", "", "jobs:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in JOBS.items()]
    lines += ["", "cdp <job> --help shows a job's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        return 0
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        return 2
    module = importlib.import_module(JOBS[job][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
