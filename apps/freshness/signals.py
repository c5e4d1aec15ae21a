"""News this app asks the apps above it for: which runs are not evaluated on current traffic (apps/traffic answers;
the run lists show it next to "not evaluated on current data")."""

from __future__ import annotations

from django.dispatch import Signal

# receivers take (project, runs) and answer {run pk: reason}
traffic_staleness = Signal()


def stale_on_traffic(project, runs) -> dict[int, str]:
    found: dict[int, str] = {}
    for _receiver, answer in traffic_staleness.send(sender=None, project=project, runs=runs):
        found.update(answer or {})
    return found
