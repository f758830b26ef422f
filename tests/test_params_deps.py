"""Each DVC stage depends on exactly the params its code reads, and on every file it reads, so
`dvc repro` never keeps a report that no longer matches params.yaml or its inputs, and never
reruns a stage for a key it ignores.

The lists are derived, not kept by hand: every stage's flow runs for real (tiny data, every
task, every compared formulation) under `config.recorded_reads()` and a recorder of the files
it opens or lists; the keys it read are checked against the stage's `params:` in dvc.yaml in
both directions, the files against its `deps:` and `outs:`. Then real `dvc status`, in a copy
of the repo with every stage committed, must name exactly the stages that read each `infer.*`
field when that field changes."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffenhance import config as C
from tests.conftest import REPO
from tests.pipeline_utils import commit_stand_ins, copy_repo, git, run, set_params
from tests.tiny import TINY_MODEL, smooth_image


def task_names() -> tuple[str, ...]:
    from diffenhance.restoration import task_names as registered  # the task registry

    return registered()


# Keys a stage reads only on a path the tiny runs do not take; each says which path.
READ_ELSEWHERE = {
    "prepare": {
        "data.div2k_url": "data.source=div2k (tests/test_data.py downloads from a local server)",
        "data.div2k_lr_scales": "data.source=div2k",
        "data.raw_dir": "data.source=div2k",
    },
    "train": {"train.init_strict": "loading a train.init_from checkpoint; tiny runs start afresh"},
}
READ_ELSEWHERE["train_compare"] = READ_ELSEWHERE["train"]

# Files a stage may read without listing them, each with the reason (paths relative to the run's
# folder, which stands for the repo root).
FILES_NOT_DEPS = {
    "params.yaml": "params: DVC tracks the keys each stage lists, not the file",
    "diffenhance.egg-info": "the editable install's metadata (a library scans entry points): "
    "the environment, like site-packages",
    "tests/test_params_deps.py": "this harness: the flows run inside its frames, and Python reads "
    "a frame's source for a warning's or a logged traceback's lines",
    "photos": "data.folder, the user's folder: tracked as a param, not by content "
    "(docs/pipeline.md says so)",
}

TINY_RUN = [
    *TINY_MODEL,
    "data.source=folder",
    "data.crop_size=32",
    "data.crop_step=16",
    "data.min_size=32",
    "data.val_fraction=0.5",
    "degrade.val_size=32",
    "degrade.val_max_images=1",
    "train.steps=2",
    "train.batch_size=2",
    "train.crop_size=16",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_steps=2",
    "train.ckpt_every=2",
    "train.ema_warmup_steps=1",
    "train.val_images=1",
    "train.init_from=null",
    "diffusion.options.pmrf.train_mean=true",  # no shipped mean to freeze for a tiny network
    "evaluate.steps=[2]",
    "evaluate.max_images=1",
    "evaluate.uncertainty_samples=2",
    "report.crops=1",
    "compare.train_steps=2",
    "compare.steps=[1,2]",
    "compare.samples=2",
    "compare.max_images=1",
]


DVC_FILES = {"": "dvc.yaml", "compare/dvc.yaml:": "compare/dvc.yaml"}  # address prefix: file


def _stages() -> dict:
    """{stage name: its definition} over both pipelines (the main one and the opt-in compare)."""
    return {
        name: stage
        for f in DVC_FILES.values()
        for name, stage in yaml.safe_load((REPO / f).read_text())["stages"].items()
    }


def _address(stage: str) -> str:
    """The name `dvc status` gives a stage: prefixed by its dvc.yaml outside the root's."""
    for prefix, f in DVC_FILES.items():
        if stage in yaml.safe_load((REPO / f).read_text())["stages"]:
            return prefix + stage
    raise KeyError(stage)


def _body(stage: dict) -> dict:
    return stage.get("do", stage)


def _set_by_cmd(stage: dict) -> tuple[set[str], set[str]]:
    """(keys the stage's cmd overrides, params.yaml keys the stage interpolates with ${...})."""
    body = _body(stage)
    cmd = body["cmd"]
    overridden = set(re.findall(r"([a-z_]+(?:\.[a-z_0-9]+)+)=", cmd))
    text = json.dumps({k: v for k, v in body.items() if k != "params"})
    return overridden, set(re.findall(r"\$\{([a-z_]+\.[a-z_0-9]+)\}", text))


def _fill(text: str, cfg: C.Config, item: str | None, root: Path | None = None) -> str:
    """dvc.yaml `text` with `${item}` and each `${section.key}` replaced by the config's value,
    as DVC fills them in (a path value relative to `root` where one is given)."""
    text = text.replace("${item}", str(item))
    for key in re.findall(r"\$\{([a-z_]+\.[a-z_0-9]+)\}", text):
        section, name = key.split(".")
        value = str(getattr(getattr(cfg, section), name))
        if root is not None and Path(value).is_absolute():
            value = str(Path(value).relative_to(root))
        text = text.replace(f"${{{key}}}", value)
    return text


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """The dotted keys of the values of a nested dict ('diffusion.options.pmrf.noise')."""
    out = []
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        out += _leaf_keys(v, key) if isinstance(v, dict) else [key]
    return out


def declared(stage: dict) -> set[str]:
    """The stage's params as keys: a listed section (or options group) stands for every key
    under it, plug-in options included."""
    keys = _leaf_keys(C.Config().to_dict())
    out = set()
    for entry in _body(stage).get("params", []):
        assert isinstance(entry, str), f"params entry {entry!r}: only params.yaml keys are used"
        under = [k for k in keys if k.startswith(entry + ".")]
        out |= set(under) if under else {entry}
    return out


def _write_params(root: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for ov in [*TINY_RUN, f"data.folder={root / 'photos'}",
               f"data.prepared_dir={root / 'data/prepared'}", f"degrade.out_dir={root / 'data/degraded'}",
               f"degrade.tasks=[{','.join(task_names())}]", f"train.out_dir={root / 'models'}",
               f"evaluate.out_dir={root / 'reports'}", f"report.out_dir={root / 'reports'}",
               f"compare.models_dir={root / 'models/compare'}", f"compare.out_dir={root / 'reports/compare'}"]:  # fmt: skip
        keys, value = C.parse_override(ov)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


_OPENED: list[set[tuple[str, str]]] = []  # the file recorders active now (`recorded_files`)


def _audit(event: str, args: tuple) -> None:
    """sys.addaudithook callback: (absolute path, "open") for every file or folder opened for
    reading (builtin open, io.open_code, os.open) and (path, "list") for every folder listed,
    into each active recorder. Not seen: listings of a folder by descriptor (os.scandir(fd));
    an open relative to a folder descriptor (shutil.rmtree's) reports a bare name, resolved here
    against the working folder: at worst a false alarm naming it."""
    if not _OPENED:
        return
    if event == "open":
        path, _, flags = args
        if flags & os.O_ACCMODE == os.O_WRONLY or flags & os.O_CREAT:
            return  # written, or created (a temporary file opened O_RDWR): not an input
        kind = "open"
    elif event in ("os.listdir", "os.scandir"):
        path, kind = (args[0] if args[0] is not None else "."), "list"
    else:
        return
    if isinstance(path, int) or path is None:  # an open file descriptor: opened before
        return
    full = os.path.abspath(os.fsdecode(path))
    for opened in _OPENED:
        opened.add((full, kind))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it does nothing while none records


@contextmanager
def recorded_files():
    """(absolute path, "open" or "list") of what a block opens for reading or lists, through
    Python (the audit hook) and through safetensors, whose Rust reader opens files where no
    audit hook sees it."""
    import safetensors
    import safetensors.torch

    opened: set[tuple[str, str]] = set()

    def seen(real):
        def wrapper(path, *args, **kwargs):
            opened.add((os.path.abspath(os.fsdecode(path)), "open"))
            return real(path, *args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:  # model.py imports both inside its functions
        mp.setattr(safetensors, "safe_open", seen(safetensors.safe_open))
        mp.setattr(safetensors.torch, "load_file", seen(safetensors.torch.load_file))
        _OPENED.append(opened)
        try:
            yield opened
        finally:
            _OPENED.remove(opened)


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory, prefect_api) -> dict:
    """Real flow runs of every stage (Prefect's engine, tiny network and data; about a minute on
    2 cores) and what each read: {"reads": {stage: params.yaml keys, foreach stages as the union
    of their items}, "files": {(stage, item): {(absolute path, "open" or "list")}}, "root": the
    run's folder, which stands for the repo root, "cfg": its config}."""
    from flows.compare import compare
    from flows.degrade import degrade
    from flows.evaluate import evaluate
    from flows.prepare import prepare
    from flows.report import report
    from flows.train import train

    root = tmp_path_factory.mktemp("reads")
    rng = np.random.default_rng(0)
    from diffenhance.io import write_image

    for i in range(4):
        write_image(root / "photos" / f"p{i}.png", smooth_image(rng, 48, 48))
    params = str(_write_params(root))
    cfg = C.load_config(params)
    reads: dict[str, set[str]] = {}
    files: dict[tuple[str, str | None], set[tuple[str, str]]] = {}

    def record(stage: str, flow, overrides: list[str], item: str | None = None) -> None:
        with C.recorded_reads() as r, recorded_files() as f:
            flow(params, overrides)
        reads.setdefault(stage, set()).update(r)
        files[(stage, item)] = f

    cwd = os.getcwd()
    os.chdir(root)  # nothing may depend on the repo's own folders
    try:
        record("prepare", prepare, [])
        record("degrade", degrade, [])
        for task in task_names():
            for stage, flow in (("train", train), ("evaluate", evaluate), ("report", report)):
                record(stage, flow, [f"train.tasks=[{task}]"], task)
        compare_cmd = _body(_stages()["train_compare"])["cmd"]
        for formulation in cfg.compare.formulations:
            cmd = _fill(compare_cmd, cfg, formulation)
            overrides = [t.strip('"') for t in cmd.split()[3:]]  # after `python -m flows.train`
            record("train_compare", train, overrides, formulation)
        record("compare", compare, [])
    finally:
        os.chdir(cwd)
    # train_compare runs the train flow on compare.task; compare.task may be any task
    reads["train_compare"] |= reads["train"]
    return {"reads": reads, "files": files, "root": root, "cfg": cfg}


@pytest.fixture(scope="module")
def stage_reads(stage_runs) -> dict[str, set[str]]:
    return stage_runs["reads"]


def test_recorded_reads_sees_uses_not_bookkeeping(tmp_path):
    """The recorder counts a field used by code, not validation, a dump or another config."""
    with C.recorded_reads() as reads:
        cfg = C.load_config(None, ["train.lr=1e-3"])
        assert cfg.train.lr == 1e-3
        assert cfg.diffusion.options["pmrf"].noise == 0.1  # a plug-in's option: its own key
        C.write_resolved(cfg, tmp_path)  # a record of every key, not a use
        assert C.section_from_dict(C.ModelConfig, {}).space  # a checkpoint's, not params.yaml
        with C.unrecorded():
            assert cfg.infer.tile
    assert reads == {"train.lr", "diffusion.options.pmrf.noise"}
    assert type(cfg.train).__getattribute__ is object.__getattribute__  # unpatched afterwards


@pytest.mark.parametrize("stage_name", sorted(_stages()))
def test_stage_lists_exactly_the_params_it_reads(stage_reads, stage_name):
    stage = _stages()[stage_name]
    overridden, interpolated = _set_by_cmd(stage)
    foreach = str(stage.get("foreach", ""))
    interpolated -= set(re.findall(r"\$\{([a-z_]+\.[a-z_0-9]+)\}", foreach))
    elsewhere = READ_ELSEWHERE.get(stage_name, {})
    used = (stage_reads[stage_name] - overridden) | interpolated | set(elsewhere)
    listed = declared(stage)
    missing, unread = sorted(used - listed), sorted(listed - used)
    assert not missing, (
        f"dvc.yaml stage {stage_name!r} reads params it does not list (a change leaves a stale "
        f"output): add {missing}"
    )
    assert not unread, (
        f"dvc.yaml stage {stage_name!r} lists params its code never reads (a change reruns it "
        f"for nothing): remove {unread}"
    )


def test_training_does_not_read_the_sampling_it_overrides(stage_reads):
    """Training's validation sets steps (train.val_steps), samples (1) and the seed
    (train.seed) itself: an edit of infer.steps, infer.samples or infer.seed, made for
    enhancing, must not retrain the model (it used to: the fields were read, then overridden)."""
    for stage in ("train", "train_compare"):
        assert not {"infer.steps", "infer.samples", "infer.seed"} & stage_reads[stage], stage
    assert {"infer.steps", "infer.samples", "infer.seed"} <= stage_reads["evaluate"]


# a valid value different from the default, for each infer.* field
INFER_CHANGES = {
    "sampler": "ddpm", "steps": 3, "eta": 0.5, "seed": 7, "tile": 48, "tile_overlap": 8,
    "tile_batch": 4, "color_correction": "wavelet", "precision": "fp32", "device": "cpu",
    "samples": 2, "detail": 0.5, "preset": "balanced", "uncertainty": True, "threads": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory) -> Path:
    """A copy of the repo where every stage is committed (`dvc commit`) on stand-in files:
    `dvc status` is clean, so a params change shows exactly the stages that list the key."""
    repo = copy_repo(tmp_path_factory.mktemp("dvcrepo") / "repo")
    commit_stand_ins(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "committed stand-ins")
    assert json.loads(run(repo, "dvc", "status", "--json").stdout) == {}
    return repo


def _stale(repo: Path) -> set[str]:
    return set(json.loads(run(repo, "dvc", "status", "--json").stdout))


def test_every_infer_field_reruns_the_stages_that_read_it(committed_repo, stage_reads):
    """The issue's reproduction, field by field: set `infer.<f>` and `dvc status` names every
    stage (item) whose code reads it, and no other."""
    assert set(INFER_CHANGES) == {f.name for f in dataclasses.fields(C.InferConfig)}
    params = committed_repo / "params.yaml"
    original = params.read_text()
    raw = yaml.safe_load(original)
    items = {"train": raw["train"]["tasks"], "evaluate": raw["train"]["tasks"],
             "report": raw["train"]["tasks"], "train_compare": raw["compare"]["formulations"]}  # fmt: skip
    try:
        for name, value in INFER_CHANGES.items():
            key = f"infer.{name}"
            changed = {**raw, "infer": {**raw["infer"], name: value}}
            params.write_text(yaml.safe_dump(changed, sort_keys=False))
            expect = set()
            for stage, keys in stage_reads.items():
                overridden, _ = _set_by_cmd(_stages()[stage])
                if key in keys and key not in overridden:
                    name = _address(stage)
                    expect |= {f"{name}@{i}" for i in items[stage]} if stage in items else {name}
            assert _stale(committed_repo) == expect, key
    finally:
        params.write_text(original)


def test_another_tasks_degradation_does_not_rerun_sr4(committed_repo):
    """The issue's other direction: degrade.val_noise_sigma is denoise's. It reruns degrade,
    which rewrites denoise's pairs; the sr4 chain depends on sr4's pairs only, so it stays."""
    params = committed_repo / "params.yaml"
    pairs = committed_repo / "data/degraded/denoise/pairs.csv"
    original = params.read_text()
    raw = yaml.safe_load(original)
    try:
        raw["degrade"]["val_noise_sigma"] = 15.0
        params.write_text(yaml.safe_dump(raw, sort_keys=False))
        assert _stale(committed_repo) == {"degrade"}
        pairs.parent.mkdir(parents=True, exist_ok=True)
        pairs.write_text("rewritten by degrade\n")  # what its rerun does
        assert _stale(committed_repo) == {"degrade"}
    finally:
        params.write_text(original)
        pairs.unlink()


def _stage_paths(stage_name: str, item: str | None, cfg: C.Config, root: Path) -> list[str]:
    """The stage's deps and outputs (outs, metrics, plots) as paths relative to the repo root,
    `${item}` and `${section.key}` filled in with the tiny run's values."""
    body = _body(_stages()[stage_name])
    entries = [e for kind in ("deps", "outs", "metrics", "plots") for e in body.get(kind, [])]
    paths = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return [_fill(p, cfg, item, root).rstrip("/") for p in paths]


def _under(rel: str, paths: list[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in paths)


@pytest.mark.parametrize("stage_name", sorted(_stages()))
def test_stage_lists_every_file_it_reads(stage_runs, stage_name):
    """Every file a stage's flow opens for reading, or folder it lists, inside the run's folder
    (which stands for the repo root) is one of its deps or outputs: a change to a file read but
    not listed would leave a stale output. The report stage used to read the training run's
    params.resolved.yaml and the validation pairs.csv unlisted. (Code deps are
    test_dvc_deps.py's: modules are imported before the runs, so few code reads are seen here;
    those under the real repo are checked too.)"""
    root, cfg = stage_runs["root"], stage_runs["cfg"]
    venv = REPO / ".venv"
    runs = {k: v for k, v in stage_runs["files"].items() if k[0] == stage_name}
    assert runs, f"no recorded run of {stage_name}"
    for (_, item), opened in sorted(runs.items(), key=str):
        listed = _stage_paths(stage_name, item, cfg, root)
        unlisted = set()
        for name, kind in opened:
            full = Path(name)
            if full.is_relative_to(root):
                rel = full.relative_to(root).as_posix()
            elif full.is_relative_to(REPO) and not full.is_relative_to(venv):
                rel = full.relative_to(REPO).as_posix()
            else:
                continue  # the interpreter, site-packages, Prefect's home, temporary files
            hidden = any(part.startswith((".", "__editable__")) for part in Path(rel).parts)
            if hidden and not full.exists():
                continue  # the stage's own temporary (an atomic write's, a staging folder), or
                # the editable install's sys.path entry; a missing file tried is reported
            if rel in (".", "") or _under(rel, list(FILES_NOT_DEPS)) or _under(rel, listed):
                continue
            if kind == "open" and any(p.startswith(rel + "/") for p in listed):
                continue  # a folder above an output, opened to fsync a rename into it
            unlisted.add(f"{rel} ({'listed' if kind == 'list' else 'read'})")
        where = f"{stage_name}@{item}" if item else stage_name
        assert not unlisted, (
            f"dvc.yaml stage {where!r} reads files that are none of its deps or outs (a change "
            f"to one leaves a stale output): {sorted(unlisted)}"
        )


TRAINING_RANGES = {"noise_sigma": [10.0, 60.0], "jpeg_quality": [20, 70], "blind_scale": 2,
                   "mask_coverage": [0.1, 0.4]}  # fmt: skip


def test_a_tasks_training_range_reruns_degrade_and_no_other_tasks_training(committed_repo):
    """Each task's training setting (denoise's noise_sigma, jpeg's jpeg_quality, blind's scale,
    inpaint's masks) was a param of every train@ and train_compare@ stage, since DVC cannot
    vary a foreach stage's params per task: an edit of one retrained sr4 (hours on a GPU). Now
    degrade records it in data/degraded/<task>/degradation.json and a task's stages read it
    there: the edit reruns degrade alone, and degrade's rerun (simulated: the record
    rewritten) changes that task's folder only, which sr4's chain does not depend on."""
    from diffenhance.restoration import get_task

    keys = {k for t in task_names() for k in get_task(t).degrade_keys}
    assert keys - {"val_noise_sigma", "val_jpeg_quality"} == set(TRAINING_RANGES)
    params = committed_repo / "params.yaml"
    original = params.read_text()
    record = committed_repo / "data/degraded/denoise/degradation.json"
    try:
        for key, value in TRAINING_RANGES.items():
            set_params(committed_repo, {"degrade": {key: value}})
            assert _stale(committed_repo) == {"degrade"}, key
            params.write_text(original)
        set_params(committed_repo, {"degrade": {"noise_sigma": [10.0, 60.0]}})
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text('{"degrade": {"noise_sigma": [10.0, 60.0]}, "task": "denoise"}\n')
        assert _stale(committed_repo) == {"degrade"}
    finally:
        params.write_text(original)
        record.unlink(missing_ok=True)
