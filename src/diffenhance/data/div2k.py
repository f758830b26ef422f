"""DIV2K (`data.source: div2k`): resumable, verified download and safe extraction.

Official archives under `data.div2k_url` (default https://data.vision.ee.ethz.ch/cvl/DIV2K/):
`DIV2K_train_HR.zip` (800 images, `DIV2K_train_HR/0001.png` ...), `DIV2K_valid_HR.zip` (100,
`DIV2K_valid_HR/0801.png` ...) and, when `data.div2k_lr_scales` asks for them,
`DIV2K_{train,valid}_LR_bicubic_X{s}.zip` (`DIV2K_train_LR_bicubic/X4/0001x4.png` ...).

`download` uses only the standard library: it writes `<dest>.part`, resumes it with an HTTP
`Range` request after a dropped connection or an interrupted run (restarting from zero when
the server ignores the range), checks size / sha256 / an optional validator, and only then
renames the file into place. `extract` refuses unsafe member names and unpacks through a
temporary directory, leaving a `.<archive>.complete` marker so a rerun skips it.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from diffenhance.config import DataConfig
from diffenhance.data.errors import DataError
from diffenhance.io import atomic_write_bytes, file_sha256

__all__ = [
    "DIV2K_SHA256",
    "ArchiveError",
    "DownloadError",
    "archive_names",
    "archive_folder",
    "check_div2k_zip",
    "check_zip",
    "download",
    "extract",
    "fetch_div2k",
]

log = logging.getLogger(__name__)

#: Expected sha256 of each official archive. Fill from the official release; None = verify by
#: zip integrity only (every member's CRC via `zipfile.ZipFile.testzip`, always done).
DIV2K_SHA256: dict[str, str | None] = {
    "DIV2K_train_HR.zip": None,
    "DIV2K_valid_HR.zip": None,
    **{f"DIV2K_{p}_LR_bicubic_X{s}.zip": None for p in ("train", "valid") for s in (2, 3, 4)},
}
LR_SCALES: tuple[int, ...] = (2, 3, 4)  # the bicubic LR sets DIV2K publishes
_CHUNK = 1 << 20
_RETRYABLE = (
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    ConnectionError,  # incl. ConnectionResetError, ConnectionAbortedError
    TimeoutError,  # incl. socket.timeout
    socket.timeout,
    urllib.error.URLError,
)


class DownloadError(DataError, RuntimeError):
    """A download failed for good (HTTP error, retries exhausted, bad size or checksum)."""


class DownloadUnavailable(DownloadError):
    """The server could not be reached, or kept failing, through every retry (network down,
    connection refused, HTTP 5xx, 408, 429): nothing to fix in the config, so exit 1 like
    failed storage, not 2; a rerun later resumes the kept .part. A host name that does not
    resolve stays a DownloadError (exit 2): most likely a typo in data.div2k_url."""


class ArchiveError(DataError, RuntimeError):
    """An archive is corrupt, unsafe (absolute or '..' member paths) or laid out unexpectedly."""


def _content_range_start(value: str | None) -> int | None:
    """First byte of a 'bytes START-END/TOTAL' Content-Range header, or None."""
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One HTTP request: append to `part` from its current size (Range) or rewrite it.

    Raises a _RETRYABLE error when the body ends early, HTTPError for HTTP errors."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "diffenhance/0.1 (urllib)", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if start and resp.status == 206:
            got = _content_range_start(resp.headers.get("Content-Range"))
            if got != start:  # never splice bytes at the wrong offset
                part.unlink(missing_ok=True)
                raise ConnectionError(f"asked for bytes {start}- but got range start {got}")
            mode = "ab"
        else:  # 200: the server ignored the range (or there was none): start over
            if start:
                log.info("%s: server ignored the range request, restarting from 0", url)
            start, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = start + expected if expected is not None else None
        received = 0
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=None if progress else True,  # None: off when not a tty
                leave=False,
            ) as bar,
        ):
            while block := resp.read(_CHUNK):
                f.write(block)
                received += len(block)
                bar.update(len(block))
        if expected is not None and received < expected:
            # Python's read(amt) returns b"" at a premature EOF instead of raising.
            raise http.client.IncompleteRead(b"", expected - received)


def download(
    url: str,
    dest: str | Path,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    retries: int = 5,
    timeout: float = 30,
    progress: bool = True,
    backoff: float = 1.0,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download `url` to `dest`, resumably; return `dest`.

    Data goes to `<dest>.part`; an existing .part is resumed with `Range: bytes=N-` (206), or
    restarted when the server answers 200. Dropped connections and timeouts are retried up to
    `retries` times (sleeping `backoff * 2**attempt` s, capped at 30), each time resuming.
    Before the rename, the size, the sha256 and `validate(part)` are checked; a mismatch (or a
    validator raising) deletes the .part and raises DownloadError naming the file, expected and
    actual values. An existing `dest` is trusted (it was only renamed there after checking)
    and returned at once.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_with_retries(url, part, retries=retries, timeout=timeout, progress=progress,
                        backoff=backoff)  # fmt: skip
    _verify_part(part, dest, url, expected_sha256, expected_size, validate)
    os.replace(part, dest)
    return dest


def _fetch_with_retries(
    url: str, part: Path, *, retries: int, timeout: float, progress: bool, backoff: float
) -> None:
    """Fetch `url` into `part`, resuming after each retryable error (see `download`)."""
    attempt = 0
    while True:
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            have = part.stat().st_size if part.exists() else 0
            if e.code == 416 and have:  # range beyond the end: the .part is already complete
                break
            if e.code < 500 and e.code not in (408, 429):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            err: Exception = e
        except _RETRYABLE as e:
            err = e
        attempt += 1
        have = part.stat().st_size if part.exists() else 0
        if attempt > retries:
            # a host name that does not resolve is most likely a typo in the URL (exit 2)
            lookup = isinstance(getattr(err, "reason", None), socket.gaierror)
            raise (DownloadError if lookup else DownloadUnavailable)(
                f"{url}: giving up after {retries} retries ({type(err).__name__}: {err}); "
                f"{have} bytes kept in {part}, rerun to resume"
            ) from err
        delay = min(backoff * 2**attempt, 30.0)
        log.warning(
            "%s: %s after %d bytes; retry %d/%d in %.1fs (resuming)",
            url,
            type(err).__name__,
            have,
            attempt,
            retries,
            delay,
        )
        time.sleep(delay)


def _verify_part(
    part: Path, dest: Path, url: str, expected_sha256: str | None, expected_size: int | None,
    validate: Callable[[Path], None] | None,
) -> None:  # fmt: skip
    """Size, sha256 and `validate` checks of a finished `part`; deletes it on a mismatch."""

    def reject(what: str, expected: object, actual: object) -> DownloadError:
        part.unlink(missing_ok=True)
        return DownloadError(
            f"{dest.name}: {what} mismatch for {url}: expected {expected}, got {actual}; "
            "the partial file was deleted, rerun to download again"
        )

    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise reject("size", expected_size, size)
    if expected_sha256 is not None:
        actual = file_sha256(part, _CHUNK)
        if actual.lower() != expected_sha256.lower():
            raise reject("sha256", expected_sha256.lower(), actual)
    if validate is not None:
        try:
            validate(part)
        except (ArchiveError, DownloadError) as e:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{dest.name}: downloaded file is invalid: {e}") from e


def check_zip(path: str | Path) -> None:
    """Raise ArchiveError unless `path` is a readable zip whose every member's CRC matches."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ArchiveError(f"{path}: not a valid zip archive ({e})") from None
    if bad is not None:
        raise ArchiveError(f"{path}: corrupt member {bad!r} (CRC mismatch)")


def archive_folder(name: str) -> str:
    """The folder every member of the official archive `name` lies in: DIV2K_train_HR.zip ->
    'DIV2K_train_HR', DIV2K_valid_LR_bicubic_X4.zip -> 'DIV2K_valid_LR_bicubic/X4'."""
    stem = name.removesuffix(".zip")
    m = re.fullmatch(r"(DIV2K_\w+_LR_bicubic)_(X\d)", stem)
    return f"{m[1]}/{m[2]}" if m else stem


def check_div2k_zip(path: str | Path) -> None:
    """`check_zip`, and every member a safe path inside the folder the official archive of this
    name has (`archive_folder`): an archive that would extract elsewhere, or escape with '..',
    is refused before anything is extracted. ArchiveError naming the file."""
    path = Path(path)
    check_zip(path)
    folder = PurePosixPath(archive_folder(path.name.removesuffix(".part")))
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    for name in names:
        try:
            member = _safe_member(name)
        except ArchiveError as e:
            raise ArchiveError(f"{path}: {e}") from None
        ancestor = name.endswith("/") and folder.is_relative_to(member)  # a parent's entry
        if not (member == folder or member.is_relative_to(folder) or ancestor):
            raise ArchiveError(
                f"{path}: member {name!r} is not under {folder}/ (the layout of DIV2K's "
                f"{path.name.removesuffix('.part')}); is data.div2k_url a DIV2K mirror?"
            )
    if not names:
        raise ArchiveError(f"{path}: empty archive")


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise ArchiveError(f"unsafe member path {name!r} (absolute or contains '..')")
    return p


def _merge_move(src: Path, dst: Path) -> None:
    """Move `src` onto `dst`, merging directories (so X2 and X4 LR sets share a parent)."""
    if src.is_dir() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _merge_move(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_dir():
        shutil.rmtree(dst)
    os.replace(src, dst)


def _marker(zip_path: Path, dest_dir: Path) -> Path:
    return dest_dir / f".{zip_path.name}.complete"


def extract(zip_path: str | Path, dest_dir: str | Path) -> Path:
    """Safely extract `zip_path` into `dest_dir`; return `dest_dir`.

    Every member name is checked first (absolute paths and '..' raise ArchiveError before
    anything is written). Members go to a temporary directory inside `dest_dir`, then are
    moved into place and `dest_dir/.<zip name>.complete` is written; when that marker exists
    the call does nothing. An interrupted extraction is redone in full on the next call.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    marker = _marker(zip_path, dest_dir)
    if marker.is_file():
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        for m in members:
            _safe_member(m.filename)
        tmp = Path(tempfile.mkdtemp(prefix=f".{zip_path.stem}.", dir=dest_dir))
        try:
            for m in members:
                rel = _safe_member(m.filename)
                target = tmp.joinpath(*rel.parts)
                if m.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            for child in sorted(tmp.iterdir()):
                _merge_move(child, dest_dir / child.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_bytes(marker, f"{zip_path.name}\n".encode())
    return dest_dir


def archive_names(lr_scales: tuple[int, ...] = ()) -> list[str]:
    """Official archive file names: HR train/valid, then the requested bicubic LR sets."""
    bad = [s for s in lr_scales if s not in LR_SCALES]
    if bad:
        raise ValueError(f"data.div2k_lr_scales {bad}: DIV2K has bicubic LR sets {LR_SCALES}")
    names = ["DIV2K_train_HR.zip", "DIV2K_valid_HR.zip"]
    for s in sorted(set(lr_scales)):
        names += [f"DIV2K_train_LR_bicubic_X{s}.zip", f"DIV2K_valid_LR_bicubic_X{s}.zip"]
    return names


def fetch_div2k(
    cfg: DataConfig,
    *,
    base_url: str | None = None,
    checksums: dict[str, str | None] | None = None,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 30,
    backoff: float = 1.0,
) -> dict[str, Path]:
    """Download and extract DIV2K into `<cfg.raw_dir>/div2k`; return its image directories.

    Keys: 'train' and 'val' (HR), plus 'train_lr_x{s}' / 'val_lr_x{s}' for each scale in
    `cfg.div2k_lr_scales`. Archives are kept in `<raw_dir>/div2k/archives/`; an archive whose
    extraction marker exists is neither downloaded nor extracted again. Each archive must pass
    `check_div2k_zip` (CRCs, safe member paths, DIV2K's folder layout) before it is extracted:
    a download that fails it is deleted, as is a kept archive that fails it (a truncated
    file from an interrupted `wget`, a bad mirror's), which is then downloaded again. `base_url` overrides
    `cfg.div2k_url`; `checksums` overrides / extends `DIV2K_SHA256`.
    """
    base = (base_url or cfg.div2k_url).rstrip("/") + "/"
    sums = {**DIV2K_SHA256, **(checksums or {})}
    root = Path(cfg.raw_dir) / "div2k"
    for name in archive_names(cfg.div2k_lr_scales):
        zip_path = root / "archives" / name
        if _marker(zip_path, root).is_file():
            continue
        if zip_path.is_file():  # downloaded before (or put there by hand), not extracted yet
            try:
                check_div2k_zip(zip_path)
            except ArchiveError as e:
                log.warning("%s; deleting it and downloading it again", e)
                zip_path.unlink()
        download(
            base + name,
            zip_path,
            expected_sha256=sums.get(name),
            retries=retries,
            timeout=timeout,
            progress=progress,
            backoff=backoff,
            validate=check_div2k_zip,
        )
        extract(zip_path, root)
    dirs = {"train": root / "DIV2K_train_HR", "val": root / "DIV2K_valid_HR"}
    for s in sorted(set(cfg.div2k_lr_scales)):
        dirs[f"train_lr_x{s}"] = root / "DIV2K_train_LR_bicubic" / f"X{s}"
        dirs[f"val_lr_x{s}"] = root / "DIV2K_valid_LR_bicubic" / f"X{s}"
    missing = [str(d) for d in dirs.values() if not d.is_dir()]
    if missing:
        raise ArchiveError(f"DIV2K archives did not contain the expected folders: {missing}")
    return dirs
