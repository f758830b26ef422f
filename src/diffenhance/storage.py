"""One small interface over local folders and ``s3://bucket/prefix`` URLs.

    store = open_storage("s3://results/run-7", cfg.storage)  # or open_storage("results/published")
    result = store.upload_dir("reports")  # skips files whose size and sha256 already match
    store.download_dir("", "restored/")
    upload_path(store, "photos/", progress=print)  # `diffenhance upload`: a file or a folder

Keys are relative, '/'-separated and checked by `safe_key`: a hostile file or object name can
never escape the storage root. Every upload stores the content's sha256 in the object metadata
(``x-amz-meta-sha256``) and is verified afterwards (size + sha256), so unchanged files are skipped
and a truncated upload raises instead of passing silently: `Storage.sync_file` is that one step,
shared by `upload_dir`, `upload_path` and publish. Local writes are atomic (temp file +
``os.replace``: `diffenhance.io.atomic_open`). `is_local`, `local_path`, `split_url` and
`normalize_url` are the one parser of locations (paths, file:// and s3:// URLs). Errors are
`StorageError`s naming the endpoint host, the key and the cause, never the credentials;
botocore's own DEBUG log records are redacted too. boto3 is imported lazily, so the library
imports without it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from diffenhance.config import StorageConfig
from diffenhance.io import atomic_open, file_sha256, is_temp_name, temp_name

log = logging.getLogger(__name__)
MiB = 1024 * 1024


class StorageError(Exception):
    """A storage operation failed; the message says where, why and what to check."""


class UnsafeKeyError(StorageError):
    """A key or file name would escape the storage root or is not a plain relative path."""


class ObjectNotFoundError(StorageError):
    """The key does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root
    size: int
    etag: str | None  # S3 ETag without quotes (multipart ones end in "-N"); None locally
    sha256: str | None  # content sha256 when known (our metadata / local file); None in listings
    mtime: datetime  # UTC


@dataclass
class SyncResult:
    transferred: int = 0  # files uploaded / downloaded
    skipped: int = 0  # files left alone because size and sha256 matched
    bytes: int = 0  # bytes transferred
    keys: list[str] = field(default_factory=list)  # keys transferred
    skipped_keys: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)  # `upload_path`: hidden paths left out

    def add(self, key: str, size: int) -> None:
        self.transferred, self.bytes = self.transferred + 1, self.bytes + size
        self.keys.append(key)

    def skip(self, key: str) -> None:
        self.skipped += 1
        self.skipped_keys.append(key)

    def __str__(self) -> str:
        text = f"{self.transferred} files ({self.bytes} bytes) sent, {self.skipped} unchanged"
        return text + (f", {len(self.hidden)} hidden skipped" if self.hidden else "")


def _check_parts(path: str, *, allow_empty: bool) -> list[str]:
    def bad(why: str) -> UnsafeKeyError:
        return UnsafeKeyError(
            f"unsafe key {path!r}: {why}; keys must be relative '/'-separated paths "
            "inside the storage root"
        )

    if not isinstance(path, str):
        raise bad(f"expected a str, got {type(path).__name__}")
    if path == "":
        if allow_empty:
            return []
        raise bad("empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise bad("contains NUL or a control character")
    if "\\" in path:
        raise bad("contains a backslash")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise bad("is absolute")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise bad(f"has a {part!r} component" if part else "has an empty component")
    return parts


def safe_key(prefix: str, relpath: str) -> str:
    """Join `relpath` under `prefix` ('/'-separated), refusing anything that could escape it.

    Refused, with `UnsafeKeyError` naming the path: '..' or '.' components, absolute paths,
    backslashes, empty components ('a//b', a trailing '/'), NUL and control characters.
    An empty `prefix` means the storage root.
    """
    head = _check_parts(prefix.rstrip("/"), allow_empty=True)
    tail = _check_parts(relpath, allow_empty=False)
    return "/".join(head + tail)


def _dir_prefix(prefix: str) -> str:
    """A listing prefix: '' or 'a/b/' (validated)."""
    parts = _check_parts(prefix.rstrip("/"), allow_empty=True)
    return "/".join(parts) + "/" if parts else ""


def local_files(
    local_dir: Path, hidden: list[str] | None = None, skip: Collection[Path] = ()
) -> Iterator[tuple[str, Path]]:
    """(relative '/' path, path) of the files under `local_dir`, sorted, without half-written
    temp files. With a `hidden` list, files and whole folders whose name starts with '.' are left
    out too, and their relative paths (folders with a trailing '/') appended to it. `skip`:
    resolved paths left out, a folder among them (or below one) never entered, so its files are
    not even listed (publish's destination inside a published folder).
    StorageError naming a folder that cannot be listed (never skipped in silence).

    A symbolic link to a folder (a dataset linked in) is followed, under its own name, unless
    it would loop: to a folder being listed (this one, an ancestor on the way down) or one
    above `local_dir`."""

    def unreadable(e: OSError) -> None:
        raise StorageError(
            f"cannot list the folder {e.filename}: {e.strerror or e} (fix its permissions, or "
            "move it out of the folder being read)"
        ) from e

    left_out = set(skip)

    def skipped(path: Path) -> bool:
        real = path.resolve()
        return real in left_out or not left_out.isdisjoint(real.parents)

    top = Path(local_dir).resolve()
    above = {top, *top.parents}
    on_the_way: set[Path] = set()  # real folders listed so far (each one's ancestors among them)
    for dirpath, dirnames, filenames in os.walk(local_dir, onerror=unreadable, followlinks=True):
        here = Path(dirpath)
        on_the_way.add(here.resolve())
        dirnames.sort()
        if hidden is not None:
            rel = here.relative_to(local_dir)
            hidden += [(rel / d).as_posix() + "/" for d in dirnames if d.startswith(".")]
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        dirnames[:] = [d for d in dirnames if not _loops(here / d, above, on_the_way)]
        if left_out:
            dirnames[:] = [d for d in dirnames if not skipped(here / d)]
        for name in sorted(filenames):
            if hidden is not None and name.startswith("."):  # temp files included
                hidden.append((here / name).relative_to(local_dir).as_posix())
            elif not is_temp_name(name) and not (left_out and skipped(here / name)):
                path = here / name
                yield path.relative_to(local_dir).as_posix(), path


def special_file(path: Path) -> bool:
    """Whether `path` exists but is not a regular file (a FIFO, socket or device): a read
    would block or mean nothing, so the local walks' users skip it, saying so."""
    return path.exists() and not path.is_file()


def _loops(folder: Path, *listed: set[Path]) -> bool:
    """Whether `folder` is a symbolic link to a folder in one of the `listed` sets."""
    if not folder.is_symlink():
        return False
    target = folder.resolve()
    return any(target in s for s in listed)


def _same_content(remote: ObjectInfo | None, path: Path) -> bool:
    """Does local `path` hold `remote`'s content? sha256 metadata, else a single-part MD5 ETag."""
    if remote is None or remote.size != path.stat().st_size:
        return False
    if remote.sha256:
        return remote.sha256 == file_sha256(path)
    etag = remote.etag or "-"
    return "-" not in etag and etag == hashlib.md5(path.read_bytes()).hexdigest()


class Storage(ABC):
    """Common interface; keys are relative to the root given to `open_storage`."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object under the folder `prefix` ('' = all), paginating as needed."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, etag, sha256 and mtime of `key`, or None when it does not exist."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The content of `key` (verified against its stored sha256 when there is one)."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store `data` at `key` (atomic, verified)."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Store `data` at `key` only if no object is there (atomic: of two creators one
        wins); False when `key` exists. For locks (`enhance.lock`)."""

    @abstractmethod
    def upload_file(
        self, local_path: str | os.PathLike, key: str, *, checksum: str | None = None
    ) -> ObjectInfo:
        """Copy a local file to `key`, verified (its sha256 is `checksum` when given, and the
        stored size and sha256 match); the stored object's info."""

    @abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Copy `key` to a local file atomically (temp file + os.replace), verifying sha256."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error when it does not exist."""

    @abstractmethod
    def url_for(self, key: str = "") -> str:
        """A display URL or path for `key`, never containing credentials."""

    def exists(self, key: str) -> bool:
        """True when `key` exists."""
        return self.stat(key) is not None

    def checksum(self, key: str) -> str | None:
        """sha256 hex of `key`'s content; None for an S3 object written without our metadata."""
        info = self.stat(key)
        if info is None:
            raise ObjectNotFoundError(f"{self.url_for(key)} does not exist")
        return info.sha256

    def sync_file(
        self, local_path: str | os.PathLike, key: str, *, skip_unchanged: bool = True
    ) -> tuple[ObjectInfo, bool]:
        """Upload a local file to `key` unless (with `skip_unchanged`) the stored object already
        has its size and sha256: (the stored object's info, whether it was sent). The one upload
        step of `upload_dir`, `upload_path` and publish; an upload is verified (`upload_file`).

        Raises `OSError` when the local file cannot be read (before any request), else
        `StorageError` from the store.
        """
        path = Path(local_path)
        size, sha = path.stat().st_size, file_sha256(path)
        remote = self.stat(key) if skip_unchanged else None
        if remote is not None and remote.size == size and remote.sha256 == sha:
            return remote, False
        return self.upload_file(path, key, checksum=sha), True

    def upload_dir(
        self, local_dir: str | os.PathLike, key_prefix: str = "", *, skip_unchanged: bool = True
    ) -> SyncResult:
        """Upload every file under `local_dir` to `key_prefix/<relative path>`.

        With `skip_unchanged`, files whose size and sha256 match the stored object are skipped.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise StorageError(f"upload_dir: {root} is not a directory")
        _dir_prefix(key_prefix)  # refuse a bad prefix even for an empty folder
        result = SyncResult()
        for rel, path in local_files(root):
            key = safe_key(key_prefix, rel)
            info, sent = self.sync_file(path, key, skip_unchanged=skip_unchanged)
            if sent:
                result.add(key, info.size)
            else:
                result.skip(key)
        log.info("upload_dir %s -> %s: %s", root, self.url_for(key_prefix), result)
        return result

    def download_dir(
        self, key_prefix: str, local_dir: str | os.PathLike, *, skip_unchanged: bool = True
    ) -> SyncResult:
        """Download every object under `key_prefix` into `local_dir`, keeping relative paths.

        Object names are checked like keys, so a hostile name ('../x') raises `UnsafeKeyError`
        before anything is written. With `skip_unchanged`, local files whose size and sha256
        match are left alone.
        """
        root = Path(local_dir)
        base = _dir_prefix(key_prefix)
        plan = [
            (obj, root.joinpath(*_check_parts(obj.key[len(base) :], allow_empty=False)))
            for obj in self.list(base)
        ]
        result = SyncResult()
        for obj, path in plan:
            size_matches = path.is_file() and path.stat().st_size == obj.size
            if skip_unchanged and size_matches and _same_content(self.stat(obj.key), path):
                result.skip(obj.key)
                continue
            self.download_file(obj.key, path)
            result.add(obj.key, obj.size)
        log.info("download_dir %s -> %s: %s", self.url_for(key_prefix), root, result)
        return result


class LocalStorage(Storage):
    """A folder on the local filesystem, with the same semantics as `S3Storage`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_parts(key, allow_empty=False))

    @contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError as e:
            raise ObjectNotFoundError(
                f"{what} {self.url_for(key)}: not found ({e.strerror})"
            ) from None
        except OSError as e:
            raise StorageError(f"{what} {self.url_for(key)} failed: {e}") from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = _dir_prefix(prefix)
        start = self.root.joinpath(*base.split("/")[:-1]) if base else self.root
        if not start.is_dir():
            return
        for rel, path in local_files(start):
            try:
                st = path.stat()
            except FileNotFoundError:  # a broken symbolic link, listed as the link: its
                st = path.lstat()  # reader says what is wrong
            yield ObjectInfo(
                base + rel, st.st_size, None, None, datetime.fromtimestamp(st.st_mtime, UTC)
            )

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        with self._errors("stat", key):
            st = path.stat()
            return ObjectInfo(
                key, st.st_size, None, file_sha256(path), datetime.fromtimestamp(st.st_mtime, UTC)
            )

    def read_bytes(self, key: str) -> bytes:
        with self._errors("read", key):
            return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors("write", key), atomic_open(path) as f:
            f.write(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._errors("create", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / temp_name(path.name)
            try:
                with open(tmp, "xb") as f:  # a whole file first, then
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)  # its second name: fails when one exists
                except FileExistsError:
                    return False
            finally:
                tmp.unlink(missing_ok=True)
        return True

    def upload_file(
        self, local_path: str | os.PathLike, key: str, *, checksum: str | None = None
    ) -> ObjectInfo:
        path = self._path(key)
        with self._errors("upload to", key):
            h = hashlib.sha256()
            with open(local_path, "rb") as src, atomic_open(path) as f:
                for block in iter(lambda: src.read(MiB), b""):
                    h.update(block)
                    f.write(block)
                if checksum is not None and h.hexdigest() != checksum:
                    raise StorageError(
                        f"upload of {local_path} to {self.url_for(key)}: content sha256 "
                        f"{h.hexdigest()} differs from the given checksum {checksum} "
                        "(file changed while uploading?)"
                    )
            st = path.stat()
        return ObjectInfo(
            key, st.st_size, None, h.hexdigest(), datetime.fromtimestamp(st.st_mtime, UTC)
        )

    def download_file(self, key: str, local_path: str | os.PathLike) -> None:
        src = self._path(key)
        with (
            self._errors("download", key),
            open(src, "rb") as fin,
            atomic_open(local_path) as f,
        ):
            for block in iter(lambda: fin.read(MiB), b""):
                f.write(block)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._path(key).unlink(missing_ok=True)

    def url_for(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)


# --------------------------------------------------------------------------------- S3


class _Redactor(logging.Filter):
    """Replaces known secrets in log records of boto3/botocore/s3transfer/urllib3 loggers."""

    PREFIXES = ("botocore", "boto3", "s3transfer", "urllib3")

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def scrub(self, text: str) -> str:
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            if any(s in msg for s in self.secrets):
                record.msg, record.args = self.scrub(msg), None
                record.exc_info, record.exc_text = None, None
        return True

    def guard(self) -> None:
        """Attach to every library logger created so far (filters are not inherited)."""
        # list(): a snapshot in one C call, so a logger created by another thread meanwhile
        # cannot raise 'dictionary changed size during iteration'
        names = [n for n in list(logging.Logger.manager.loggerDict) if n.startswith(self.PREFIXES)]
        for name in {*names, *self.PREFIXES}:
            lg = logging.getLogger(name)
            if self not in lg.filters:
                lg.addFilter(self)


_REDACTOR = _Redactor()


def _s3_info(key: str, size: int, r: dict, sha256: str | None) -> ObjectInfo:
    return ObjectInfo(key, size, r.get("ETag", "").strip('"') or None, sha256, r["LastModified"])


def _make_client(cfg: StorageConfig) -> Any:
    """An S3 client from the standard credential chain, `cfg`'s endpoint, retries and timeouts."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError
    except ImportError as e:  # pragma: no cover - boto3 is a dependency of the pipeline extra
        raise StorageError("s3:// storage needs boto3: pip install boto3") from e
    config = Config(
        s3={"addressing_style": cfg.addressing_style},
        signature_version="s3v4",
        retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
    )
    try:
        session = boto3.session.Session(region_name=cfg.region)
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            _REDACTOR.secrets.update(
                s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s
            )
        _REDACTOR.guard()
        return session.client("s3", endpoint_url=cfg.endpoint_url or None, config=config)
    except (BotoCoreError, ValueError) as e:
        where = urlsplit(cfg.endpoint_url or "").netloc.rpartition("@")[2] or "the default endpoint"
        msg = f"cannot set up an S3 client for {where}: {type(e).__name__}: {e}"
        raise StorageError(
            _REDACTOR.scrub(msg) + "; check AWS_PROFILE, ~/.aws and storage.endpoint_url"
        ) from None


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix`` on AWS or an S3-compatible server."""

    def __init__(
        self, bucket: str, prefix: str, client: Any, cfg: StorageConfig | None = None
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = "/".join(_check_parts(prefix.strip("/"), allow_empty=True))
        self.client = client
        self.cfg = cfg or StorageConfig()
        part = self.cfg.multipart_threshold_mb * MiB
        self.transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
        self.host = urlsplit(client.meta.endpoint_url).netloc.rpartition("@")[2]

    def _full(self, key: str) -> str:
        return safe_key(self.prefix, key)

    def url_for(self, key: str = "") -> str:
        path = "/".join(p for p in (self.prefix, key) if p)
        return f"s3://{self.bucket}/{path}"

    @contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        """Map botocore/boto3 exceptions to StorageError naming host, key and cause."""
        from boto3.exceptions import Boto3Error
        from botocore import exceptions as bex

        _REDACTOR.guard()
        try:
            yield
        except StorageError:
            raise
        except (bex.BotoCoreError, bex.ClientError, Boto3Error) as exc:
            e = exc.__context__ if isinstance(exc, Boto3Error) and exc.__context__ else exc
            where = f"{what} {self.url_for(key)} via {self.host}"
            hint, cls = "", StorageError
            if isinstance(e, bex.ClientError):
                err = e.response.get("Error", {})
                code = str(err.get("Code", "?"))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                cause = f"{code} (HTTP {status}): {err.get('Message', '')}".rstrip(": ")
                if code in ("404", "NoSuchKey", "NotFound"):
                    cls = ObjectNotFoundError
                elif code == "NoSuchBucket":
                    hint = f"; bucket {self.bucket!r} does not exist on {self.host}"
                elif status == 403 or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    hint = "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            else:
                cause = f"{type(e).__name__}: {e}"
                if isinstance(e, bex.NoCredentialsError):
                    hint = "; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                elif isinstance(e, bex.ReadTimeoutError):
                    hint = (
                        f" (after {self.cfg.max_attempts} attempts); the server accepted the "
                        f"connection but sent no answer within {self.cfg.read_timeout_s} s"
                    )
                elif isinstance(e, (bex.EndpointConnectionError, bex.ConnectTimeoutError)):
                    hint = (
                        f" (after {self.cfg.max_attempts} attempts); is the server running? "
                        "check storage.endpoint_url / AWS_ENDPOINT_URL_S3"
                    )
            raise cls(_REDACTOR.scrub(f"{where} failed: {cause}{hint}")) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.prefix + "/" if self.prefix else ""
        full = base + _dir_prefix(prefix)
        with self._errors("list", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for o in page.get("Contents", []):
                    if not o["Key"].endswith("/"):
                        yield _s3_info(o["Key"][len(base) :], o["Size"], o, None)

    def stat(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            with self._errors("stat", key):
                r = self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFoundError:
            return None
        return _s3_info(key, r["ContentLength"], r, r.get("Metadata", {}).get("sha256"))

    def read_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors("read", key):
            r = self.client.get_object(Bucket=self.bucket, Key=full)
            data = r["Body"].read()
        want = r.get("Metadata", {}).get("sha256")
        if want and hashlib.sha256(data).hexdigest() != want:
            raise StorageError(
                f"read {self.url_for(key)} via {self.host}: content does not match its sha256"
            )
        return data

    def _put(self, key: str, source: bytes | Path, sha: str) -> ObjectInfo:
        """Upload through the transfer manager (multipart above the threshold), then verify;
        the verified object's info."""
        full, extra = self._full(key), {"Metadata": {"sha256": sha}}
        with self._errors("upload", key):
            if isinstance(source, bytes):
                self.client.upload_fileobj(
                    io.BytesIO(source), self.bucket, full, ExtraArgs=extra, Config=self.transfer
                )
            else:
                self.client.upload_file(
                    str(source), self.bucket, full, ExtraArgs=extra, Config=self.transfer
                )
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        info = self.stat(key)
        if info is None or info.size != size or info.sha256 != sha:
            got = "nothing" if info is None else f"size {info.size}, sha256 {info.sha256}"
            raise StorageError(
                f"upload of {self.url_for(key)} via {self.host} not verified: "
                f"expected size {size}, sha256 {sha}; server has {got}"
            )
        log.debug("uploaded %s (%d bytes)", self.url_for(key), size)
        return info

    def write_bytes(self, key: str, data: bytes) -> None:
        self._put(key, bytes(data), hashlib.sha256(data).hexdigest())

    def create_exclusive(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        if self.stat(key) is not None:  # also right on servers that ignore If-None-Match
            return False
        full, sha = self._full(key), hashlib.sha256(data).hexdigest()
        with self._errors("create", key):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=bytes(data), IfNoneMatch="*",
                    Metadata={"sha256": sha},
                )  # fmt: skip
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (409, 412):  # PreconditionFailed, ConditionalRequestConflict
                    return False
                raise
        return True

    def upload_file(
        self, local_path: str | os.PathLike, key: str, *, checksum: str | None = None
    ) -> ObjectInfo:
        path = Path(local_path)
        if not path.is_file():
            raise StorageError(f"upload to {self.url_for(key)}: {path} is not a file")
        return self._put(key, path, checksum or file_sha256(path))

    def download_file(self, key: str, local_path: str | os.PathLike) -> None:
        info = self.stat(key)
        if info is None:
            raise ObjectNotFoundError(f"download {self.url_for(key)} via {self.host}: no such key")
        full = self._full(key)
        with self._errors("download", key), atomic_open(local_path) as f:
            self.client.download_fileobj(self.bucket, full, f, Config=self.transfer)
            f.flush()
            got = file_sha256(f.name)
            if info.sha256 and got != info.sha256:
                raise StorageError(
                    f"download {self.url_for(key)} via {self.host}: content sha256 "
                    f"{got} does not match the stored {info.sha256}"
                )

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=full)


# --------------------------------------------------------------------------------- locations


def is_local(url: str) -> bool:
    """True for a local location: a plain path or a ``file://`` URL."""
    return "://" not in url or url.lower().startswith("file://")


def local_path(url: str) -> Path:
    """The path of a local location (`is_local`): ``file://`` stripped, else `url` as is."""
    return Path(url[7:] if url.lower().startswith("file://") else url)


def split_url(url: str) -> tuple[str, str] | None:
    """'root/name' -> (root, name) for a path or URL with at least one component below its
    root; None for a bucket or folder URL ('s3://bucket', 'dir/')."""
    if is_local(url):
        p = local_path(url)
        return (str(p.parent), p.name) if p.name and not url.endswith("/") else None
    head, sep, name = url.rstrip("/").rpartition("/")
    if not sep or not name or head.endswith(":/") or head.endswith(":"):
        return None
    return head, name


def normalize_url(url: str) -> str:
    """A comparable form of a location: the resolved absolute path of a local one, else the
    URL without a trailing '/'."""
    return str(local_path(url).resolve()) if is_local(url) else url.rstrip("/")


def open_storage(url: str, cfg: StorageConfig | None = None) -> Storage:
    """`LocalStorage` for a path (or file:// URL), `S3Storage` for ``s3://bucket/prefix``.

    S3 credentials come from the standard chain (environment, AWS_PROFILE, ~/.aws); the endpoint
    from `cfg.endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS.
    """
    cfg = cfg or StorageConfig()
    if is_local(url):
        return LocalStorage(local_path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme != "s3":
        raise StorageError(
            f"unsupported storage URL scheme {scheme!r}: use a local path or s3://bucket/prefix"
        )
    if "@" in parts.netloc or ":" in parts.netloc:
        raise StorageError(
            "s3:// URLs must not contain credentials or a port: put credentials in "
            "the environment / AWS_PROFILE and the endpoint in storage.endpoint_url"
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{2,62}", parts.netloc):
        raise StorageError(f"invalid bucket name {parts.netloc!r}: expected s3://bucket/prefix")
    return S3Storage(parts.netloc, parts.path, _make_client(cfg), cfg)


# --------------------------------------------------------------------------------- upload


def upload_path(
    store: Storage, src: str | os.PathLike, *, progress: Callable[[str], None] | None = None
) -> SyncResult:
    """`diffenhance upload`: a file to `<its name>`, or every file under a folder to
    `<relative path>`, in `store`, each through `Storage.sync_file` (verified; unchanged files
    skipped). Every file goes, whatever its extension (enhance picks its images itself), except
    hidden ones below `src`: files and folders named '.*' (.git, .DS_Store, half-written temp
    files), listed in `SyncResult.hidden`. `progress` gets one line per file and hidden path.

    Raises `FileNotFoundError` when `src` is neither a file nor a folder, ValueError when a
    local destination is inside it (each run would copy the last into itself), `OSError`
    naming a file that cannot be read, `StorageError` naming the file whose upload failed (the
    files already sent are skipped by a rerun).
    """
    root, result = Path(src), SyncResult()
    say = progress or (lambda line: None)
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        dest = store.root.resolve() if isinstance(store, LocalStorage) else None
        if dest is not None and (dest == root.resolve() or root.resolve() in dest.parents):
            raise ValueError(
                f"upload: the destination {store.root} is inside the source {src} (or is it): "
                "each upload would copy the last one into itself; choose a folder outside it"
            )
        files = []
        for rel, path in local_files(root, result.hidden):  # listed first: [i/n], no surprises
            if special_file(path):
                say(f"skipped {rel} (not a regular file)")
            else:
                files.append((rel, path))
    else:
        raise FileNotFoundError(f"upload: {src}: no such file or folder")
    for rel in result.hidden:
        say(f"skipped {rel} (hidden)")
    for i, (rel, path) in enumerate(files, 1):
        key = safe_key("", rel)
        try:
            info, sent = store.sync_file(path, key)
        except OSError as e:
            raise type(e)(f"upload: cannot read {path}: {e.strerror or e}") from None
        except StorageError as e:
            raise StorageError(
                f"upload of {path} stopped: {e}; a rerun skips the files already sent"
            ) from None
        if sent:
            result.add(key, info.size)
        else:
            result.skip(key)
        what = f"uploaded, {info.size} bytes" if sent else "unchanged"
        say(f"[{i}/{len(files)}] {rel} -> {store.url_for(key)} ({what})")
    log.info("upload %s -> %s: %s", root, store.url_for(), result)
    return result
