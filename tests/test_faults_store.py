"""A store that accepts connections and never answers (a local TCP server that reads nothing and says nothing):
every store call fails in bounded time (connect/read timeouts and tries from the environment), and a cancel is
seen while a checkpoint upload waits on it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from apps.runs import artifacts, leases
from apps.runs.execution import RunReporter
from apps.runs.models import BaseModel, Run, RunStatus
from tests.runs_setup import small_version
from worker.artifacts import ArtifactStoreError, open_store
from worker.train_config import Stopped


@pytest.fixture
def silent_store():
    """An endpoint that accepts every connection and never answers; closed (with its connections) at the end."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def store_env(endpoint: str, **timeouts) -> dict:
    return {
        "FTSTUDIO_ARTIFACTS_URL": "s3://hangs/studio",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        **{f"FTSTUDIO_ARTIFACTS_{name.upper()}": str(value) for name, value in timeouts.items()},
    }


def finishes_within(seconds: float, call) -> BaseException | None:
    """Run ``call`` on a thread; fail the test if it has not ended within ``seconds``; return what it raised."""
    outcome: dict = {}

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the store call was still waiting after {seconds} s"
    return outcome.get("error")


def test_every_store_call_against_a_store_that_never_answers_fails_in_bounded_time(silent_store, tmp_path):
    env = store_env(silent_store, connect_timeout=1, read_timeout=1, tries=2)
    store = open_store(env["FTSTUDIO_ARTIFACTS_URL"], default_root=tmp_path, env=env, pause=0.1)
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    started = time.monotonic()
    for call in (
        lambda: store.put_dir(tmp_path / "checkpoint-4", "runs/1/checkpoints/checkpoint-4"),
        lambda: store.complete_dirs("runs/1/checkpoints"),
    ):
        error = finishes_within(15, call)
        assert isinstance(error, ArtifactStoreError) and "did not answer after 2 tries" in str(error), error
    assert time.monotonic() - started < 25


@pytest.mark.django_db
def test_a_cancel_is_seen_while_a_checkpoint_upload_waits_on_the_store(silent_store, team, settings, monkeypatch):
    env = store_env(silent_store, read_timeout=60)  # only the cancel can end this wait early
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.FTSTUDIO_ARTIFACTS_URL = env["FTSTUDIO_ARTIFACTS_URL"]
    base = BaseModel.objects.create(name="b", source_kind="local", source="/nowhere")
    owner = leases.new_owner_id()
    run = Run.objects.create(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=base,
        status=RunStatus.RUNNING,
        worker_id=owner,
        cancel_requested=True,  # a PM pressed Cancel while the checkpoint was being stored
    )
    folder = settings.MEDIA_ROOT / "runs" / str(run.pk) / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    reporter = RunReporter(run, leases.Lease(Run, run.pk, owner))
    started = time.monotonic()
    with pytest.raises(Stopped, match="cancelled"):
        reporter.on_checkpoint(str(folder))
    assert time.monotonic() - started < 5
    assert artifacts.remote()
