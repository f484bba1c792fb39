"""What a lake holds: its tables, their versions and row counts (read from the Delta log when it can).

Beside :mod:`cdp.lake` rather than inside the runner, so that the runner and the run report both read
the lake through the lake's package and neither imports the other.
"""
from __future__ import annotations

import logging
from typing import Any

from cdp.lake.paths import delta_rs_uri

logger = logging.getLogger(__name__)


def list_tables(lake: Any) -> list[str]:
    """Table names in the lake (a local folder or an object store): those a reader sees."""
    return lake.tables()


def table_versions(lake: Any) -> dict[str, int]:
    """Versions of the tables a reader sees (committed, or written by this process)."""
    return {name: lake.version(name) for name in list_tables(lake) if lake.exists(name)}


def table_rows(lake: Any, name: str) -> int:
    """Rows in the table's current version; from the Delta log's file stats when the lake is embedded."""
    if lake.backend == "embedded":
        try:
            import pyarrow as pa
            from deltalake import DeltaTable

            actions = DeltaTable(delta_rs_uri(lake.uri(name)), version=lake.version(name),
                                 storage_options=getattr(lake, "storage_options", None) or None  # object stores
                                 ).get_add_actions(flatten=True)
            counts = pa.table(actions).column("num_records").to_pylist()
            if all(count is not None for count in counts):
                return int(sum(counts))
        except Exception:  # noqa: BLE001 - fall back to counting with Spark
            logger.debug("no file stats for %s; counting rows", name)
    return lake.read(name).count()
