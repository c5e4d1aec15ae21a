"""`manage.py export_model --run ID --format adapter|merged|gguf --out PATH [--quant f16|q8_0]`"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from apps.runs.exports import export_run_to
from apps.runs.models import Run
from worker.export import FORMATS, QUANTS, ExportError
from worker.models import ModelSourceError


class Command(BaseCommand):
    help = (
        "Export a succeeded run: its LoRA adapter (a folder, or a zip when PATH ends in .zip), the adapter merged "
        "into its base model (a safetensors folder for transformers), or GGUF for llama.cpp (a .gguf path, or a "
        "folder that gets model-<quant>.gguf) with an Ollama Modelfile beside it. Every export names the base "
        "model by its public id."
    )

    def add_arguments(self, parser):
        parser.add_argument("--run", required=True, type=int, help="the run's id")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--out", required=True, help="where to write the export")
        parser.add_argument("--quant", choices=QUANTS, help="GGUF only (default f16)")

    def handle(self, *args, run, format, out, quant, **opts):
        found = Run.objects.select_related("base_model").filter(pk=run).first()
        if found is None:
            raise CommandError(f"No run with id {run}.")
        started = time.perf_counter()
        try:
            result = export_run_to(run=found, fmt=format, out=out, quant=quant or "")
        except (ExportError, ModelSourceError) as exc:
            raise CommandError(f"Cannot export run {run} as {format}: {exc}") from exc
        except OSError as exc:
            raise CommandError(f"Cannot export run {run} as {format}: {exc}") from exc
        self.stderr.write(
            f"exported run {run} ({format}{f' {quant}' if quant else ''}) in "
            f"{time.perf_counter() - started:.1f} s; base model {result.base_model_id}"
        )
        for path in result.files:
            self.stdout.write(path)
