"""`DataError`: the one base of the dataset errors a user fixes (exit code 2, one `error:` line).

A missing image folder, a folder without a usable image, a failed or corrupt DIV2K download, no
prepared dataset or one without validation crops, pairs that no longer match their pairs.csv. Each
message names the file or param and what to do. Its own module so that every `data` submodule
(div2k included) can import it without importing the others.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(Exception):
    """A dataset (source folder, download, prepared crops, pairs) a user has to fix."""
