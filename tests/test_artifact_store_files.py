"""Everything a node writes for another node goes through the one store (a real SeaweedFS, tests/object_store.py):
an export made on one node downloads on another; the inference process answers with an adapter that only the
store holds; /v1/files round-trips through the bucket; a base model registered on one node is fetched into another
node's bounded cache and evicted from it. A store down during an export fails it clearly, recording no file."""

from __future__ import annotations

import io
import json
import shutil
import socket
import urllib.request
import zipfile
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.api import selectors as api_selectors
from apps.api import services as api_services
from apps.runs import artifacts, base_models, launching
from apps.runs.exports import execute_export, request_export
from apps.runs.models import ExportStatus, Run, RunStatus
from tests import runs_setup
from tests.export_setup import make_adapter
from tests.runs_setup import small_version
from worker.artifacts import ArtifactStoreError, LocalCache, open_store
from worker.protocol import EngineError
from worker.serve import Resolver

tiny_base_model = runs_setup.tiny_base_model
HELLO = [{"role": "user", "content": "Hello, I'm Ann. Where is order #104?"}]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_node(settings, node: Path) -> Path:
    """From now on this test process is that node: its own media root and artifact cache."""
    settings.MEDIA_ROOT = node / "media"
    settings.FTSTUDIO_ARTIFACT_CACHE = node / "artifact-cache"
    settings.MEDIA_ROOT.mkdir(parents=True, exist_ok=True)
    return node


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter")


def stored_run(team, base_model, adapter: Path, trained_on: Path) -> Run:
    """A succeeded run whose adapter its training node wrote, stored, and then lost with that node's disk."""
    run = launching.launch_run(
        project=team.project, dataset_version=small_version(team.project), base_model=base_model, overrides={}
    )
    written = trained_on / "media" / "runs" / str(run.pk) / "adapter"
    shutil.copytree(adapter, written)
    artifacts.store_adapter(run.pk, str(written))
    shutil.rmtree(trained_on)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED, adapter_path=str(written))
    return Run.objects.get(pk=run.pk)


@pytest.mark.django_db
def test_an_export_made_on_one_node_downloads_on_another_and_a_store_down_fails_one_recording_no_file(
    team, tiny_base_model, tiny_adapter, s3_artifacts, object_store, settings, monkeypatch, tmp_path
):
    run = stored_run(team, tiny_base_model, tiny_adapter, tmp_path / "trainer")
    bucket, prefix = s3_artifacts["FTSTUDIO_ARTIFACTS_URL"][5:].split("/", 1)

    exporter = on_node(settings, tmp_path / "exporter")
    job = request_export(run=run, fmt="adapter", user=team.pm)
    assert execute_export(job.pk) == ExportStatus.SUCCEEDED
    job.refresh_from_db()
    key = f"runs/{run.pk}/exports/{job.pk}/support-run-{run.pk}-adapter.zip"
    assert job.file_path == key
    stored = object_store.client().get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
    assert len(stored) == job.size_bytes > 1000
    # the adapter trained elsewhere came from the store into the exporter's cache; the zip did not stay on its disk
    assert (exporter / "artifact-cache" / "runs" / str(run.pk) / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((exporter / "media").rglob("*.zip"))

    on_node(settings, tmp_path / "web")  # the node serving the page has neither the adapter nor the zip
    download = f"/p/support/runs/{run.pk}/exports/{job.pk}/download"
    response = team.client("pm").get(download)
    assert response.status_code == 200 and "attachment" in response["Content-Disposition"]
    body = b"".join(response.streaming_content)
    assert body == stored and int(response["Content-Length"]) == len(body)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = sorted(archive.namelist())
        config = json.loads(archive.read(f"support-run-{run.pk}-adapter/adapter_config.json"))
    assert f"support-run-{run.pk}-adapter/adapter_model.safetensors" in names
    assert config["base_model_name_or_path"] == tiny_base_model.portable_id
    assert team.client("designer").get(download).status_code == 403  # the same role check as before

    # The store goes down while the exporter writes the next export: it fails after the retries, naming what failed.
    on_node(settings, exporter)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    failing = request_export(run=run, fmt="merged", user=team.pm)
    assert execute_export(failing.pk) == ExportStatus.FAILED
    failing.refresh_from_db()
    assert failing.error.startswith("The export was made but could not be stored")
    assert "did not answer after 4 tries" in failing.error
    assert failing.file_path == "" and failing.size_bytes == 0
    assert not list((exporter / "media").rglob("*.zip"))  # nothing half-written left on the node
    listed = object_store.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/runs/{run.pk}/exports/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [f"{prefix}/{key}"]  # only the good one


@pytest.mark.django_db
def test_an_adapter_only_in_the_store_is_servable_and_the_inference_process_fetches_it_into_its_cache(
    team, tiny_base_model, tiny_adapter, s3_artifacts, settings, tmp_path
):
    run = stored_run(team, tiny_base_model, tiny_adapter, tmp_path / "trainer")
    model_id = api_selectors.run_model_id(run)
    target = api_selectors.resolve_model(team.project, model_id, servable=True)  # not "missing": it is in the store
    sent = api_selectors.inference_target(target)
    assert sent["adapter"] == run.adapter_path and sent["adapter_key"] == f"runs/{run.pk}/adapter"
    assert sent["base_key"] == artifacts.base_model_key(tiny_base_model)

    resolve = Resolver.from_env(
        {**s3_artifacts, "FTSTUDIO_ARTIFACT_CACHE": str(tmp_path / "inference-cache"), "FTSTUDIO_VAR_DIR": "/x"}
    )
    fetched = resolve(sent["adapter"], sent["adapter_key"], "adapter")
    assert Path(fetched) == tmp_path / "inference-cache" / "runs" / str(run.pk) / "adapter"
    assert (Path(fetched) / "adapter_model.safetensors").read_bytes() == (
        tiny_adapter / "adapter_model.safetensors"
    ).read_bytes()
    assert resolve(sent["base"], sent["base_key"], "base model") == sent["base"]  # on this disk: used in place
    with pytest.raises(EngineError, match="artifact key '../up' is outside the cache"):
        resolve("/gone", "../up", "adapter")

    down = Resolver(
        open_store(
            s3_artifacts["FTSTUDIO_ARTIFACTS_URL"],
            default_root=tmp_path,
            env={**s3_artifacts, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"},
            tries=2,
            pause=0,
        ),
        LocalCache(tmp_path / "other-cache", 10**9),
    )
    with pytest.raises(EngineError) as refused:
        down("/gone", sent["adapter_key"], "adapter")
    assert refused.value.status == 503 and "The adapter is not on this node and could not be fetched" in str(
        refused.value
    )
    Run.objects.filter(pk=run.pk).update(adapter_path=str(tmp_path / "never-stored"))
    artifacts.delete_run_artifacts(run.pk)
    with pytest.raises(
        api_selectors.UnknownModel, match="cannot be served: the adapter folder never-stored is missing"
    ):
        api_selectors.resolve_model(team.project, model_id, servable=True)


def test_the_inference_process_answers_with_an_adapter_only_the_store_holds(
    object_store, tiny_model_dir, tiny_adapter, tmp_path, monkeypatch
):
    from tests.api_setup import InferenceProcess
    from worker.generate import GenerationConfig, generate
    from worker.models import load_generator

    bucket = object_store.create_bucket("inference-node")
    env = object_store.env(bucket, "studio")
    open_store(env["FTSTUDIO_ARTIFACTS_URL"], default_root=tmp_path, env=env).put_dir(tiny_adapter, "runs/7/adapter")
    for name, value in {**env, "FTSTUDIO_ARTIFACT_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    process = InferenceProcess([str(Path(tiny_model_dir).parent)], tmp_path / "inference.log")  # no media root
    try:
        body = {
            "model": "ft:tiny",
            "messages": HELLO,
            "max_tokens": 12,
            "temperature": 0,
            "ftstudio": {
                "base": str(tiny_model_dir),
                "adapter": str(tmp_path / "trainer" / "runs" / "7" / "adapter"),  # the training node's path
                "adapter_key": "runs/7/adapter",
            },
        }
        request = urllib.request.Request(
            f"{process.url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {django_settings.FTSTUDIO_INFERENCE_SECRET}",  # as the web process sends it
            },
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
    finally:
        process.stop()
    model, tokenizer = load_generator(str(tiny_model_dir), adapter_path=str(tiny_adapter))
    expected = generate(model, tokenizer, [HELLO], GenerationConfig(max_new_tokens=12))[0].text
    assert reply["choices"][0]["message"]["content"].strip() == expected.strip()
    assert (tmp_path / "cache" / "runs" / "7" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.django_db
def test_v1_files_are_kept_in_the_bucket_and_read_back_from_it(
    team, tiny_base_model, s3_artifacts, object_store, settings
):
    from apps.datasets.models import Example

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
    key = api_services.create_api_key(project=team.project, user=team.pm, name="pm")[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    data = b"".join(json.dumps({"messages": c}).encode() + b"\n" for c in runs_setup.support_conversations(12))
    made = team.client("pm").post(
        "/v1/files", {"file": SimpleUploadedFile("train.jsonl", data), "purpose": "fine-tune"}, **auth
    )
    assert made.status_code == 200, made.content
    file_id = made.json()["id"]
    objects = object_store.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/media/api-files/")["Contents"]
    assert [o["Size"] for o in objects] == [len(data)]
    assert not (settings.MEDIA_ROOT / "api-files").exists()  # not on the web node's disk
    content = team.client("pm").get(f"/v1/files/{file_id}/content", **auth)
    assert content.status_code == 200 and b"".join(content.streaming_content) == data  # streamed from the bucket

    job = team.client("pm").post(
        "/v1/fine_tuning/jobs",
        json.dumps({"model": "tiny-llama", "training_file": file_id}),
        content_type="application/json",
        **auth,
    )
    assert job.status_code == 200, job.content
    assert Example.objects.filter(project=team.project).count() == 12  # imported from the bucket

    assert team.client("pm").delete(f"/v1/files/{file_id}", **auth).json()["deleted"] is True
    listed = object_store.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/media/api-files/")
    assert listed.get("KeyCount", 0) == 0


@pytest.mark.django_db
def test_a_base_model_registered_on_one_node_is_fetched_into_another_node_s_bounded_cache_and_evicted(
    settings, tiny_model_dir, s3_artifacts, object_store, tmp_path
):
    from worker.models import load_model

    settings.FTSTUDIO_MODEL_ROOTS = [tmp_path / "web" / "models"]
    copies = {}
    for name in ("tiny-a", "tiny-b"):  # two base models, each a folder on the web node only
        copies[name] = shutil.copytree(tiny_model_dir, tmp_path / "web" / "models" / name)
    bases = {
        name: base_models.register_base_model(name=name, source_kind="local", source=str(folder))
        for name, folder in copies.items()
    }
    store = artifacts.store()
    assert all(store.has_complete(artifacts.base_model_key(b)) for b in bases.values())  # uploaded at registration
    shutil.rmtree(tmp_path / "web")  # a worker on another node: no copy of either

    size = sum(p.stat().st_size for p in Path(tiny_model_dir).rglob("*") if p.is_file())
    on_node(settings, tmp_path / "worker")
    settings.FTSTUDIO_ARTIFACT_CACHE_BYTES = int(size * 1.5)  # room for one of the two
    first = Path(artifacts.base_model_dir(bases["tiny-a"]))
    assert first.is_relative_to(tmp_path / "worker" / "artifact-cache" / "base-models")
    assert (
        load_model(str(first), device="cpu").config.hidden_size
        == json.loads((Path(tiny_model_dir) / "config.json").read_text())["hidden_size"]
    )
    assert Path(artifacts.base_model_dir(bases["tiny-a"])) == first  # cached: not fetched again
    second = Path(artifacts.base_model_dir(bases["tiny-b"]))
    cache = LocalCache(settings.FTSTUDIO_ARTIFACT_CACHE, settings.FTSTUDIO_ARTIFACT_CACHE_BYTES)
    assert cache.entries() == [second] and not first.exists()  # the least recently used went: the bound holds

    # re-registered from another folder: another key, never the stale copy
    moved = shutil.copytree(tiny_model_dir, tmp_path / "worker-models" / "tiny-a")
    settings.FTSTUDIO_MODEL_ROOTS = [tmp_path / "worker-models"]
    again = base_models.register_base_model(name="tiny-a", source_kind="local", source=str(moved))
    assert artifacts.base_model_key(again) != artifacts.base_model_key(bases["tiny-a"])
    assert artifacts.base_model_dir(again) == str(moved)  # on this disk: used in place (and stored for others)
    assert store.has_complete(artifacts.base_model_key(again))


def test_the_inference_process_stops_at_start_on_a_wrong_secret_naming_the_variable(object_store):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    object_store.create_bucket("inference-start")
    env = {**os.environ, **object_store.env("inference-start", "studio"), "AWS_SECRET_ACCESS_KEY": "wrong"}
    started = subprocess.run(
        [sys.executable, "-m", "worker.serve", "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert started.returncode == 78
    assert (
        "ftstudio inference: the artifact store is not usable: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY were refused"
        in started.stderr
    )


def test_a_fetch_cut_off_midway_leaves_nothing_in_the_cache_and_a_later_fetch_completes(object_store, tmp_path):
    from botocore.exceptions import EndpointConnectionError

    bucket = object_store.create_bucket("cut-off")
    env = object_store.env(bucket, "studio")
    store = open_store(env["FTSTUDIO_ARTIFACTS_URL"], default_root=tmp_path, env=env, tries=2, sleep=lambda s: None)
    (tmp_path / "model").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "model" / name).write_bytes(name.encode() * 1000)
    store.put_dir(tmp_path / "model", "base-models/m-1")
    download, calls = store.client.download_file, []

    def second_file_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise EndpointConnectionError(endpoint_url=store.endpoint_url)
        return download(*args, **kwargs)

    store.client.download_file = second_file_fails
    cache = LocalCache(tmp_path / "cache", 10**9)
    with pytest.raises(ArtifactStoreError, match="Downloading base-models/m-1/model.safetensors.*after 2 tries"):
        cache.fetch(store, "base-models/m-1")
    assert not (tmp_path / "cache" / "base-models").exists() or not any((tmp_path / "cache" / "base-models").iterdir())
    store.client.download_file = download
    fetched = cache.fetch(store, "base-models/m-1")
    assert (fetched / "model.safetensors").read_bytes() == b"model.safetensors" * 1000
    assert cache.entries() == [fetched]
