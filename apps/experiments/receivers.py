"""Advance an experiment when one of its runs, generations or check passes ends: connected to the lower apps'
signals in ExperimentsConfig.ready (each sent after its transaction commits). The periodic
`experiments.advance_open` catches anything a lost message or a dead worker missed."""

from __future__ import annotations

import logging

from .services import schedule_advance_for

log = logging.getLogger(__name__)


def _advance(**holder) -> None:
    try:
        schedule_advance_for(**holder)
    except Exception:  # noqa: BLE001 - the periodic pass advances it anyway; never fail the task that ended
        log.exception("Could not queue the advance of experiments holding %s", holder)


def on_run_ended(sender, run_pk: int, **kwargs) -> None:
    _advance(run_pk=run_pk)


def on_evaluation_step_ended(sender, evaluation_pk: int, **kwargs) -> None:
    """Generation or a pass of the automatic checks ended."""
    _advance(evaluation_pk=evaluation_pk)
