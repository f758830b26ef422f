"""Shared plumbing of the tasks (and, re-exported by flows/common.py, of the flows)."""

from __future__ import annotations

import logging


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, a plain logger elsewhere."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a dependency of flows/ and tasks/
        pass
    return logging.getLogger("diffenhance")
