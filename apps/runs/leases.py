"""Who holds a long task (a run's training, an evaluation's generation), and proof that they are alive.

A claim writes an owner id (``host:pid:start:token``) and a heartbeat on the row. While the task lives
(loading the model, training, validating, saving) a background thread renews the heartbeat every
``FTSTUDIO_HEARTBEAT_SECONDS``, and only while the row still names this owner: the moment another
worker has taken the row over, the lease is marked lost and the task stops writing. A renewal that fails on a
database error is tried again on a new connection before the next beat; the task's own writes go through
``retry_once`` (one more try after a reconnect), so a one-second database restart costs neither the lease nor
an attempt.

A row may be taken over only when its owner is gone: no heartbeat for ``FTSTUDIO_HEARTBEAT_STALE_SECONDS``
(one setting for runs and evaluations) and, when the owner ran on this host, its process has exited.
A long validation pass or a slow model load is no longer mistaken for a dead worker.

A warm shutdown (SIGTERM to a Celery worker) sets `shutdown_requested`; training stops at a checkpoint
and hands the run back without spending an attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

log = logging.getLogger(__name__)

_HOST = socket.gethostname()
_active: set[str] = set()  # owner ids whose lease is held by this process right now
shutdown_requested = threading.Event()  # set by a warm shutdown of this worker (see ftstudio/celery.py)


def stale_after() -> timedelta:
    return timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS)


def silent_holders(rows, now: datetime):
    """The rows of ``rows`` (a queryset of held tasks) whose owner is gone: no heartbeat for the staleness limit
    and, on this host, no live process. The reaper re-sends them (or fails them after the attempt limit)."""
    cutoff = now - stale_after()
    for row in rows.filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True)):
        if row.owner_gone(now):
            yield row


def lost_messages(rows, now: datetime):
    """The rows of ``rows`` (a queryset of queued tasks) whose message is older than FTSTUDIO_REQUEUE_AFTER_SECONDS:
    lost, so the reaper sends it again (a duplicate is harmless: the claim lets one delivery run it)."""
    bound = now - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS)
    return rows.filter(Q(enqueued_at__lt=bound) | Q(enqueued_at__isnull=True, created_at__lt=bound))


def resend_silent_and_lost(
    running, queued, now: datetime, *, what: str, max_attempts: int, give_up, resend
) -> tuple[list[int], list[int]]:
    """The reaper's pass over one kind of task: each silent holder of ``running`` is re-sent (``resend(row)``), or
    given up (``give_up(row)``) once it used ``max_attempts``; each lost message of ``queued`` is sent again.
    Returns the primary keys re-sent from each. ``what`` names the task in the log ("Evaluation")."""
    stale, resent = [], []
    for row in silent_holders(running, now):
        if row.attempts >= max_attempts:
            give_up(row)
            continue
        log.warning("%s %s: no heartbeat since %s; re-queuing", what, row.pk, row.heartbeat_at)
        resend(row)
        stale.append(row.pk)
    for row in lost_messages(queued, now):
        log.warning(
            "%s %s: queued since %s with no worker: sending its message again",
            what,
            row.pk,
            row.enqueued_at or row.created_at,
        )
        resend(row)
        resent.append(row.pk)
    return stale, resent


RENEW_TRIES = 3  # a heartbeat that fails is tried again this many times, a few seconds apart, before the next beat


def retry_once(write, what: str):
    """``write()``; after a database error (a restart, a dropped connection, a locked SQLite file) once more on a
    fresh connection, FTSTUDIO_DB_RETRY_SECONDS later. The second error is raised. For the writes a long task cannot
    lose to a one-second blip: its progress, its checkpoint and its final status."""
    try:
        return write()
    except (OperationalError, InterfaceError) as exc:
        if connection.in_atomic_block:
            raise  # the transaction is broken: only its owner can roll it back
        log.warning("%s failed (%s): reconnecting and trying once more", what, exc)
        connection.close()  # the next query opens a new connection
        time.sleep(settings.FTSTUDIO_DB_RETRY_SECONDS)
        return write()


def heartbeat_interval() -> float:
    """Seconds between beats: FTSTUDIO_HEARTBEAT_SECONDS, at most a quarter of the staleness limit."""
    return max(0.2, min(float(settings.FTSTUDIO_HEARTBEAT_SECONDS), settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS / 4))


def _process_start(pid: int) -> str:
    """The kernel's start time of a process (Linux), so a reused pid is not mistaken for the owner; "" if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def new_owner_id() -> str:
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_process_start(pid)}:{uuid.uuid4().hex[:12]}"


def _owner_process_alive(owner_id: str) -> bool:
    """True only if the owner is on this host and its process (same pid and start time) still exists."""
    try:
        host, pid, start, _token = owner_id.rsplit(":", 3)
    except ValueError:
        return False
    if host != _HOST or not pid.isdigit():
        return False  # another host: its heartbeat is the only evidence
    if int(pid) == os.getpid():
        return owner_id in _active
    return bool(start) and _process_start(int(pid)) == start


def owner_gone(owner_id: str, heartbeat_at: datetime | None, now: datetime | None = None) -> bool:
    """May a new claim take this row over? Its heartbeat is stale and its owner process is not alive here."""
    now = now or timezone.now()
    if heartbeat_at is not None and now - heartbeat_at <= stale_after():
        return False
    if owner_id and _owner_process_alive(owner_id):
        log.warning(
            "Owner %s has not beaten since %s but its process is alive: not taking over", owner_id, heartbeat_at
        )
        return False
    return True


class LeaseHolder:
    """Mixin of the rows a lease holds (``worker_id``, ``heartbeat_at``): runs and evaluations share one rule."""

    def owner_gone(self, now: datetime | None = None) -> bool:
        """No live worker holds this row (stale heartbeat and no owner process alive on this host)."""
        return owner_gone(self.worker_id, self.heartbeat_at, now)


class Lease:
    """Holds a claimed row: renews its heartbeat from a thread; ``lost`` is set when the row names another owner.

    ``rows()`` is the row filtered by owner: every write of the task goes through it, so a worker that lost its
    claim writes nothing (the update matches no row).
    """

    def __init__(self, model, pk: int, owner_id: str, interval: float | None = None) -> None:
        self.model, self.pk, self.owner_id = model, pk, owner_id
        self.interval = interval if interval is not None else heartbeat_interval()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{model.__name__}-{pk}", daemon=True)

    def rows(self):
        return self.model.objects.filter(pk=self.pk, worker_id=self.owner_id)

    def renew(self) -> bool:
        """One heartbeat; False (and ``lost`` set) when another worker owns the row now."""
        with transaction.atomic():
            if connection.vendor == "postgresql":  # never queue behind a long row lock: the next beat tries again
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '5s'")
            if self.rows().update(heartbeat_at=timezone.now()) == 1:
                return True
        if not self.model.objects.filter(pk=self.pk).exclude(worker_id=self.owner_id).exists():
            return True  # not visible to this connection (yet): nobody else holds it
        if not self.lost.is_set():
            log.warning("%s %s was taken over by another worker: this one stops writing", self.model.__name__, self.pk)
        self.lost.set()
        return False

    def renew_retrying(self) -> bool:
        """``renew``, tried again on a database error (RENEW_TRIES in all, on a new connection, 1 s then 2 s apart,
        never longer than the beat interval): a locked or restarting database does not cost the beat, and a missed
        beat is what would let another worker take a live task over. False once another worker owns the row."""
        for attempt in range(1, RENEW_TRIES + 1):
            try:
                return self.renew()
            except DatabaseError as exc:
                last = attempt == RENEW_TRIES
                log.warning(
                    "Heartbeat of %s %s failed (try %d of %d)%s: %s",
                    self.model.__name__,
                    self.pk,
                    attempt,
                    RENEW_TRIES,
                    "; the next beat tries again" if last else "",
                    exc,
                )
                connection.close()  # this thread's own connection: the next try opens a new one
                if last or self._stop.wait(min(float(attempt), self.interval)):
                    return True
        return True

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                if not self.renew_retrying():
                    return
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> Lease:
        _active.add(self.owner_id)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        _active.discard(self.owner_id)
