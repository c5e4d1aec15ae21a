"""News from runs for the apps above them, which connect in their AppConfig.ready: runs never call those apps."""

from django.db import transaction
from django.dispatch import Signal

# A run reached an end state (succeeded, failed, cancelled). Sent once the transaction that wrote it commits.
# Keyword: run_pk.
run_ended = Signal()

# Asked while the run list renders. Keywords: project, runs. Receivers answer {context name: value} for the page
# (apps/freshness: "stale" and "stale_traffic", each {run pk: reason}).
run_list_asked = Signal()
# Asked while the launch form is built. Keyword: project. Receivers answer {"prompt_bars": {dataset version pk: words}}
# (apps/prompts: the best scored prompt of each version, the bar a run has to beat) and {"rubric_graders":
# {rubric pk: (words, graders)}} (apps/evaluations: the newest rubric's graders, for a run that learns from graders).
launch_form_asked = Signal()


def announce(run_pk: int) -> None:
    """The run ended: once the transaction commits, ``run_ended`` tells the apps above (webhooks, the API)."""
    from .models import Run

    transaction.on_commit(lambda: run_ended.send(sender=Run, run_pk=run_pk))
