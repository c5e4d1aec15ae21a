"""Writes of the traffic page: stored completions sent into the project as draft examples."""

from __future__ import annotations

from apps.api.selectors import stored_completions
from apps.datasets.services import CurationError, add_drafts


class TrafficError(CurationError):
    """Rows that cannot be sent; the message says why."""


def send_to_drafts(*, project, public_ids: list[str], user) -> list:
    """One draft example per stored completion: its messages, the model's answer as the starting ideal, personal
    data masked, and the completion it came from as its origin. Only the project's own completions are found."""
    rows = list(stored_completions(project).filter(public_id__in=public_ids))
    if not rows:
        raise TrafficError("Tick at least one row to send to drafts.")
    conversations = [
        (
            [*c.messages, {"role": "assistant", "content": c.answer}],
            f"served answer {c.public_id} of {c.model}",
        )
        for c in rows
    ]
    return add_drafts(project=project, conversations=conversations, user=user)
