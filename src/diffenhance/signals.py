"""Stop signals: SIGTERM ends a command as Ctrl-C does, and stops what the command started.

Python turns SIGINT into KeyboardInterrupt, so `finally` blocks and context managers run
(a child process stopped, a temporary folder deleted, Prefect's temporary server stopped);
SIGTERM's default action ends the process on the spot and leaves all of that running or on
disk. Inside `stop_signals()` both raise `Interrupted` in the main thread: a
KeyboardInterrupt, so every cleanup path written for Ctrl-C runs for SIGTERM too. The entry
point then prints one `interrupted by SIGTERM; stopped ...` line (`interrupted`) and exits
with 128 + the signal number (`exit_code`: 130, 143), as a shell reports a killed command.

Threads cannot be interrupted from outside, and a task runner waits for its threads on the
way out (Prefect's ThreadPoolTaskRunner: the shards still being enhanced). From the first
stop signal on, every torch network call in another thread raises `Interrupted` (a global
forward pre-hook, as the UI stops a job), so that wait is one network call, not the rest of
a batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stopping: int | None = None  # the first stop signal: from then on the process is ending
_hook: list[Any] = []  # the handle of the process's one stop hook, once registered
_lock = threading.RLock()  # the watcher thread and the main thread's handler both note
_held: list[int] | None = None  # inside `held()`: the stop signal whose Interrupted waits


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (`signum`: SIGINT or SIGTERM). A KeyboardInterrupt: whatever
    handles Ctrl-C handles it, and no `except Exception` records it as a failure and goes on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signum_of(e: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: `Interrupted`'s, SIGINT for a plain KeyboardInterrupt."""
    return getattr(e, "signum", signal.SIGINT)


def exit_code(signum: int) -> int:
    """128 + the signal number (SIGINT 130, SIGTERM 143): what a shell shows for it."""
    return 128 + signum


def interrupted(signum: int, stopped: str) -> str:
    """The one line an interrupted command prints: `interrupted by SIGTERM; stopped ...`."""
    return f"interrupted by {signal.Signals(signum).name}; stopped {stopped}"


def received() -> int | None:
    """The first stop signal this process got inside `stop_signals` (None: none yet), also
    one that a library's own handler took instead of ours (Prefect's runner, on SIGTERM, stops
    gracefully and returns), so that the entry point can still end as interrupted."""
    return _stopping


def _stop_check(module: Any, args: Any) -> None:
    """Torch forward pre-hook: once stopping, a network call outside the main thread raises
    (the main thread has the signal's own exception, and may be cleaning up)."""
    if _stopping is not None and threading.current_thread() is not threading.main_thread():
        raise Interrupted(_stopping)


def _note(signum: int) -> None:
    """Record the first stop signal and arm the stop hook (when torch is in use at all)."""
    global _stopping
    with _lock:
        if _stopping is None:
            _stopping = signum
        if not _hook and "torch" in sys.modules:
            from torch.nn.modules.module import register_module_forward_pre_hook

            _hook.append(register_module_forward_pre_hook(_stop_check))


def _watch(fd: int) -> None:
    """Read the signal wakeup fd: Python's C-level handler writes each signal's number to it
    before any Python handler runs, also while a library's handler replaces ours (Prefect's
    SIGTERM handler during a flow run, which raises only after its task runner has waited for
    its threads). EOF when the scope ends."""
    while data := os.read(fd, 64):
        for signum in data:
            if signum in STOP_SIGNALS:
                _note(signum)


@contextlib.contextmanager
def _wakeup_watcher() -> Iterator[None]:
    """Run `_watch` on a fresh signal wakeup fd; nothing where another one is set (an asyncio
    loop's: taking it over would break that loop's signal handling)."""
    r, w = os.pipe()
    os.set_blocking(w, False)  # the C handler must never block
    previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)
        yield
        return
    watcher = threading.Thread(target=_watch, args=(r,), name="stop-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        os.close(w)  # EOF: the watcher ends
        watcher.join(timeout=5)
        os.close(r)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Inside `stop_signals`, a stop signal that arrives while the body runs raises its
    `Interrupted` only as the body ends. For starting a child process: a signal between the
    fork and `subprocess.Popen`'s return would otherwise leave the child running with no
    handle to stop it (the interrupt lands before `proc` is assigned). Nests; outside
    `stop_signals` (or off the main thread) it changes nothing."""
    global _held
    outer, _held = _held, []
    try:
        yield
    finally:
        waiting, _held = _held, outer
    if waiting:
        raise Interrupted(waiting[0])


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread while this runs; torch
    networks in other threads stop at their next call (the module's docstring).

    Only the first signal raises: a second one arriving while the cleanup it started runs
    (children stopped with a time limit, then killed) is recorded and ignored, so no cleanup
    is cut short to leave a process or a folder behind. Outside the main thread (where
    signals cannot be handled) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        _note(signum)
        if not raised:
            raised = True
            if _held is not None:  # raised as `held()` ends
                _held.append(signum)
                return
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        with _wakeup_watcher():
            yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
