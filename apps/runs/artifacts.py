"""Runs' artifacts in the one store (worker/artifacts.py): checkpoints are uploaded as they are written, a run
resumed on another node first downloads its newest complete stored checkpoint, a finished run's adapter is
uploaded, and a node that needs another node's adapter fetches it into its bounded cache.

With FTSTUDIO_ARTIFACTS_URL unset the store is MEDIA_ROOT itself: every call here is a no-op and paths stay what
they were (one machine, `make run`).

Keys: ``runs/<pk>/checkpoints/checkpoint-<step>/...`` and ``runs/<pk>/adapter/...``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from worker.artifacts import ArtifactStoreConfigError, ArtifactStoreError, LocalCache, open_store

log = logging.getLogger(__name__)
_stores: dict[tuple, object] = {}


def store():
    """The configured store (built once per configuration; the environment supplies the S3 credentials)."""
    config = (
        settings.FTSTUDIO_ARTIFACTS_URL,
        str(settings.MEDIA_ROOT),
        os.environ.get("AWS_ENDPOINT_URL", ""),
        os.environ.get("AWS_ACCESS_KEY_ID", ""),
        os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    )
    if config not in _stores:
        _stores[config] = open_store(settings.FTSTUDIO_ARTIFACTS_URL, default_root=settings.MEDIA_ROOT)
    return _stores[config]


def remote() -> bool:
    return bool(settings.FTSTUDIO_ARTIFACTS_URL) and store().is_remote()


def check_or_exit(process: str) -> None:
    """At a process's start: a store with wrong credentials or no bucket stops it with a message naming the
    variable to fix (not a traceback at the first checkpoint, hours later)."""
    if not settings.FTSTUDIO_ARTIFACTS_URL:
        return
    try:
        store().check()
    except ArtifactStoreConfigError as exc:
        sys.stderr.write(f"ftstudio {process}: the artifact store is not usable: {exc}\n")
        sys.stderr.flush()
        os._exit(78)  # EX_CONFIG; os._exit: Celery's and gunicorn's start-up would catch SystemExit and go on


def checkpoint_key(run_pk: int, step: int) -> str:
    return f"runs/{run_pk}/checkpoints/checkpoint-{step}"


def adapter_key(run_pk: int) -> str:
    return f"runs/{run_pk}/adapter"


def store_checkpoint(run_pk: int, path: str) -> None:
    """Upload a checkpoint folder just written; on failure (after the store's retries) raise an error that says the
    local checkpoint is kept, so the run fails clearly and a resume on this node goes on from it."""
    if not remote():
        return
    name = Path(path).name
    try:
        store().put_dir(path, f"runs/{run_pk}/checkpoints/{name}")
    except ArtifactStoreError as exc:
        raise ArtifactStoreError(
            f"Could not store {name} in the artifact store ({exc}). The local checkpoint is kept "
            f"at {path}: resume the run once the store answers."
        ) from exc


def fetch_newest_checkpoint(run_pk: int, output_dir: str | Path, on_log: Callable[[str], None] = log.info) -> str:
    """Before a (re)start: when the store holds a newer complete checkpoint than this node's disk, download it into
    ``output_dir/checkpoints`` (where `worker.train.train` resumes from). Returns the folder, or ""."""
    from worker.train import checkpoint_step, last_checkpoint

    if not remote():
        return ""
    stored = store().complete_dirs(f"runs/{run_pk}/checkpoints")
    stored = [key for key in stored if key.rsplit("-", 1)[-1].isdigit()]
    if not stored:
        return ""
    newest = max(stored, key=lambda key: int(key.rsplit("-", 1)[-1]))
    local = last_checkpoint(str(output_dir))
    if local and checkpoint_step(local) >= int(newest.rsplit("-", 1)[-1]):
        return ""
    target = Path(output_dir) / "checkpoints" / newest.rsplit("/", 1)[-1]
    store().get_dir(newest, target)
    on_log(f"fetched {target.name} from the artifact store ({store().describe()})")
    return str(target)


def store_adapter(run_pk: int, adapter_dir: str) -> None:
    if remote() and adapter_dir:
        store().put_dir(adapter_dir, adapter_key(run_pk))


def local_adapter_dir(run) -> str:
    """A folder on this node holding the run's adapter: where it was written when that is here, else a copy
    fetched from the store into the bounded cache (FTSTUDIO_ARTIFACT_CACHE, FTSTUDIO_ARTIFACT_CACHE_BYTES)."""
    if not run.adapter_path:
        return ""
    if Path(run.adapter_path, "adapter_config.json").is_file() or not remote():
        return run.adapter_path
    cache = LocalCache(settings.FTSTUDIO_ARTIFACT_CACHE, settings.FTSTUDIO_ARTIFACT_CACHE_BYTES)
    return str(cache.fetch(store(), adapter_key(run.pk)))


def delete_run_artifacts(run_pk: int) -> None:
    if remote():
        store().delete_prefix(f"runs/{run_pk}")
