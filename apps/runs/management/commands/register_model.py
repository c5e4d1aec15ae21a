"""`manage.py register_model NAME SOURCE [--kind local|gguf|hub] [--display-name TEXT] [--revision REV] [--public-id
ID]`"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.runs import base_models
from apps.runs.models import SourceKind


class Command(BaseCommand):
    help = (
        "Register (or refresh) a base model: a Hugging Face folder or a .gguf file under FTSTUDIO_MODEL_ROOTS, "
        "or a Hub id where FTSTUDIO_ALLOW_HUB=1. Architecture, size, context and chat template are read from it."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the name runs and evaluations use, e.g. qwen2.5-1.5b-instruct")
        parser.add_argument("source", help="a folder, a .gguf file, or a Hub id")
        parser.add_argument(
            "--kind",
            choices=list(SourceKind.values),
            help="default: gguf for *.gguf, hub for an id like org/name that is not a path, local otherwise",
        )
        parser.add_argument("--display-name", default="")
        parser.add_argument("--revision", default="", help="Hub revision (commit or tag)")
        parser.add_argument(
            "--public-id",
            default="",
            help="the model's Hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct): "
            "exported adapters, merged models and GGUF files name their base model by it",
        )
        parser.add_argument(
            "--min-gpu-gb",
            type=int,
            default=None,
            help="GPU memory its training needs, GB: its runs "
            "go to the smallest GPU tier queue that has it (gpu-24g, gpu-80g...); 0: any worker",
        )

    def handle(self, *args, name, source, kind, display_name, revision, public_id, min_gpu_gb=None, **opts):
        kind = kind or guess_kind(source)
        try:
            model = base_models.register_base_model(
                name=name,
                source_kind=kind,
                source=source,
                display_name=display_name,
                revision=revision,
                public_id=public_id,
                min_gpu_gb=min_gpu_gb,
            )
        except (OSError, ValueError) as exc:  # ModelSourceError is a ValueError
            raise CommandError(f"Could not register {name!r} from {source}: {exc}") from exc
        self.stdout.write(
            f"{model.name}: {model.architecture}, {model.parameter_count:,} parameters, "
            f"context {model.context_length}, chat template {'yes' if model.has_chat_template else 'no'}"
        )


def guess_kind(source: str) -> str:
    if source.endswith(".gguf"):
        return SourceKind.GGUF
    if not source.startswith(("/", ".", "~")) and source.count("/") == 1:
        if not Path(source).exists():
            return SourceKind.HUB
    return SourceKind.LOCAL
