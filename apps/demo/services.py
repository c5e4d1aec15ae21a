"""Seeding the demo project: what `make run` shows a new user.

Everything goes through the other apps' services, as a person would: accounts (project, members),
datasets (import, splits, approval, freeze, quality report), runs (the shipped base model) and
evaluations (the rubric). Nothing here writes another app's rows directly.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from apps.accounts.models import Project, Role
from apps.accounts.services import add_member, create_project

from . import generator

log = logging.getLogger(__name__)

DEMO_SLUG = "house-style"
DEMO_NAME = "Support replies in house style"
DEMO_DESCRIPTION = (
    "Lumo's support team answers customers in one house style: 'Hi <name>,', one sentence from the facts, "
    "'Warm regards, Lumo Care Team'. Can a 135M model learn it in minutes on a CPU, and does it beat prompting?"
)
# username -> role. The PM creates the project; two reviewers so the results page can show agreement.
DEMO_USERS = {"pat": Role.PM, "dana": Role.DESIGNER, "rui": Role.REVIEWER, "sam": Role.REVIEWER}
CLEAN_FILE = "lumo-support-replies.jsonl"
FLAWED_FILE = "lumo-inbox-unreviewed.jsonl"


class DemoError(RuntimeError):
    """The demo could not be seeded; the message says which step failed and why."""


@dataclass
class SeedResult:
    project: Project
    created: bool
    logins: dict[str, str] = field(default_factory=dict)  # username -> password, only for users created now
    notes: list[str] = field(default_factory=list)


def demo_exists() -> bool:
    return Project.objects.filter(slug=DEMO_SLUG).exists()


def to_jsonl(examples: list[generator.DemoExample], *, tags: list[str]) -> bytes:
    lines = []
    for example in examples:
        metadata = {k: v for k, v in example.metadata.items() if k != "demo"}
        lines.append(json.dumps({"messages": example.messages, "tags": tags, "metadata": metadata}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def _ensure_users() -> tuple[dict, dict[str, str]]:
    """The demo's people, created once with random passwords (returned only when created)."""
    User = get_user_model()
    users, logins = {}, {}
    for username in DEMO_USERS:
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(9)
            user = User.objects.create_user(username=username, password=password)
            logins[username] = password
        users[username] = user
    return users, logins


def seed_demo(*, size: int = 300, seed: int = 7, quality_report: bool = True) -> SeedResult:
    """Create the demo project once: members, examples (clean and flawed), splits, version 1, rubric, base model.

    Idempotent: when the demo project exists nothing is changed and ``created`` is False.
    ``size`` is the number of clean examples (the journey test uses a small one).
    """
    existing = Project.objects.filter(slug=DEMO_SLUG).first()
    if existing is not None:
        return SeedResult(project=existing, created=False)

    from apps.datasets import importing as datasets_importing
    from apps.datasets import services as datasets
    from apps.datasets import versions as datasets_versions

    base_model = _ensure_base_model()  # may convert the shipped GGUF once (tens of seconds): outside the transaction
    clean = generator.generate_examples(size, seed=seed)
    flawed = generator.flawed_examples(clean, seed=seed)
    with transaction.atomic():
        users, logins = _ensure_users()
        pm = next(users[u] for u, role in DEMO_USERS.items() if role == Role.PM)
        designer = next(users[u] for u, role in DEMO_USERS.items() if role == Role.DESIGNER)
        project = create_project(name=DEMO_NAME, created_by=pm, description=DEMO_DESCRIPTION, slug=DEMO_SLUG)
        for username, role in DEMO_USERS.items():
            if users[username] != pm:
                add_member(project=project, user=users[username], role=role)

        for name, examples, tags in ((CLEAN_FILE, clean, ["demo"]), (FLAWED_FILE, flawed, ["demo", "inbox"])):
            report = datasets_importing.import_examples(
                project=project,
                path_or_file=io.BytesIO(to_jsonl(examples, tags=tags)),
                file_format="openai",
                filename=name,
                user=designer,
            )
            if not report.ok:
                raise DemoError(f"Importing {name} failed: {'; '.join(str(e) for e in report.errors[:5])}")
        datasets_versions.assign_splits(project=project, seed=seed)
        _approve_clean(project=project, user=designer)
        raw = _freeze_raw(project=project, user=designer)
        version = datasets_versions.freeze_version(
            project=project,
            user=designer,
            note=f"Demo (curated): {size} approved house-style replies; the flagged inbox examples left out",
        )
        _ensure_rubric(project=project, user=designer)
        if quality_report:
            datasets.run_quality_report(project=project)
    notes = [
        f"Dataset v{raw.number} (raw, the unreviewed inbox included): {raw.split_counts}.",
        f"Dataset v{version.number} (curated): {version.split_counts}.",
    ]
    if base_model is not None:
        notes.append(f"Base model: {base_model}.")
    return SeedResult(project=project, created=True, logins=logins, notes=notes)


def _approve_clean(*, project: Project, user) -> None:
    """Approve every imported example that is not from the unreviewed inbox (those stay drafts to fix)."""
    from apps.datasets import services as datasets
    from apps.datasets.models import Example, ExampleStatus

    for example in (
        Example.objects.filter(project=project, status=ExampleStatus.DRAFT)
        .exclude(source__filename=FLAWED_FILE)
        .order_by("id")
    ):
        datasets.set_status(example=example, status=ExampleStatus.APPROVED, user=user)


def _freeze_raw(*, project: Project, user):
    """Version 1, the raw data: every imported example in its split as it came in, the six unreviewed inbox
    examples (flaws included) with the approved ones, frozen before anyone reviewed them. The curated version 2
    leaves them out; runs on version 1 are then "not evaluated on current data"."""
    from apps.datasets import versions as datasets_versions
    from apps.datasets.models import Example, ExampleStatus

    splits: dict[str, list[int]] = {}
    for pk, split in (
        Example.objects.filter(project=project)
        .exclude(status=ExampleStatus.REJECTED)
        .order_by("id")
        .values_list("id", "split")
    ):
        splits.setdefault(split, []).append(pk)
    return datasets_versions.freeze_selection(
        project=project,
        splits=splits,
        user=user,
        note="Demo (raw): everything imported, the unreviewed inbox with its flaws included",
    )


# --- the demo's one-click scaling experiment ---------------------------------------------------------------
@dataclass(frozen=True)
class DemoExperimentPlan:
    version: object  # the curated DatasetVersion
    fractions: tuple[float, ...]
    steps: int
    preset: str

    @property
    def sizes(self) -> list[int]:
        from apps.experiments.statistics import subset_size

        return [subset_size(f, self.version.split_counts.get("train", 0)) for f in self.fractions]


# Three sizes, the same 30 steps each (the quick preset's steps on the full split): the curve measures data, not
# training length, and the whole experiment (3 runs + 3 automatic-only evaluations) stays within minutes on a CPU.
DEMO_EXPERIMENT_FRACTIONS = (0.125, 0.5, 1.0)
DEMO_EXPERIMENT_STEPS = 30
DEMO_EXPERIMENT_PRESET = "quick"


def demo_experiment_plan(project) -> DemoExperimentPlan | None:
    """What the demo's experiment button launches; None outside the demo project or before its curated version."""
    from apps.datasets.selectors import frozen_versions

    if project.slug != DEMO_SLUG:
        return None
    version = frozen_versions(project).filter(note__startswith="Demo (curated)").first()
    if version is None:
        return None
    return DemoExperimentPlan(version, DEMO_EXPERIMENT_FRACTIONS, DEMO_EXPERIMENT_STEPS, DEMO_EXPERIMENT_PRESET)


def launch_demo_experiment(*, project, user=None):
    """Launch the demo's scaling experiment on the curated version (experiments' ExperimentError if refused)."""
    from apps.experiments.services import ExperimentError, launch_experiment

    plan = demo_experiment_plan(project)
    if plan is None:
        raise ExperimentError("The one-click scaling experiment belongs to the seeded demo project.")
    return launch_experiment(
        project=project,
        versions=[plan.version],
        fractions=plan.fractions,
        preset=plan.preset,
        steps=plan.steps,
        labels=["curated"],
        name=f"Demo: how much data? {', '.join(str(n) for n in plan.sizes)} examples, {plan.steps} steps each",
        user=user,
    )


def _ensure_base_model():
    """Register the shipped SmolLM2-135M-Instruct (B's service); None when runs are not installed yet."""
    try:
        from apps.runs.base_models import ensure_shipped_base_model
    except ImportError:
        log.warning("apps.runs.base_models.ensure_shipped_base_model is missing: the demo has no base model yet")
        return None
    return ensure_shipped_base_model()


def _ensure_rubric(*, project: Project, user):
    """The demo's rubric (four criteria: two pass/fail, two 1-5 with anchors), through the evaluations service."""
    from apps.evaluations.services import CriterionSpec, create_rubric
    from worker.checks import CheckSpec

    criteria = [
        CriterionSpec(
            name=c["name"],
            description=c["description"],
            scale=c["scale"],
            anchors=c.get("anchors"),
            checks=[CheckSpec(kind, text, number) for kind, text, number in c.get("checks", [])],
        )
        for c in generator.RUBRIC_CRITERIA
    ]
    return create_rubric(
        project=project,
        name=generator.RUBRIC_NAME,
        criteria=criteria,
        user=user,
        description="What a good Lumo support reply is. Reviewers score each side on each criterion.",
    )


def save_logins(logins: dict[str, str]) -> str:
    """Write the demo logins next to the admin login (var/, mode 600) and return the path."""
    note = settings.VAR_DIR / "demo-logins.txt"
    lines = [f"{username} ({DEMO_USERS[username].label}): {password}" for username, password in logins.items()]
    note.write_text("\n".join(lines) + "\n")
    note.chmod(0o600)
    return str(note)
