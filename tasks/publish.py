"""Task of the `publish` flow: one folder to the store."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from diffenhance import publish as pub
from diffenhance.config import StorageConfig


# No task retries: each request already retries `storage.max_attempts` times, which bounds how
# long a dead endpoint takes. NO_CACHE: an upload is a side effect, never a cached value.
@task(name="publish-folder", cache_policy=NO_CACHE)
def publish_folder(cfg: StorageConfig, name: str, local_dir: Path, root: Path) -> pub.SourceResult:
    store = pub.open_destination(cfg, root)
    skip = pub.never_published(cfg, store, root)
    return pub.publish_source(
        store, name, local_dir, exclude=cfg.publish_exclude, skip=skip, root=root
    )
