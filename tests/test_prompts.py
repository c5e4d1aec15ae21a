"""The prompt workspace: numbered prompt versions scored on the validation split (outputs and scores stored per
version), the best one as the evaluation form's prompt baseline, and the run form's "try a prompt first"."""

from __future__ import annotations

import pytest

from apps.evaluations import generation as eval_services_generation
from apps.evaluations import services as eval_services
from apps.evaluations.models import Candidate, Scale
from apps.prompts import selectors, services
from apps.prompts.models import PromptOutput, PromptStatus, PromptVersion
from apps.runs.models import BaseModel, Run
from tests.factories import conversation, make_dataset_version
from worker.checks import CheckSpec

pytestmark = pytest.mark.django_db


def house_version(project):
    """Train examples to pick from, three validation examples with a {customer} in the input, a test split."""
    ask = "Customer: {name}\nFacts: order #{n} ships {day}.\nMessage: where is my order?"
    return make_dataset_version(
        project,
        {
            "train": [
                conversation(ask.format(name="Ann", n=1, day="today"), "Hi Ann,\nOrder #1 ships today.\nWarm regards"),
                conversation(ask.format(name="Bo", n=2, day="Monday"), "Hi Bo,\nOrder #2 ships Monday.\nWarm regards"),
            ],
            "val": [
                conversation(
                    ask.format(name=name, n=n, day="Friday"), f"Hi {name},\nOrder #{n} ships Friday.\nWarm regards"
                )
                for name, n in (("Cy", 3), ("Di", 4), ("Ed", 5))
            ],
            "test": [
                conversation(ask.format(name="Fay", n=6, day="today"), "Hi Fay,\nOrder #6 ships today.\nWarm regards")
            ],
        },
    )


def checked_rubric(project):
    return eval_services.create_rubric(
        project=project,
        name="House style",
        criteria=[
            eval_services.CriterionSpec(
                "Format",
                "greeting and sign-off",
                Scale.PASS_FAIL,
                checks=[CheckSpec("starts_with", "Hi "), CheckSpec("ends_with", "Warm regards")],
            ),
            eval_services.CriterionSpec(
                "Facts", "states the day", Scale.PASS_FAIL, checks=[CheckSpec("contains", "Friday")]
            ),
        ],
    )


def model():
    return BaseModel.objects.get_or_create(
        name="m", defaults={"display_name": "M", "source_kind": "local", "source": "/x"}
    )[0]


def scored(project, version, texts, *, prompt="Reply in house style.", shots=(0,), rubric=None):
    """A prompt version scored on the given outputs, without a model (the scoring itself is what is tested)."""
    pv = services.create_prompt_version(
        project=project,
        dataset_version=version,
        system_prompt=prompt,
        shot_positions=list(shots),
        base_model=model(),
        rubric=rubric,
        enqueue=False,
    )
    items = list(version.items.filter(split="val").order_by("position"))
    services.score_outputs(pv, items, texts)
    services.finish_scoring(pv)
    return pv


def test_scoring_stores_each_output_with_its_similarity_and_checks_and_the_version_totals(team):
    version, rubric = house_version(team.project), checked_rubric(team.project)
    pv = scored(
        team.project,
        version,
        [
            "Hi Cy,\nOrder #3 ships Friday.\nWarm regards",  # all checks pass
            "Hi Di,\nOrder #1 ships today.\nWarm regards",  # format right, facts copied
            "order ships",
        ],
        rubric=rubric,
    )  # neither
    assert pv.number == 1 and pv.status == PromptStatus.SCORED and pv.total == 3
    outputs = list(PromptOutput.objects.filter(prompt_version=pv).order_by("item__position"))
    assert [o.passed_all for o in outputs] == [True, False, False]
    assert outputs[0].similarity == pytest.approx(1.0) and outputs[2].similarity < outputs[1].similarity < 1
    assert [c["passed"] for c in outputs[1].checks] == [True, True, False]
    assert pv.checks_passed == 1
    assert pv.check_summary == {"Format": [4, 6], "Facts": [1, 3]}  # format on 2 of 3 outputs, facts on 1
    assert pv.mean_similarity == pytest.approx(sum(o.similarity for o in outputs) / 3)
    assert pv.shot_messages == [version.items.get(position=0).messages]  # the chosen train example, copied


def test_versions_are_numbered_and_the_best_scored_one_is_the_evaluation_forms_default_baseline(team):
    version, rubric = house_version(team.project), checked_rubric(team.project)
    weak = scored(team.project, version, ["no", "no", "no"], prompt="Be brief.")
    strong = scored(
        team.project,
        version,
        ["Hi Cy,\nOrder #3 ships Friday.\nWarm regards"] * 3,
        prompt="Greet by name, state the facts, sign off.",
        shots=(1, 0),
    )
    assert (weak.number, strong.number) == (1, 2)
    assert selectors.best_prompt_version(team.project) == strong
    html = team.client("pm").get("/p/support/evals/new/").content.decode()
    assert f'<option value="{strong.pk}" selected>Prompt v2: similarity' in html

    from apps.evaluations.forms import EvaluationForm

    form = EvaluationForm(
        {
            "dataset_version": version.pk,
            "rubric": rubric.pk,
            "include_base": "on",
            "include_prompt": "on",
            "prompt_version": strong.pk,
            "few_shot": 2,
            "max_new_tokens": 32,
            "seed": 0,
            "reviewers_per_pair": 1,
        },
        project=team.project,
    )
    assert form.is_valid(), form.errors
    evaluation = eval_services.create_evaluation(
        project=team.project,
        dataset_version=version,
        rubric=rubric,
        candidates=form.candidates(),
        base_model=model(),
        enqueue=False,
    )
    baseline = evaluation.candidates.get(kind="prompt")
    assert baseline.system_prompt == strong.system_prompt and baseline.few_shot == 2
    # the baseline is asked with the version's chosen examples, in its order, not the split's first ones
    asked = eval_services_generation.candidate_messages(
        baseline, [{"role": "user", "content": "Q"}], version.conversations("train")[::-1]
    )
    assert [m["content"] for m in asked if m["role"] == "assistant"] == [
        "Hi Bo,\nOrder #2 ships Monday.\nWarm regards",
        "Hi Ann,\nOrder #1 ships today.\nWarm regards",
    ]
    assert isinstance(baseline, Candidate)


def test_bad_prompt_input_gets_a_clear_message_and_saves_nothing(team):
    version = house_version(team.project)
    no_val = make_dataset_version(team.project, {"train": [conversation("q", "a")], "test": [conversation("q2", "a2")]})
    cases = [
        (dict(dataset_version=version, system_prompt="  ", shot_positions=[]), "Write a system prompt"),
        (dict(dataset_version=version, system_prompt="p", shot_positions=[2]), "not in the train split of v1"),
        (dict(dataset_version=no_val, system_prompt="p", shot_positions=[]), "v2 has no validation examples"),
    ]
    for kwargs, message in cases:
        with pytest.raises(services.PromptError, match=message):
            services.create_prompt_version(project=team.project, base_model=model(), enqueue=False, **kwargs)
    assert not PromptVersion.objects.exists()
    page = team.client("designer").post(
        "/p/support/prompts/",
        {"dataset_version": version.pk, "system_prompt": "p", "shots": [0, 1, 3], "base_model": model().pk},
    )
    assert (
        page.status_code == 200
        and "Select a valid choice. 3 is not one of the available choices." in page.content.decode()
    )
    assert not PromptVersion.objects.exists()


def test_a_designer_runs_a_prompt_from_the_page_and_sees_outputs_escaped_beside_the_ideal(
    team, django_capture_on_commit_callbacks
):
    version = house_version(team.project)
    client = team.client("designer")
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            "/p/support/prompts/",
            {
                "dataset_version": version.pk,
                "system_prompt": "House style.",
                "shots": [1],
                "base_model": model().pk,
                "note": "first try",
            },
        )
    pv = PromptVersion.objects.get()
    assert response.status_code == 302 and response["Location"] == "/p/support/prompts/v1/"
    assert len(callbacks) == 1 and pv.shot_positions == [1] and pv.created_by == team.designer
    assert 'hx-trigger="every 3s"' in client.get("/p/support/prompts/v1/").content.decode()  # polls while queued
    services.score_outputs(
        pv,
        list(version.items.filter(split="val").order_by("position")),
        ["<script>alert(1)</script>", "Hi Di", "Hi Ed"],
    )
    services.finish_scoring(pv)
    html = client.get("/p/support/prompts/v1/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert "Hi Cy,\nOrder #3 ships Friday.\nWarm regards" in html  # the ideal beside the output
    assert 'id="score-summary"' in html
    assert client.get("/p/support/prompts/v1/", headers={"HX-Request": "true"})["HX-Refresh"] == "true"
    # reviewers may look but not write prompts
    assert team.client("reviewer").post("/p/support/prompts/", {"dataset_version": version.pk}).status_code == 403


def test_the_run_form_shows_the_best_prompt_score_and_asks_before_a_run_when_no_prompt_was_scored(team):
    from tests.runs_setup import small_version

    run_version = small_version(team.project)
    base = model()
    client = team.client("pm")
    post = {"dataset_version": run_version.pk, "base_model": base.pk, "preset": "quick", "name": "first"}
    page = client.post("/p/support/runs/new/", post).content.decode()
    assert "No prompt version has been scored in this project yet" in page and not Run.objects.exists()
    assert 'id="no-prompt-note"' in page

    prompt_version = house_version(team.project)
    scored(team.project, prompt_version, ["Hi Cy,\nOrder #3 ships Friday.\nWarm regards", "x", "y"])
    page = client.get("/p/support/runs/new/").content.decode()
    assert f"v{prompt_version.number} · 2 train / 3 val · best Prompt v1: similarity" in page
    assert "Launch without trying a prompt first" not in page and 'id="no-prompt-note"' not in page


def test_the_worker_task_generates_and_scores_every_validation_example_once(team, settings, tiny_model_dir, eager):
    from apps.prompts.tasks import score_prompt_version
    from tests.eval_setup import register_tiny_model

    version, rubric = house_version(team.project), checked_rubric(team.project)
    pv = services.create_prompt_version(
        project=team.project,
        dataset_version=version,
        system_prompt="House style.",
        shot_positions=[0, 1],
        base_model=register_tiny_model(settings, tiny_model_dir),
        rubric=rubric,
        max_new_tokens=6,
        enqueue=False,
    )
    assert score_prompt_version.delay(pv.pk).get() == "scored"
    pv.refresh_from_db()
    outputs = list(pv.outputs.all())
    assert pv.status == PromptStatus.SCORED and pv.done == pv.total == len(outputs) == 3
    assert all(0 <= o.similarity <= 1 and len(o.checks) == 3 for o in outputs)
    assert pv.mean_similarity == pytest.approx(sum(o.similarity for o in outputs) / 3)
    assert score_prompt_version.delay(pv.pk).get() == "scored" and pv.outputs.count() == 3  # a redelivery is a no-op


def test_a_member_with_pairs_to_judge_blind_sees_no_prompt_or_output(team, settings, tiny_model_dir, tmp_path):
    from tests.eval_setup import make_evaluation

    make_evaluation(team, settings, tiny_model_dir, tmp_path, fake=True, test_count=2)  # ready, pairs to judge
    version = house_version(team.project)
    scored(team.project, version, ["Hi Cy, secret-style reply", "b", "c"], prompt="The secret house prompt.")
    for path in ("/p/support/prompts/", "/p/support/prompts/v1/"):
        html = team.client("reviewer").get(path).content.decode()
        assert 'id="prompts-blind"' in html and "secret" not in html
    assert "The secret house prompt." in team.client("designer").get("/p/support/prompts/v1/").content.decode()


# --- the reaper's safety net: a scoring whose worker died, or whose message was lost, is sent again ---------------
def dead_worker(pv, *, minutes_ago: int = 30, attempts: int = 1) -> None:
    """What a killed worker leaves: the version running under an owner on another host, heartbeat long stopped."""
    from datetime import timedelta

    from django.utils import timezone

    PromptVersion.objects.filter(pk=pv.pk).update(
        status=PromptStatus.RUNNING,
        worker_id="gone-host:4242:123:abcdef",
        heartbeat_at=timezone.now() - timedelta(minutes=minutes_ago),
        attempts=attempts,
    )


def test_the_reaper_finishes_a_prompt_scoring_whose_worker_was_killed(
    team, settings, tiny_model_dir, eager, django_capture_on_commit_callbacks
):
    from tests.eval_setup import register_tiny_model

    version = house_version(team.project)
    pv = services.create_prompt_version(
        project=team.project,
        dataset_version=version,
        system_prompt="House style.",
        shot_positions=[0],
        base_model=register_tiny_model(settings, tiny_model_dir),
        max_new_tokens=4,
        enqueue=False,
    )
    items = list(version.items.filter(split="val").order_by("position"))
    services.score_outputs(pv, items[:1], ["Hi Cy,\nOrder #3 ships Friday.\nWarm regards"])  # one batch was saved
    dead_worker(pv)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.reap()  # prompts' own recovery pass
    assert result["prompt_versions"] == [pv.pk]
    pv.refresh_from_db()
    assert pv.status == PromptStatus.SCORED and pv.done == 3 and pv.attempts == 2
    assert pv.outputs.get(item=items[0]).output == "Hi Cy,\nOrder #3 ships Friday.\nWarm regards"  # kept, not redone


def test_the_reaper_leaves_a_live_scoring_alone_and_fails_one_out_of_attempts(team, monkeypatch):
    from django.utils import timezone

    from apps.runs.execution import MAX_ATTEMPTS

    sent = []
    monkeypatch.setattr("apps.prompts.services.score_task.delay", lambda pk: sent.append(pk))
    version = house_version(team.project)
    live, spent = (
        services.create_prompt_version(
            project=team.project,
            dataset_version=version,
            system_prompt=f"House style {n}.",
            shot_positions=[0],
            base_model=model(),
            enqueue=False,
        )
        for n in (1, 2)
    )
    dead_worker(live)
    PromptVersion.objects.filter(pk=live.pk).update(heartbeat_at=timezone.now())  # beating: its worker is alive
    dead_worker(spent, attempts=MAX_ATTEMPTS)
    assert services.reap_prompt_scoring() == {"prompt_versions": [], "queued_prompt_versions": []}
    assert sent == []
    live.refresh_from_db()
    spent.refresh_from_db()
    assert live.status == PromptStatus.RUNNING
    assert spent.status == PromptStatus.FAILED and f"attempt limit {MAX_ATTEMPTS}" in spent.error


def test_a_second_delivery_skips_a_version_a_live_worker_is_scoring(team):
    from apps.runs import leases

    version = house_version(team.project)
    pv = services.create_prompt_version(
        project=team.project,
        dataset_version=version,
        system_prompt="House style.",
        shot_positions=[0],
        base_model=model(),
        enqueue=False,
    )
    assert services.claim_scoring(pv.pk, leases.new_owner_id()) is not None  # fresh heartbeat now
    assert services.claim_scoring(pv.pk, leases.new_owner_id()) is None  # the live claim holds
    pv.refresh_from_db()
    assert pv.attempts == 1


def test_the_reaper_resends_a_queued_scoring_whose_message_was_lost(
    team, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    sent = []
    monkeypatch.setattr("apps.prompts.services.score_task.delay", lambda pk: sent.append(pk))
    version = house_version(team.project)
    with django_capture_on_commit_callbacks(execute=True):
        old, new = (
            services.create_prompt_version(
                project=team.project,
                dataset_version=version,
                system_prompt=f"House style {n}.",
                shot_positions=[0],
                base_model=model(),
            )
            for n in (1, 2)
        )
    assert sent == [old.pk, new.pk]  # sent once each when created
    PromptVersion.objects.filter(pk=old.pk).update(
        enqueued_at=timezone.now() - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS + 60)
    )
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reap_prompt_scoring()["queued_prompt_versions"] == [old.pk]  # the new one's message is young
    assert sent == [old.pk]


# --- a prompt version's few-shot examples against a later version's test split ------------------------------------
def test_a_prompt_whose_few_shot_example_is_in_the_later_test_split_is_refused_as_baseline_naming_it(team):
    from apps.evaluations.models import Evaluation

    v1 = house_version(team.project)
    pv = scored(team.project, v1, ["Hi Cy", "Hi Di", "Hi Ed"], shots=(0, 1))
    bo_input = v1.items.get(split="train", position=1).messages
    # v2 moved Bo's question (a few-shot example of the prompt) into its test split, worded with other spacing
    leaked = [dict(m) for m in bo_input]
    leaked[0]["content"] = "  " + leaked[0]["content"].replace(" ", "  ")
    v2 = make_dataset_version(
        team.project,
        {
            "train": [v1.items.get(split="train", position=0).messages],
            "val": [i.messages for i in v1.items.filter(split="val")],
            "test": [i.messages for i in v1.items.filter(split="test")] + [leaked],
        },
    )
    rubric = checked_rubric(team.project)
    baseline = eval_services.CandidateSpec(
        "prompt", system_prompt=pv.system_prompt, few_shot=len(pv.shot_messages), shots=pv.shot_messages
    )
    with pytest.raises(eval_services.EvaluationError) as refused:
        eval_services.create_evaluation(
            project=team.project,
            dataset_version=v2,
            rubric=rubric,
            candidates=[eval_services.CandidateSpec("base"), baseline],
            base_model=model(),
            enqueue=False,
        )
    message = str(refused.value)
    assert "Few-shot example 2" in message and "Customer: Bo" in message and "test example 2 of 2 in v2" in message
    assert not Evaluation.objects.exists()
    # on its own version (the example is train there) it is the baseline as before
    evaluation = eval_services.create_evaluation(
        project=team.project,
        dataset_version=v1,
        rubric=rubric,
        candidates=[eval_services.CandidateSpec("base"), baseline],
        base_model=model(),
        enqueue=False,
    )
    assert evaluation.candidates.get(kind="prompt").shot_messages == pv.shot_messages


def test_the_evaluation_form_shows_the_leak_and_launches_nothing(team, client):
    from apps.evaluations.models import Evaluation

    v1 = house_version(team.project)
    pv = scored(team.project, v1, ["Hi Cy", "Hi Di", "Hi Ed"], shots=(0,))
    v2 = make_dataset_version(
        team.project,
        {
            "train": [v1.items.get(split="train", position=1).messages],
            "val": [i.messages for i in v1.items.filter(split="val")],
            "test": [v1.items.get(split="train", position=0).messages],
        },
    )
    rubric = checked_rubric(team.project)
    client.force_login(team.pm)
    page = client.post(
        f"/p/{team.project.slug}/evals/new/",
        {
            "name": "leaky",
            "dataset_version": v2.pk,
            "rubric": rubric.pk,
            "base_model": model().pk,
            "include_base": "on",
            "include_prompt": "on",
            "prompt_version": pv.pk,
            "few_shot": 0,
            "max_new_tokens": 32,
            "reviewers_per_pair": 1,
            "seed": 0,
        },
    )
    assert page.status_code == 200, page
    assert "Few-shot example 1 of the prompt-only baseline" in page.content.decode(), page.context["form"].errors
    assert not Evaluation.objects.exists()


def test_the_workspace_offers_frozen_versions_not_an_experiments_subsets(team):
    from apps.datasets.versions import freeze_subset

    version = house_version(team.project)
    subset = freeze_subset(source=version, train_positions=[0], note="experiment point")
    page = team.client("pm").get(f"/p/{team.project.slug}/prompts/").content.decode()
    assert f'<option value="{version.pk}" selected>v{version.number}</option>' in page  # the newest real version
    assert f'value="{subset.pk}"' not in page


def test_a_worker_that_lost_its_claim_does_not_record_its_scores(team):
    """The final writes go through the lease: once another worker took the version over, the first one's
    "scored" or "failed" match no row."""
    version = house_version(team.project)
    pv = services.create_prompt_version(
        project=team.project,
        dataset_version=version,
        system_prompt="House style.",
        shot_positions=[0],
        base_model=model(),
        enqueue=False,
    )
    first = services.claim_scoring(pv.pk, "host-a:1:1:aaaa")
    first_rows = PromptVersion.objects.filter(pk=pv.pk, worker_id="host-a:1:1:aaaa")  # its lease's rows
    dead_worker(pv)  # host-a went silent ...
    assert services.claim_scoring(pv.pk, "host-b:2:2:bbbb") is not None  # ... and host-b took the version over
    items = list(version.items.filter(split="val").order_by("position"))
    services.score_outputs(first, items, ["Hi,\nOk.\nWarm regards"] * len(items))
    assert services.finish_scoring(first, rows=first_rows) is False
    assert first.mark_failed("late failure", rows=first_rows) is False
    pv.refresh_from_db()
    assert pv.status == PromptStatus.RUNNING and pv.worker_id == "host-b:2:2:bbbb" and pv.error == ""
    assert services.finish_scoring(pv, rows=PromptVersion.objects.filter(pk=pv.pk, worker_id=pv.worker_id))
    pv.refresh_from_db()
    assert pv.status == PromptStatus.SCORED and pv.done == len(items)
