"""News from evaluations for the apps above them, which connect in their AppConfig.ready: evaluations never call
those apps. Each is sent once the transaction that wrote it commits."""

from django.dispatch import Signal

# Every candidate's outputs are generated and the pairs are built. Keyword: evaluation_pk.
evaluation_ready = Signal()
# Generation ended for now, ready or failed (a worker shutting down hands it back without this). Keyword:
# evaluation_pk.
generation_ended = Signal()
# A pass of the automatic checks over an evaluation's outputs ended, well or badly. Keyword: evaluation_pk.
checks_ended = Signal()
# A reviewer judged their last open pair of an evaluation. Keywords: evaluation_pk, reviewer_pk.
evaluation_reviewed = Signal()
