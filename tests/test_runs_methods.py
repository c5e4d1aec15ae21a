"""Runs that learn from preferences (DPO) or from graders (GRPO): launched with their checks, trained by the task on
the tiny model, metrics and charts recorded, resumed by the reaper from a checkpoint; the launch form's errors."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.datasets.models import PreferenceVersion, PreferenceVersionItem
from apps.runs import artifacts, execution, launching, methods
from apps.runs.models import Run, RunStatus
from apps.runs.tasks import reap, train_run
from tests import runs_setup
from tests.runs_setup import FAST, small_version

tiny_base_model = runs_setup.tiny_base_model

pytestmark = pytest.mark.django_db

HAS_A = {"type": "string_check", "name": "has_a", "input": "{{sample.output_text}}", "reference": "a"}
HAS_A["operation"] = "like"
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "operation": "eq"}
EXACT.update(reference="{{item.reference_answer}}", weight=0.5)
GRPO_FAST = {**FAST, "max_steps": 3, "num_generations": 4, "max_completion_length": 8}


def make_preference_version(project, dataset_version, train: int = 8, val: int = 2, test_inputs=()):
    """A frozen preference version of ``train`` + ``val`` pairs (and pairs whose input is one of ``test_inputs``)."""
    version = PreferenceVersion.objects.create(
        project=project,
        number=PreferenceVersion.objects.filter(project=project).count() + 1,
        dataset_version=dataset_version,
        content_hash=hashlib.sha256(str(train).encode()).hexdigest(),
        split_counts={"train": train + len(test_inputs), "val": val},
    )
    rows = [(f"Where is order #{200 + i}?", "train") for i in range(train)]
    rows += [(f"Where is order #{300 + i}?", "val") for i in range(val)] + [(t, "train") for t in test_inputs]
    for position, (question, split) in enumerate(rows):
        item = {
            "messages": [{"role": "user", "content": question}],
            "preferred": {"role": "assistant", "content": "It ships today. Warm regards, Lumo"},
            "non_preferred": {"role": "assistant", "content": "No idea."},
        }
        PreferenceVersionItem.objects.create(
            version=version,
            position=position,
            split=split,
            content_hash=hashlib.sha256(json.dumps(item).encode()).hexdigest(),
            **item,
        )
    return version


@pytest.fixture
def dpo_run(team, tiny_base_model):
    version = small_version(team.project)
    preferences = make_preference_version(team.project, version, train=16)  # 4 steps, one validation at the end
    return launching.launch_run(
        project=team.project,
        dataset_version=None,
        base_model=tiny_base_model,
        overrides={**FAST, "beta": 0.2},
        method="dpo",
        preference_version=preferences,
        user=team.pm,
    )


def test_a_preference_run_trains_records_margin_and_held_out_accuracy_and_charts_them(dpo_run, team):
    assert dpo_run.dataset_version == dpo_run.preference_version.dataset_version  # its test split judges the run
    assert dpo_run.hyperparameters["beta"] == 0.2 and "num_generations" not in dpo_run.hyperparameters
    assert dpo_run.total_steps == 4 and dpo_run.estimate["examples"] == 16  # the estimate counts the pairs
    assert train_run(dpo_run.pk) == RunStatus.SUCCEEDED
    dpo_run.refresh_from_db()
    assert dpo_run.step == 4 and (execution.run_dir(dpo_run) / "adapter" / "adapter_model.safetensors").is_file()
    trained = list(dpo_run.metrics.filter(train_loss__isnull=False).order_by("step"))
    assert [m.step for m in trained] == [1, 2, 3, 4] and trained[-1].train_loss < trained[0].train_loss
    assert trained[-1].reward_margin > 0
    held_out = dpo_run.metrics.filter(val_loss__isnull=False).order_by("step").last()
    assert held_out.step == 4 and 0 <= held_out.preference_accuracy <= 1
    assert "checkpoint-4" in dpo_run.checkpoint_path

    page = team.client("reviewer").get(dpo_run.get_absolute_url()).content.decode()
    assert 'id="method-chart"' in page and "reward margin" in page and "preference accuracy" in page
    assert "Learn from preferences from preference pairs p1" in page


def test_a_grader_run_samples_replies_and_records_each_grader_s_mean_reward(team, tiny_base_model):
    run = launching.launch_run(
        project=team.project,
        dataset_version=small_version(team.project),
        base_model=tiny_base_model,
        overrides=GRPO_FAST,
        method="reinforcement",
        graders=[HAS_A, EXACT],
        user=team.pm,
    )
    assert run.total_steps == 3 and run.graders[1]["weight"] == 0.5
    assert train_run(run.pk) == RunStatus.SUCCEEDED
    run.refresh_from_db()
    rewards = list(run.metrics.filter(train_loss__isnull=False).order_by("step").values_list("rewards", flat=True))
    assert len(rewards) == 3 and all(set(r) == {"has_a", "exact", "total"} for r in rewards)
    assert all(r["exact"] == 0.0 for r in rewards)  # a random tiny model never writes the ideal output
    assert all(r["total"] == pytest.approx(r["has_a"]) for r in rewards)  # weighted: 1 x has_a + 0.5 x 0
    page = team.client("reviewer").get(run.get_absolute_url()).content.decode()
    assert 'id="method-chart"' in page and "has_a" in page and "all graders, weighted" in page
    assert "graded by has_a, exact (weight 0.5)" in page


def test_a_preference_run_whose_worker_died_resumes_from_its_checkpoint_and_runs_each_step_once(
    dpo_run, eager, settings, django_capture_on_commit_callbacks
):
    from worker.train import Hooks, train

    model_dir = artifacts.base_model_dir(dpo_run.base_model)
    config = execution.train_config(dpo_run, model_dir, execution.run_dir(dpo_run))
    train_rows, val_rows = methods.training_data(dpo_run)
    seen = []
    killed = train(
        config,
        train_rows,
        val_rows,
        Hooks(on_progress=lambda p: seen.append(p.step), should_cancel=lambda: bool(seen) and seen[-1] >= 3),
    )
    assert killed.status == "cancelled" and killed.global_step == 3
    stale = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 5)
    Run.objects.filter(pk=dpo_run.pk).update(status=RunStatus.RUNNING, attempts=1, heartbeat_at=stale, step=3)
    with django_capture_on_commit_callbacks(execute=True):
        assert reap()["runs"] == [dpo_run.pk]
    dpo_run.refresh_from_db()
    assert dpo_run.status == RunStatus.SUCCEEDED and dpo_run.attempts == 2 and dpo_run.step == 4
    assert "resuming from" in dpo_run.log_tail and "checkpoint-2" in dpo_run.log_tail
    assert list(dpo_run.metrics.filter(train_loss__isnull=False).values_list("step", flat=True)) == [3, 4]


def test_a_run_started_from_a_finished_run_trains_on_that_run_s_adapter(team, tiny_base_model, dpo_run):
    Run.objects.filter(pk=dpo_run.pk).update(status=RunStatus.SUCCEEDED, adapter_path="/nowhere")
    adapter = execution.run_dir(dpo_run) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    Run.objects.filter(pk=dpo_run.pk).update(adapter_path=str(adapter))
    second = launching.launch_run(
        project=team.project,
        dataset_version=None,
        base_model=tiny_base_model,
        overrides=FAST,
        method="dpo",
        preference_version=dpo_run.preference_version,
        start_from=dpo_run.pk,
        user=team.pm,
    )
    config = execution.train_config(second, "model", execution.run_dir(second))
    assert config.method == "dpo" and config.start_adapter_dir == str(adapter) and config.beta == 0.1


# --- launch checks (no model) ---------------------------------------------------------------------------------------
def launch_errors(team, tiny_base_model, **kw) -> dict:
    values = {"project": team.project, "dataset_version": None, "base_model": tiny_base_model, "overrides": FAST}
    before = Run.objects.count()
    with pytest.raises(launching.LaunchError) as caught:
        launching.launch_run(**{**values, **kw})
    assert Run.objects.count() == before  # nothing half-saved
    return caught.value.errors


def test_launch_refusals_name_the_field_and_say_why(team, tiny_base_model):
    version = small_version(team.project)
    preferences = make_preference_version(team.project, version)
    other = make_preference_version(team.other_project, small_version(team.other_project))
    errors = launch_errors(team, tiny_base_model, method="dpo")
    assert "Choose a frozen preference version" in errors["preference_version"]
    errors = launch_errors(team, tiny_base_model, method="dpo", preference_version=other.pk)
    assert errors["preference_version"] == "Choose a frozen preference version of this project."
    test_input = version.items.filter(split="test")[0].messages[0]["content"]
    leaky = make_preference_version(team.project, version, test_inputs=[test_input])
    errors = launch_errors(team, tiny_base_model, method="dpo", preference_version=leaky)
    assert "1 pair(s) of p2 have the input of a test example of v1" in errors["preference_version"]
    errors = launch_errors(
        team, tiny_base_model, method="dpo", preference_version=preferences, overrides={**FAST, "beta": 50}
    )
    assert errors == {"beta": "Preference strength (beta) must be between 0.001 and 10; got 50."}
    errors = launch_errors(team, tiny_base_model, dataset_version=version, overrides={**FAST, "beta": 0.2})
    assert errors == {"beta": "Preference strength (beta) applies only to runs that learn from preferences."}

    errors = launch_errors(team, tiny_base_model, dataset_version=version, method="reinforcement", graders=[])
    assert errors["graders"].startswith("Add at least one grader")
    bad = [HAS_A, {**HAS_A, "operation": "sounds_like"}]
    errors = launch_errors(team, tiny_base_model, dataset_version=version, method="reinforcement", graders=bad)
    assert errors["graders"] == "Grader 2 ('has_a'): another grader has the same name; names must differ."
    bad = [{**HAS_A, "operation": "sounds_like"}]
    errors = launch_errors(team, tiny_base_model, dataset_version=version, method="reinforcement", graders=bad)
    assert errors["graders"] == "Grader 1 ('has_a'), operation: must be one of eq, ne, like, ilike."
    python = [{"type": "python", "name": "mine", "source": "def grade(sample, item): return 1"}]
    errors = launch_errors(team, tiny_base_model, dataset_version=version, method="reinforcement", graders=python)
    assert errors["graders"] == "Grader 1 ('mine'), type: python graders are refused: the Studio runs no uploaded code."
    errors = launch_errors(
        team,
        tiny_base_model,
        dataset_version=version,
        method="reinforcement",
        graders=[HAS_A],
        overrides={**FAST, "num_generations": 3},
    )
    assert errors["num_generations"].startswith("Replies per prompt (3) must divide the batch size")

    unfinished = launching.launch_run(
        project=team.project, dataset_version=version, base_model=tiny_base_model, overrides=FAST
    )
    errors = launch_errors(team, tiny_base_model, method="dpo", preference_version=preferences, start_from=unfinished)
    assert errors["start_from"] == f"{unfinished} is queued: only a finished, succeeded run's model can be the start."
    errors = launch_errors(team, tiny_base_model, dataset_version=version, start_from=unfinished)
    assert "Starting from another run is for learning from preferences or from graders." in errors["start_from"]


def test_the_launch_form_offers_the_methods_and_shows_grader_json_errors_in_place(team, tiny_base_model):
    version = small_version(team.project)
    make_preference_version(team.project, version)
    page = team.client("pm").get("/p/support/runs/new/").content.decode()
    assert "Learn from preferences" in page and "Learn from graders" in page and "p1" in page
    answer = team.client("pm").post(
        "/p/support/runs/new/",
        {
            "method": "reinforcement",
            "dataset_version": version.pk,
            "base_model": tiny_base_model.pk,
            "preset": "quick",
            "graders": '[{"type": "string_check", "name": "x",}]',
            "launch_without_prompt": "on",
        },
    )
    html = answer.content.decode()
    assert answer.status_code == 200 and not Run.objects.exists()
    assert "Graders are not valid JSON: Expecting property name enclosed in double quotes at line 1, column 39." in html


def test_a_run_that_learns_from_graders_can_take_the_rubric_s_checks_as_its_graders(team, tiny_base_model):
    """The designer's rubric is the run's reward: its automatic checks, with their weights, become the graders."""
    from apps.evaluations import services as evaluations
    from worker.checks import CheckSpec

    version = small_version(team.project)
    evaluations.create_rubric(
        project=team.project,
        name="House style",
        criteria=[
            evaluations.CriterionSpec(
                "Greeting", "Greets the customer", checks=[CheckSpec("starts_with", "Hi", weight=2.0)]
            ),
            evaluations.CriterionSpec("Short", "One sentence", checks=[CheckSpec("max_sentences", number=1)]),
        ],
    )
    client = team.client("pm")
    page = client.get("/p/support/runs/new/").content.decode()
    assert "House style (version 1): 2 graders" in page
    rubric_pk = re.search(r'<option value="(\d+)">House style \(version 1\)', page).group(1)
    answer = client.post(
        "/p/support/runs/new/",
        {
            "method": "reinforcement",
            "dataset_version": version.pk,
            "base_model": tiny_base_model.pk,
            "preset": "quick",
            "graders_from_rubric": rubric_pk,
            "launch_without_prompt": "on",
        },
    )
    assert answer.status_code == 302, answer.content.decode()[:2000]
    run = Run.objects.get()
    assert run.method == "reinforcement"
    assert [(g["type"], g["check"]["kind"], g["weight"]) for g in run.graders] == [
        ("rubric_check", "starts_with", 2.0),
        ("rubric_check", "max_sentences", 1.0),
    ]


def test_a_preference_run_learns_gently_unless_told_otherwise(team, tiny_base_model):
    """The supervised presets' learning rate collapses a preference run that starts from a tuned model (the demo's:
    loss 0 within 8 steps, garbled replies), so a preference run takes its own gentler rate unless one is asked."""
    version = small_version(team.project)
    preferences = make_preference_version(team.project, version, train=16)
    fast = {k: v for k, v in FAST.items() if k != "learning_rate"}
    gentle = launching.launch_run(
        project=team.project,
        dataset_version=None,
        base_model=tiny_base_model,
        overrides=fast,
        method="dpo",
        preference_version=preferences,
    )
    assert gentle.hyperparameters["learning_rate"] == 5e-5
    asked = launching.launch_run(
        project=team.project,
        dataset_version=None,
        base_model=tiny_base_model,
        overrides={**fast, "learning_rate": 1e-4},
        method="dpo",
        preference_version=preferences,
    )
    assert asked.hyperparameters["learning_rate"] == 1e-4
    supervised = launching.launch_run(
        project=team.project, dataset_version=version, base_model=tiny_base_model, overrides=fast
    )
    assert supervised.hyperparameters["learning_rate"] == launching.PRESETS["quick"]["learning_rate"]
