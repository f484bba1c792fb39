"""``cdp report``: render the HTML run report (:mod:`cdp.report`) for a run.

``cdp report [--for-run ID]`` (or ``spark-submit src/cdp/jobs/report.py``) renders it for a run
(default: the latest run in the ``runs`` table).
"""
from __future__ import annotations

import argparse
import logging
import posixpath
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdp.lake.paths import is_local
from cdp.report import LATEST, REPORTS_DIR, build_report, latest_run_id, render_html
from cdp.runtime.config import JobContext

logger = logging.getLogger("cdp.jobs.report")  # not __name__: it may run as __main__

def run(spark: Any, ctx: JobContext, *, lake: Any = None, run_id: str | None = None) -> str:
    """Write the report for ``run_id`` (default: the latest run) and its ``latest`` copy.

    Returns:
        the path (or URI) of the run's ``index.html``.
    """
    from cdp.lake import Lake

    lake = lake or Lake(spark, ctx.lake_root)
    run_id = run_id or latest_run_id(lake)
    if not run_id:
        from cdp.jobs.entry import JobFailed

        raise JobFailed(f"no runs recorded in {lake.root}/runs: run `cdp run` first or pass --run-id")
    local = is_local(lake.root)
    staging = Path(lake.root) / REPORTS_DIR / run_id if local else Path(tempfile.mkdtemp(prefix="cdp-report-"))
    if staging.exists():
        shutil.rmtree(staging)
    sections = build_report(spark, lake, run_id, staging)
    (staging / "index.html").write_text(render_html(run_id, lake.root, sections, datetime.now(UTC)), encoding="utf-8")
    if local:
        latest = Path(lake.root) / REPORTS_DIR / LATEST
        if latest.exists():
            shutil.rmtree(latest)
        shutil.copytree(staging, latest)
        target = str(staging / "index.html")
    else:
        for folder in (run_id, LATEST):
            _upload(staging, f"{lake.root}/{REPORTS_DIR}/{folder}")
        shutil.rmtree(staging)
        target = f"{lake.root}/{REPORTS_DIR}/{run_id}/index.html"
    shown = sum(1 for s in sections if not s.absent)
    logger.info("run report %s: %d of %d sections shown, %d charts", target, shown, len(sections),
                sum(len(s.charts) for s in sections if not s.absent))
    return target


def _upload(folder: Path, uri: str) -> None:
    from cdp.lake.storage import filesystem as open_filesystem

    filesystem, base = open_filesystem(uri)
    filesystem.create_dir(base, recursive=True)
    for path in folder.iterdir():
        with filesystem.open_output_stream(posixpath.join(base, path.name)) as handle:
            handle.write(path.read_bytes())


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--for-run", dest="for_run", help="the run to report on (default: the latest)")


def _run_from_args(spark: Any, ctx: JobContext, args: argparse.Namespace) -> int:
    path = run(spark, ctx, run_id=args.for_run)
    logger.info("open %s", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    from cdp.jobs.entry import job_main

    return job_main("report", argv, _run_from_args, _add_arguments, description="render the HTML run report")


if __name__ == "__main__":
    sys.exit(main())
