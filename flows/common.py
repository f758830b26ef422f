"""Shared plumbing of the stage flows: command-line parsing and run-context logging."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

# user errors -> exit code: one table, shared with the `diffenhance` CLI
from diffenhance.exitcodes import USER_ERRORS, user_error_code  # noqa: F401
from tasks.common import stage_logger  # noqa: F401 - the flows' logger too; defined below flows/


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


def run_entry(call: Callable[[], int | None]) -> int:
    """Run a `python -m flows.<X>` entry point and return its exit code (`call`'s, 0 for None).

    A user error (`USER_ERRORS`: bad config or model, storage down) prints one
    `error: <message>` line to stderr and returns its code, without a traceback: Prefect's
    console copy of it is dropped (the Prefect API's run logs keep it). Anything else is a
    bug and propagates with its traceback.
    """
    hide = _HideUserErrors()
    handlers = _console_handlers()
    for h in handlers:
        h.addFilter(hide)
    try:
        rc = call()
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


def run_stage(flow: Callable[..., Any], argv: Sequence[str] | None, description: str) -> int:
    """Entry point for `python -m flows.<stage>`: parse args, check the config before Prefect
    starts, run the flow; a user error exits with one `error:` line (`run_entry`)."""
    from diffenhance.config import check_overrides, load_config

    args = parse_stage_args(sys.argv[1:] if argv is None else argv, description)

    def run() -> None:
        # before the flow run exists: its parameters are stored (and shown) by Prefect
        overrides = check_overrides(args.overrides)
        load_config(args.params, overrides)
        flow(params=args.params, overrides=overrides)

    return run_entry(run)
