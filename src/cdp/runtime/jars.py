"""The JVM jars of the production path (delta-spark, later hadoop-aws): fetched once, never at job start.

``jars/pom.xml`` pins them; ``cdp jars fetch`` (or ``mvn -q -B -f jars/pom.xml
dependency:copy-dependencies``) copies them into ``jars/lib/``. A session started by the ``cdp`` CLI
or by the tests puts every jar of that folder on ``spark.jars`` (:func:`local_jars`); under
spark-submit its ``--jars`` / ``--packages`` decide and this folder is not looked at.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

# Where the jars live: $CDP_JARS_DIR, else jars/lib/ of the source checkout this package was installed
# from (pip install -e), else jars/lib/ under the working directory (a wheel install run from a checkout).
JARS_DIR_VARIABLE = "CDP_JARS_DIR"
_CHECKOUT = Path(__file__).resolve().parents[3]  # src/cdp/runtime/jars.py -> the checkout
DELTA_SPARK_JAR_PREFIX = "delta-spark_"
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


class JarsError(RuntimeError):
    """The jars could not be fetched (no Maven, no pom, or Maven failed)."""


def jars_dir() -> Path:
    """The folder the jars are fetched into and read from (it may not exist yet)."""
    configured = os.environ.get(JARS_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser().resolve()
    if (_CHECKOUT / "jars" / "pom.xml").is_file():
        return _CHECKOUT / "jars" / "lib"
    return Path.cwd() / "jars" / "lib"


def local_jars(folder: Path | None = None) -> list[Path]:
    """Every ``*.jar`` in the jars folder, sorted; empty when it was never fetched."""
    folder = jars_dir() if folder is None else folder
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def absent_reason() -> str:
    """Why the delta-spark backend cannot run here: the jars were never fetched (for skips and errors)."""
    return (f"delta-spark jars not fetched: run `cdp jars fetch` (mvn -q -B -f jars/pom.xml "
            f"dependency:copy-dependencies) to fill {jars_dir()}")


def has_delta_spark(jars: list[Path]) -> bool:
    return any(jar.name.startswith(DELTA_SPARK_JAR_PREFIX) for jar in jars)


def default_pom() -> Path:
    """``jars/pom.xml`` of the checkout, else of the working directory."""
    checkout_pom = _CHECKOUT / "jars" / "pom.xml"
    return checkout_pom if checkout_pom.is_file() else Path.cwd() / "jars" / "pom.xml"


def fetch(pom: Path | None = None, out: Path | None = None, *, maven: str = "mvn") -> list[Path]:
    """Copy the pom's dependencies (and theirs, less what pyspark ships) into ``out``; returns the jars.

    Idempotent: jars already there are kept. Raises :class:`JarsError` with Maven's output when an
    artifact is not served or Maven is missing.
    """
    out = jars_dir() if out is None else out
    pom = default_pom() if pom is None else pom
    if not pom.is_file():
        raise JarsError(f"{pom}: no such pom (run from a checkout, or pass --pom)")
    executable = shutil.which(maven)
    if executable is None:
        raise JarsError(f"{maven!r} is not on PATH: install Maven 3.8+ (apt-get install maven)")
    out.mkdir(parents=True, exist_ok=True)
    command = [executable, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-Djars.dir={out}"]
    logger.info("fetching JVM jars: %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise JarsError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    jars = local_jars(out)
    logger.info("%d jars in %s", len(jars), out)
    return jars
