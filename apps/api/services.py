"""Writes for the API: keys (create, revoke, usage) and the one translation from a public model id to
what the inference process loads. Views, the settings page and ``create_api_key`` call these."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import F
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import Membership, Project
from apps.runs.models import BaseModel, Run, RunStatus
from worker.engine import adapter_problem

from .models import ApiKey

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
    key = ApiKey.objects.create(project=project, user=user, name=name.strip()[:80], prefix=raw[:12], hashed=hash_key(raw))
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
    ApiKey.objects.filter(pk=key.pk).update(prompt_tokens=F("prompt_tokens") + prompt_tokens,
                                            completion_tokens=F("completion_tokens") + completion_tokens)


# --- model ids ----------------------------------------------------------------------------------------
def run_model_id(run: Run) -> str:
    """OpenAI's style for fine-tuned models: ``ft:<base-name>:<project-slug>:<run-name-or-id>:<run-id>``."""
    label = slugify(run.name) or str(run.pk)
    return f"ft:{run.base_model.name}:{run.project.slug}:{label}:{run.pk}"


@dataclass(frozen=True)
class ModelTarget:
    id: str
    created: int
    owned_by: str
    base_model: BaseModel
    run: Run | None = None


class UnknownModel(LookupError):
    """No model with this id for this project (the message says why, e.g. missing adapter files)."""


def project_models(project: Project) -> list[ModelTarget]:
    """What a project's keys may call: every registered base model and the project's succeeded runs."""
    bases = [ModelTarget(id=b.name, created=int(b.created_at.timestamp()), owned_by="ftstudio", base_model=b)
             for b in BaseModel.objects.order_by("name")]
    runs = (Run.objects.filter(project=project, status=RunStatus.SUCCEEDED)
            .select_related("base_model", "project").order_by("-created_at"))
    return bases + [ModelTarget(id=run_model_id(r), created=int(r.created_at.timestamp()), owned_by=project.slug,
                                base_model=r.base_model, run=r) for r in runs]


def resolve_model(project: Project, model_id: str, *, servable: bool = False) -> ModelTarget:
    """The base model or run a public id names in this project; raises UnknownModel.
    ``servable``: also check the run's adapter files are there."""
    target = None
    if model_id.startswith("ft:"):
        run_pk = model_id.rsplit(":", 1)[-1]
        run = (Run.objects.filter(project=project, pk=int(run_pk), status=RunStatus.SUCCEEDED)
               .select_related("base_model", "project").first() if run_pk.isdigit() else None)
        if run is not None and run_model_id(run) == model_id:
            target = ModelTarget(id=model_id, created=int(run.created_at.timestamp()), owned_by=project.slug,
                                 base_model=run.base_model, run=run)
    else:
        base = BaseModel.objects.filter(name=model_id).first()
        if base is not None:
            target = ModelTarget(id=base.name, created=int(base.created_at.timestamp()), owned_by="ftstudio", base_model=base)
    if target is None:
        raise UnknownModel(f"The model {model_id!r} does not exist in project {project.slug}, or it is not a "
                           "succeeded run: GET /v1/models lists what this key may call.")
    if servable and target.run is not None:
        problem = adapter_problem(target.run.adapter_path) if target.run.adapter_path else "the run has no adapter"
        if problem:
            raise UnknownModel(f"The model {model_id!r} cannot be served: {problem}.")
    return target


def inference_target(target: ModelTarget) -> dict:
    """The inference process's extension field: where the base model and the adapter are on disk."""
    from apps.runs.services import model_spec_for
    from worker.models import resolve_model_dir

    return {"base": resolve_model_dir(model_spec_for(target.base_model)),
            "adapter": target.run.adapter_path if target.run is not None else None}
