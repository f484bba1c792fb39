"""Customer Data Platform as PySpark jobs: one installed namespace, ``cdp``.

Packages (docs/ARCHITECTURE.md has who may import whom, checked by import-linter):
``identity``, ``features``, ``tagging``, ``audiences``, ``privacy``, ``expectations`` and ``sources``
hold pure DataFrame transforms and typed config; ``lake`` reads and writes Delta tables; ``runtime``
holds what the jobs share (config files, session, lock, gates); ``jobs`` holds the entry points.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cdp._legacy import install_legacy_module_aliases

try:
    __version__ = version("cdp-spark")  # one place: setup.py
except PackageNotFoundError:  # a checkout put on sys.path without installing
    __version__ = "0+unknown"

# Models registered before the namespace move pickled their classes under the old top-level module
# names (``tagging.predictive.ProbabilityModel``); resolve those names to ``cdp.*`` with a warning.
install_legacy_module_aliases()
