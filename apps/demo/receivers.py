"""The demo answers the experiment list (connected in DemoConfig.ready): its one-click experiment, in its project."""

from __future__ import annotations

from .services import demo_experiment_plan


def on_experiment_list_asked(sender, *, project, **kwargs) -> dict:
    return {"demo_plan": demo_experiment_plan(project)}
