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

# Asked while the evaluation list renders. Keywords: project, evaluations. Receivers answer {context name: value}
# for the page (apps/freshness: "stale", {evaluation pk: reason}).
evaluation_list_asked = Signal()
# Asked while the evaluation form is built. Keyword: project. Receivers answer the prompt versions a candidate may be
# made of (apps/prompts): {"prompt_versions": queryset, "prompt_words": one version -> words, "prompt_best": version}.
evaluation_form_asked = Signal()
