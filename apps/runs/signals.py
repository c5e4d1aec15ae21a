"""News from runs for the apps above them, which connect in their AppConfig.ready: runs never call those apps."""

from django.dispatch import Signal

# A run reached an end state (succeeded, failed, cancelled). Sent once the transaction that wrote it commits.
# Keyword: run_pk.
run_ended = Signal()

# Asked while the run list renders. Keywords: project, runs. Receivers answer {context name: value} for the page
# (apps/freshness: "stale" and "stale_traffic", each {run pk: reason}).
run_list_asked = Signal()
# Asked while the launch form is built. Keyword: project. Receivers answer {"prompt_bars": {dataset version pk: words}}
# (apps/prompts: the best scored prompt of each version, the bar a run has to beat).
launch_form_asked = Signal()
