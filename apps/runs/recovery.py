"""Runs' periodic recovery pass: re-send runs whose worker is gone and queued ones whose message was lost."""

from __future__ import annotations

import logging

from django.utils import timezone

from ftstudio.queueing import send_after_commit

from . import leases
from .execution import MAX_ATTEMPTS, claim_run
from .models import ReaperBeat, Run, RunStatus
from .tasks import train_run

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


def reap() -> dict[str, list[int]]:
    """Runs' periodic recovery pass: re-send runs whose worker is gone (stale heartbeat, no live process) and queued
    ones whose message is older than FTSTUDIO_REQUEUE_AFTER_SECONDS (a lost message), giving up after MAX_ATTEMPTS;
    the same for exports and for imports (datasets, below runs). Evaluations, prompts and the API have their own pass
    (ftstudio/queueing.py RECOVERY_PASSES). Records that it ran (the staff alarm reads it)."""
    from apps.datasets.importing import resend_queued_imports

    from .jobs import reap_jobs

    now = timezone.now()
    result = {
        "runs": reap_stale_runs(now),
        "queued_runs": resend_queued_runs(now),
        "queued_imports": resend_queued_imports(now),
        **reap_jobs(now, kinds=("export",)),
    }
    return ReaperBeat.record("runs", result, now)


def send_run(run: Run) -> None:
    Run.objects.filter(pk=run.pk).update(enqueued_at=timezone.now())
    send_after_commit(train_run, run.pk)


def reap_stale_runs(now=None) -> list[int]:
    """Re-queue running runs whose worker is gone; mark them failed after MAX_ATTEMPTS."""
    requeued = []
    for run in leases.silent_holders(Run.objects.filter(status=RunStatus.RUNNING), now or timezone.now()):
        if run.attempts >= MAX_ATTEMPTS:
            claim_run(run.pk)  # marks it failed with the reason
            continue
        log.warning(
            "Run %s: no heartbeat since %s; re-queuing (attempt %s of %s)",
            run.pk,
            run.heartbeat_at,
            run.attempts + 1,
            MAX_ATTEMPTS,
        )
        send_run(run)
        requeued.append(run.pk)
    return requeued


def resend_queued_runs(now=None) -> list[int]:
    """Queued runs whose message is older than the bound and that no worker holds: the message was lost, send it again
    (a duplicate is harmless: the claim lets one delivery run it)."""
    resent = []
    queued = Run.objects.filter(status=RunStatus.QUEUED, cancel_requested=False)
    for run in leases.lost_messages(queued, now or timezone.now()):
        log.warning(
            "Run %s: queued since %s with no worker: its message was lost, sending it again",
            run.pk,
            run.enqueued_at or run.created_at,
        )
        send_run(run)
        resent.append(run.pk)
    return resent
