"""Shared by the API and playground tests: a real inference process (python -m worker.serve) on a free port,
a key per role, and a run trained for a few steps on the tiny Llama."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return json.loads(response.read())


class InferenceProcess:
    def __init__(self, roots: list[str], log_path: Path, extra: list[str] = (), env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        from django.conf import settings

        env = {
            **os.environ,
            "FTSTUDIO_INFERENCE_ROOTS": ",".join(roots),
            "PYTHONUNBUFFERED": "1",
            "FTSTUDIO_INFERENCE_SECRET": settings.FTSTUDIO_INFERENCE_SECRET,  # the web process's, as in production
            **(env or {}),
        }
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.serve", "--port", str(self.port), *extra],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"inference process exited:\n{self.log()}")
            try:
                health(self.url)
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError(f"inference process did not answer:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


@pytest.fixture(scope="session")
def inference(tiny_model_dir, tmp_path_factory):
    """One inference process for the session; it may read the tiny model and every test's media folder."""
    base = tmp_path_factory.getbasetemp()
    process = InferenceProcess(
        [str(Path(tiny_model_dir).parent), str(base), str(REPO / "var" / "models")], base / "inference.log"
    )
    yield process
    process.stop()


def trained_run(project, base_model, user, name: str = ""):
    """A run trained for a few steps on the tiny Llama, through the same service the worker calls."""
    from apps.runs import execution, launching
    from apps.runs.models import Run
    from tests.runs_setup import FAST, small_version

    run = launching.launch_run(
        project=project,
        dataset_version=small_version(project),
        base_model=base_model,
        overrides=FAST,
        user=user,
        name=name,
    )
    execution.execute_run(run.pk)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded", run.error
    return run
