"""The artifact store on a real SeaweedFS server (tests/object_store.py): folders stored with a completeness marker,
a bad store refused at a process's start naming the variable, a store that goes down mid-run failing the run
clearly with its local checkpoint kept (and a resume going on from it), checkpoints and adapters uploaded as a
run writes them, the bounded cache of fetched adapters."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from apps.runs import artifacts, execution, launching
from apps.runs.models import BaseModel, RunStatus
from apps.runs.tasks import train_run
from tests import runs_setup
from tests.runs_setup import small_version
from tests.worker_process import start_worker
from worker.artifacts import (
    ArtifactStoreConfigError,
    ArtifactStoreError,
    LocalCache,
    LocalStore,
    S3Store,
    open_store,
)

tiny_base_model = runs_setup.tiny_base_model


def make_folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(body)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_folder_round_trips_and_only_complete_folders_are_listed(object_store, tmp_path):
    bucket = object_store.create_bucket("roundtrip")
    store = open_store("s3://roundtrip/some/prefix", default_root=tmp_path, env=object_store.env("roundtrip"))
    make_folder(
        tmp_path / "ck", {"adapter_model.safetensors": b"w" * 70_000, "trainer_state.json": b"{}", "sub/rng.pth": b"r"}
    )
    store.put_dir(tmp_path / "ck", "runs/1/checkpoints/checkpoint-2")
    # a folder cut off mid-upload (no marker) is never taken
    object_store.client().put_object(
        Bucket=bucket, Key="some/prefix/runs/1/checkpoints/checkpoint-4/adapter_model.safetensors", Body=b"half"
    )
    assert store.complete_dirs("runs/1/checkpoints") == ["runs/1/checkpoints/checkpoint-2"]
    keys = [o["Key"] for o in object_store.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "some/prefix/runs/1/checkpoints/checkpoint-2/sub/rng.pth" in keys
    got = store.get_dir("runs/1/checkpoints/checkpoint-2", tmp_path / "back")
    assert (got / "adapter_model.safetensors").read_bytes() == b"w" * 70_000 and (
        got / "sub" / "rng.pth"
    ).read_bytes() == b"r"
    assert not (got / ".complete").exists()
    store.delete_prefix("runs/1")
    assert store.complete_dirs("runs/1/checkpoints") == []


def test_wrong_credentials_or_a_missing_bucket_are_refused_naming_the_variable(object_store):
    object_store.create_bucket("present")
    wrong = {**object_store.env("present"), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    with pytest.raises(ArtifactStoreConfigError, match="AWS_SECRET_ACCESS_KEY were refused"):
        open_store(wrong["FTSTUDIO_ARTIFACTS_URL"], default_root="/tmp", env=wrong).check()
    missing = object_store.env("no-such-bucket")
    with pytest.raises(ArtifactStoreConfigError, match="FTSTUDIO_ARTIFACTS_URL names the bucket 'no-such-bucket'"):
        open_store(missing["FTSTUDIO_ARTIFACTS_URL"], default_root="/tmp", env=missing).check()
    down = {**object_store.env("present"), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"}
    with pytest.raises(ArtifactStoreConfigError, match="AWS_ENDPOINT_URL: the artifact store .* cannot be reached"):
        open_store(down["FTSTUDIO_ARTIFACTS_URL"], default_root="/tmp", env=down).check()
    with pytest.raises(ArtifactStoreConfigError, match="names no bucket"):
        open_store("s3://", default_root="/tmp", env={})


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_a_wrong_secret_stops_at_start_naming_the_variable(object_store, tmp_path):
    object_store.create_bucket("worker-start")
    env = {**object_store.env("worker-start"), "AWS_SECRET_ACCESS_KEY": "wrong"}
    worker = start_worker(tmp_path / "worker.log", extra_env=env)
    try:
        worker.process.wait(timeout=120)
    finally:
        worker.kill()
    assert worker.process.returncode == 78
    assert "the artifact store is not usable: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY were refused" in worker.log()


def test_a_store_that_stays_down_fails_after_its_retries_with_what_failed(tmp_path):
    pauses = []
    store = S3Store(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        access_key="a",
        secret_key="b",
        tries=3,
        pause=0.25,
        sleep=pauses.append,
    )
    make_folder(tmp_path / "ck", {"trainer_state.json": b"{}"})
    with pytest.raises(ArtifactStoreError, match=r"did not answer after 3 tries"):
        store.put_dir(tmp_path / "ck", "runs/9/checkpoints/checkpoint-1")
    assert pauses == [0.25, 0.5]


@pytest.mark.django_db
def test_a_run_uploads_its_checkpoints_and_adapter_as_it_writes_them(team, tiny_base_model, s3_artifacts, object_store):
    run = launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
    )
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    store = artifacts.store()
    assert store.complete_dirs(f"runs/{run.pk}/checkpoints") == [
        f"runs/{run.pk}/checkpoints/checkpoint-2",
        f"runs/{run.pk}/checkpoints/checkpoint-4",
    ]
    assert store.complete_dirs(f"runs/{run.pk}") == [f"runs/{run.pk}/adapter"]
    bucket = s3_artifacts["FTSTUDIO_ARTIFACTS_URL"].split("/")[2]
    head = object_store.client().head_object(
        Bucket=bucket, Key=f"studio/runs/{run.pk}/adapter/adapter_model.safetensors"
    )
    run.refresh_from_db()
    assert head["ContentLength"] == Path(run.adapter_path, "adapter_model.safetensors").stat().st_size


@pytest.mark.django_db
def test_a_store_down_mid_run_fails_the_run_clearly_keeping_the_local_checkpoint_and_a_resume_goes_on(
    team, tiny_base_model, s3_artifacts, settings, monkeypatch
):
    run = launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
    )
    fetch = artifacts.fetch_newest_checkpoint

    def fetch_then_go_down(*args, **kwargs):  # the store answers at the start, then goes away mid-run
        found = fetch(*args, **kwargs)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        return found

    monkeypatch.setattr(artifacts, "fetch_newest_checkpoint", fetch_then_go_down)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # its retry pauses
    assert train_run(run.pk) == RunStatus.FAILED
    run.refresh_from_db()
    local = execution.run_dir(run) / "checkpoints" / "checkpoint-2"
    assert (
        "Could not store checkpoint-2 in the artifact store" in run.error
        and "did not answer after 4 tries" in run.error
    )
    assert f"The local checkpoint is kept at {local}" in run.error
    assert (local / "trainer_state.json").is_file() and not run.adapter_path
    monkeypatch.setattr(artifacts, "fetch_newest_checkpoint", fetch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_artifacts["AWS_ENDPOINT_URL"])  # the store is back
    launching.resume_run(run=run)
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    assert run.step == 4 and f"resuming from {local}" in run.log_tail
    assert artifacts.store().complete_dirs(f"runs/{run.pk}")[-1] == f"runs/{run.pk}/adapter"


def test_the_adapter_cache_keeps_the_most_recently_used_within_its_bound(tmp_path):
    store = open_store("", default_root=tmp_path / "store")
    for n in range(3):
        make_folder(tmp_path / "store" / f"runs/{n}/adapter", {"adapter_model.safetensors": bytes(400)})
    cache = LocalCache(tmp_path / "cache", max_bytes=1000)
    first = cache.fetch(store, "runs/0/adapter")
    cache.fetch(store, "runs/1/adapter")
    time.sleep(0.02)
    cache.fetch(store, "runs/0/adapter")  # used again: now the newest
    time.sleep(0.02)
    cache.fetch(store, "runs/2/adapter")  # over 1000 bytes: the least recently used (run 1) goes
    assert sorted(p.parent.name for p in cache.entries()) == ["0", "2"]
    assert (first / "adapter_model.safetensors").stat().st_size == 400


@pytest.mark.django_db
def test_an_upload_imported_in_the_background_waits_in_the_object_store_not_on_the_web_node_s_disk(
    team, settings, eager, s3_artifacts, object_store, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from apps.datasets.models import Example, ImportJob

    bucket, prefix = s3_artifacts["FTSTUDIO_ARTIFACTS_URL"][5:].split("/", 1)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "location": f"{prefix}/media",
                "endpoint_url": object_store.endpoint,
                "access_key": object_store.access_key,
                "secret_key": object_store.secret_key,
                "addressing_style": "path",
            },
        },
    }
    settings.FTSTUDIO_IMPORT_INLINE_BYTES = 100
    data = (Path(__file__).parent / "fixtures" / "imports" / "valid_openai.jsonl").read_bytes()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        team.client("designer").post(
            "/p/support/data/import/", {"file": SimpleUploadedFile("big.jsonl", data), "file_format": "auto"}
        )
    job = ImportJob.objects.get()
    stored = object_store.client().get_object(Bucket=bucket, Key=f"{prefix}/media/{job.upload}")["Body"].read()
    assert stored == data and not (settings.MEDIA_ROOT / job.upload).exists()
    for callback in callbacks:  # the worker, on another node, imports it from the store
        callback()
    job.refresh_from_db()
    assert job.status == "done" and job.imported == 3 and Example.objects.filter(source=job.batch).count() == 3
    listed = object_store.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/media/imports/")
    assert listed.get("KeyCount", 0) == 0  # removed once imported


def test_the_web_process_stops_at_start_on_a_bad_store_and_saves_uploads_in_the_bucket_on_a_good_one(object_store):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    object_store.create_bucket("web-start")
    env = {**os.environ, **object_store.env("web-start", "studio"), "DJANGO_SETTINGS_MODULE": "ftstudio.settings"}
    wrong = subprocess.run(
        [sys.executable, "-c", "import ftstudio.wsgi"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env, "AWS_ACCESS_KEY_ID": "nobody"},
        timeout=120,
    )
    assert wrong.returncode == 78
    assert (
        "ftstudio web: the artifact store is not usable: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY were refused"
        in wrong.stderr
    )
    good = subprocess.run(
        [
            sys.executable,
            "-c",
            "import ftstudio.wsgi; from django.core.files.storage import "
            "default_storage as s; print(s.location, s.bucket_name, type(s._wrapped).__name__)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stdout.split()[-3:] == ["studio/media", "web-start", "S3Storage"]


@pytest.mark.django_db
def test_the_adapter_download_on_a_node_without_the_training_disk_fetches_it_from_the_store(
    team, tiny_base_model, s3_artifacts
):
    import shutil

    run = launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=runs_setup.FAST,
    )
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    shutil.rmtree(run.adapter_path)  # the web node is not the node that trained it
    zipped = team.client("reviewer").get(f"/p/support/runs/{run.pk}/adapter.zip")
    assert zipped.status_code == 200 and zipped["Content-Type"] == "application/zip" and len(zipped.content) > 1000


class CountingStore(LocalStore):
    """A shared store (as far as the Studio can tell) that counts how often it is asked whether a key is complete."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.asked: list[str] = []

    def is_remote(self) -> bool:
        return True

    def has_complete(self, key: str) -> bool:
        self.asked.append(key)
        return super().has_complete(key)


def test_the_store_is_asked_once_about_a_complete_adapter_or_base_model_and_again_while_one_is_missing(
    settings, monkeypatch, tmp_path
):
    settings.FTSTUDIO_ARTIFACTS_URL = f"file://{tmp_path / 'store'}"
    shared = CountingStore(tmp_path / "store")
    monkeypatch.setattr(artifacts, "store", lambda: shared)
    run = SimpleNamespace(pk=987654, adapter_path=str(tmp_path / "trainer" / "adapter"))  # not on this disk
    key = artifacts.adapter_key(run.pk)

    assert not artifacts.adapter_available(run) and not artifacts.adapter_available(run)
    assert shared.asked == [key, key]  # a missing adapter is asked about again: its upload may end any moment
    make_folder(tmp_path / "store" / key, {"adapter_config.json": b"{}"})
    (tmp_path / "store" / key / ".complete").write_text("")
    assert artifacts.adapter_available(run)  # seen at once
    assert artifacts.adapter_available(run) and artifacts.adapter_available(run)
    assert shared.asked == [key, key, key]  # complete: not asked again

    elsewhere = BaseModel(name="far-away", source_kind="local", source=str(tmp_path / "other-node" / "model"))
    base_key = artifacts.base_model_key(elsewhere)
    make_folder(tmp_path / "store" / base_key, {"config.json": b"{}", ".complete": b""})
    first = artifacts.base_model_location(elsewhere)
    assert first == (str(Path(settings.FTSTUDIO_ARTIFACT_CACHE) / base_key), base_key)
    assert artifacts.base_model_location(elsewhere) == first
    assert shared.asked.count(base_key) == 1

    artifacts.delete_run_artifacts(run.pk)  # a deleted run's adapter is not remembered as complete
    assert not artifacts.adapter_available(run) and shared.asked.count(key) == 4


@pytest.mark.slow  # starts a Python process with the inference process's environment
def test_the_inference_process_and_the_web_settings_default_the_artifact_cache_alike(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from worker.serve import Resolver

    env = {"FTSTUDIO_VAR_DIR": str(tmp_path / "var")}
    child = {k: v for k, v in os.environ.items() if not k.startswith("FTSTUDIO_ARTIFACT")} | env
    web = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from django.conf import settings as s; "
            "print(json.dumps([str(s.FTSTUDIO_ARTIFACT_CACHE), s.FTSTUDIO_ARTIFACT_CACHE_BYTES]))",
        ],
        env=child | {"DJANGO_SETTINGS_MODULE": "ftstudio.settings", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    inference = Resolver.from_env(env).cache
    assert json.loads(web.stdout) == [str(tmp_path / "var" / "artifact-cache"), 20 * 2**30]
    assert [str(inference.root), inference.max_bytes] == json.loads(web.stdout)
