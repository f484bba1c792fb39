"""Delta per-file statistics (numRecords, minValues, maxValues, nullCount) read from Parquet footers,
for the embedded backend's commits."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

# Strings longer than this get no min/max statistics (Delta readers expect them to be exact here).
_MAX_STATS_STRING = 32


def _format_stat(value: Any, *, upper: bool) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # Delta keeps millisecond stats: round outward so the range still covers every value.
        floored = value.replace(microsecond=value.microsecond // 1000 * 1000)
        if upper and floored != value:
            floored += timedelta(milliseconds=1)
        return floored.strftime("%Y-%m-%dT%H:%M:%S.") + f"{floored.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    if isinstance(value, float) and value != value:  # NaN says nothing usable
        return None
    return value


def file_stats(footer) -> dict[str, Any]:
    """Delta per-file statistics (numRecords, minValues, maxValues, nullCount) from a Parquet footer.

    Only top-level primitive columns; strings only when short enough to keep exactly.
    """
    stats: dict[str, Any] = {"numRecords": footer.num_rows, "minValues": {}, "maxValues": {},
                             "nullCount": {}}
    schema = footer.schema
    top_level = {}
    for index in range(footer.num_columns):
        path = schema.column(index).path
        if "." in path:
            continue
        top_level[path] = index
    for name, index in top_level.items():
        nulls, lows, highs, exact = 0, [], [], True
        for group in range(footer.num_row_groups):
            column = footer.row_group(group).column(index)
            statistics = column.statistics
            if statistics is None or not statistics.has_null_count:
                exact = False
                break
            nulls += statistics.null_count
            if statistics.has_min_max:
                lows.append(statistics.min)
                highs.append(statistics.max)
            elif statistics.null_count < footer.row_group(group).num_rows:
                exact = False  # values without min/max: no range can be claimed for the file
        if not exact:
            continue
        stats["nullCount"][name] = nulls
        if not lows:
            continue
        low, high = min(lows), max(highs)
        if isinstance(low, bool) or (isinstance(low, str) and max(len(low), len(high)) > _MAX_STATS_STRING):
            continue
        low_value, high_value = _format_stat(low, upper=False), _format_stat(high, upper=True)
        if low_value is not None and high_value is not None:
            stats["minValues"][name] = low_value
            stats["maxValues"][name] = high_value
    return stats
