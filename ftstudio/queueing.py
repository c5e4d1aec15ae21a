"""How services hand work to workers, without importing Celery's app or any app of the project.

- `send_after_commit(task, *args)`: every service enqueues through this.
- `RECOVERY_PASSES`: each app's periodic recovery task (by Celery task name), keyed by the `ReaperBeat` row the
  pass writes when it has run. ftstudio/celery.py schedules them; the staff alarm (apps/runs/selectors.py) checks
  every one.
"""

from __future__ import annotations

import functools

from django.db import transaction

RECOVERY_PASSES = {
    "runs": "runs.reap",
    "evaluations": "evaluations.reap",
    "prompts": "prompts.reap",
    "api": "api.reap",
}


def send_after_commit(task, *args) -> None:
    """Send ``task(*args)`` once the current transaction commits (at once outside one): a worker never
    reloads a row that is not committed yet, and a rolled-back write sends nothing."""
    transaction.on_commit(functools.partial(task.delay, *args))
