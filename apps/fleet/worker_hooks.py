"""The fleet's part in a Celery worker's life (connected in FleetConfig.ready, which a worker runs before it sends
these signals): a WorkerBeat row saying which queues this worker serves, so a launch can warn when none serves its
queue."""

from __future__ import annotations

_beat: dict = {}


def note_queues(sender, instance, **kwargs) -> None:
    """``celeryd_after_setup``: this worker's name and the queues it consumes."""
    from ftstudio.celery import app

    if instance.app is not app:
        return
    _beat["hostname"], _beat["queues"] = sender, sorted(instance.app.amqp.queues.consume_from)


def start_beating(**kwargs) -> None:
    """``worker_ready``: beat until the worker shuts down."""
    from django.conf import settings

    from .services import start_beating as start

    if "hostname" in _beat:
        _beat["stop"] = start(
            hostname=_beat["hostname"], queues=_beat["queues"], interval=settings.FTSTUDIO_WORKER_BEAT_SECONDS
        )


def stop_beating(**kwargs) -> None:
    """``worker_shutdown``: stop the beat and remove the row."""
    from .services import forget

    if "stop" in _beat:
        _beat["stop"].set()
        try:
            forget(hostname=_beat["hostname"])
        except Exception:  # the database is gone too: the row goes stale by itself
            pass
