"""One run at a time per results directory: ``<output>/_lock.json``.

The lock names its holder (host, pid, run id, start time) and carries a heartbeat that a thread of
the holding run rewrites every ``timeout / 4`` seconds. Another run on the same output stops with
a message naming the holder, unless the lock is stale: its holder is dead (same host, no such
process) or its heartbeat is older than ``timeout`` (another host, or a frozen process); a stale
lock is taken over with a warning.

What is guaranteed:

- **Local disk** (or any filesystem with atomic exclusive create): the lock is created with
  ``O_CREAT | O_EXCL``, so of two runs starting together exactly one gets it. Taking over a stale
  lock replaces it atomically and reads it back; two runs taking over the same stale lock at the
  same moment can both read back their own, and the loser notices at its next heartbeat (the lock
  names another run) and stops. Shared filesystems that honour ``O_EXCL`` (NFSv3+) behave alike.
- **Object stores** (``s3://``...): pyarrow's filesystems offer no conditional PUT, so the lock is
  best effort: a run reads the lock, writes its own when there is none (or a stale one), waits
  :data:`SETTLE_S` and reads it back; runs that start within that window can both proceed until the
  first heartbeat, when every run but the one the lock names stops. Parts and run records never
  collide either way (names carry the run id), so an overlap costs duplicate work, not results:
  :func:`pipeline.schema.read_results` keeps the newest row per image.

The heartbeat compares wall clocks across hosts: keep them synchronised (NTP) when runs can start
on different machines, and ``timeout`` well above their skew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from common.storage import AnyPath, Location, as_path, write_atomic

log = logging.getLogger(__name__)

LOCK_NAME = "_lock.json"
SETTLE_S = 2.0  # object stores: how long a new lock must stay ours before the run trusts it


class LockError(RuntimeError):
    """The output is locked by another live run (the message names it), or the lock was lost."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    run_id: str
    started_at: str
    heartbeat: str

    def describe(self) -> str:
        return (f"run {self.run_id} (pid {self.pid} on host {self.host}, started {self.started_at}, "
                f"last heartbeat {self.heartbeat})")

    def age(self, now: float | None = None) -> float:
        """Seconds since the heartbeat."""
        return (now or time.time()) - datetime.fromisoformat(self.heartbeat).timestamp()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(output, run_id, timeout):`` holds the output's lock for the run.

    :meth:`check` raises :class:`LockError` once the lock names another run (it was taken over
    while this one looked dead): the run stops instead of writing beside the new holder.
    """

    def __init__(self, root: str | os.PathLike[str] | Location, run_id: str, timeout: float,
                 started_at: str | None = None) -> None:
        self.path: AnyPath = as_path(root) / LOCK_NAME
        self.timeout = float(timeout)
        self.me = Holder(socket.gethostname(), os.getpid(), run_id, started_at or _now(), _now())
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading and judging -------------------------------------------------------------------
    def read(self) -> Holder | None:
        """The current holder; None when there is no lock. An unreadable lock counts as stale."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            if isinstance(self.path, Location) and not self.path.exists():
                return None
            raise LockError(f"cannot read the lock {self.path}: {e}") from None
        try:
            return Holder(**json.loads(raw))
        except (ValueError, TypeError) as e:
            log.warning("lock %s is unreadable (%s); treating it as stale", self.path, e)
            return Holder("?", -1, "?", "?", datetime.fromtimestamp(0, UTC).isoformat())

    def stale_reason(self, h: Holder) -> str | None:
        """Why ``h`` no longer holds the lock, or None when it does."""
        if h.host == self.me.host and h.pid > 0 and not pid_alive(h.pid):
            return f"its process {h.pid} on this host is gone"
        age = h.age()
        if age > self.timeout:
            return f"its heartbeat is {age:.0f} s old (execution.lock_timeout = {self.timeout:g} s)"
        return None

    # -- acquiring ------------------------------------------------------------------------------
    def _payload(self) -> bytes:
        return json.dumps(asdict(self.me), indent=2).encode()

    def _create_exclusive(self) -> bool:
        """Create the lock if absent; False when one exists."""
        if isinstance(self.path, Location):
            if self.path.exists():
                return False
            self.path.write_bytes(self._payload())
            return True
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._payload())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _refused(self, h: Holder) -> LockError:
        return LockError(
            f"{self.path.parent} is being written by {h.describe()}; two runs on one output would score "
            f"the same images twice. Wait for it to end, or, if it is dead on another host, for its "
            f"heartbeat to age past execution.lock_timeout ({self.timeout:g} s), or delete {self.path}.")

    def acquire(self) -> None:
        for _ in range(5):
            if self._create_exclusive():
                break
            holder = self.read()
            if holder is None:
                continue  # released between our attempt and the read
            if holder.run_id == self.me.run_id:
                break
            why = self.stale_reason(holder)
            if why is None:
                raise self._refused(holder)
            log.warning("taking over the stale lock of %s: %s", holder.describe(), why)
            write_atomic(self.path, self._payload())
            break
        else:
            raise LockError(f"could not create {self.path}: it keeps appearing and disappearing")
        if isinstance(self.path, Location):
            time.sleep(SETTLE_S)
        holder = self.read()
        if holder is None or holder.run_id != self.me.run_id:
            raise self._refused(holder) if holder else LockError(f"the lock {self.path} vanished while taking it")
        self._thread = threading.Thread(target=self._beat, name="cueaudit-lock", daemon=True)
        self._thread.start()

    # -- holding --------------------------------------------------------------------------------
    def _beat(self) -> None:
        interval = max(0.2, self.timeout / 4)
        while not self._stop.wait(interval):
            try:
                holder = self.read()
                if holder is None or holder.run_id != self.me.run_id:
                    self._lost = (f"the lock {self.path} now names "
                                  + (holder.describe() if holder else "no run (it was deleted)"))
                    return
                self.me = Holder(**{**asdict(self.me), "heartbeat": _now()})
                write_atomic(self.path, self._payload())
            except (OSError, LockError) as e:  # a flaky store: try again at the next beat
                log.warning("lock heartbeat failed: %s", e)

    def check(self) -> None:
        """Raise :class:`LockError` when another run took the lock over."""
        if self._lost:
            raise LockError(f"stopping: {self._lost}; it took over this run's lock while this run looked dead")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lost:
            return
        try:
            holder = self.read()
            if holder is not None and holder.run_id == self.me.run_id:
                self.path.unlink(missing_ok=True)
        except (OSError, LockError) as e:
            log.warning("could not release the lock %s: %s", self.path, e)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
