"""Shared plumbing of the stage flows: command-line parsing and run-context logging."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def run_stage(flow: Callable[..., Any], argv: Sequence[str] | None, description: str) -> int:
    """Entry point for `python -m flows.<stage>`: parse args, run the flow, map errors to exit codes."""
    from diffenhance.config import ConfigError

    args = parse_stage_args(sys.argv[1:] if argv is None else argv, description)
    try:
        flow(params=args.params, overrides=list(args.overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
