"""News from runs for the apps above them, which connect in their AppConfig.ready: runs never call those apps."""

from django.db import transaction
from django.dispatch import Signal

# A run reached an end state (succeeded, failed, cancelled). Sent once the transaction that wrote it commits.
# Keyword: run_pk.
run_ended = Signal()


def announce(run_pk: int) -> None:
    """The run ended: once the transaction commits, ``run_ended`` tells the apps above (webhooks, the API)."""
    from .models import Run

    transaction.on_commit(lambda: run_ended.send(sender=Run, run_pk=run_pk))
