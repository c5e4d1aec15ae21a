"""Launching runs: validation (nothing queued on bad input), presets, the estimate, the launch page, the command."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.runs import launching
from apps.runs.models import BaseModel, Run, RunStatus
from tests import runs_setup
from tests.factories import make_dataset_version
from tests.runs_setup import small_version

tiny_base_model = runs_setup.tiny_base_model


pytestmark = pytest.mark.django_db


def launch(team, version, model, **kw):
    return launching.launch_run(project=team.project, dataset_version=version, base_model=model, **kw)


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"learning_rate": 5}, "learning_rate", "between"),
        ({"lora_r": 0}, "lora_r", "between"),
        ({"batch_size": 2.5}, "batch_size", "whole number"),
        ({"epochs": "many"}, "epochs", "must be a number"),
        ({"max_seq_length": 4096}, "max_seq_length", "over Tiny Llama's context length of 512"),
        ({"target_modules": "q_proj,banana"}, "target_modules", "unknown: banana"),
        ({"warp_speed": 9}, "warp_speed", "not a hyperparameter"),
    ],
)
def test_out_of_range_hyperparameters_are_refused_naming_the_field_and_nothing_is_queued(
    team, tiny_base_model, overrides, field, message
):
    version = small_version(team.project)
    with pytest.raises(launching.LaunchError) as caught:
        launch(team, version, tiny_base_model, overrides=overrides)
    assert message in caught.value.errors[field]
    assert not Run.objects.exists()


def test_an_empty_version_an_unknown_model_and_another_projects_version_are_refused(team, tiny_base_model):
    empty = make_dataset_version(team.project, {"train": [], "val": [], "test": []})
    with pytest.raises(launching.LaunchError, match="no training examples"):
        launch(team, empty, tiny_base_model)
    with pytest.raises(launching.LaunchError, match="Unknown base model 'gpt-17'"):
        launch(team, small_version(team.project), "gpt-17")
    foreign = small_version(team.other_project)
    with pytest.raises(launching.LaunchError, match="frozen dataset version of this project"):
        launch(team, foreign, tiny_base_model)
    with pytest.raises(launching.LaunchError, match="Unknown preset"):
        launch(team, small_version(team.project), tiny_base_model, preset="ludicrous")
    assert not Run.objects.exists()


def test_presets_fill_in_the_hyperparameters_and_the_estimate_counts_steps(team, tiny_base_model):
    version = small_version(team.project)
    quick = launch(team, version, tiny_base_model)
    thorough = launch(team, version, tiny_base_model, preset="thorough", overrides={"max_seq_length": 256})
    assert quick.hyperparameters["epochs"] == 1 and quick.hyperparameters["lora_r"] == 8
    assert thorough.hyperparameters["epochs"] == 3 and "down_proj" in thorough.hyperparameters["target_modules"]
    assert quick.estimate["steps"] == 2 == quick.total_steps  # 12 examples, batch 8
    assert thorough.estimate["steps"] == 3 * 1  # batch 8, grad accum 2 -> 1 step per epoch
    assert quick.estimate["seconds"] > 0 and quick.estimate["memory_mb"] > 0
    assert quick.estimate["throughput_source"] == "assumed"
    assert quick.status == RunStatus.QUEUED


def test_the_estimate_uses_the_measured_throughput_of_earlier_runs(team, tiny_base_model):
    version = small_version(team.project)
    done = launch(team, version, tiny_base_model)
    Run.objects.filter(pk=done.pk).update(status=RunStatus.SUCCEEDED, tokens_per_second=1234.0)
    again = launch(team, version, tiny_base_model)
    assert again.estimate["tokens_per_second"] == 1234.0 and again.estimate["throughput_source"] == "measured"


def test_the_launch_page_shows_form_errors_and_queues_nothing_on_bad_input(team, tiny_base_model):
    version = small_version(team.project)
    client = team.client("pm")
    page = client.post(
        f"/p/{team.project.slug}/runs/new/",
        {
            "dataset_version": version.pk,
            "base_model": tiny_base_model.pk,
            "preset": "quick",
            "max_seq_length": 9999,
            "launch_without_prompt": "on",
        },
    )
    assert page.status_code == 200
    assert "over Tiny Llama&#x27;s context length of 512" in page.content.decode()
    assert not Run.objects.exists()
    # the knob with the error is shown: the "Advanced" disclosure is open on the re-shown form, closed on a new one
    assert '<details id="advanced-settings" class="advanced" open>' in page.content.decode()
    fresh = client.get(f"/p/{team.project.slug}/runs/new/").content.decode()
    assert '<details id="advanced-settings" class="advanced">' in fresh
    assert fresh.index('id="id_preset"') < fresh.index('id="advanced-settings"') < fresh.index('id="id_learning_rate"')


def test_the_launch_page_estimates_as_the_form_changes_and_launches_a_run(
    team, tiny_base_model, django_capture_on_commit_callbacks
):
    version = small_version(team.project)
    client = team.client("pm")
    estimate = client.get(
        f"/p/{team.project.slug}/runs/estimate/",
        {"dataset_version": version.pk, "base_model": tiny_base_model.pk, "preset": "quick", "epochs": 3},
        headers={"HX-Request": "true"},
    )
    assert 'id="estimate-steps">6<' in estimate.content.decode() and "<html" not in estimate.content.decode()
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            f"/p/{team.project.slug}/runs/new/",
            {
                "dataset_version": version.pk,
                "base_model": tiny_base_model.pk,
                "preset": "balanced",
                "epochs": 1,
                "launch_without_prompt": "on",
            },
        )
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.preset == "balanced" and run.hyperparameters["epochs"] == 1 and run.created_by == team.pm
    # the training task is queued after commit (beside it, the API gives the run its fine-tuning job)
    queued = [c for c in callbacks if getattr(c, "func", None) is not None and c.func.__name__ == "delay"]
    assert [c.args for c in queued] == [(run.pk,)]


def test_only_a_pm_may_launch_or_cancel(team, tiny_base_model):
    version = small_version(team.project)
    run = launch(team, version, tiny_base_model)
    for role in ("designer", "reviewer"):
        client = team.client(role)
        assert client.post("/p/support/runs/new/", {"dataset_version": version.pk}).status_code == 403
        assert client.post(f"/p/support/runs/{run.pk}/cancel/").status_code == 403
        assert client.get(f"/p/support/runs/{run.pk}/").status_code == 200
    assert team.client("outsider").get(f"/p/support/runs/{run.pk}/").status_code == 404
    assert team.client("pm").post(f"/p/support/runs/{run.pk}/cancel/").status_code == 302
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED  # a queued run is cancelled at once


@pytest.mark.django_db(transaction=True)
def test_launch_run_command_waits_for_the_run_and_prints_its_id(team, tiny_base_model, eager, capsys):
    small_version(team.project)
    call_command(
        "launch_run",
        "--project",
        "support",
        "--dataset-version",
        "1",
        "--base-model",
        "tiny-llama",
        "--max-steps",
        "2",
        "--wait",
        "--poll",
        "0",
    )
    out = capsys.readouterr()
    run = Run.objects.get()
    assert out.out.strip() == str(run.pk)
    assert run.status == RunStatus.SUCCEEDED and run.step == 2
    with pytest.raises(CommandError, match="no training examples"):
        make_dataset_version(team.project, {"train": [], "val": [], "test": []})
        call_command("launch_run", "--project", "support", "--dataset-version", "2", "--base-model", "tiny-llama")


def test_register_model_command_reads_the_model_and_refuses_a_folder_outside_the_roots(
    settings, tiny_model_dir, tmp_path
):
    settings.FTSTUDIO_MODEL_ROOTS = [*settings.FTSTUDIO_MODEL_ROOTS, Path(tiny_model_dir).parent]
    out = io.StringIO()
    call_command("register_model", "tiny", str(tiny_model_dir), "--display-name", "Tiny", stdout=out)
    model = BaseModel.objects.get(name="tiny")
    assert model.source_kind == "local" and model.parameter_count > 0 and model.architecture
    assert "tiny: " in out.getvalue() and "parameters" in out.getvalue()

    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, outside)
    with pytest.raises(CommandError, match="Could not register 'rogue'"):
        call_command("register_model", "rogue", str(outside))
    assert not BaseModel.objects.filter(name="rogue").exists()


def version_choices(page: str) -> list[str]:
    """The option values of the page's dataset version select."""
    select = re.search(r'<select name="dataset_version".*?</select>', page, re.S)
    assert select, "the page has no dataset version select"
    return re.findall(r'<option value="(\d+)"', select.group(0))


def test_the_launch_form_offers_versions_a_person_froze_and_refuses_an_experiments_subset(team, tiny_base_model):
    from apps.datasets.versions import freeze_subset

    version = small_version(team.project)
    first_train = version.items.filter(split="train").order_by("position").first().position
    subset = freeze_subset(source=version, train_positions=[first_train], note="experiment point")
    client = team.client("pm")
    assert version_choices(client.get(f"/p/{team.project.slug}/runs/new/").content.decode()) == [str(version.pk)]
    refused = client.post(
        f"/p/{team.project.slug}/runs/new/",
        {
            "dataset_version": subset.pk,
            "base_model": tiny_base_model.pk,
            "preset": "quick",
            "launch_without_prompt": "on",
        },
    )
    assert refused.status_code == 200
    assert (
        f"v{subset.number} is part of v{version.number}, a subset an experiment froze for its own runs: pick a "
        "version a person froze." in refused.content.decode()
    )
    assert not Run.objects.exists()
