"""The prompt workspace answers the run and evaluation forms (connected in PromptsConfig.ready): the best scored
prompt of each version, and the versions a prompt-only candidate may be made of."""

from __future__ import annotations

from . import selectors


def on_launch_form_asked(sender, *, project, **kwargs) -> dict:
    best = selectors.best_by_dataset_version(project)
    return {"prompt_bars": {pk: selectors.score_words(version) for pk, version in best.items()}}


def on_evaluation_form_asked(sender, *, project, **kwargs) -> dict:
    return {
        "prompt_versions": selectors.scored_versions(project),
        "prompt_words": selectors.score_words,
        "prompt_best": selectors.best_prompt_version(project),
    }
