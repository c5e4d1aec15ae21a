"""Advance an experiment when a task of its runs or evaluations ends, without any edit to those apps: a
Celery ``task_postrun`` handler keyed by task name. The periodic `experiments.advance_open` catches anything a
lost message or a dead worker missed."""

from __future__ import annotations

import logging

from celery.signals import task_postrun

log = logging.getLogger(__name__)

RUN_TASKS = {"runs.train_run"}
EVALUATION_TASKS = {"evaluations.generate_outputs", "evaluations.run_checks"}


@task_postrun.connect
def _advance_after(sender=None, args=None, kwargs=None, **_):
    name = getattr(sender, "name", "")
    if name not in RUN_TASKS | EVALUATION_TASKS:
        return
    pk = (args or [None])[0] if args else (kwargs or {}).get("run_pk") or (kwargs or {}).get("evaluation_pk")
    if not isinstance(pk, int):
        return
    from .services import schedule_advance_for

    try:
        if name in RUN_TASKS:
            schedule_advance_for(run_pk=pk)
        else:
            schedule_advance_for(evaluation_pk=pk)
    except Exception:  # noqa: BLE001 - the periodic pass advances it anyway; never fail the finished task
        log.exception("Could not queue the advance of experiments after %s(%s)", name, pk)
