"""A lock file in the lake so that two pipeline runs never write the same lake at the same time.

Every ``cdp`` command that writes to the lake takes it (:func:`cdp.jobs.entry.job_main`; ``cdp run``
once for all its steps). ``<lake>/_lock`` holds JSON: run id, command, owner (user), host, pid and
start time; a refusal names them and the lock's age, and the command exits 75 (retry later). On a local lake it is created with
``O_CREAT | O_EXCL``, which is atomic: of two runs starting together exactly one wins. On an object
store or HDFS (``s3a://``, ``abfss://``, ``hdfs://``) it is written through pyarrow's file system
after checking that it is absent and read back to confirm; that narrows the race but is not atomic,
so schedule one run per lake there (the scheduler's concurrency limit is the real guard).

A lock left behind by a run that died (its pid is gone on this host) can be broken with
``force=True`` (``--force-unlock``). A lock held by a live process, or by another host whose
processes we cannot see, is never broken automatically.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType

from cdp.lake.paths import is_local, local_path
from cdp.lake.storage import ObjectStore
from cdp.runtime.errors import JobFailed

logger = logging.getLogger(__name__)

LOCK_NAME = "_lock"


class LakeLocked(JobFailed):
    """Another run holds the lake's lock (or a stale lock could not be broken)."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds the lock: the run, the command, the user, where and since when."""

    run_id: str
    host: str
    pid: int
    started_at: str
    owner: str = "unknown"  # user name (locks written before it was recorded say "unknown")
    command: str = "run"  # the cdp command holding it

    @classmethod
    def from_json(cls, text: str, where: str) -> LockInfo:
        try:
            data = json.loads(text)
            return cls(run_id=str(data["run_id"]), host=str(data["host"]), pid=int(data["pid"]),
                       started_at=str(data["started_at"]), owner=str(data.get("owner", "unknown")),
                       command=str(data.get("command", "run")))
        except (ValueError, KeyError, TypeError) as exc:
            raise LakeLocked(f"{where}: the lake is locked but the lock file is unreadable ({exc}); "
                             f"if no run is active, delete {where} by hand") from exc

    def age(self, now: datetime | None = None) -> str:
        """How long the lock has been held, as ``2h05m``, ``3m12s`` (``unknown`` if unparseable)."""
        try:
            started = datetime.fromisoformat(self.started_at)
        except ValueError:
            return "unknown"
        seconds = max(0, int(((now or datetime.now(UTC)) - started).total_seconds()))
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

    def describe(self, now: datetime | None = None) -> str:
        return (f"run {self.run_id} (cdp {self.command}, owner {self.owner}, host {self.host}, pid {self.pid}, "
                f"since {self.started_at}, age {self.age(now)})")


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host (signal 0 probes without killing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


class LakeLock:
    """The lake's run lock; use as a context manager or call :meth:`acquire` / :meth:`release`.

    Args:
        root: the lake root (as given to :class:`cdp.lake.Lake`).
        run_id: the run taking the lock.
        command: the ``cdp`` command taking it (recorded for whoever finds the lake locked).
        store: object-store settings for a remote root (default: the active session's and the
            environment's). A command locks before its session starts, so it passes its profile's
            (:meth:`ObjectStore.from_settings` of ``profile.spark``): an endpoint named only in the
            profile would otherwise be missed and the lock sought on AWS.
    """

    def __init__(self, root: str, run_id: str, command: str = "run", store: ObjectStore | None = None) -> None:
        self.root = root
        self.store = store
        self.run_id = run_id
        self.local = is_local(root)
        base = local_path(root) if self.local else root.rstrip("/")
        self.path = f"{base}/{LOCK_NAME}"
        self.info = LockInfo(run_id=run_id, host=socket.gethostname(), pid=os.getpid(),
                             started_at=datetime.now(UTC).isoformat(timespec="seconds"), owner=_user(),
                             command=command)
        self.held = False

    # -- public -------------------------------------------------------------------------------
    def acquire(self, force: bool = False) -> LakeLock:
        """Take the lock or raise :class:`LakeLocked` naming the holder.

        With ``force``, a lock held by a dead process on this host is removed first.
        """
        if self._try_create():
            self.held = True
            logger.debug("lock %s taken by run %s", self.path, self.run_id)
            return self
        holder = self.holder()
        if holder is None:  # released between our attempt and the read: try once more
            if self._try_create():
                self.held = True
                return self
            holder = self.holder()
        assert holder is not None
        if not force:
            if holder.host == self.info.host and not pid_alive(holder.pid):
                raise LakeLocked(f"lake {self.root} has a stale lock of {holder.describe()}: pid {holder.pid} is "
                                 f"gone on this host; rerun with --force-unlock to break {self.path}")
            where = "this host" if holder.host == self.info.host else f"host {holder.host}"
            raise LakeLocked(f"lake {self.root} is locked by {holder.describe()}: it is still running on {where} "
                             f"(or died there without releasing {self.path}); retry when it has finished")
        if holder.host != self.info.host:
            raise LakeLocked(f"lake {self.root} is locked by {holder.describe()} on another host; "
                             f"--force-unlock only breaks locks of dead processes on this host "
                             f"({self.info.host}). If you are sure no run is active, delete {self.path}")
        if pid_alive(holder.pid):
            raise LakeLocked(f"lake {self.root} is locked by {holder.describe()}, and that process is "
                             "still alive; --force-unlock does not break a live run's lock")
        logger.warning("breaking stale lock of %s (pid %d is gone)", holder.describe(), holder.pid)
        self._remove()
        if not self._try_create():
            raise LakeLocked(f"lake {self.root}: another run took the lock while the stale one was "
                             f"being broken: {self.holder().describe() if self.holder() else 'unknown'}")
        self.held = True
        return self

    def release(self) -> None:
        """Remove the lock if this run still holds it (never someone else's)."""
        if not self.held:
            return
        holder = self.holder()
        if holder is not None and holder.run_id == self.run_id and holder.pid == self.info.pid:
            self._remove()
        else:
            logger.warning("lock %s is no longer ours (%s); leaving it", self.path,
                           holder.describe() if holder else "absent")
        self.held = False

    def holder(self) -> LockInfo | None:
        """The current holder, or None when the lake is not locked."""
        text = self._read()
        return None if text is None else LockInfo.from_json(text, self.path)

    def __enter__(self) -> LakeLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # -- storage ------------------------------------------------------------------------------
    def _payload(self) -> bytes:
        return (json.dumps(asdict(self.info), sort_keys=True) + "\n").encode()

    def _try_create(self) -> bool:
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(self._payload())
            return True
        filesystem, path = self._remote()
        from pyarrow import fs as pafs

        if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        with filesystem.open_output_stream(path) as handle:
            handle.write(self._payload())
        text = self._read()  # read back: the last writer of a race wins, the other sees a stranger
        return text is not None and LockInfo.from_json(text, self.path).run_id == self.run_id

    def _read(self) -> str | None:
        if self.local:
            try:
                with open(self.path, encoding="utf-8") as handle:
                    return handle.read()
            except FileNotFoundError:
                return None
        filesystem, path = self._remote()
        try:
            with filesystem.open_input_stream(path) as handle:
                return handle.read().decode()
        except FileNotFoundError:
            return None

    def _remove(self) -> None:
        if self.local:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return
        filesystem, path = self._remote()
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def _remote(self):
        from cdp.lake.storage import filesystem

        return filesystem(self.path, self.store)
