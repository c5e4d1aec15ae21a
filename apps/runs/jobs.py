"""The same lease and recovery as runs for the short background jobs: the automatic checks and the judge of an
evaluation, an export. Their rows have no owner of their own, so each job has a `JobLease` row:

- the service that sends the task calls `queue_job(kind, pk)` (the row says "queued since ...");
- the task runs inside `held(kind, pk)`: it claims the row (a live holder makes a duplicate delivery do nothing),
  a thread renews the heartbeat (`leases.Lease`), and the row goes when the job ends, well or badly;
- a worker killed mid-job leaves the row running with a heartbeat that stops: the periodic recovery pass of the
  job's app (`reap_jobs`, called by `runs.reap` for exports and by `evaluations.reap` for checks and judge)
  re-sends it with `leases.resend_silent_and_lost`, like runs and evaluations, and sends again a queued job whose
  message was lost. After MAX_ATTEMPTS it gives up (an export is marked failed).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ftstudio.celery import app
from ftstudio.queueing import send_after_commit

from . import leases
from .models import JobLease

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
TASKS = {"checks": "evaluations.run_checks", "judge": "evaluations.run_judge", "export": "runs.export_run"}
QUEUED, RUNNING = "queued", "running"


def send(kind: str, task, pk: int) -> None:
    """Record the job as queued (a running one keeps its holder: it is sent again when that one ends) and send
    ``task(pk)`` once the transaction commits."""
    now = timezone.now()
    row, created = JobLease.objects.get_or_create(kind=kind, object_pk=pk, defaults={"enqueued_at": now})
    if not created:
        JobLease.objects.filter(pk=row.pk, state=RUNNING).update(enqueued_at=now)
        JobLease.objects.filter(pk=row.pk, state=QUEUED).update(enqueued_at=now, attempts=0)
    send_after_commit(task, pk)


@contextmanager
def held(kind: str, pk: int):
    """Hold the job's lease while the task works: yields the `leases.Lease`, or None when a live worker holds it
    (a duplicate delivery: do nothing). The row goes at the end; a message sent while it ran is sent again."""
    owner, now = leases.new_owner_id(), timezone.now()
    with transaction.atomic():
        row, _ = JobLease.objects.select_for_update().get_or_create(
            kind=kind, object_pk=pk, defaults={"enqueued_at": now}
        )
        if row.state == RUNNING and not row.owner_gone(now):
            log.info("%s job %s is held by live worker %s: duplicate delivery ignored", kind, pk, row.worker_id)
            row = None
        else:
            JobLease.objects.filter(pk=row.pk).update(
                state=RUNNING, worker_id=owner, heartbeat_at=now, claimed_at=now, attempts=row.attempts + 1
            )
    if row is None:
        yield None
        return
    try:
        with leases.Lease(JobLease, row.pk, owner) as lease:
            yield lease
    finally:
        mine = JobLease.objects.filter(pk=row.pk, worker_id=owner)
        if mine.filter(enqueued_at__gt=F("claimed_at")).exists():  # asked again while this one ran: run once more
            mine.update(state=QUEUED, worker_id="", heartbeat_at=None, attempts=0)
            send_after_commit(app.tasks[TASKS[kind]], pk)
        else:
            mine.delete()


def holder_gone(kind: str, pk: int) -> bool:
    """Was the job claimed by a worker that is gone (stale heartbeat, no live process)?"""
    row = JobLease.objects.filter(kind=kind, object_pk=pk, state=RUNNING).first()
    return row is not None and row.owner_gone()


def _give_up(row: JobLease) -> None:
    log.error("%s job %s: its worker stopped %s times; giving up", row.kind, row.object_pk, row.attempts)
    if row.kind == "export":
        from .models import RunExport

        export = RunExport.objects.filter(pk=row.object_pk).first()
        if export is not None:
            export.mark_failed(f"The worker stopped {row.attempts} times while exporting; export it again.")
    JobLease.objects.filter(pk=row.pk).delete()


def _resend(row: JobLease) -> None:
    JobLease.objects.filter(pk=row.pk).update(state=QUEUED, enqueued_at=timezone.now())
    send_after_commit(app.tasks[TASKS[row.kind]], row.object_pk)


def reap_jobs(now=None, kinds=tuple(TASKS)) -> dict[str, list[int]]:
    """A recovery pass over the jobs of ``kinds``: silent holders re-sent (or given up), lost messages sent again.
    Returns the primary keys (of the evaluation, the export) sent again, per kind."""
    now = now or timezone.now()
    result = {}
    for kind in kinds:
        jobs, sent = JobLease.objects.filter(kind=kind), []
        leases.resend_silent_and_lost(
            jobs.filter(state=RUNNING),
            jobs.filter(state=QUEUED),
            now,
            what=f"{kind.capitalize()} job",
            max_attempts=MAX_ATTEMPTS,
            give_up=_give_up,
            resend=lambda row, sent=sent: (sent.append(row.object_pk), _resend(row)),
        )
        result[f"{kind}_jobs"] = sent
    return result
