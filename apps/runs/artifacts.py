"""Runs' artifacts in the one store (worker/artifacts.py): checkpoints are uploaded as they are written, a run
resumed on another node first downloads its newest complete stored checkpoint, a finished run's adapter is
uploaded, and a node that needs another node's adapter fetches it into its bounded cache.

With FTSTUDIO_ARTIFACTS_URL unset the store is MEDIA_ROOT itself: every call here is a no-op and paths stay what
they were (one machine, `make run`).

Base models: a model registered from a folder (or the GGUF shipped with the package, once converted) is uploaded
as ``base-models/<name>-<digest of its source>/``; a node that has no copy of it fetches it into the same bounded
cache as adapters (`base_model_dir`). Hub ids keep using the Hugging Face cache.

Exports (`apps/runs/exports.py`) are single files under ``runs/<pk>/exports/<export pk>/<name>.zip``.

Keys: ``runs/<pk>/checkpoints/checkpoint-<step>/...``, ``runs/<pk>/adapter/...``, ``runs/<pk>/exports/...`` and
``base-models/...``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from worker.artifacts import (
    ArtifactStoreConfigError,
    ArtifactStoreError,
    LocalCache,
    StoreWaitStopped,
    open_store,
    wait_unless,
)

log = logging.getLogger(__name__)
_stores: dict[tuple, object] = {}
_complete: set[tuple[object, str]] = set()  # (store, key) seen complete by this process: asked once, not per request


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


def _complete_in_store(key: str) -> bool:
    """Does the store hold the key complete (its ``.complete`` marker)? A yes is remembered in this process: a complete
    key never changes (until its run is deleted, `delete_run_artifacts`). A no is asked again next time, so an adapter
    that is being uploaded is seen as soon as it is complete."""
    seen = (store(), key)
    if seen in _complete:
        return True
    if not store().has_complete(key):
        return False
    _complete.add(seen)
    return True


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


def store_checkpoint(run_pk: int, path: str, should_cancel: Callable[[], bool] = lambda: False) -> None:
    """Upload a checkpoint folder just written; on failure (after the store's retries) raise an error that says the
    local checkpoint is kept, so the run fails clearly and a resume on this node goes on from it. A cancel asked
    while the upload waits on the store stops the wait (`worker.train_config.Stopped`)."""
    from worker.train_config import Stopped

    if not remote():
        return
    name = Path(path).name
    try:
        wait_unless(lambda: store().put_dir(path, f"runs/{run_pk}/checkpoints/{name}"), should_cancel)
    except StoreWaitStopped:
        raise Stopped("cancelled") from None
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


def cache() -> LocalCache:
    return LocalCache(settings.FTSTUDIO_ARTIFACT_CACHE, settings.FTSTUDIO_ARTIFACT_CACHE_BYTES)


def adapter_available(run) -> bool:
    """Is the run's adapter on this node's disk, or complete in the shared store (fetched when it is used)?"""
    if Path(run.adapter_path, "adapter_config.json").is_file():
        return True
    try:
        return remote() and _complete_in_store(adapter_key(run.pk))
    except ArtifactStoreError:
        log.warning("The artifact store did not answer about run %s's adapter", run.pk, exc_info=True)
        return False


def local_adapter_dir(run) -> str:
    """A folder on this node holding the run's adapter: where it was written when that is here, else a copy
    fetched from the store into the bounded cache (FTSTUDIO_ARTIFACT_CACHE, FTSTUDIO_ARTIFACT_CACHE_BYTES)."""
    if not run.adapter_path:
        return ""
    if Path(run.adapter_path, "adapter_config.json").is_file() or not remote():
        return run.adapter_path
    return str(cache().fetch(store(), adapter_key(run.pk)))


def delete_run_artifacts(run_pk: int) -> None:
    if remote():
        store().delete_prefix(f"runs/{run_pk}")
        _complete.difference_update({seen for seen in _complete if seen[1].startswith(f"runs/{run_pk}/")})


# --- base models -----------------------------------------------------------------------------------------------
def base_model_key(base_model) -> str:
    """Its source in the key: a name registered again from another folder is another entry, never a stale copy."""
    digest = hashlib.sha1(f"{base_model.source_kind}:{base_model.source}:{base_model.revision}".encode()).hexdigest()[
        :10
    ]
    return f"base-models/{base_model.name}-{digest}"


def _on_this_node(spec) -> bool:
    """Is the folder a worker loads already on this disk (a local folder, or a GGUF file's converted copy)?"""
    from worker.models import gguf_cache_dir

    source = Path(spec.source)
    if spec.source_kind == "local":
        return source.is_dir()
    if spec.source_kind == "gguf" and source.is_file() and spec.cache_dir:
        return (gguf_cache_dir(source, spec.cache_dir) / "config.json").is_file()
    return False


def publish_base_model(base_model, folder: str) -> None:
    """Upload a base model's folder once (when the store has no complete copy), so nodes without it can fetch it.
    A store that fails here is logged, not fatal: this node has its copy, and the next node to load it tries again."""
    if not remote() or not Path(folder).is_dir():
        return
    key = base_model_key(base_model)
    try:
        if not _complete_in_store(key):
            store().put_dir(folder, key)
            log.info("stored base model %s as %s in %s", base_model.name, key, store().describe())
    except ArtifactStoreError:
        log.warning("Could not store base model %s in the artifact store", base_model.name, exc_info=True)


def _placement(base_model):
    """Where a base model is for this node: (its spec, its store key, from_store), the key "" without a shared store or
    for a Hub id (the Hugging Face cache), from_store when this node lacks its folder and the store has it complete."""
    from .base_models import model_spec_for

    spec = model_spec_for(base_model)
    if not remote() or spec.source_kind == "hub":
        return spec, "", False
    key = base_model_key(base_model)
    return spec, key, not _on_this_node(spec) and _complete_in_store(key)


def base_model_dir(base_model) -> str:
    """The folder on this node to load a base model from (a Hub id when it is one): its own folder or converted
    GGUF when this node has it (uploaded to the store if the store lacks it), else a copy fetched from the store
    into the bounded cache. Neither: resolve_model_dir's usual error (ModelSourceError)."""
    from worker.models import _check_safetensors_dir, resolve_model_dir

    spec, key, from_store = _placement(base_model)
    if from_store:
        folder = cache().fetch(store(), key)
        _check_safetensors_dir(folder)
        return str(folder)
    folder = resolve_model_dir(spec)
    if key:
        publish_base_model(base_model, folder)
    return folder


def base_model_location(base_model) -> tuple[str, str]:
    """For a process on another node (the inference process): the folder as this node resolves it, and its store
    key when a shared store is configured (that process fetches it when the folder is not on its disk). Nothing is
    downloaded or uploaded here."""
    from worker.models import resolve_model_dir

    spec, key, from_store = _placement(base_model)
    return (str(cache().root / key) if from_store else resolve_model_dir(spec)), key
