"""Django for a benchmark that seeds the demo: a fresh (or kept) var dir, eager tasks, the shipped model's
cache shared with the checkout, migrated. Shared by demo_loop.py and data_experiments.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def setup_django(keep: str, prefix: str) -> str:
    """Point the settings at ``keep`` (or a new temporary folder), set Django up, migrate; returns the var dir."""
    var_dir = keep or tempfile.mkdtemp(prefix=prefix)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "ftstudio.settings",
            "DJANGO_DEBUG": "1",
            "FTSTUDIO_VAR_DIR": var_dir,
            "FTSTUDIO_MODEL_CACHE": os.environ.get("FTSTUDIO_MODEL_CACHE", str(REPO / "var" / "models")),
            "CELERY_TASK_ALWAYS_EAGER": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "FTSTUDIO_LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(f"var dir: {var_dir}; load before: {os.getloadavg()[0]:.2f}")
    return var_dir
