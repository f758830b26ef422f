"""The `diffenhance` command line.

Stage commands (`prepare`, `degrade`, ...) run the same Prefect flow as `dvc repro`, the same
way (`python -m flows.<stage> --params P overrides...` in a subprocess), with the same dotted
overrides and exit codes:

    diffenhance prepare data.source=folder data.folder=~/photos
    diffenhance config show train.lr=2e-4
"""

from __future__ import annotations

import contextlib
import enum
import os
import posixpath
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

if TYPE_CHECKING:
    from diffenhance.config import Config
    from diffenhance.enhance import Job

app = typer.Typer(
    help="Diffusion image restoration: pipeline stages, enhancement and evaluation.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        from diffenhance import __version__

        typer.echo(f"diffenhance {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Diffusion image restoration: pipeline stages, enhancement and evaluation."""


class Ext(enum.StrEnum):
    """--ext: Real-ESRGAN's name for enhance.output_format (auto = same)."""

    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tif = "tif"
    bmp = "bmp"

    @property
    def format(self) -> str:
        """The enhance.output_format value."""
        return "same" if self is Ext.auto else self.value


ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file")]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="dotted overrides, e.g. train.lr=2e-4", show_default=False),
]


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _child_env() -> dict[str, str]:
    """This environment, with this library and the checkout's flows/ (an editable install) on
    PYTHONPATH, after the working directory that `python -m` puts first (as under dvc repro)."""
    src = Path(__file__).resolve().parents[1]
    paths = [str(src)]
    if (src.parent / "flows" / "__init__.py").is_file():
        paths.append(str(src.parent))
    if old := os.environ.get("PYTHONPATH"):
        paths.append(old)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _fileno(stream: Any) -> int | None:
    """The file descriptor behind `stream`, None for an in-memory one (CliRunner, capsys)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _run_stage(stage: str, params: Path, overrides: list[str] | None) -> None:
    """Run the stage as dvc.yaml does: `python -m flows.<stage> --params P overrides...` in a
    subprocess (the library imports no flow). Its entry point checks the config and prints one
    `error:` line for a user error; its exit code is this command's."""
    env = _child_env()
    roots = [Path.cwd(), *map(Path, env["PYTHONPATH"].split(os.pathsep))]
    if not any((r / "flows" / f"{stage}.py").is_file() for r in roots):
        _fail(f"`diffenhance {stage}` runs flows/{stage}.py: run it from the repository root")
    cmd = [sys.executable, "-m", f"flows.{stage}", "--params", str(params), *(overrides or [])]
    sys.stdout.flush()
    sys.stderr.flush()
    out, err = _fileno(sys.stdout), _fileno(sys.stderr)
    pipe = subprocess.PIPE
    proc = subprocess.run(cmd, env=env, stdout=pipe if out is None else out,
                          stderr=pipe if err is None else err)  # fmt: skip
    if out is None:  # an in-memory stream: relay what the stage printed
        sys.stdout.write(proc.stdout.decode(errors="replace"))
    if err is None:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
    if proc.returncode:  # a signal (-N) exits as a shell reports it: 128 + N
        raise typer.Exit(proc.returncode if proc.returncode > 0 else 128 - proc.returncode)


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
    _run_stage("prepare", params, overrides)


@app.command()
def degrade(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Write the fixed validation LQ/HQ pairs of every task (the `degrade` stage)."""
    _run_stage("degrade", params, overrides)


@app.command()
def train(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Train (or resume) one restorer per task in `train.tasks` (the `train` stage)."""
    _run_stage("train", params, overrides)


@app.command()
def compare(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Score the formulations trained by `train_compare` side by side (the `compare` stage)."""
    _run_stage("compare", params, overrides)


@app.command()
def publish(overrides: OverridesArg = None, params: ParamsOpt = Path("params.yaml")) -> None:
    """Push reports, checkpoints and results to storage.url (verified; unchanged files skipped)."""
    _run_stage("publish", params, overrides)


@app.command()
def upload(
    src: Annotated[str, typer.Argument(help="a file or a folder (recursive) on this machine")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix (or a local folder)")],
    overrides: OverridesArg = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Put input images into a bucket for `enhance`.

    A file goes to DEST/<name>, a folder's files to DEST/<relative path>. Every file goes (enhance picks its images itself) except hidden ones
    ('.*' files and folders, each named); uploads are verified and unchanged files skipped, as
    by publish. Endpoint and credentials as publish's: storage.endpoint_url or
    AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE. Exit code: 0
    done, 1 storage failed (the file named; a rerun skips what was sent), 2 a bad source,
    destination (empty, a file, inside the source, a URL it cannot use), unreadable file or
    config (one line).
    """
    from diffenhance.storage import StorageError, is_local, local_path, open_storage, upload_path

    cfg = _config_or_defaults(params, overrides)
    if not dest.strip():
        _fail("upload: DEST is empty; give s3://bucket/prefix or a local folder")
    if is_local(dest) and local_path(dest).is_file():
        _fail(f"upload: DEST {dest} is a file; give s3://bucket/prefix or a local folder")
    try:
        store = open_storage(dest, cfg.storage)
    except StorageError as e:  # a URL or setting it cannot use: a bad argument, exit 2
        _fail(f"upload: {e}")
    with _user_errors():  # a StorageError (store down, refused): exit 1
        try:
            result = upload_path(store, src, progress=lambda line: typer.echo(line, err=True))
        except (OSError, ValueError) as e:  # a file it cannot read, a destination in the source
            _fail(str(e), 2)
    typer.echo(f"upload: {result} -> {store.url_for()}")


def _config_or_defaults(params: Path, overrides: list[str] | None):
    """params.yaml when present (or when named explicitly), else the built-in defaults."""
    from diffenhance.config import ConfigError, load_config

    path = params if params.is_file() or params != Path("params.yaml") else None
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        _fail(str(e))


@app.command()
def evaluate(
    overrides: OverridesArg = None,
    params: ParamsOpt = Path("params.yaml"),
    hr_dir: Annotated[
        Path | None,
        typer.Option("--hr-dir", help="evaluate on this folder of HR images (any size)"),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="with --hr-dir: the degradation to score (a registered task; default: the model's)",
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="with --hr-dir: checkpoint file or model dir")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="with --hr-dir: output folder")] = None,
) -> None:
    """PSNR/SSIM of the model and the baselines (the `evaluate` stage).

    Without --hr-dir: the stage flow on the validation pairs of `train.tasks`.

    With --hr-dir: the folder's images are degraded as the validation pairs are (fixed seed),
    enhanced with --model and scored into --out (per_image.csv, metrics.json, ...).
    """
    if hr_dir is None:
        if task or model or out:
            _fail("--task, --model and --out go with --hr-dir (evaluate a folder of images)")
        _run_stage("evaluate", params, overrides)
        return
    if model is None or out is None:
        _fail("--hr-dir needs --model PATH (checkpoint) and --out DIR")
    from diffenhance.enhance.models import model_file
    from diffenhance.evaluate import evaluate_folder
    from diffenhance.model import read_checkpoint

    cfg = _config_or_defaults(params, overrides)
    with _user_errors():
        try:
            weights = model_file(model)  # `models/sr4` untrained: the shipped one, as enhance
            task = task or read_checkpoint(weights)[1]["task"]
            ev = evaluate_folder(
                cfg, hr_dir, task, weights, out, progress=lambda m: typer.echo(m, err=True)
            )
        except (NotADirectoryError, ValueError) as e:
            _fail(str(e))
    m, p = ev.metrics, ev.protocol
    typer.echo(f"{task}: {int(m['n_images'])} images, {p['headline_method']}")
    for name in [p["headline_method"], *p["baselines"]]:
        key = "model" if name == p["headline_method"] else name
        y, s = m[key + "_psnr_y"], m[key + "_ssim_y"]
        typer.echo(f"  {name:>14}: PSNR-Y {y:.2f} dB  SSIM-Y {s:.4f}")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'per_image.csv'}")


@app.command()
def report(
    overrides: OverridesArg = None,
    params: ParamsOpt = Path("params.yaml"),
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval-dir", help="build report.html for this evaluate output folder"),
    ] = None,
    train_log: Annotated[
        Path | None, typer.Option("--train-log", help="with --eval-dir: train_log.csv to plot")
    ] = None,
) -> None:
    """Self-contained HTML report (the `report` stage, or one --eval-dir folder)."""
    if eval_dir is None:
        _run_stage("report", params, overrides)
        return
    from diffenhance.io import ImageReadError
    from diffenhance.report import build_report

    cfg = _config_or_defaults(params, overrides)
    if train_log is not None and not train_log.is_file():
        _fail(f"--train-log {train_log}: no such file")
    try:
        rep = build_report(eval_dir, eval_dir, cfg.report, train_log=train_log)
    except (FileNotFoundError, ImageReadError, ValueError) as e:  # an incomplete folder
        _fail(f"{e} (report --eval-dir {eval_dir})")
    typer.echo(f"report: {rep.html.resolve()}")


@app.command()
def enhance(
    input: Annotated[
        str, typer.Argument(help="an image, a folder (recursive) or s3://bucket/prefix")
    ],
    output: Annotated[
        str, typer.Argument(help="output image (for one input image), folder or s3://bucket/prefix")
    ],
    overrides: OverridesArg = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="model dir or .safetensors (enhance.model); a task name (sr4, denoise) or a "
            "models/<task> without a trained model uses the shipped models/pretrained/<task>",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="sampler steps (infer.steps; default: the preset's). Alone on a model whose "
            "preset is its posterior mean (pmrf fidelity, detail 0: steps change nothing) they "
            "run at the far end of its knob (its most detailed preset's detail, else 1); add "
            "--detail 0 for the mean"
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(help="output = mean of N samples (infer.samples; default: the model's)"),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="a named point of the model's fidelity/detail knob: fidelity (best PSNR), "
            "balanced, detail (ground-truth-like texture, where a model has one) - measured "
            "per model, see `diffenhance models` (infer.preset; default: the model's, fidelity)",
        ),
    ] = None,
    detail: Annotated[
        float | None,
        typer.Option(
            help="the knob itself, 0 (posterior mean) .. 1 (sample), for models with a detail "
            "knob (infer.detail; overrides the preset's)",
        ),
    ] = None,
    uncertainty: Annotated[
        bool | None,
        typer.Option(
            "--uncertainty/--no-uncertainty",
            help="also write <output stem>.uncertainty.png and .npy: the per-pixel std of the "
            "samples (infer.uncertainty; needs --samples N >= 2, a model that samples and a "
            "detail > 0)",
            show_default=False,
        ),
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option(
            help="tile side in input pixels (infer.tile; where the params' overlap does not "
            "fit, a quarter of it)"
        ),
    ] = None,
    mask: Annotated[
        str | None,
        typer.Option(
            help="inpaint models: the mask of the input image (white = fill), or for a folder a "
            "folder of masks with the same relative paths (enhance.mask)"
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N] (infer.device)")] = None,
    outscale: Annotated[
        float | None,
        typer.Option(
            help="final size / input size: the model's output resized (bicubic) to round(input "
            "side * F), e.g. 2 with an x4 model (enhance.outscale; default: the model's scale)",
            show_default=False,
        ),
    ] = None,
    suffix: Annotated[
        str | None,
        typer.Option(
            help="output name = input stem + '_' + S, e.g. photo_out.png (enhance.suffix; "
            "default: the input's name)",
            show_default=False,
        ),
    ] = None,
    ext: Annotated[
        Ext | None,
        typer.Option(
            help="output format; auto: the input's, except PNG for a JPEG input of an "
            "artifact-removal model (-m jpeg) (enhance.output_format, auto = same)",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be done")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Enhance one image, or every image under a folder or s3:// prefix (structure kept).

    Output format and bit depth follow each input unless --ext (enhance.output_format) /
    enhance.bit_depth say otherwise, except that an artifact-removal model (-m jpeg) writes its
    JPEG inputs as PNG. Images already enhanced with the same model and params are skipped.
    `--preset balanced --samples 4 --uncertainty` also writes, beside each output, its
    uncertainty map: the per-pixel std of the 4 samples (`<stem>.uncertainty.png` coloured
    black = 0 to yellow = 0.05, `<stem>.uncertainty.npy` float32). Exit code
    (as `python -m flows.enhance`): 0 all done, 1 some images failed (each named with its
    reason) or storage failed, 2 usage, config, input or model-file error (one line), 130 / 143
    stopped by Ctrl-C / SIGTERM (finished images kept, the output's lock released).
    """
    from diffenhance.enhance import exit_code, plan_job

    settings = {"input": input, "output": output, "model": model or None, "mask": mask,
                "outscale": outscale, "suffix": suffix,
                "output_format": None if ext is None else ext.format}  # fmt: skip
    cfg = _enhance_config(
        params, overrides, settings, steps=steps, samples=samples, uncertainty=uncertainty,
        tile=tile, device=device, preset=preset, detail=detail,
    )  # fmt: skip
    with _user_errors():
        job = plan_job(cfg)  # the model file first: a bad one fails before any listing
    _print_format_choice(job)
    _print_implied_detail(cfg, job)
    _print_nothing_found(cfg, job)
    if dry_run:
        _print_plan(job)
        return
    summary = _run_with_progress(cfg, job)
    _print_ignored(summary["ignored"])
    typer.echo(
        f"{summary['enhanced']} enhanced, {summary['skipped_done']} already done, "
        f"{summary['failed']} failed, {len(summary['ignored'])} ignored "
        f"({summary['images_per_s']:.3g} images/s, {summary['megapixels_per_s']:.3g} MP/s) "
        f"-> {job.output_url}"
    )
    if code := exit_code(summary):
        raise typer.Exit(code)


@app.command()
def models(
    models_dir: Annotated[
        Path | None,
        typer.Option("--models-dir", help="folder of model dirs (default: the shipped models)"),
    ] = None,
    markdown: Annotated[
        bool,
        typer.Option(
            "--markdown",
            help="print one markdown table instead (the README's model table, tested equal)",
        ),
    ] = False,
) -> None:
    """List the models: task, formulation, size, the presets of the fidelity/detail knob
    (steps, samples, detail) and the figures measured on held-out photos (the model card)."""
    listing = _model_listing(models_dir)
    if markdown:
        typer.echo("\n".join(_models_markdown(listing)))
        return
    for m in listing:
        typer.echo(f"{m['name']}: task {m['task']}, {m['formulation']}, {m['size_mb']:.1f} MB")
        for name, p in m["presets"].items():
            mark = " (default)" if name == m["default"] else ""
            detail = f", detail {p['detail']:g}" if m["detail_knob"] else ""  # none: no knob
            typer.echo(f"  --preset {name}{mark}: steps {p['steps']}, samples {p['samples']}"
                       f"{detail}")  # fmt: skip
        if m["figures"]:
            typer.echo("  measured: " + ", ".join(f"{k} {v:g}" for k, v in m["figures"].items()))


def _model_listing(models_dir: Path | None) -> list[dict[str, Any]]:
    """What `diffenhance models` shows of each `<models_dir>/<name>/model.safetensors`, by name:
    the checkpoint's header (task, formulation, network, presets) and its model card
    (`training.json`: the numeric figures of "measured", its "target" and held-out photos)."""

    from diffenhance.diffusion.formulations import get_formulation
    from diffenhance.model import (
        PRETRAINED_DIRS,
        WEIGHTS_NAME,
        default_preset,
        presets,
        validate_checkpoint,
    )
    from diffenhance.nn import get_network

    root = models_dir or next((d for d in PRETRAINED_DIRS if d.is_dir()), PRETRAINED_DIRS[-1])
    found = sorted(p.parent for p in root.glob(f"*/{WEIGHTS_NAME}"))
    if not found:
        _fail(f"{root}: no model dirs (<name>/{WEIGHTS_NAME}) found")
    listing = []
    for d in found:
        with _user_errors():
            spec = validate_checkpoint(d)
        measured = _card_measured(d / "training.json")
        formulation = get_formulation(spec.diffusion_cfg.formulation)
        listing.append({
            "name": d.name, "task": spec.task, "formulation": formulation.label(spec.diffusion_cfg),
            "network": get_network(spec.model_cfg).label,
            "parameters": spec.n_parameters, "size_mb": (d / WEIGHTS_NAME).stat().st_size / 1e6,
            "presets": presets(spec), "default": default_preset(spec),
            "detail_knob": formulation.detail_knob,
            "figures": {k: v for k, v in measured.items() if isinstance(v, (int, float))},
            "target": measured.get("target"), "photos": measured.get("held_out_photos"),
        })  # fmt: skip
    return listing


def _card_measured(card: Path) -> dict[str, Any]:
    """The "measured" section of a model card (`training.json`; {} without one); a card that
    is not one exits 2 naming it."""
    import json

    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        _fail(f"{card}: not a model card: {e}")
    measured = data.get("measured", {}) if isinstance(data, dict) else None
    photos = measured.get("held_out_photos") if isinstance(measured, dict) else None
    if (
        not isinstance(measured, dict)
        or not isinstance(measured.get("target"), (str, type(None)))
        or not (
            photos is None or isinstance(photos, list) and all(isinstance(p, str) for p in photos)
        )
    ):
        _fail(f"{card}: not a model card: expected an object whose \"measured\" is an object "
              "(numeric figures, \"target\" text, \"held_out_photos\" a list of names)")  # fmt: skip
    return measured


def _models_markdown(listing: list[dict[str, Any]]) -> list[str]:
    """`_model_listing` as a markdown table, then one line on where the figures come from."""
    from diffenhance.markdown import markdown_table
    from diffenhance.restoration import get_task

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = []
    for m in listing:
        several = len(m["presets"]) > 1
        knob = "; ".join(
            f"{name}{' (default)' if several and name == m['default'] else ''}: {p['steps']} "
            f"step{'s' * (p['steps'] != 1)}, {p['samples']} sample{'s' * (p['samples'] != 1)}"
            + (f", detail {p['detail']:g}" if m["detail_knob"] else "")
            for name, p in m["presets"].items()
        )
        figures = ", ".join(f"{k} {v:g}" for k, v in m["figures"].items() if k != "val_size")
        rows.append([
            f"`{m['name']}`", cell(get_task(m["task"]).description or m["task"]),
            m["formulation"], f"{m['network']}, {m['parameters'] / 1e6:.1f}M",
            f"{m['size_mb']:.1f} MB", knob, cell(figures or "-"), cell(m["target"] or "-"),
        ])  # fmt: skip
    header = ["`-m`", "task", "formulation", "network", "size", "presets", "measured", "target"]
    lines = markdown_table(header, rows)
    sizes = {m["figures"].get("val_size") for m in listing}
    photos = {tuple(m["photos"] or ()) for m in listing}
    if len(sizes) == 1 and len(photos) == 1 and None not in sizes and () not in photos:
        lines += ["", f"Measured on {sizes.pop():g} px centre crops of the held-out photos "
                  f"{', '.join(photos.pop())} (the command is in each model's `training.json`)."]  # fmt: skip
    return lines


@app.command()
def ui(
    overrides: OverridesArg = None,
    host: Annotated[str, typer.Option(help="address to bind (0.0.0.0: every network)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port to listen on", min=0, max=65535)] = 7860,
    models_dir: Annotated[
        Path, typer.Option("--models-dir", help="model dirs (with model.safetensors) to list")
    ] = Path("models"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """A local web app: upload an image, pick a model, enhance, compare and download.

    Each run is `diffenhance enhance` on the upload with the same params and overrides, so the
    result has the bytes the command writes. Serves only this machine unless --host says so.
    """
    import socket

    from diffenhance.signals import exit_code, interrupted
    from diffenhance.ui import create_app
    from diffenhance.ui.app import serve

    cfg = _config_or_defaults(params, overrides)
    anywhere = host in ("0.0.0.0", "::")
    hosts = ["*"] if anywhere else ["127.0.0.1", "localhost", host]
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait from now on, before the server takes them
    except OSError as e:
        _fail(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port")
    port = sock.getsockname()[1]  # --port 0: the one the system gave
    app_ = create_app(cfg, models_dir=models_dir, hosts=hosts)
    shown = "127.0.0.1" if anywhere else f"[{host}]" if ":" in host else host
    typer.echo(f"diffenhance ui: http://{shown}:{port}/  (Ctrl-C stops it)")
    sys.stdout.flush()  # the URL at once, also when stdout is a pipe
    if (sig := serve(app_, sock)) is not None:  # SIGINT, SIGTERM: jobs stopped, folder deleted
        stopped = interrupted(sig, "the jobs and deleted the uploads and outputs")
        typer.echo(f"diffenhance ui: {stopped}", err=True)
        raise typer.Exit(exit_code(sig))


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A user error (`diffenhance.exitcodes.USER_ERRORS`, as `python -m flows.<X>` maps them)
    exits with its code and one `error:` line; anything else is a bug and keeps its traceback."""
    from diffenhance.exitcodes import user_error_code

    try:
        yield
    except Exception as e:
        code = user_error_code(e)
        if code is None:
            raise
        _fail(str(e), code)


def _enhance_config(
    params: Path, overrides: list[str] | None, settings: dict[str, Any], **infer: Any
) -> Config:
    """The config of `diffenhance enhance`: params + overrides + the command's arguments
    (`settings` for enhance.*, `infer` for infer.*; None means not given), resolved as
    `diffenhance ui` resolves its form (`diffenhance.enhance.settings.enhance_config`); a
    value an option gives that is out of range is named as typed: `--detail 1.5: must be in
    [0, 1]`. Each key of `settings` and `infer` is an option of the same name, except
    input/output (the arguments) and output_format (--ext)."""
    from diffenhance.enhance.settings import enhance_config

    cfg = _config_or_defaults(params, overrides)
    typed = {o.split("=", 1)[0].strip(): o for o in overrides or []}  # the last one counts
    fixes = [f"drop {typed['enhance.workers']}"] if "enhance.workers" in typed else []
    if cfg.enhance.dask_address is not None:
        fixes.append(f"drop {typed['enhance.dask_address']}" if "enhance.dask_address" in typed
                     else f"set enhance.dask_address: null in {params}")  # fmt: skip
    if fixes:
        _fail("enhance.dask_address and enhance.workers are the flow's: `python -m flows.enhance "
              "...` runs shards on threads or a Dask cluster; this command restores in its own "
              f"process ({' and '.join(fixes)})")  # fmt: skip
    names = {f"infer.{k}": f"--{k}" for k in infer} | {f"enhance.{k}": f"--{k}" for k in settings}
    names |= {
        "enhance.input": "INPUT",
        "enhance.output": "OUTPUT",
        "enhance.output_format": "--ext",
    }
    with _user_errors():
        return enhance_config(cfg, settings, infer, names=names)


MAX_LISTED = 10  # ignored files named one per line after a job; the rest are counted


def _print_ignored(ignored: list[dict[str, Any]]) -> None:
    """Each file the job ignored and why (the first `MAX_LISTED`, then a count)."""
    for ig in ignored[:MAX_LISTED]:
        typer.echo(f"ignored {ig['key']}: {ig['reason']}")
    if len(ignored) > MAX_LISTED:
        typer.echo(f"... and {len(ignored) - MAX_LISTED} more ignored (all in the job's "
                   "_diffenhance/summary.json)")  # fmt: skip


def _print_format_choice(job: Job) -> None:
    """Say so when JPEG inputs are written as PNG although no --ext asked for it: the model
    removes compression artifacts (`enhance.plan.png_for_jpeg`)."""
    from diffenhance.enhance.plan import png_for_jpeg

    if n := len(png_for_jpeg(job)):
        typer.echo(
            f"{n} JPEG input{'s' if n > 1 else ''} written as PNG: the model removes JPEG "
            "artifacts and a JPEG output would add them back (--ext jpg writes JPEG)"
        )


def _print_implied_detail(cfg: Config, job: Job) -> None:
    """Say so when --steps alone set the detail (`restore.implied_detail`): no option names it."""
    d = job.params["infer"].get("detail")
    if d is not None and cfg.infer.detail is None:
        typer.echo(
            f"steps {cfg.infer.steps} (--steps, infer.steps) without --preset or --detail: the "
            "model's default preset is its posterior mean (detail 0), which no step count "
            f"changes, so they run at detail {d:g}, the far end of its knob (its most detailed "
            "preset's, else 1; --detail 0 keeps the mean; `diffenhance models` lists the presets)"
        )


def _print_nothing_found(cfg: Config, job: Job) -> None:
    """Say so when the input holds no image to enhance: an empty folder (or one of other files)
    is not an error, since a scheduled job often finds nothing new, but a wrong folder or
    extension should not pass unnoticed."""
    if job.n_sources == 0:
        exts = " ".join(cfg.enhance.extensions)
        typer.echo(f"no image files found in {job.input_url} (looked for {exts}, in subfolders "
                   "too; enhance.extensions sets them)")  # fmt: skip


def _print_plan(job: Job) -> None:
    """--dry-run: the counts, then each image to enhance and each file ignored (and why)."""
    typer.echo(
        f"{job.n_sources} images in {len(job.shards)} shards: {job.n_todo} to enhance, "
        f"{job.n_sources - job.n_todo} already done, {len(job.ignored)} ignored"
    )
    for shard in job.shards:
        for src in shard.todo:
            typer.echo(f"  {src.key} -> {src.output_key}")
    for ig in job.ignored:
        typer.echo(f"  ignored {ig['key']}: {ig['reason']}")


def _run_with_progress(cfg: Config, job: Job) -> dict[str, Any]:
    """`run_job` with the shards in this process. On a terminal a progress bar; otherwise
    (cron, CI logs) one plain line per image finished, `[i/n] key -> output (1.2 s)`. Each
    failed image and crashed shard is an `error:` line. Returns the summary.

    SIGTERM stops it as Ctrl-C does (`signals.stop_signals`: the output's lock released, no
    half-written file): one `interrupted by ...` line and exit 130 / 143."""
    from tqdm.auto import tqdm

    from diffenhance import signals
    from diffenhance.enhance import run_job

    live = sys.stderr.isatty()
    bar = tqdm(total=job.n_todo, unit="img", desc="enhance", disable=not live)
    finished = 0

    def on_image(ev: dict) -> None:
        nonlocal finished
        finished += 1
        bar.update(1)
        if ev["status"] == "failed":
            line = f"error: {ev['key']}: {ev['reason']}"
        elif live:
            return
        else:
            took = f"{ev['seconds']:.1f} s" if "seconds" in ev else "unchanged input, kept"
            line = f"{ev['key']} -> {posixpath.join(job.output_url, ev['output_key'])} ({took})"
        if live:
            bar.write(line, file=sys.stderr)
        else:
            typer.echo(f"[{finished}/{job.n_todo}] {line}", err=True)

    try:
        with _user_errors(), signals.stop_signals():
            summary = run_job(cfg, on_image=on_image, job=job)
    except KeyboardInterrupt as e:
        sig = signals.signum_of(e)
        why = "the job (finished images are kept: run it again to go on)"
        typer.echo(signals.interrupted(sig, why), err=True)
        raise typer.Exit(signals.exit_code(sig)) from None
    finally:
        bar.close()
    for se in summary["shard_errors"]:
        typer.secho(f"error: shard {se['shard_id']}: {se['reason']}", fg="red", err=True)
    return summary


if __name__ == "__main__":
    app()
