"""The `diffenhance` command line.

Stage commands (`prepare`, `degrade`, ...) run the same Prefect flow as `dvc repro`, with the
same dotted overrides:

    diffenhance prepare data.source=folder data.folder=~/photos
    diffenhance config show train.lr=2e-4
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

app = typer.Typer(
    help="Diffusion image restoration: pipeline stages, enhancement and evaluation.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="dotted overrides, e.g. train.lr=2e-4", show_default=False),
]


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _run_flow(module: str, name: str, params: Path, overrides: list[str] | None) -> None:
    import importlib

    from diffenhance.config import ConfigError

    flow = getattr(importlib.import_module(f"flows.{module}"), name)
    try:
        flow(params=str(params), overrides=list(overrides or []))
    except (ConfigError, FileNotFoundError) as e:
        _fail(str(e))


@config_app.command("show")
def config_show(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Print the resolved configuration (params file + overrides) as YAML."""
    from diffenhance.config import ConfigError, load_config

    try:
        cfg = load_config(params, overrides or [])
    except ConfigError as e:
        _fail(str(e))
    yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)


@app.command()
def prepare(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Resolve the dataset and cut sub-image crops (the `prepare` stage)."""
    _run_flow("prepare", "prepare", params, overrides)


@app.command()
def degrade(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Write the fixed validation LQ/HQ pairs of every task (the `degrade` stage)."""
    _run_flow("degrade", "degrade", params, overrides)


if __name__ == "__main__":
    app()
