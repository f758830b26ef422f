"""Exit codes of user errors: one table for `diffenhance <command>` and `python -m flows.<X>`.

2: a bad config, model file, input or dataset (the message names the file and what to fix);
1: storage or a download server that failed (down, refused), or shards of a job that crashed
   as a whole: a rerun later, with nothing changed, can succeed.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

# (module, class, code). Looked up in sys.modules when an exception arrives: a class whose
# module was never imported cannot have been raised, so light entry points (publish) do not
# import torch for this table.
USER_ERRORS: tuple[tuple[str, str, int], ...] = (
    ("diffenhance.config", "ConfigError", 2),
    ("diffenhance.model", "CheckpointError", 2),
    ("diffenhance.enhance", "EnhanceError", 2),
    ("builtins", "FileNotFoundError", 2),
    ("diffenhance.io", "ImageReadError", 2),  # a stage's input image (a job records its own)
    ("diffenhance.data.div2k", "DownloadUnavailable", 1),  # network or server down: retry later
    ("diffenhance.data.errors", "DataError", 2),  # a dataset: folder, download, crops, pairs
    ("diffenhance.storage", "StorageError", 1),
    ("diffenhance.enhance", "ShardsCrashed", 1),
)


def user_error_code(e: BaseException) -> int | None:
    """The exit code of a user error in `USER_ERRORS`, None for anything else (a bug)."""
    for module, name, code in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(e, cls):
            return code
    return None
