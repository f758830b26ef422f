"""Planning a job: list the input, map each image to its output key, cut deterministic shards
and mark what an earlier run already did (from the manifests). Reads listings and manifests,
never the images."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffenhance.config import Config, EnhanceConfig
from diffenhance.enhance.job import (
    MANIFEST_DIR,
    MANIFEST_FORMAT,
    META_DIR,
    WRITABLE_SUFFIXES,
    EnhanceError,
    Job,
    Shard,
    Source,
    output_params,
    params_hash,
    written_keys,
)
from diffenhance.enhance.masks import check_mask_setting, check_single_mask, mask_fingerprint
from diffenhance.enhance.models import model_file, model_sha256
from diffenhance.io import WRITE_FORMATS
from diffenhance.restoration import get_task
from diffenhance.storage import (
    ObjectInfo,
    Storage,
    is_local,
    local_path,
    normalize_url,
    open_storage,
    split_url,
)
from diffenhance.uncertainty import uncertainty_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Roots:
    """Where a job reads and writes."""

    input_url: str  # the input root (the parent folder when the input is one file)
    output_url: str  # the output root
    single_key: str | None  # the one input key when the input is a file
    single_out: str | None  # the one output key when the output names a file
    excluded: str  # the output's place inside the input ("sub/"), when it is there


JPEG_SUFFIXES = (".jpg", ".jpeg")  # what an artifact remover's 'same' output is not


def output_key(key: str, fmt: str, *, suffix: str = "", lossless: bool = False) -> str:
    """The output key of input `key` under enhance.output_format `fmt` and enhance.suffix.

    'same' keeps every writable suffix (others become .png), except JPEG when `lossless` (the
    model removes compression artifacts: `RestorationTask.lossless_output`): .png, since
    writing JPEG again would add artifacts back. Another `fmt` becomes .<fmt>. A `suffix`
    joins the stem after '_': photo.jpg -> photo_out.jpg."""
    stem, dot, ext = key.rpartition(".")
    if not dot or "/" in ext:
        stem, ext = key, ""
    low = "." + ext.lower() if ext else ""
    if fmt == "same" and (low not in WRITABLE_SUFFIXES or (lossless and low in JPEG_SUFFIXES)):
        fmt = "png"
    keep = fmt == "same" or low == f".{fmt}"  # the input's suffix, as spelled
    return f"{stem}{'_' + suffix if suffix else ''}.{ext if keep else fmt}"


def png_for_jpeg(job: Job) -> list[Source]:
    """The JPEG inputs of `job` written as PNG by `output_key`'s rule for an artifact remover
    (params "jpeg_inputs": "png"), not because --ext or a named output file says PNG."""
    out = job.params["output"]
    if out.get("jpeg_inputs") != "png":
        return []
    suffix = out.get("suffix", "")
    return [
        s
        for shard in job.shards
        for s in shard.sources
        if Path(s.key).suffix.lower() in JPEG_SUFFIXES
        and s.output_key == output_key(s.key, "same", suffix=suffix, lossless=True)
    ]


def _clash(key: str, first: str, out_key: str, e: EnhanceConfig, lossless: bool) -> str:
    """Why `key` is ignored when `first` (earlier in key order) has the same output, and what
    resolves it: enhance.output_format=same only when it gives the two different outputs (it
    keeps every writable suffix), never for a GIF beside a PNG of the same name."""
    why = f"its output {out_key} is also the output of {first}; "
    same = [output_key(k, "same", lossless=lossless) for k in (key, first)]
    if e.output_format != "same" and same[0] != same[1]:
        return why + "set enhance.output_format=same (keeps each input's format) or rename one"
    suffix = Path(key).suffix.lower() or "(none)"
    return why + f"rename one of them, or drop {suffix} from enhance.extensions to skip it"


def _fingerprint(o: ObjectInfo) -> str:
    return f"{o.size}:{o.etag}" if o.etag else f"{o.size}:{o.mtime.timestamp():.6f}"


def _hidden(key: str) -> bool:
    """A dot file or folder; '.' and '..' are not hidden but unsafe (a failure in run_shard)."""
    return any(part.startswith(".") and part not in (".", "..") for part in key.split("/"))


def _resolve_input(url: str, cfg: Config) -> tuple[str, str | None]:
    """(input root, the one key when the input is a single file, else None)."""
    exts = tuple(e.lower() for e in cfg.enhance.extensions)
    if is_local(url):
        p = local_path(url)
        if p.is_file():
            if p.suffix.lower() not in exts:  # named on purpose: an error, not 'ignored'
                what = f"a {p.suffix} file" if p.suffix else "a file without an extension"
                raise EnhanceError(
                    f"{url}: {what} is not read as an image (enhance.extensions: "
                    f"{' '.join(exts)}); rename it, or add its extension to enhance.extensions"
                )
            return str(p.parent), p.name
        if not p.is_dir():
            raise EnhanceError(f"{url}: input not found; give a folder, an image or s3://...")
        return url, None
    split = split_url(url)
    if split and Path(split[1]).suffix.lower() in exts:
        store = open_storage(split[0], cfg.storage)
        if store.exists(split[1]):
            return split[0], split[1]
    return url, None


def _roots(cfg: Config) -> _Roots:
    """Resolve enhance.input / enhance.output; EnhanceError for a missing input or an output
    that is the input folder."""
    e = cfg.enhance
    in_url, single_key = _resolve_input(e.input, cfg)
    out_url, single_out = e.output, None
    if single_key is not None:
        split = None if _is_folder(e.output, cfg) else split_url(e.output)  # x.png/ made earlier
        suffix = Path(split[1]).suffix.lower() if split else ""
        if split and suffix in WRITABLE_SUFFIXES:
            out_url, single_out = split
        elif suffix in {x.lower() for x in e.extensions}:  # .gif: read, never written
            raise EnhanceError(
                f"enhance.output {e.output!r}: {suffix} is read but not written; name the "
                f"output {' / '.join(WRITABLE_SUFFIXES)}, or give a folder"
            )
        fmt = e.output_format
        if (
            single_out is not None
            and fmt != "same"
            and WRITE_FORMATS.get(suffix) != WRITE_FORMATS[f".{fmt}"]  # .jpeg is jpg
        ):
            raise EnhanceError(
                f"enhance.output {e.output!r} is a {suffix} file but --ext (enhance."
                f"output_format) is {fmt}: name the output .{fmt}, or drop --ext (a named "
                "output file is written in its own suffix's format)"
            )
        if single_out is not None and normalize_url(f"{in_url}/{single_key}") == normalize_url(
            f"{out_url}/{single_out}"
        ):
            raise EnhanceError(
                f"enhance.output {e.output!r} is the input image; choose another name"
            )
    if is_local(out_url):  # the output folder, or the folder of the output file named
        _check_no_file_above(
            e.output, local_path(out_url) if single_out else local_path(out_url).parent
        )
    if normalize_url(in_url) == normalize_url(out_url) and single_key is None:
        raise EnhanceError(f"enhance.output {e.output!r} is the input folder; choose another one")
    if single_key is None:
        _check_output_folder(out_url, cfg)
    excluded = ""
    if normalize_url(out_url).startswith(normalize_url(in_url) + "/"):
        excluded = normalize_url(out_url)[len(normalize_url(in_url)) + 1 :] + "/"
    return _Roots(in_url, out_url, single_key, single_out, excluded)


def _check_no_file_above(output: str, folder: Path) -> None:
    """EnhanceError when `folder` (where the output goes) or a folder above it is a file (or a
    link that leads nowhere): the job could not make it and would fail image by image."""
    for p in (folder, *folder.parents):
        if os.path.lexists(p):
            if p.is_dir():
                return
            raise EnhanceError(
                f"enhance.output {output!r}: {p} is a file in the way (a folder would go "
                "there); move it, or choose another output"
            )


def _check_output_folder(out_url: str, cfg: Config) -> None:
    """The output of a folder of inputs must be a folder: not a file, and not a name with an
    image suffix the job writes (`WRITABLE_SUFFIXES`: `c.png` is a typo for a file, not a
    folder to create) unless a folder of that name is already there or the name ends in '/'.
    EnhanceError otherwise."""
    e = cfg.enhance
    local = is_local(out_url)
    if local and local_path(out_url).is_file():
        raise EnhanceError(
            f"enhance.output {e.output!r} is a file, but the input {e.input!r} is a folder: "
            "give an output folder"
        )
    suffix = Path(out_url).suffix.lower()
    if suffix not in WRITABLE_SUFFIXES or out_url.endswith("/"):  # 'c.png/': a folder, as said
        return
    if not _is_folder(out_url, cfg):
        raise EnhanceError(
            f"enhance.output {e.output!r} names a {suffix} image file, but the input "
            f"{e.input!r} is a folder: give an output folder (end it with / to use this name "
            "for one)"
        )


def _is_folder(url: str, cfg: Config) -> bool:
    """Whether `url` is a folder that exists: a local one, or an S3 prefix with objects."""
    if is_local(url):
        return local_path(url).is_dir()
    return next(iter(open_storage(url, cfg.storage).list("")), None) is not None


def _list_sources(
    store: Storage, roots: _Roots, cfg: Config, lossless: bool
) -> tuple[list[Source], list[dict[str, str]]]:
    """(the images to enhance in key order, {"key", "reason"} of the files ignored); each
    output key by `output_key` (`lossless`: the model is an artifact remover), or the output
    file named when the input is one file.

    With `infer.uncertainty` each image also writes its uncertainty map and std beside its
    output; an image any of whose files is already another image's is ignored. With
    `enhance.mask` each fingerprint includes its mask's (`masks.mask_fingerprint`)."""
    e, uncertainty = cfg.enhance, cfg.infer.uncertainty
    if roots.single_key is not None:
        info = store.stat(roots.single_key)
        assert info is not None
        listing: list[ObjectInfo] = [info]
    else:
        listing = sorted(store.list(""), key=lambda o: o.key)
    exts = {x.lower() for x in e.extensions}
    ignored: list[dict[str, str]] = []
    by_output: dict[str, str] = {}  # output key -> its input key
    written: dict[str, str] = {}  # every file written (outputs and maps) -> its input key
    sources: list[Source] = []
    for o in listing:
        if roots.single_key is None and (
            _hidden(o.key)
            or o.key.startswith(META_DIR + "/")
            or (roots.excluded and o.key.startswith(roots.excluded))
        ):
            continue
        if Path(o.key).suffix.lower() not in exts:
            ignored.append({"key": o.key, "reason": "extension not in enhance.extensions"})
            continue
        ok = roots.single_out or output_key(
            o.key, e.output_format, suffix=e.suffix, lossless=lossless
        )
        if ok in by_output:
            why = _clash(o.key, by_output[ok], ok, e, lossless)
            ignored.append({"key": o.key, "reason": why})
            continue
        files = [ok, *uncertainty_keys(ok)] if uncertainty else [ok]
        if taken := next((f for f in files if f in written), None):  # an uncertainty map
            why = f"{taken} would be written for it and for {written[taken]}; rename one of them"
            ignored.append({"key": o.key, "reason": why})
            continue
        by_output[ok] = o.key
        written |= dict.fromkeys(files, o.key)
        fp = _fingerprint(o) + mask_fingerprint(cfg, o.key)
        sources.append(Source(o.key, o.size, fp, ok))
    return sources, ignored


def _read_manifests(out: Storage) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """({input_key: newest record + manifest facts}, ids of shards with a final manifest)."""
    records: dict[str, dict[str, Any]] = {}
    final: set[str] = set()
    for o in out.list(MANIFEST_DIR):
        if not o.key.endswith(".json"):
            continue
        try:
            m = json.loads(out.read_bytes(o.key))
            assert m.get("format") == MANIFEST_FORMAT
        except Exception as e:  # a damaged manifest only costs redoing its images
            log.warning("ignoring unreadable manifest %s: %s", out.url_for(o.key), e)
            continue
        if not o.key.endswith(".partial.json"):
            final.add(m["shard_id"])
        for r in m.get("images", []):
            r = {**r, "model_sha256": m["model"]["sha256"], "params_hash": m["params_hash"]}
            old = records.get(r["input_key"])
            if old is None or r["finished_at"] > old["finished_at"]:
                records[r["input_key"]] = r
    return records, final


def _cut_shards(
    sources: list[Source],
    records: dict[str, dict[str, Any]],
    final_ids: set[str],
    outputs: set[str],
    e: EnhanceConfig,
    made_by: tuple[str, str],
) -> list[Shard]:
    """Runs of `enhance.shard_size` sources, each with the records of its sources done by
    `made_by` (model sha256, params hash) whose output exists: `done` when the input's
    fingerprint is the same, `prior` (a sha256 check) when it changed."""
    shards = []
    n = e.shard_size
    for i in range(0, len(sources), n):
        chunk = tuple(sources[i : i + n])
        digest = hashlib.sha256("\n".join(s.key for s in chunk).encode()).hexdigest()[:10]
        sid = f"{i // n:05d}-{digest}"
        done, prior = [], []
        for s in chunk:
            r = records.get(s.key)
            if not e.skip_done or r is None or (r["model_sha256"], r["params_hash"]) != made_by:
                continue
            if r["output_key"] != s.output_key or not set(written_keys(r)) <= outputs:
                continue
            record = {k: v for k, v in r.items() if k not in ("model_sha256", "params_hash")}
            (done if r["fingerprint"] == s.fingerprint else prior).append(record)
        shards.append(Shard(sid, chunk, tuple(done), tuple(prior), sid in final_ids))
    return shards


def _check_sampling(ckpt: Any, cfg: Config) -> None:
    """EnhanceError (exit 2, one line) when the sampler settings do not fit the model (a preset
    it does not have, detail on a model without a detail knob: `restore.sampling_spec`; a tile
    with no room for its overlap: `infer.check_tiling`) or
    infer.uncertainty cannot be honoured: samples < 2 or a model whose samples cannot differ
    (`restore.uncertainty_problem`)."""
    from diffenhance.infer import check_tiling
    from diffenhance.restore import sampling_spec, uncertainty_problem

    try:
        spec = sampling_spec(ckpt, cfg.infer)
        check_tiling(spec.tile, spec.tile_overlap, ckpt.scale, ckpt.size_multiple)
    except ValueError as e:
        raise EnhanceError(f"{ckpt.path}: {e}") from None
    why = uncertainty_problem(ckpt, spec) if cfg.infer.uncertainty else None
    if why is not None:
        raise EnhanceError(f"{ckpt.path}: --uncertainty (infer.uncertainty): {why}")


def plan_job(cfg: Config) -> Job:
    """List `enhance.input`, filter by extension, cut deterministic shards and mark what a
    previous run already did. Reads only listings and manifests, not the images.

    Raises EnhanceError for a missing input or model, an output equal to the input, a mask
    setting that does not fit the model (`masks.check_mask_setting`), sampler settings that do
    not fit it (a preset it lacks, detail without a detail knob), or infer.uncertainty with
    a model or samples that cannot give a spread, and CheckpointError for a model file that is
    not a valid checkpoint (checked before any work).
    """
    from diffenhance.model import validate_checkpoint
    from diffenhance.restore import implied_detail

    m_file = model_file(cfg.enhance.model)
    ckpt = validate_checkpoint(m_file)
    _check_sampling(ckpt, cfg)
    m_sha = model_sha256(m_file)
    lossless = get_task(ckpt.task).lossless_output  # JPEG inputs -> PNG with 'same'
    params = output_params(cfg, lossless=lossless, implied_detail=implied_detail(ckpt, cfg.infer))
    p_hash = params_hash(params)
    roots = _roots(cfg)
    check_mask_setting(cfg, ckpt.task, roots.single_key is not None)
    if cfg.enhance.mask and roots.single_key is not None and "://" not in roots.input_url:
        check_single_mask(cfg, Path(roots.input_url) / roots.single_key)
    out_store = open_storage(roots.output_url, cfg.storage)
    in_store = open_storage(roots.input_url, cfg.storage)
    sources, ignored = _list_sources(in_store, roots, cfg, lossless)
    single = roots.single_key is not None
    records, final_ids = ({}, set()) if single else _read_manifests(out_store)
    outputs = set() if not records else {o.key for o in out_store.list("")}
    shards = _cut_shards(sources, records, final_ids, outputs, cfg.enhance, (m_sha, p_hash))
    return Job(
        input_url=roots.input_url,
        output_url=roots.output_url,
        model_path=str(m_file),
        model_sha256=m_sha,
        params=params,
        params_hash=p_hash,
        shards=tuple(shards),
        ignored=tuple(ignored),
        single=single,
    )
