"""Start a real Celery worker subprocess against the test database, for tests of what survives a
killed worker and for the ping round-trip. Use inside `pytest.mark.django_db(transaction=True)` tests,
so what the test writes is committed and the worker sees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from tests.conftest import REPO


def worker_database_url() -> str:
    sd = connection.settings_dict
    if sd["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(sd['NAME']).resolve()}"
    auth = quote(sd["USER"] or "", safe="")
    if sd.get("PASSWORD"):
        auth += ":" + quote(sd["PASSWORD"], safe="")
    return f"postgres://{auth}@{sd['HOST'] or '127.0.0.1'}:{sd['PORT'] or 5432}/{sd['NAME']}"


def purge_queues() -> None:
    """Drop messages left over from earlier tests, so a new worker starts on an empty queue."""
    from ftstudio.celery import app

    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        for folder in {settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]}:
            for f in Path(folder).glob("*"):
                f.unlink(missing_ok=True)
    else:
        with app.connection_for_write() as conn:
            for queue in ("gpu", "default"):
                conn.default_channel.queue_purge(queue)


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and everything it started: what a crashed node looks like."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(log_path: Path, queues: str = "gpu,default", extra_env: dict | None = None) -> WorkerProcess:
    from ftstudio.celery import app

    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "FTSTUDIO_BROKER_DIR": str(settings.BROKER_DIR),
        "FTSTUDIO_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    app.conf.task_always_eager = False
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "ftstudio",
                "worker",
                "-Q",
                queues,
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(process=process, log_path=log_path)


def wait_for_ping(worker: WorkerProcess, timeout: float = 90) -> str:
    """Round-trip a ping task through the broker; raises with the worker's log if none answers."""
    from ftstudio.celery import ping

    deadline = time.monotonic() + timeout
    result = ping.apply_async(queue="default")
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log()[-3000:]}")
        if result.ready():
            return result.get(timeout=1)
        time.sleep(0.25)
    raise AssertionError(f"no answer to ping within {timeout} s:\n{worker.log()[-3000:]}")


def worker_progress(worker: WorkerProcess) -> tuple:
    """What moves while a worker works: its log, and the steps, phases and counts it writes on runs and
    evaluations."""
    from apps.evaluations.models import Evaluation
    from apps.runs.models import Run

    return (
        worker.log_path.stat().st_size if worker.log_path.exists() else 0,
        tuple(Run.objects.order_by("pk").values_list("status", "step", "phase")),
        tuple(Evaluation.objects.order_by("pk").values_list("status", "done")),
    )


def wait_for(predicate, patience: float, worker: WorkerProcess, what: str):
    """Poll ``predicate`` until it is truthy. Fails when nothing has moved for ``patience`` seconds (see
    `worker_progress`) or the worker exits, not after a fixed time: on a loaded machine the work is slower,
    and a test should wait for it as long as it goes on (the per-test timeout still bounds the whole test)."""
    seen, last_move = worker_progress(worker), time.monotonic()
    while time.monotonic() - last_move < patience:
        value = predicate()
        if value:
            return value
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited while waiting for {what}:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
        now = worker_progress(worker)
        if now != seen:
            seen, last_move = now, time.monotonic()
    raise AssertionError(f"nothing moved for {patience} s while waiting for {what}:\n{worker.log()[-3000:]}")


@contextmanager
def running_worker(tmp_path: Path, queues: str = "gpu,default", extra_env: dict | None = None):
    purge_queues()
    worker = start_worker(tmp_path / "worker.log", queues=queues, extra_env=extra_env)
    try:
        wait_for_ping(worker)
        yield worker
    finally:
        worker.stop()
