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


# Service modules named for what they hold (writes that also send tasks), besides each app's services.py.
NAMED_SERVICE_MODULES = {"exports", "base_models", "launching", "execution", "recovery", "ft_jobs"}
TASK_MODULES = sorted(p for p in APPS.glob("*/*.py") if p.name in {"tasks.py", "check_tasks.py"})
SELECTOR_MODULES = sorted(APPS.glob("*/selectors.py"))


@pytest.mark.parametrize("path", TASK_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_import_their_service_inside_the_task_function(path):
    imported = _module_level_imports(path)
    assert not {n for n in imported if n.endswith("services") or n.rsplit(".", 1)[-1] in NAMED_SERVICE_MODULES}, (
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


@pytest.mark.slow  # starts a Python process to see what the web process imports
def test_the_web_process_imports_no_torch():
    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'ftstudio.settings'); "
        "django.setup(); import ftstudio.urls, apps.runs.launching, apps.runs.execution, apps.runs.recovery, "
        "apps.evaluations.services, "
        "apps.datasets.services, apps.api.views, apps.runs.views, apps.evaluations.views; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# The layer table (docs/ARCHITECTURE.md, "Layers"): an app imports only apps of a lower rank, also inside functions.
# News travels up as signals that the upper app connects in its AppConfig.ready.
LAYERS = {
    "ftstudio": 0,
    "accounts": 1,
    "datasets": 2,
    "fleet": 2,
    "runs": 3,
    "evaluations": 4,
    "prompts": 5,
    "experiments": 6,
    "freshness": 6,
    "api": 7,
    "traffic": 8,
    "webhooks": 9,
    "demo": 10,
    "overview": 11,
}
# Modules that wire everything together and so stand above every app (wsgi.py: the web process's entry point, which
# checks the artifact store before gunicorn serves).
WIRING = {"ftstudio/urls.py", "ftstudio/settings.py", "ftstudio/wsgi.py"}


def _app_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "apps" and len(parts) > 1:
        return parts[1]
    return "ftstudio" if parts[0] == "ftstudio" else None


def _imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` imports, at module level or inside functions, relative imports resolved."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def upward_imports(source: str, path: str) -> set[tuple[str, str]]:
    """(path, app) for each app of the same or a higher layer than ``path``'s own that ``source`` imports."""
    module = path.removesuffix(".py").replace("/", ".")
    is_package = module.endswith(".__init__")
    own = _app_of(module.removesuffix(".__init__"))
    found = set()
    for target in _imported_modules(source, module.removesuffix(".__init__"), is_package):
        app = _app_of(target)
        if app and app != own and LAYERS[app] >= LAYERS[own]:
            found.add((path, app))
    return found


def _project_modules():
    for path in sorted([*APPS.rglob("*.py"), *(REPO / "ftstudio").rglob("*.py")]):
        rel = str(path.relative_to(REPO))
        if "migrations" not in path.parts and rel not in WIRING:
            yield rel, path.read_text()


def test_every_app_has_a_layer():
    apps = {p.name for p in APPS.iterdir() if (p / "__init__.py").is_file()}
    assert apps <= set(LAYERS), f"add {sorted(apps - set(LAYERS))} to the layer table (and docs/ARCHITECTURE.md)"


def test_no_app_imports_an_app_above_it():
    found = sorted(set().union(*(upward_imports(source, rel) for rel, source in _project_modules())))
    assert not found, (
        "imports from an app to one of the same or a higher layer (send a signal the upper app connects, fill a "
        f"registry in the upper app's AppConfig.ready, or move the code down): {found}"
    )


def test_the_layer_check_sees_imports_inside_functions_and_relative_ones():
    inside = "def f():\n    from apps.api.models import ApiKey\n"
    assert upward_imports(inside, "apps/runs/launching.py") == {("apps/runs/launching.py", "api")}
    assert upward_imports("import apps.demo.services\n", "apps/datasets/views.py") == {
        ("apps/datasets/views.py", "demo")
    }
    assert upward_imports("from ..runs import models\n", "apps/datasets/views.py") == {
        ("apps/datasets/views.py", "runs")
    }
    blind_rules = "from apps.evaluations.blind import judging_blind\n"  # the rules stay above the base of the house
    assert upward_imports(blind_rules, "apps/accounts/permissions.py") == {
        ("apps/accounts/permissions.py", "evaluations")
    }
    peer = "from apps.webhooks import services\n"
    assert upward_imports(peer, "apps/api/views.py") == {("apps/api/views.py", "webhooks")}
    downward = "from apps.datasets.models import Example\nfrom . import selectors\n"
    assert upward_imports(downward, "apps/runs/views.py") == set()


def test_worker_imports_no_django_and_no_app():
    for path in sorted((REPO / "worker").rglob("*.py")):
        imported = _imported_modules(path.read_text(), "worker." + path.stem, False)
        bad = sorted(m for m in imported if m.split(".")[0] in {"django", "apps", "ftstudio", "celery"})
        assert not bad, f"{path.relative_to(REPO)} imports {bad}: worker/ is plain ML code"


# What apps/ and ftstudio/ may import from worker/ (docs/ARCHITECTURE.md, "Layers"). The web process sees worker/
# through modules that import no torch: for the inference side that is worker.protocol alone (requests, sampling
# parameters, errors, chat request parsing), never worker.engine or worker.serve.
WEB_WORKER_MODULES = {
    "worker.artifacts",
    "worker.checks",
    "worker.data",
    "worker.distributed",
    "worker.export",
    "worker.graders",
    "worker.inference_auth",
    "worker.judge",
    "worker.memory",
    "worker.models",
    "worker.outbound",
    "worker.protocol",
    "worker.train_config",
}
# Modules that load torch, imported only inside a task's function (a Celery worker's process).
TASK_WORKER_MODULES = {"worker.generate", "worker.train"}


def _worker_imports(source: str) -> tuple[set[str], set[str]]:
    """The worker modules ``source`` imports: (anywhere, at module level)."""

    def named(node) -> set[str]:
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "worker":  # from worker import protocol
                return {f"worker.{alias.name}" for alias in node.names}
            return {node.module} if node.module.startswith("worker.") else set()
        if isinstance(node, ast.Import):
            return {alias.name for alias in node.names if alias.name.startswith("worker.")}
        return set()

    tree = ast.parse(source)
    anywhere = set().union(*(named(node) for node in ast.walk(tree)))
    top = set().union(*(named(node) for node in tree.body))
    return anywhere, top


def test_the_worker_import_check_sees_every_form():
    source = (
        "from worker.protocol import EngineError\nimport worker.memory\ndef f():\n    from worker import generate\n"
    )
    assert _worker_imports(source) == (
        {"worker.protocol", "worker.memory", "worker.generate"},
        {"worker.protocol", "worker.memory"},
    )


def test_apps_import_only_the_allowed_worker_modules():
    for rel, source in [
        (str(p.relative_to(REPO)), p.read_text())
        for p in sorted([*APPS.rglob("*.py"), *(REPO / "ftstudio").rglob("*.py")])
    ]:
        anywhere, top = _worker_imports(source)
        assert not anywhere - WEB_WORKER_MODULES - TASK_WORKER_MODULES, (
            f"{rel} imports {sorted(anywhere - WEB_WORKER_MODULES - TASK_WORKER_MODULES)} from worker/: the web "
            "process reads the inference side through worker.protocol (add a torch-free module to "
            "WEB_WORKER_MODULES, or import a model-loading one inside the task's function)"
        )
        assert not top & TASK_WORKER_MODULES, (
            f"{rel} imports {sorted(top & TASK_WORKER_MODULES)} at module level: they load torch, so only a task's "
            "function may import them"
        )
    for module in WEB_WORKER_MODULES | TASK_WORKER_MODULES:
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} no longer exists"


@pytest.mark.slow  # starts a fresh interpreter: not in the quick pass, which starts no process
def test_the_worker_modules_the_web_process_imports_load_no_torch():
    # One fresh interpreter imports them one by one and names the first that brings torch or transformers in.
    code = (
        "import importlib, json, sys\n"
        f"for name in {sorted(WEB_WORKER_MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "    if heavy:\n"
        "        print(json.dumps([name, heavy]))\n"
        "        break\n"
        "else:\n"
        "    print(json.dumps(None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "null", f"[module, what it loaded]: {out.stdout.strip()}"


def test_worker_builds_no_class_inside_a_function():
    # "No closures as classes" (docs/ARCHITECTURE.md, "Where code goes"): a class is defined once, at module level,
    # and given what it needs; a class built inside a function is a new type at every call.
    for path in sorted((REPO / "worker").rglob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [n.name for n in ast.walk(function) if isinstance(n, ast.ClassDef)]
                where = f"{path.relative_to(REPO)}: {function.name}()"
                assert not inner, f"{where} defines {inner}; define it at module level"
