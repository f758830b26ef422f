"""Shared plumbing of the stage flows: command-line parsing, run-context logging, and how an
entry point ends (a user error, SIGINT or SIGTERM: one line each, no traceback)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prefect.exceptions import TerminationSignal

# user errors -> exit code: one table, shared with the `diffenhance` CLI
from diffenhance.exitcodes import USER_ERRORS, user_error_code  # noqa: F401
from diffenhance.signals import exit_code, interrupted, signum_of, stop_signals
from tasks.common import stage_logger  # noqa: F401 - the flows' logger too; defined below flows/

if TYPE_CHECKING:
    from diffenhance.config import Config


def parse_stage_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """`python -m flows.X [--params params.yaml] [section.key=value ...]`."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="dotted overrides, e.g. train.lr=2e-4",
    )
    return p.parse_args(argv)


class _HideUserErrors(logging.Filter):
    """Drops console records carrying a user error: Prefect logs a failing flow's exception
    with its traceback, and `run_entry` reports it itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or user_error_code(exc) is None


def _console_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()]
    loggers += [
        g for g in logging.Logger.manager.loggerDict.values() if isinstance(g, logging.Logger)
    ]
    return [h for g in loggers for h in g.handlers if isinstance(h, logging.StreamHandler)]


def _stop_temporary_server() -> bool:
    """Stop Prefect's temporary API server, if this process started one (no PREFECT_API_URL);
    whether it did. Prefect stops it at exit (atexit), which SIGTERM's default action skips;
    the interrupt path stops it itself, so that it is gone when the line says so."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:  # never imported: never started
        return False
    server = module.SubprocessASGIServer()  # the port-less one `get_client` starts
    if server.server_process is None:
        return False
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):  # the run's last logs and events first: sent
        worker.drain_all(timeout=5)  # to a stopped server, they are retried for a minute
    # SIGKILL, not Prefect's SIGTERM: on a graceful stop the server logs the requests this
    # interrupt cut short (sqlalchemy "Exception during reset" tracebacks, seen in CI). Its
    # state is sqlite, whose commits survive a kill; everything the run sent is drained above.
    server.server_process.kill()
    server.server_process.wait()
    server.stop()  # Prefect's bookkeeping and its "Stopping temporary server" line
    return True


def run_entry(call: Callable[[], int | None], what: str = "the flow run") -> int:
    """Run a `python -m flows.<X>` entry point and return its exit code (`call`'s, 0 for None).

    A user error (`USER_ERRORS`: bad config or model, storage down) prints one
    `error: <message>` line to stderr and returns its code, without a traceback: Prefect's
    console copy of it is dropped (the Prefect API's run logs keep it). Anything else is a
    bug and propagates with its traceback.

    SIGINT and SIGTERM (`diffenhance.signals.stop_signals`) stop `what` (the flow run: Prefect
    marks it crashed, worker threads stop at their next network call), then Prefect's
    temporary server; one `interrupted by SIGTERM; stopped <what> ...` line, exit 130 / 143.
    """
    hide = _HideUserErrors()
    handlers = _console_handlers()
    for h in handlers:
        h.addFilter(hide)
    try:
        with stop_signals():
            rc = call()
    except (KeyboardInterrupt, TerminationSignal) as e:  # the second: a SIGTERM Prefect's
        # handler turned into its own exception, ours then ignoring it as a second signal
        signum = e.signal if isinstance(e, TerminationSignal) else signum_of(e)
        stopped = what
        if _stop_temporary_server():
            stopped += " and Prefect's temporary server"
        print(interrupted(signum, stopped), file=sys.stderr)
        return exit_code(signum)
    except Exception as e:
        code = user_error_code(e)
        if code is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return code
    finally:
        for h in handlers:
            h.removeFilter(hide)
    return 0 if rc is None else rc


def per_task(check: Callable[[Config, str], object]) -> Callable[[Config], None]:
    """A `run_stage` preflight running `check(config, task)` for every task in `train.tasks`
    (train's and evaluate's inputs)."""

    def preflight(cfg: Config) -> None:
        for task in cfg.train.tasks:
            check(cfg, task)

    return preflight


def run_stage(
    flow: Callable[..., Any],
    argv: Sequence[str] | None,
    description: str,
    preflight: Callable[[Config], object] | None = None,
) -> int:
    """Entry point for `python -m flows.<stage>`: parse args, check the config and
    `preflight(config)` (the stage's inputs: it raises a user error) before Prefect starts,
    run the flow; a user error exits with one `error:` line (`run_entry`)."""
    from diffenhance.config import check_overrides, load_config

    args = parse_stage_args(sys.argv[1:] if argv is None else argv, description)

    def run() -> None:
        # before the flow run exists: its parameters are stored (and shown) by Prefect
        overrides = check_overrides(args.overrides)
        cfg = load_config(args.params, overrides)
        if preflight is not None:  # seconds before the server and a line per task say it
            preflight(cfg)
        flow(params=args.params, overrides=overrides)

    return run_entry(run)
