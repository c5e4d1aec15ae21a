"""The house shape (docs/ARCHITECTURE.md, "Where code goes"), checked on the source: tasks import their service
inside the task, selectors only read (they never import services), and the web process never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "apps"


def _module_level_imports(path: Path) -> set[str]:
    """Modules imported at the top level of a file (not inside functions), relative ones as ".name"."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            if not node.module:  # from . import services
                names.update(base + alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n}


TASK_MODULES = sorted(p for p in APPS.glob("*/*.py") if p.name in {"tasks.py", "check_tasks.py"})
SELECTOR_MODULES = sorted(APPS.glob("*/selectors.py"))


@pytest.mark.parametrize("path", TASK_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_import_their_service_inside_the_task_function(path):
    imported = _module_level_imports(path)
    assert not {n for n in imported if n.endswith("services") or n.endswith(".exports")}, (
        f"{path.relative_to(REPO)} imports a service at module level; services import tasks, so import it inside "
        "the task function"
    )


@pytest.mark.parametrize("path", SELECTOR_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_selectors_never_import_their_own_app_services(path):
    imported = _module_level_imports(path)
    assert not {n for n in imported if n == ".services" or n == f"apps.{path.parent.name}.services"}, (
        f"{path.relative_to(REPO)} imports its app's services: services read through selectors, not the reverse"
    )


def test_every_app_with_pages_has_selectors():
    for app in ("accounts", "datasets", "runs", "evaluations", "api"):
        assert (APPS / app / "selectors.py").is_file(), f"apps/{app} has no selectors.py"


def test_the_web_process_imports_no_torch():
    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'ftstudio.settings'); "
        "django.setup(); import ftstudio.urls, apps.runs.services, apps.evaluations.services, "
        "apps.datasets.services, apps.api.views, apps.runs.views, apps.evaluations.views; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
