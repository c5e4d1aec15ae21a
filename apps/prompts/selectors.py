"""Prompt workspace reads: the versions of a project, the best one, and a version's outputs beside the ideal.

"Best" means the highest mean similarity to the ideal on the validation split of the version's dataset version
(always available, and comparable between prompt versions of one dataset version); the rubric's check pass
rate is shown beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.datasets.models import DatasetVersion, DatasetVersionItem

from .models import PromptOutput, PromptStatus, PromptVersion


def prompt_versions(project):
    return (
        PromptVersion.objects.filter(project=project)
        .select_related("dataset_version", "base_model", "rubric", "created_by")
        .order_by("-number")
    )


def scored_versions(project):
    return PromptVersion.objects.filter(project=project, status=PromptStatus.SCORED)


def any_scored(project) -> bool:
    """Whether a prompt was ever tried and scored in this project (the run form asks before launching if not)."""
    return scored_versions(project).exists()


def best_prompt_version(project, dataset_version: DatasetVersion | None = None) -> PromptVersion | None:
    """The best scored prompt version, on ``dataset_version`` when given (else the newest dataset version that
    has a scored one)."""
    scored = scored_versions(project).select_related("dataset_version")
    if dataset_version is not None:
        scored = scored.filter(dataset_version=dataset_version)
    return scored.order_by("-dataset_version__number", "-mean_similarity", "-number").first()


def best_by_dataset_version(project) -> dict[int, PromptVersion]:
    """{dataset version pk: its best scored prompt version}."""
    best: dict[int, PromptVersion] = {}
    for version in scored_versions(project).order_by("-mean_similarity", "-number"):
        best.setdefault(version.dataset_version_id, version)
    return best


def train_items(dataset_version: DatasetVersion | None, limit: int = 200):
    """The train items a designer picks few-shot examples from."""
    if dataset_version is None:
        return DatasetVersionItem.objects.none()
    return dataset_version.items.filter(split="train").order_by("position")[:limit]


@dataclass
class OutputRow:
    position: int
    input_text: str
    ideal: str
    output: PromptOutput


def output_rows(version: PromptVersion) -> list[OutputRow]:
    rows = []
    for o in version.outputs.select_related("item").order_by("item__position"):
        text = "\n".join(m.get("content", "") for m in o.item.input_messages if m.get("role") == "user")
        rows.append(OutputRow(o.item.position, text, o.item.ideal_output, o))
    return rows


def score_words(version: PromptVersion | None) -> str:
    """One line for forms: "prompt v3: similarity 0.62, all checks on 8 of 10"."""
    if version is None:
        return ""
    words = f"{version}: similarity {version.mean_similarity:.2f}"
    if version.checks_passed is not None:
        words += f", every automatic check passed on {version.checks_passed} of {version.total}"
    return words
