"""Datasets of the `prepare` stage: bundled samples, a user folder or DIV2K, cut into crops.

Submodules: `errors` (`DataError`, the base of every dataset error a user fixes: exit 2),
`samples` (the offline default and its fixed split), `folder` (scan, validate,
de-duplicate a directory of images), `div2k` (resumable verified download, safe extraction),
`prepare` (sources -> crops + manifest.csv). `pairs` (validation LQ/HQ pairs) is not imported
here, so `import diffenhance.data` stays light.
"""

from diffenhance.data.div2k import (
    DIV2K_SHA256,
    ArchiveError,
    DownloadError,
    DownloadUnavailable,
    check_zip,
    download,
    extract,
    fetch_div2k,
)
from diffenhance.data.errors import DataError
from diffenhance.data.folder import (
    NotAFolderError,
    ScannedImage,
    ScanResult,
    SkippedFile,
    file_sha256,
    scan_folder,
    split_for_hash,
    write_skip_report,
)
from diffenhance.data.prepare import (
    MANIFEST_COLUMNS,
    NoImagesError,
    NoManifestError,
    SourceImage,
    crop_boxes,
    list_sources,
    load_manifest,
    prepare_dataset,
    prepare_one,
    write_manifest,
)
from diffenhance.data.samples import SAMPLE_SPLIT, TRAIN, VALIDATION, materialize_samples

__all__ = [
    "DIV2K_SHA256",
    "MANIFEST_COLUMNS",
    "SAMPLE_SPLIT",
    "TRAIN",
    "VALIDATION",
    "ArchiveError",
    "DataError",
    "DownloadError",
    "DownloadUnavailable",
    "NoImagesError",
    "NoManifestError",
    "NotAFolderError",
    "ScanResult",
    "ScannedImage",
    "SkippedFile",
    "SourceImage",
    "check_zip",
    "crop_boxes",
    "download",
    "extract",
    "fetch_div2k",
    "file_sha256",
    "list_sources",
    "load_manifest",
    "materialize_samples",
    "prepare_dataset",
    "prepare_one",
    "scan_folder",
    "split_for_hash",
    "write_manifest",
    "write_skip_report",
]
