"""The API's reads (no writes): the model ids a project's keys may call, and where the inference process finds
them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.db.models.fields.json import KeyTransform
from django.utils.text import slugify

from apps.accounts.models import Project
from apps.runs import artifacts
from apps.runs.models import BaseModel, Run, RunStatus
from worker.protocol import adapter_problem

from .models import ApiKey


# --- model ids ----------------------------------------------------------------------------------------
def run_model_id(run: Run) -> str:
    """OpenAI's style for fine-tuned models: ``ft:<base-name>:<project-slug>:<run-name-or-id>:<run-id>``."""
    label = slugify(run.name) or str(run.pk)
    return f"ft:{run.base_model.name}:{run.project.slug}:{label}:{run.pk}"


CHECKPOINT_TAG = ":ckpt-step-"
EPOCH_CHECKPOINTS = 3  # OpenAI keeps the checkpoints of a job's last three epochs


def checkpoint_steps(run: Run) -> list[int]:
    """The steps of a run's last three epoch ends, the final step last (worker.train keeps their adapters); only the
    final step when its epochs are not whole or max_steps cut them short."""
    epochs, total = run.hyperparameters.get("epochs"), run.total_steps
    if not total:
        return []
    if int(run.hyperparameters.get("max_steps", -1)) > 0 or not float(epochs or 0).is_integer() or total % int(epochs):
        return [total]
    per = total // int(epochs)
    return [total - k * per for k in range(EPOCH_CHECKPOINTS - 1, -1, -1) if total - k * per > 0]


def checkpoint_model_id(run: Run, step: int) -> str:
    """The model id of a run's epoch checkpoint (OpenAI's ``...:ckpt-step-<n>``); the final one is the run's id."""
    return run_model_id(run) if step == run.total_steps else f"{run_model_id(run)}{CHECKPOINT_TAG}{step}"


def checkpoint_adapter_path(run: Run, step: int) -> str:
    """Where worker.train kept an epoch checkpoint's adapter: ``epochs/step-<n>`` beside the final adapter."""
    return str(Path(run.adapter_path).parent / "epochs" / f"step-{step}") if run.adapter_path else ""


@dataclass(frozen=True)
class ModelTarget:
    id: str
    created: int
    owned_by: str
    base_model: BaseModel
    run: Run | None = None
    checkpoint_step: int | None = None  # an epoch checkpoint of the run, not its final adapter

    @property
    def adapter_path(self) -> str:
        if self.run is None:
            return ""
        if self.checkpoint_step is not None:
            return checkpoint_adapter_path(self.run, self.checkpoint_step)
        return self.run.adapter_path


class UnknownModel(LookupError):
    """No model with this id for this project (the message says why, e.g. missing adapter files)."""


def project_models(project: Project) -> list[ModelTarget]:
    """What a project's keys may call: every registered base model and the project's succeeded runs."""
    bases = [
        ModelTarget(id=b.name, created=int(b.created_at.timestamp()), owned_by="ftstudio", base_model=b)
        for b in BaseModel.objects.order_by("name")
    ]
    runs = (
        Run.objects.filter(project=project, status=RunStatus.SUCCEEDED)
        .select_related("base_model", "project")
        .order_by("-created_at")
    )
    return bases + [
        ModelTarget(
            id=run_model_id(r),
            created=int(r.created_at.timestamp()),
            owned_by=project.slug,
            base_model=r.base_model,
            run=r,
        )
        for r in runs
    ]


def resolve_model(project: Project, model_id: str, *, servable: bool = False) -> ModelTarget:
    """The base model or run a public id names in this project; raises UnknownModel.
    ``servable``: also check the run's adapter files are there."""
    target = None
    run_id, step = model_id, None
    if model_id.startswith("ft:") and CHECKPOINT_TAG in model_id:
        run_id, _, tail = model_id.partition(CHECKPOINT_TAG)
        step = int(tail) if tail.isdigit() else -1
    if run_id.startswith("ft:"):
        run_pk = run_id.rsplit(":", 1)[-1]
        run = (
            Run.objects.filter(project=project, pk=int(run_pk), status=RunStatus.SUCCEEDED)
            .select_related("base_model", "project")
            .first()
            if run_pk.isdigit()
            else None
        )
        if run is not None and run_model_id(run) == run_id and (step is None or step in checkpoint_steps(run)[:-1]):
            target = ModelTarget(
                id=model_id,
                created=int(run.created_at.timestamp()),
                owned_by=project.slug,
                base_model=run.base_model,
                run=run,
                checkpoint_step=step,
            )
    else:
        base = BaseModel.objects.filter(name=model_id).first()
        if base is not None:
            target = ModelTarget(
                id=base.name, created=int(base.created_at.timestamp()), owned_by="ftstudio", base_model=base
            )
    if target is None:
        raise UnknownModel(
            f"The model {model_id!r} does not exist in project {project.slug}, or it is not a "
            "succeeded run: GET /v1/models lists what this key may call."
        )
    if servable and target.run is not None:
        problem = adapter_problem(target.adapter_path) if target.adapter_path else "the run has no adapter"
        if (
            problem
            and target.checkpoint_step is None
            and target.adapter_path
            and artifacts.adapter_available(target.run)
        ):
            problem = None  # trained on another node: in the shared store, fetched by the inference process
        if problem:
            raise UnknownModel(f"The model {model_id!r} cannot be served: {problem}.")
    return target


def inference_target(target: ModelTarget) -> dict:
    """The inference process's extension field: where the base model and the adapter are on disk, and (with a shared
    artifact store) their keys there, for an inference process on a node whose disk does not have them."""
    base, base_key = artifacts.base_model_location(target.base_model)
    found = {"base": base, "adapter": target.adapter_path or None}
    if artifacts.remote():
        found["base_key"] = base_key
        final = target.run is not None and target.checkpoint_step is None
        found["adapter_key"] = artifacts.adapter_key(target.run.pk) if final else None
    return found


# --- stored completions ------------------------------------------------------------------------------
STORAGE_CHOICE_SECONDS = 30  # how long a process trusts its cached "store every completion" answer


def _storage_choice_key(project_id: int) -> str:
    return f"ftstudio:store-every-completion:{project_id}"


def stores_every_completion(project_id: int) -> bool:
    """Whether the project keeps every completion of its keys: one query per project and process at most every
    ``STORAGE_CHOICE_SECONDS`` (Django's cache; ``set_completion_storage`` forgets it at once, and a shared cache
    backend makes that reach every process), not one per chat request."""
    from django.core.cache import cache

    from .models import CompletionStorage

    found = cache.get(_storage_choice_key(project_id))
    if found is None:
        found = CompletionStorage.objects.filter(project_id=project_id, store_every_completion=True).exists()
        cache.set(_storage_choice_key(project_id), found, STORAGE_CHOICE_SECONDS)
    return found


def forget_storage_choice(project_id: int) -> None:
    from django.core.cache import cache

    cache.delete(_storage_choice_key(project_id))


def completion_storage(project):
    """The project's storage choices (defaults when it never chose)."""
    from .models import CompletionStorage

    return CompletionStorage.objects.filter(project=project).first() or CompletionStorage(project=project)


def stored_completions(project, *, model: str = "", metadata: dict | None = None, since=None, until=None):
    """A project's stored completions, oldest first, filtered by model id, metadata pairs and creation time."""
    from .models import StoredCompletion

    rows = StoredCompletion.objects.filter(project=project)
    if model:
        rows = rows.filter(model=model)
    for i, (key, value) in enumerate((metadata or {}).items()):
        rows = rows.alias(**{f"meta_{i}": KeyTransform(key, "metadata")}).filter(**{f"meta_{i}": value})
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if until is not None:
        rows = rows.filter(created_at__lt=until)
    return rows.order_by("created_at", "id")


def stored_completion(project, public_id: str):
    """One of the project's stored completions, or None (another project's is not found either)."""
    from .models import StoredCompletion

    return StoredCompletion.objects.filter(project=project, public_id=public_id).first()


# --- keys ---------------------------------------------------------------------------------------------
def project_api_keys(project: Project):
    """The project's API keys with their users, for the settings page."""
    return ApiKey.objects.filter(project=project).select_related("user")
