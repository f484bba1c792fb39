"""The lake's errors, and the one-line messages naming the table for failures a person can act on
(a full disk, an unreadable Delta log)."""
from __future__ import annotations

import errno
import functools
import inspect
import json
from collections.abc import Callable
from typing import Any


class LakeError(RuntimeError):
    """Base class for lake errors."""


class TableNotFound(LakeError):
    """The table does not exist in the lake."""


class SchemaMismatch(LakeError):
    """The data does not fit the table's schema and schema evolution was not asked for."""


class UnsupportedTable(LakeError):
    """The table uses Delta features the embedded backend cannot read (deletion vectors, column mapping)."""


class DiskFull(LakeError):
    """The lake's storage ran out of space while writing a table."""


class CorruptTable(LakeError):
    """The table's Delta log cannot be read (a truncated or damaged commit or checkpoint file)."""


_NO_SPACE = "No space left on device"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _translate(exc: Exception, name: str, uri: str) -> LakeError | None:
    """A one-line error naming the table, for failures a person can act on; None for the others."""
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or _NO_SPACE in str(exc):
        return DiskFull(f"table {name}: disk full while writing {uri} ({_NO_SPACE}); free space or move "
                        "the lake, then run again (the table keeps its last committed version)")
    try:
        from deltalake.exceptions import DeltaError
    except ImportError:  # pragma: no cover - deltalake is a dependency
        DeltaError = ()  # noqa: N806
    if isinstance(exc, (DeltaError, json.JSONDecodeError)) or "DELTA_LOG_FILE_NOT_FOUND" in str(exc) \
            or "DELTA_STATE_RECOVER_ERROR" in str(exc):
        return CorruptTable(f"table {name}: its Delta log at {uri}/_delta_log cannot be read "
                            f"({_first_line(exc)}); restore the damaged log file (or the table) from a backup")
    return None


def about_table(method: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise disk-full and unreadable-log failures of a Lake method as one-line errors naming the table."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except LakeError:
            raise
        except Exception as exc:
            name = str(signature.bind(self, *args, **kwargs).arguments.get("name", "?"))
            translated = _translate(exc, name, f"{self.root}/{name}")
            if translated is None:
                raise
            raise translated from exc
    return call
