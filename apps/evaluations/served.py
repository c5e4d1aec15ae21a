"""An evaluation one of whose candidates already answered: a served model's stored answers taken as they are, so
only the other candidates are generated (``Generating.generate_missing`` skips items that have an output)."""

from __future__ import annotations

from django.db import transaction

from apps.datasets.models import DatasetVersionItem

from .models import Candidate, Generation
from .statistics import token_f1


@transaction.atomic
def record_served_outputs(*, candidate: Candidate, outputs: list[tuple[DatasetVersionItem, str, dict | None]]) -> None:
    """Save ``(item, answer, usage)`` as the candidate's outputs, as served (no generation); marks the candidate's
    label "as served". Items that already have its output are left as they are."""
    Generation.objects.bulk_create(
        [
            Generation(
                candidate=candidate,
                item=item,
                output=text,
                prompt_tokens=(usage or {}).get("prompt_tokens", 0),
                output_tokens=(usage or {}).get("completion_tokens", 0),
                similarity=token_f1(text, item.ideal_output),
            )
            for item, text, usage in outputs
        ],
        ignore_conflicts=True,
    )
    if not candidate.label.endswith(" as served"):
        Candidate.objects.filter(pk=candidate.pk).update(label=f"{candidate.label} as served")
