"""``cdp jars fetch``: copy the JVM jars pinned in jars/pom.xml into jars/lib/ (once, never at job start).

``cdp jars list`` names the jars a ``cdp`` session would put on ``spark.jars``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cdp.jobs.entry import setup_logging
from cdp.runtime.jars import JarsError, fetch, jars_dir, local_jars

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cdp jars", description=__doc__)
    parser.add_argument("action", choices=["fetch", "list"])
    parser.add_argument("--pom", type=Path, help="Maven pom (default: jars/pom.xml of the checkout)")
    parser.add_argument("--dir", type=Path, help="jars folder (default: $CDP_JARS_DIR, else jars/lib/)")
    args = parser.parse_args(argv)
    setup_logging()
    folder = args.dir.resolve() if args.dir else jars_dir()
    if args.action == "list":
        jars = local_jars(folder)
        logger.info("%d jars in %s%s", len(jars), folder, "".join(f"\n  {jar.name}" for jar in jars))
        return 0
    try:
        jars = fetch(args.pom, folder)
    except JarsError as error:
        logger.error("%s", error)
        return 1
    logger.info("fetched: %s", ", ".join(jar.name for jar in jars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
