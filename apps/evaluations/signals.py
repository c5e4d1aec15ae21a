"""News from evaluations for the apps above them, which connect in their AppConfig.ready: evaluations never call
those apps. Each is sent once the transaction that wrote it commits."""

from django.dispatch import Signal

# Every candidate's outputs are generated and the pairs are built. Keyword: evaluation_pk.
evaluation_ready = Signal()
# A reviewer judged their last open pair of an evaluation. Keywords: evaluation_pk, reviewer_pk.
evaluation_reviewed = Signal()
