"""Creating evaluations and the generation task on the tiny model: outputs, resume, bad input, run_eval."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from apps.evaluations import generation, services
from apps.evaluations.models import Candidate, Comparison, Evaluation, EvaluationStatus, Generation
from apps.runs.models import RunStatus
from tests.eval_setup import make_evaluation, make_rubric, make_run, make_version, register_tiny_model

pytestmark = pytest.mark.django_db


def test_generation_stores_every_candidates_output_for_every_test_example(team, settings, tiny_model_dir, tmp_path):
    evaluation, run = make_evaluation(team, settings, tiny_model_dir, tmp_path)
    assert evaluation.status == EvaluationStatus.READY and evaluation.attempts == 1
    assert (evaluation.done, evaluation.total) == (9, 9)  # 3 candidates x 3 test examples (val not included)
    generations = Generation.objects.filter(candidate__evaluation=evaluation)
    assert generations.count() == 9
    assert {g.item.split for g in generations} == {"test"}
    for g in generations:
        assert 0 <= g.output_tokens <= 6 and g.prompt_tokens > 0 and g.latency_ms > 0 and 0 <= g.similarity <= 1
    # every pair of candidates on every example, in a seeded order
    assert Comparison.objects.filter(evaluation=evaluation).count() == 3 * 3
    labels = list(evaluation.candidates.values_list("label", flat=True))
    assert labels == ["Base model (Tiny Secret Llama)", "Prompt-only baseline", f"Tuned run #{run.pk} (zebra-run)"]
    # the tuned run's adapter is applied: its outputs are not the base model's
    by = {c.kind: [g.output for g in c.generations.order_by("item__position")] for c in evaluation.candidates.all()}
    assert by["run"] != by["base"]


def test_prompt_baseline_gets_its_system_prompt_and_train_examples_before_the_input():
    candidate = Candidate(kind="prompt", system_prompt="Answer in house style.", few_shot=1)
    shots = [
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
        [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
    ]
    messages = generation.candidate_messages(
        candidate, [{"role": "system", "content": "Facts: X"}, {"role": "user", "content": "Q"}], shots
    )
    assert messages == [
        {"role": "system", "content": "Answer in house style.\n\nFacts: X"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "Q"},
    ]
    assert generation.candidate_messages(Candidate(kind="base"), [{"role": "user", "content": "Q"}], shots) == [
        {"role": "user", "content": "Q"}
    ]


def test_a_generation_that_died_resumes_without_regenerating_finished_rows(
    team, eager, settings, tiny_model_dir, tmp_path
):
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path)
    kept = {
        g.pk: (g.candidate_id, g.item_id, g.created_at)
        for g in Generation.objects.filter(candidate__evaluation=evaluation)
    }
    lost = Generation.objects.filter(candidate__evaluation=evaluation, candidate__kind="run")
    lost_keys = set(lost.values_list("candidate_id", "item_id"))
    lost_ids = set(lost.values_list("pk", flat=True))
    lost.delete()
    # the worker died mid-way: status still "generating", heartbeat gone stale
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.GENERATING, done=6, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    from apps.evaluations.tasks import generate_outputs

    assert generate_outputs.delay(evaluation.pk).get() == EvaluationStatus.READY
    evaluation.refresh_from_db()
    assert evaluation.attempts == 2 and evaluation.done == 9
    after = {
        g.pk: (g.candidate_id, g.item_id, g.created_at)
        for g in Generation.objects.filter(candidate__evaluation=evaluation)
    }
    assert {k: v for k, v in after.items() if k in kept and k not in lost_ids} == {
        k: v for k, v in kept.items() if k not in lost_ids
    }
    assert {(c, i) for k, (c, i, _) in after.items() if k not in kept} == lost_keys


def test_a_second_delivery_while_a_worker_is_alive_does_nothing(team, settings, tiny_model_dir, tmp_path):
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    Evaluation.objects.filter(pk=evaluation.pk).update(status=EvaluationStatus.GENERATING, heartbeat_at=timezone.now())
    assert generation.run_generation(evaluation.pk) is None
    assert not Generation.objects.filter(candidate__evaluation=evaluation).exists()
    evaluation.refresh_from_db()
    assert evaluation.attempts == 0
    with pytest.raises(services.EvaluationError, match="right now"):
        generation.resume_evaluation(evaluation)


def test_a_failed_generation_records_the_error_for_the_pm(team, settings, tiny_model_dir, tmp_path):
    evaluation, run = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    run.base_model.source = str(tmp_path / "not-a-model")
    run.base_model.save()
    with pytest.raises(Exception, match="outside the configured model roots"):
        generation.run_generation(evaluation.pk)
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.FAILED and "outside the configured model roots" in evaluation.error


def test_bad_evaluation_input_gets_specific_errors(team, settings, tiny_model_dir, tmp_path):
    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(team.project)
    rubric = make_rubric(team.project)
    running = make_run(team.project, version, base, tmp_path)
    running.status = RunStatus.RUNNING
    running.save()
    create = dict(project=team.project, dataset_version=version, rubric=rubric, base_model=base, enqueue=False)
    with pytest.raises(services.EvaluationError, match=f"Run #{running.pk} has not succeeded"):
        services.create_evaluation(
            candidates=[services.CandidateSpec("base"), services.CandidateSpec("run", run_id=running.pk)], **create
        )
    with pytest.raises(services.EvaluationError, match="at least two candidates"):
        services.create_evaluation(candidates=[services.CandidateSpec("base")], **create)
    no_test = make_version(team.project, test_count=0)
    with pytest.raises(services.EvaluationError, match="no test examples"):
        services.create_evaluation(
            **{**create, "dataset_version": no_test}, candidates=services.parse_candidates("base,prompt")
        )
    with pytest.raises(services.EvaluationError, match="Unknown candidate 'tuned'"):
        services.parse_candidates("base,tuned")


def test_run_eval_command_creates_and_generates_an_evaluation(team, settings, tiny_model_dir, tmp_path, capsys):
    base = register_tiny_model(settings, tiny_model_dir)
    version = make_version(team.project, test_count=2)
    make_rubric(team.project)
    call_command(
        "run_eval",
        "--project",
        "support",
        "--dataset-version",
        str(version.number),
        "--candidates",
        "base,prompt",
        "--base-model",
        base.name,
        "--max-new-tokens",
        "4",
        "--inline",
    )
    evaluation = Evaluation.objects.get(project=team.project)
    assert evaluation.status == EvaluationStatus.READY and evaluation.done == 4
    assert "Ready for review: 4 outputs" in capsys.readouterr().out
    with pytest.raises(CommandError, match="no dataset version 99"):
        call_command("run_eval", "--project", "support", "--dataset-version", "99", "--candidates", "base,prompt")
    with pytest.raises(CommandError, match="Run #424242 is not a run of this project"):
        call_command(
            "run_eval",
            "--project",
            "support",
            "--dataset-version",
            str(version.number),
            "--candidates",
            "base,run:424242",
        )


DEAD_OWNER = "node-that-died:4242:1:deadbeef"


def test_the_reaper_resumes_a_generation_whose_worker_died_and_fails_it_after_the_attempt_limit(
    team, eager, settings, tiny_model_dir, tmp_path, django_capture_on_commit_callbacks
):
    from apps.evaluations.generation import reap

    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    stale = timezone.now() - timedelta(seconds=settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS + 5)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.GENERATING, worker_id=DEAD_OWNER, heartbeat_at=stale, attempts=1
    )
    with django_capture_on_commit_callbacks(execute=True):  # the reaper sends once its transaction commits
        resent = reap()
    assert resent["evaluations"] == [evaluation.pk]
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.READY and evaluation.done == 9 and evaluation.attempts == 2

    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.GENERATING, worker_id=DEAD_OWNER, heartbeat_at=stale, attempts=3
    )
    assert reap()["evaluations"] == []
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.FAILED and "stopped 3 times" in evaluation.error


def test_resume_works_as_soon_as_no_live_worker_holds_the_evaluation(
    team, eager, settings, tiny_model_dir, tmp_path, django_capture_on_commit_callbacks
):
    """No hard-coded five minutes: the staleness setting shared with runs decides (here 60 s; the heartbeat is 2 min
    old and its worker is gone)."""
    settings.FTSTUDIO_HEARTBEAT_STALE_SECONDS = 60
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status=EvaluationStatus.GENERATING, worker_id=DEAD_OWNER, heartbeat_at=timezone.now() - timedelta(minutes=2)
    )
    with django_capture_on_commit_callbacks(execute=True):  # the message is sent once the request's transaction commits
        response = team.client("pm").post(f"/p/support/evals/{evaluation.pk}/resume/", follow=True)
    assert "Generation resumed" in response.content.decode()
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.READY and evaluation.done == 9


def test_a_queued_evaluation_whose_message_was_lost_is_sent_again(
    team, eager, settings, tiny_model_dir, tmp_path, django_capture_on_commit_callbacks
):
    from apps.evaluations.generation import reap

    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    Evaluation.objects.filter(pk=evaluation.pk).update(enqueued_at=timezone.now())
    assert reap()["queued_evaluations"] == []  # its message may simply be waiting behind other work
    Evaluation.objects.filter(pk=evaluation.pk).update(
        enqueued_at=timezone.now() - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS + 60)
    )
    with django_capture_on_commit_callbacks(execute=True):  # the reaper sends once its transaction commits
        resent = reap()
    assert resent["queued_evaluations"] == [evaluation.pk]
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.READY and evaluation.done == 9


def test_a_generation_whose_evaluation_was_taken_over_stops_after_its_batch(
    team, settings, tiny_model_dir, tmp_path, monkeypatch
):
    import worker.generate

    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    original = worker.generate.generate

    def generate_then_lose_the_claim(model, tokenizer, prompts, config, on_batch=None):
        Evaluation.objects.filter(pk=evaluation.pk).update(worker_id=DEAD_OWNER)  # another worker claimed it
        return original(model, tokenizer, prompts, config, on_batch=on_batch)

    monkeypatch.setattr(worker.generate, "generate", generate_then_lose_the_claim)
    assert generation.run_generation(evaluation.pk, batch_size=1) is not None
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.GENERATING and evaluation.worker_id == DEAD_OWNER
    assert not Generation.objects.filter(candidate__evaluation=evaluation).exists()


def test_a_warm_shutdown_hands_the_evaluation_back_after_its_batch_without_an_attempt(
    team, settings, tiny_model_dir, tmp_path, monkeypatch
):
    from celery.signals import worker_shutting_down

    import worker.generate
    from apps.runs import leases

    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, generate=False)
    original = worker.generate.generate

    def generate_then_sigterm(model, tokenizer, prompts, config, on_batch=None):
        worker_shutting_down.send(sender="test-worker", sig="SIGTERM", how="Warm", exitcode=0)
        return original(model, tokenizer, prompts, config, on_batch=on_batch)

    monkeypatch.setattr(worker.generate, "generate", generate_then_sigterm)
    try:
        generation.run_generation(evaluation.pk)
    finally:
        leases.shutdown_requested.clear()
    evaluation.refresh_from_db()
    assert evaluation.status == EvaluationStatus.QUEUED and evaluation.attempts == 0 and evaluation.worker_id == ""
    assert evaluation.enqueued_at is not None  # sent again for the restarted worker
    assert evaluation.done == 3  # the batch that finished during the shutdown (3 items, one candidate) was kept
    monkeypatch.setattr(worker.generate, "generate", original)
    assert generation.run_generation(evaluation.pk).status == EvaluationStatus.READY
    evaluation.refresh_from_db()
    assert evaluation.attempts == 1 and evaluation.done == 9
