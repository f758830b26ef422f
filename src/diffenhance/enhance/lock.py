"""One job per output: a lock object beside the manifests (`_diffenhance/lock.json`).

Two jobs writing the same output root (a folder or ``s3://bucket/prefix``) would each enhance
every image and overwrite each other's summary. The first job creates the lock object
atomically (a hard link of a finished temp file locally; a conditional PUT, ``If-None-Match:
*``, on S3) and refreshes its heartbeat while it runs; a second job finds it and stops with one
line naming the holder (host, pid, start, command) before any work: `OutputLocked`, exit 2.

A lock left by a job that is gone (kill -9, a lost machine) is taken over, with a warning, when
its process is not running on this host, or its heartbeat is older than `STALE_AFTER_S`
(any host). The same thread may take a lock it holds again (a caller that holds it around
work of its own can call `run_job` inside); another thread of this process is another holder.

`run_job` holds it for every folder job (`job_lock`), after planning: the checks and the
listing write nothing, so a job with a bad model or input leaves the output as it was. (A job
that finishes between another's planning and its locking costs that one redone images, the
same bytes again.) A one-file job (the input is a file) takes none: its output is written
atomically and no manifest is kept.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from diffenhance.config import Config
from diffenhance.enhance.job import META_DIR, EnhanceError, Job, now
from diffenhance.storage import (
    ObjectNotFoundError,
    Storage,
    StorageError,
    normalize_url,
    open_storage,
)

log = logging.getLogger(__name__)

LOCK_KEY = f"{META_DIR}/lock.json"
LOCK_FORMAT = "diffenhance-enhance-lock-v1"
HEARTBEAT_S = 30.0  # how often a running job refreshes its lock
STALE_AFTER_S = 300.0  # a lock not refreshed for this long belongs to a job that is gone

# (output url, thread id) -> [depth, holder]: the locks this process holds
_HELD: dict[tuple[str, int], list[Any]] = {}
_HELD_GUARD = threading.Lock()


class OutputLocked(EnhanceError):
    """Another job is writing this output (exit 2); the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _age_s(stamp: str | None, fallback: datetime | None) -> float | None:
    try:
        when = datetime.fromisoformat(stamp) if stamp else fallback
    except (TypeError, ValueError):  # not an ISO time string
        when = fallback
    return None if when is None else (datetime.now(UTC) - when).total_seconds()


class _Holder:
    """This process's lock on one output root."""

    def __init__(self, store: Storage) -> None:
        self.store, self.url = store, store.url_for("")
        self.token = uuid.uuid4().hex
        self.record = {
            "format": LOCK_FORMAT,
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": now(),
            "heartbeat": now(),
            "command": " ".join(os.path.basename(a) if i == 0 else a
                                for i, a in enumerate(sys.argv))[:300],
        }  # fmt: skip
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ reading the lock

    def _current(self) -> tuple[dict[str, Any] | None, datetime | None] | None:
        """(the lock's record, None when unreadable; its modification time, looked up only
        when the record has no heartbeat to date it), None if absent. One read for a lock
        this module wrote."""
        try:
            record = json.loads(self.store.read_bytes(LOCK_KEY))
        except ObjectNotFoundError:
            return None
        except ValueError:
            record = None
        record = record if isinstance(record, dict) else None
        if record is not None and _age_s(record.get("heartbeat"), None) is not None:
            return record, None
        info = self.store.stat(LOCK_KEY)
        return (record, info.mtime) if info is not None else None

    def _stale(self, record: dict[str, Any] | None, modified: datetime | None) -> str | None:
        """Why the lock `record` belongs to a job that is gone; None while it may run."""
        age = _age_s((record or {}).get("heartbeat"), modified)
        if age is not None and age > STALE_AFTER_S:
            return f"its heartbeat is {age:.0f} s old (a running job refreshes it every " \
                   f"{HEARTBEAT_S:.0f} s)"  # fmt: skip
        if record is None or record.get("host") != socket.gethostname():
            return None
        pid = record.get("pid")
        if not isinstance(pid, int):
            return None
        if pid == os.getpid():
            with _HELD_GUARD:
                mine = any(h.token == record.get("token") for _, h in _HELD.values())
            return None if mine else "this process left it and no longer holds it"
        return None if _alive(pid) else f"pid {pid} is not running on this host"

    def _refused(self, record: dict[str, Any] | None) -> OutputLocked:
        lock_url = self.store.url_for(LOCK_KEY)
        if record is None:
            who = "a job (its lock cannot be read)"
        else:
            who = (
                f"pid {record.get('pid')} on {record.get('host')}, started "
                f"{record.get('started')}: {record.get('command') or '?'}"
            )
        return OutputLocked(
            f"{self.url} is being written by another enhance job ({who}); wait for it to "
            f"finish, or, if it is gone, delete {lock_url} (a lock is taken over "
            f"automatically {STALE_AFTER_S:.0f} s after its job stops)"
        )

    # ------------------------------------------------------------------ taking and giving

    def acquire(self) -> None:
        data = json.dumps(self.record, indent=1).encode()
        for _ in range(3):
            if self.store.create_exclusive(LOCK_KEY, data):
                # a server that ignores If-None-Match could let two creators race: read back
                got = self._current()
                if got is None or got[0] is None or got[0].get("token") != self.token:
                    raise self._refused(None if got is None else got[0])
                self._beat = threading.Thread(
                    target=self._heartbeat, name="diffenhance-lock", daemon=True
                )
                self._beat.start()
                return
            got = self._current()
            if got is None:  # released between our try and our look: try again
                continue
            record, modified = got
            why = self._stale(record, modified)
            if why is None:
                raise self._refused(record)
            log.warning(
                "%s: taking over the lock of an enhance job that is gone (%s)",
                self.store.url_for(LOCK_KEY), why,
            )  # fmt: skip
            again = self._current()
            if again is not None and again[0] == record:  # not retaken meanwhile
                self.store.delete(LOCK_KEY)
        raise self._refused(None)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                got = self._current()
                if got is None or got[0] is None or got[0].get("token") != self.token:
                    log.warning(
                        "%s: this job's lock was removed or taken by another job",
                        self.store.url_for(LOCK_KEY),
                    )
                    return
                self.record["heartbeat"] = now()
                self.store.write_bytes(LOCK_KEY, json.dumps(self.record, indent=1).encode())
            except StorageError as e:  # storage down for a while: the job decides, not us
                log.warning("refreshing %s failed: %s", self.store.url_for(LOCK_KEY), e)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            got = self._current()
            if got is not None and got[0] is not None and got[0].get("token") == self.token:
                self.store.delete(LOCK_KEY)
        except StorageError as e:  # the next job takes it over once it is stale
            log.warning("releasing %s failed: %s", self.store.url_for(LOCK_KEY), e)


@contextmanager
def hold_output(store: Storage) -> Iterator[None]:
    """Hold the lock of the output root `store` for the block (see the module docstring).
    Raises OutputLocked when another job holds it."""
    key = (normalize_url(store.url_for("")), threading.get_ident())
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[0] += 1
    if held is None:
        holder = _Holder(store)
        holder.acquire()
        with _HELD_GUARD:
            _HELD[key] = held = [1, holder]
    try:
        yield
    finally:
        with _HELD_GUARD:
            held[0] -= 1
            last = held[0] == 0
            if last:
                del _HELD[key]
        if last:
            held[1].release()


@contextmanager
def job_lock(job: Job, cfg: Config) -> Iterator[None]:
    """Hold the lock of the job's output root for the block; nothing for a one-file job.
    Raises OutputLocked."""
    if job.single:
        yield
        return
    with hold_output(open_storage(job.output_url, cfg.storage)):
        yield
