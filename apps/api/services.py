"""Writes for the API: keys (create, revoke, usage). Views, the settings page and ``create_api_key`` call these;
the model ids and their translation to what the inference process loads are reads (``selectors.py``)."""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import Membership, Project

from .models import ApiKey
from .selectors import forget_storage_choice

KEY_PREFIX = "fts_"


class ApiKeyError(ValueError):
    """A key that cannot be created or changed; the message says why."""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_api_key(*, project: Project, user, name: str = "") -> tuple[ApiKey, str]:
    """A new key for a member of the project; returns the row and the key itself (shown once, never stored)."""
    if not user.is_staff and not Membership.objects.filter(project=project, user=user).exists():
        raise ApiKeyError(f"{user.username} is not a member of {project.name}: a key acts with its user's role there.")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        project=project, user=user, name=name.strip()[:80], prefix=raw[:12], hashed=hash_key(raw)
    )
    return key, raw


def create_api_key_for(*, project_slug: str, username: str, name: str = "") -> tuple[ApiKey, str]:
    project = Project.objects.filter(slug=project_slug).first()
    if project is None:
        raise ApiKeyError(f"No project with slug {project_slug!r}.")
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ApiKeyError(f"No user named {username!r}.")
    return create_api_key(project=project, user=user, name=name)


def revoke_api_key(*, project: Project, key_id: int) -> ApiKey:
    key = ApiKey.objects.filter(project=project, pk=key_id).first()
    if key is None:
        raise ApiKeyError("No such key in this project.")
    key.revoke()
    return key


def find_active_key(raw: str) -> ApiKey | None:
    """The unrevoked key with this secret, its use recorded; None when there is none."""
    key = ApiKey.objects.select_related("project", "user").filter(hashed=hash_key(raw), revoked_at=None).first()
    if key is not None:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now(), requests=F("requests") + 1)
    return key


def record_usage(*, key: ApiKey, prompt_tokens: int, completion_tokens: int) -> None:
    ApiKey.objects.filter(pk=key.pk).update(
        prompt_tokens=F("prompt_tokens") + prompt_tokens, completion_tokens=F("completion_tokens") + completion_tokens
    )


# --- stored completions ------------------------------------------------------------------------------
def save_stored_completion(
    *, project_id: int, key_id: int | None, metadata: dict, stored_by: str, request: dict, completion: dict, streamed
):
    """Keep one finished chat completion (called by the writer thread in ``stored.py``); a repeat is ignored."""
    from .models import StoredCompletion

    public_id = completion.get("id") or f"chatcmpl-{secrets.token_hex(16)}"
    row, _ = StoredCompletion.objects.get_or_create(
        public_id=public_id,
        defaults={
            "project_id": project_id,
            "api_key_id": key_id,
            "model": completion.get("model") or "",
            "messages": request.get("messages") or [],
            "choices": completion.get("choices") or [],
            "usage": completion.get("usage"),
            "metadata": metadata,
            "request": {k: v for k, v in request.items() if k != "messages"},
            "created": completion.get("created") or int(timezone.now().timestamp()),
            "streamed": streamed,
            "stored_by": stored_by,
        },
    )
    return row


def update_stored_metadata(*, completion, metadata: dict):
    """OpenAI's update: the metadata is replaced as a whole."""
    completion.metadata = metadata
    completion.save(update_fields=["metadata", "updated_at"])
    return completion


def delete_stored_completion(*, completion) -> None:
    completion.delete()


def set_completion_storage(
    *, project: Project, store_every_completion: bool, retention_days: int, drift_threshold: float = 0.3
):
    from .models import CompletionStorage

    if retention_days < 0 or retention_days > 3650:
        raise ApiKeyError("Keep stored completions for 0 (forever) to 3650 days.")
    row, _ = CompletionStorage.objects.update_or_create(
        project=project,
        defaults={
            "store_every_completion": store_every_completion,
            "retention_days": retention_days,
            "drift_threshold": drift_threshold,
        },
    )
    forget_storage_choice(project.pk)
    transaction.on_commit(lambda: forget_storage_choice(project.pk))  # a request in between read the old row
    return row


def delete_expired_completions(now=None) -> int:
    """Delete every stored completion older than its project's retention period (0 keeps them); returns how many."""
    from datetime import timedelta

    from .models import CompletionStorage, StoredCompletion

    now = now or timezone.now()
    kept = dict(CompletionStorage.objects.values_list("project_id", "retention_days"))
    default = CompletionStorage._meta.get_field("retention_days").default
    deleted = 0
    for project_id in StoredCompletion.objects.values_list("project_id", flat=True).distinct():
        days = kept.get(project_id, default)
        if days:
            deleted += StoredCompletion.objects.filter(
                project_id=project_id, created_at__lt=now - timedelta(days=days)
            ).delete()[0]
    return deleted
