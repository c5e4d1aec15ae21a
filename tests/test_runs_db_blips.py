"""A database that goes away for a moment costs a long task nothing: a heartbeat that fails is tried again before
the next beat, progress and final writes reconnect and retry once, a run whose writes stay down resumes from its
last checkpoint (not from step 0), and the reaper never takes over a run whose owner process is alive here."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from apps.runs import execution, launching, leases, recovery
from apps.runs.models import Run, RunMetric, RunStatus
from apps.runs.tasks import train_run
from tests import runs_setup
from tests.eval_setup import make_run, make_version, register_tiny_model
from tests.runs_setup import FAST, small_version

tiny_base_model = runs_setup.tiny_base_model


def held_run(team, settings, tmp_path, owner: str, heartbeat_age_s: float = 0) -> Run:
    """A running run held by ``owner`` (no model needed: nothing trains)."""
    base = register_tiny_model(settings, tmp_path / "no-weights-needed")
    run = make_run(team.project, make_version(team.project), base, tmp_path / "adapter")
    beat = timezone.now() - timedelta(seconds=heartbeat_age_s)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, worker_id=owner, heartbeat_at=beat, attempts=1)
    return Run.objects.get(pk=run.pk)


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_that_fails_is_tried_again_at_once_and_the_lease_is_kept(team, settings, tmp_path, monkeypatch):
    owner = leases.new_owner_id()
    run = held_run(team, settings, tmp_path, owner, heartbeat_age_s=100)
    failures = {"left": 2}
    renew = leases.Lease.renew

    def renew_after_two_failures(self):
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError("database is locked")
        return renew(self)

    monkeypatch.setattr(leases.Lease, "renew", renew_after_two_failures)
    lease = leases.Lease(Run, run.pk, owner, interval=30)  # the next regular beat is 30 s away
    started = time.monotonic()
    assert lease.renew_retrying() is True  # the first beat: fails twice, succeeds on the third try
    assert time.monotonic() - started < 5 and failures["left"] == 0 and not lease.lost.is_set()
    run.refresh_from_db()
    assert timezone.now() - run.heartbeat_at < timedelta(seconds=5)


@pytest.mark.django_db(transaction=True)
def test_on_sqlite_a_beat_waits_for_another_writer_instead_of_failing(team, settings, tmp_path):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock and busy timeout (PostgreSQL locks the row: lock_timeout)")
    owner = leases.new_owner_id()
    run = held_run(team, settings, tmp_path, owner, heartbeat_age_s=100)
    with connection.cursor() as cursor:
        assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the web server or the reaper writing: it holds the write lock for 1.5 s
    threading.Timer(1.5, other.commit).start()
    started = time.monotonic()
    assert leases.Lease(Run, run.pk, owner).renew()
    assert time.monotonic() - started >= 1.0  # it waited for the lock, then wrote
    other.close()
    run.refresh_from_db()
    assert timezone.now() - run.heartbeat_at < timedelta(seconds=5)


@pytest.mark.django_db
def test_the_reaper_never_takes_over_a_run_whose_owner_process_is_alive_on_this_host(team, settings, tmp_path):
    parent = os.getppid()  # alive, on this host: a worker whose heartbeats were starved
    alive = f"{leases._HOST}:{parent}:{leases._process_start(parent)}:cafe"
    stale = settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 60
    run = held_run(team, settings, tmp_path, alive, heartbeat_age_s=stale)
    assert recovery.reap_stale_runs() == []
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.worker_id == alive and run.attempts == 1

    Run.objects.filter(pk=run.pk).update(worker_id=f"{leases._HOST}:999999999:1:dead")  # its process is gone
    assert recovery.reap_stale_runs() == [run.pk]


class FlakyDatabase:
    """Fails the run's row writes (UPDATE of runs_run) as a database restart would: ``blips`` single failures from
    the ``after``-th progress write on, or every write while ``down`` is set."""

    def __init__(self, after: int, blips: int = 0) -> None:
        self.after, self.blips, self.down, self.progress_writes, self.failed = after, blips, False, 0, 0

    def __call__(self, execute, sql, params, many, context):
        if sql.startswith('UPDATE "runs_run"'):
            if '"total_steps"' in sql:
                self.progress_writes += 1
            if self.down or (self.progress_writes >= self.after and self.blips and '"total_steps"' in sql):
                self.blips = max(0, self.blips - 1)
                self.failed += 1
                raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)


def launch(team, tiny_base_model):
    return launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=FAST,
        user=team.pm,
    )


@pytest.mark.django_db(transaction=True)  # autocommit, as in a worker: a failed write breaks no test transaction
def test_a_one_second_database_blip_during_training_costs_no_attempt(team, tiny_base_model, settings):
    settings.FTSTUDIO_DB_RETRY_SECONDS = 0.1
    run = launch(team, tiny_base_model)
    flaky = FlakyDatabase(after=3, blips=1)
    with connection.execute_wrapper(flaky):
        assert train_run(run.pk) == RunStatus.SUCCEEDED
    assert flaky.failed == 1
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.attempts == 1 and run.step == 4 and run.error == ""


@pytest.mark.django_db(transaction=True)
def test_a_longer_outage_after_a_checkpoint_resumes_from_that_checkpoint_not_from_step_0(
    team, tiny_base_model, settings, monkeypatch
):
    """The database stays down past the retry after checkpoint-2: the task stops without writing anything (it cannot);
    once the database is back, the reaper re-sends the run and it goes on from checkpoint-2."""
    settings.FTSTUDIO_DB_RETRY_SECONDS = 0.1
    run = launch(team, tiny_base_model)
    flaky = FlakyDatabase(after=0)
    checkpoint = execution.RunReporter.on_checkpoint

    def down_after_checkpoint_2(self, path):
        checkpoint(self, path)
        if path.endswith("checkpoint-2"):
            flaky.down = True

    monkeypatch.setattr(execution.RunReporter, "on_checkpoint", down_after_checkpoint_2)
    with connection.execute_wrapper(flaky), pytest.raises(OperationalError):
        train_run(run.pk)
    assert flaky.failed >= 4  # a progress write and its retry, the failure and its retry
    monkeypatch.setattr(execution.RunReporter, "on_checkpoint", checkpoint)

    run.refresh_from_db()  # the database is back: the row still says running, with the last beat it got
    assert run.status == RunStatus.RUNNING and run.checkpoint_path.endswith("checkpoint-2") and run.attempts == 1
    stale = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 1)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=stale)
    assert recovery.reap_stale_runs() == [run.pk]
    assert train_run(run.pk) == RunStatus.SUCCEEDED  # the re-sent message
    run.refresh_from_db()
    assert run.attempts == 2 and run.step == 4 and "resuming from" in run.log_tail and "checkpoint-2" in run.log_tail
    assert list(RunMetric.objects.filter(run=run, train_loss__isnull=False).values_list("step", flat=True)) == [
        1,
        2,
        3,
        4,
    ]
