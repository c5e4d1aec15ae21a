"""The API's answers to the lower apps' news, connected in ApiConfig.ready."""

from __future__ import annotations

import logging

from django.db import transaction

log = logging.getLogger(__name__)


def on_run_saved(sender, instance, created: bool = False, raw: bool = False, **kwargs) -> None:
    """A new run gets its fine-tuning job once its creation commits (a job's own run has it by then, so only a run
    launched in the browser is adopted): the API lists every run, and listing writes nothing."""
    if created and not raw:
        transaction.on_commit(lambda pk=instance.pk: _adopt(pk))


def _adopt(run_pk: int) -> None:
    from apps.runs.models import Run

    from .ft_jobs import adopt_run

    try:
        run = Run.objects.select_related("base_model", "project").filter(pk=run_pk).first()
        if run is not None:
            adopt_run(run)
    except Exception:  # noqa: BLE001 - never fail the launch; `api.reap` adopts it on its next pass
        log.exception("Could not give run %s its fine-tuning job", run_pk)
