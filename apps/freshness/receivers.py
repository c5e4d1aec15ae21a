"""Freshness answers the run and evaluation lists (connected in FreshnessConfig.ready): which are not evaluated on
current data, and which runs not on current traffic."""

from __future__ import annotations

from .selectors import stale_evaluations, stale_runs
from .signals import stale_on_traffic


def on_run_list_asked(sender, *, project, runs, **kwargs) -> dict:
    return {"stale": stale_runs(project, runs), "stale_traffic": stale_on_traffic(project, runs)}


def on_evaluation_list_asked(sender, *, project, evaluations, **kwargs) -> dict:
    return {"stale": stale_evaluations(project, evaluations)}
