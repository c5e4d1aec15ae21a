"""OpenAI's grader endpoints and its dpo and reinforcement jobs, called with the official `openai` SDK against the
live test server: graders validated (python refused, each error naming its field) and run (OpenAI's response shape;
a model grader's failed endpoint is a missing score, not a 0), preference and prompt files checked line by line, and
jobs that echo their method in OpenAI's shape."""

from __future__ import annotations

import io
import json

import openai
import pytest

from apps.datasets.models import PreferencePair
from apps.runs import methods
from apps.runs.models import Run, RunStatus
from tests import test_api_fine_tuning as api_tests
from tests import test_eval_judge as judge_tests
from tests.factories import conversation, make_dataset_version
from tests.openai_schema import assert_openai_shape

api, tiny_base_model, inference = api_tests.api, api_tests.tiny_base_model, api_tests.inference  # their fixtures
endpoint, Judge = judge_tests.endpoint, judge_tests.Judge  # a tiny OpenAI-compatible judge on loopback

pytestmark = pytest.mark.django_db(transaction=True)

EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "operation": "eq",
}
OVERLAP = {
    "type": "text_similarity",
    "name": "overlap",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference_answer}}",
    "evaluation_metric": "rouge_1",
}


def raw(response) -> dict:
    return json.loads(response.http_response.content)


def refused(call) -> dict:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    body = caught.value.response.json()
    assert_openai_shape("ErrorResponse", body)
    return body["error"]


# --- graders: validate and run ------------------------------------------------------------------------------------
def test_the_sdk_validates_a_grader_and_hears_which_field_is_wrong(api):
    graders = api("designer").fine_tuning.alpha.graders
    answer = raw(graders.with_raw_response.validate(grader=EXACT))
    assert_openai_shape("ValidateGraderResponse", answer)
    assert answer == {"grader": EXACT}
    bad = refused(lambda: graders.validate(grader={**EXACT, "operation": "startswith"}))
    assert bad["param"] == "grader.operation"
    assert bad["message"] == "grader.operation: must be one of eq, ne, like, ilike."
    python = refused(
        lambda: graders.validate(grader={"type": "python", "name": "p", "source": "def grade(s, i): return 1"})
    )
    assert python["param"] == "grader.type" and "the Studio runs no uploaded code" in python["message"]
    cosine = refused(lambda: graders.validate(grader={**OVERLAP, "evaluation_metric": "cosine"}))
    assert cosine["param"] == "grader.evaluation_metric" and "embedding model" in cosine["message"]
    regex = refused(
        lambda: graders.validate(
            grader={"type": "rubric_check", "name": "r", "check": {"kind": "regex", "text": "(open"}}
        )
    )
    assert regex["param"] == "grader.check" and "does not compile" in regex["message"]
    elsewhere = refused(
        lambda: graders.validate(
            grader={
                "type": "score_model",
                "name": "s",
                "model": "gpt-4o",
                "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
            }
        )
    )
    assert elsewhere["param"] == "grader.model" and "calls no other endpoint" in elsewhere["message"]


def test_the_sdk_runs_string_similarity_and_multi_graders_and_gets_openai_s_shape(api):
    graders = api("pm").fine_tuning.alpha.graders
    item = {"reference_answer": "the cat sat on the mat"}
    exact = raw(graders.with_raw_response.run(grader=EXACT, model_sample="the cat sat on the mat", item=item))
    assert_openai_shape("RunGraderResponse", exact)
    assert exact["reward"] == 1.0 and exact["metadata"]["name"] == "exact"
    assert not any(v for k, v in exact["metadata"]["errors"].items() if k.endswith("_error"))
    overlap = graders.run(grader=OVERLAP, model_sample="the cat is on the mat", item=item)
    assert overlap.reward == pytest.approx(5 / 6)
    multi = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": EXACT, "overlap": OVERLAP},
        "calculate_output": "0.5 * exact + 0.5 * overlap",
    }
    combined = raw(graders.with_raw_response.run(grader=multi, model_sample="the cat is on the mat", item=item))
    assert_openai_shape("RunGraderResponse", combined)
    assert combined["reward"] == pytest.approx(5 / 12)
    assert combined["sub_rewards"] == {"exact": 0.0, "overlap": pytest.approx(5 / 6)}
    missing = graders.run(grader=EXACT, model_sample="x", item={})  # the item lacks reference_answer
    assert missing.metadata.errors.invalid_variable_error is True


def test_a_score_model_on_the_judge_scores_through_its_endpoint_and_a_timeout_is_no_reward(
    api, team, settings, endpoint
):
    from apps.evaluations import automatic as services

    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = True  # the judge is on loopback
    services.save_judge_settings(project=team.project, base_url=endpoint, model="judge-model", timeout_s=0.5)
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": "judge-model",
        "input": [{"role": "user", "content": "Does {{sample.output_text}} answer {{item.question}}?"}],
        "range": [0, 1],
    }
    graders = api("pm").fine_tuning.alpha.graders
    Judge.mode, Judge.seen = "score", []
    scored = raw(graders.with_raw_response.run(grader=grader, model_sample="Paris", item={"question": "capital?"}))
    assert_openai_shape("RunGraderResponse", scored)
    assert scored["reward"] == 0.8 and scored["ftstudio"]["score_missing"] is False
    assert Judge.seen[0]["messages"][0]["content"] == "Does Paris answer capital??"
    Judge.mode = "slow"
    timed_out = raw(graders.with_raw_response.run(grader=grader, model_sample="Paris", item={"question": "?"}))
    assert_openai_shape("RunGraderResponse", timed_out)
    errors = timed_out["metadata"]["errors"]
    assert errors["model_grader_server_error"] is True and "timed out" in errors["model_grader_server_error_details"]
    assert timed_out["ftstudio"]["score_missing"] is True  # not a grade of 0: the reward says nothing


# --- dpo and reinforcement jobs -----------------------------------------------------------------------------------
def pair(n: int, **change) -> dict:
    row = {
        "input": {"messages": [{"role": "user", "content": f"Customer: Ann\nWhere is order {n}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Hi Ann, order {n} ships today."}],
        "non_preferred_output": [{"role": "assistant", "content": "Check the website."}],
    }
    row.update(change)
    return row


def prompt(n: int, **change) -> dict:
    row = {"messages": [{"role": "user", "content": f"Customer: Ann\nWhere is order {n}?"}]}
    row["reference_answer"] = f"Hi Ann, order {n} ships today."
    row.update(change)
    return {k: v for k, v in row.items() if v is not None}


def upload_lines(client, rows) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=("rows.jsonl", io.BytesIO(data)), purpose="fine-tune").id


DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}}


def reinforcement(grader=None) -> dict:
    return {"type": "reinforcement", "reinforcement": {"grader": grader or EXACT, "hyperparameters": {"n_epochs": 1}}}


def test_a_dpo_job_checks_its_pairs_echoes_its_method_and_is_listed(api):
    pm = api("pm")
    made = raw(
        pm.fine_tuning.jobs.with_raw_response.create(
            model="tiny-llama", training_file=upload_lines(pm, [pair(1), pair(2)]), method=DPO
        )
    )
    assert_openai_shape("FineTuningJob", made)
    assert made["status"] == "queued"
    assert made["method"]["type"] == "dpo"
    assert made["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert made["method"]["dpo"]["hyperparameters"]["n_epochs"] == 2
    listed = pm.fine_tuning.jobs.list()
    assert [j.id for j in listed.data] == [made["id"]] and listed.data[0].method.type == "dpo"
    run = Run.objects.get()
    assert run.method == "dpo" and run.status == RunStatus.QUEUED and run.hyperparameters["beta"] == 0.2
    pairs = run.preference_version.training_pairs("train")
    assert sorted(p["preferred"]["content"] for p in pairs) == [f"Hi Ann, order {n} ships today." for n in (1, 2)]
    assert run.dataset_version == run.preference_version.dataset_version  # anchored (here: made of the preferred)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [pair(1), pair(2, non_preferred_output=None)],
            "line 2: non_preferred_output must be a list of one assistant message",
        ),
        ([pair(1, preferred_output=[{"role": "user", "content": "x"}])], "line 1: preferred_output[0].role must be"),
        ([pair(1, non_preferred_output=pair(1)["preferred_output"])], "line 1: preferred_output and non_preferred"),
        ([{"messages": []}], "line 1: unknown field 'messages'"),
    ],
)
def test_a_dpo_job_with_a_bad_pair_fails_naming_the_line_and_nothing_runs(api, rows, message):
    pm = api("pm")
    job = raw(
        pm.fine_tuning.jobs.with_raw_response.create(
            model="tiny-llama", training_file=upload_lines(pm, rows), method=DPO
        )
    )
    assert_openai_shape("FineTuningJob", job)
    assert job["status"] == "failed" and job["error"]["param"] == "training_file"
    assert message in job["error"]["message"], job["error"]["message"]
    assert not Run.objects.exists() and not PreferencePair.objects.exists()


def test_a_reinforcement_job_checks_its_grader_and_the_fields_it_reads(api):
    pm = api("pm")
    good = upload_lines(pm, [prompt(1), prompt(2)])
    python = refused(
        lambda: pm.fine_tuning.jobs.create(
            model="tiny-llama", training_file=good, method=reinforcement({"type": "python", "name": "p", "source": "1"})
        )
    )
    assert python["param"] == "method.reinforcement.grader.type" and "runs no uploaded code" in python["message"]
    no_grader = refused(
        lambda: pm.fine_tuning.jobs.create(
            model="tiny-llama", training_file=good, method={"type": "reinforcement", "reinforcement": {}}
        )
    )
    assert no_grader["param"] == "method.reinforcement.grader"
    effort = refused(
        lambda: pm.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=good,
            method={
                "type": "reinforcement",
                "reinforcement": {"grader": EXACT, "hyperparameters": {"eval_samples": 5}},
            },
        )
    )
    assert effort["param"] == "method.reinforcement.hyperparameters.eval_samples"
    lacking = raw(
        pm.fine_tuning.jobs.with_raw_response.create(
            model="tiny-llama",
            training_file=upload_lines(pm, [prompt(1), prompt(2, reference_answer=None)]),
            method=reinforcement(),
        )
    )
    assert lacking["status"] == "failed"
    assert "line 2: no field 'reference_answer', which the grader reads" in lacking["error"]["message"]
    ends_with_reply = raw(
        pm.fine_tuning.jobs.with_raw_response.create(
            model="tiny-llama",
            training_file=upload_lines(
                pm, [prompt(1, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}])]
            ),
            method=reinforcement(),
        )
    )
    assert "line 1: messages must end on the user's turn" in ends_with_reply["error"]["message"]
    assert not Run.objects.exists()
    made = raw(
        pm.fine_tuning.jobs.with_raw_response.create(model="tiny-llama", training_file=good, method=reinforcement())
    )
    assert_openai_shape("FineTuningJob", made)
    assert made["status"] == "queued"
    assert made["method"] == {
        "type": "reinforcement",
        "reinforcement": {
            "grader": EXACT,
            "hyperparameters": {
                "n_epochs": 1,
                "batch_size": made["method"]["reinforcement"]["hyperparameters"]["batch_size"],
                "learning_rate_multiplier": 1.0,
            },
        },
    }
    run = Run.objects.get()
    assert run.graders == [EXACT] and run.method == "reinforcement" and run.status == RunStatus.QUEUED
    prompts = methods.training_data(run)[0]  # what the worker's GRPO reads: the prompts and reference answers
    assert [(p["messages"][-1]["content"], p["reference_answer"]) for p in prompts] == [
        ("Customer: Ann\nWhere is order 1?", "Hi Ann, order 1 ships today."),
        ("Customer: Ann\nWhere is order 2?", "Hi Ann, order 2 ships today."),
    ]
    assert pm.fine_tuning.jobs.retrieve(made["id"]).method.reinforcement.grader.name == "exact"


def test_a_dpo_job_trains_on_its_file_only_and_never_on_a_test_input_of_the_project(api, team):
    """Pairs already in the project's pool stay out of the job's version; the version is anchored to the project's
    newest examples version, and a pair whose input is one of its test examples fails the job, naming it."""
    pm = api("pm")
    version = make_dataset_version(
        team.project,
        {"train": [conversation("hello", "hi")], "test": [conversation("Customer: Ann\nWhere is order 9?", "x")]},
    )
    earlier = pm.fine_tuning.jobs.create(model="tiny-llama", training_file=upload_lines(pm, [pair(1)]), method=DPO)
    job = pm.fine_tuning.jobs.create(model="tiny-llama", training_file=upload_lines(pm, [pair(2), pair(3)]), method=DPO)
    assert earlier.status == job.status == "queued"
    run = Run.objects.latest("pk")
    assert run.preference_version.dataset_version == version
    inputs = sorted(p["messages"][-1]["content"] for p in run.preference_version.training_pairs("train"))
    assert inputs == ["Customer: Ann\nWhere is order 2?", "Customer: Ann\nWhere is order 3?"]
    leaky = pm.fine_tuning.jobs.create(model="tiny-llama", training_file=upload_lines(pm, [pair(9)]), method=DPO)
    assert leaky.status == "failed" and leaky.error.param == "training_file"
    assert "test" in leaky.error.message, leaky.error.message
    assert Run.objects.count() == 2


@pytest.mark.slow
def test_a_score_model_on_a_model_of_the_project_is_asked_through_the_inference_process(api, settings, inference):
    """The tiny random model answers words, not a score: the grader says the reply could not be read (the endpoint
    answered), and the reward is no grade."""
    settings.FTSTUDIO_INFERENCE_URL = inference.url
    grader = {
        "type": "score_model",
        "name": "tiny",
        "model": "tiny-llama",
        "input": [{"role": "user", "content": "Score from 0 to 1: {{sample.output_text}}"}],
        "sampling_params": {"max_completions_tokens": 8, "seed": 1},
    }
    answer = raw(api("pm").fine_tuning.alpha.graders.with_raw_response.run(grader=grader, model_sample="Paris"))
    assert_openai_shape("RunGraderResponse", answer)
    errors = answer["metadata"]["errors"]
    assert errors["model_grader_parse_error"] is True and errors["model_grader_server_error"] is False, errors
    assert answer["ftstudio"]["score_missing"] is True


@pytest.mark.slow
def test_the_sdk_follows_a_dpo_and_a_reinforcement_job_to_a_servable_model(api):
    """Both methods end to end through OpenAI's client: created, trained by the worker's task, followed through
    their events to succeeded, and their tuned models listed among the project's models."""
    from apps.runs.tasks import train_run

    pm = api("pm")
    dpo = pm.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload_lines(pm, [pair(n) for n in range(2)]),
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1, "batch_size": 2}}},
    )
    graded = pm.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload_lines(pm, [prompt(n) for n in range(2)]),
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": OVERLAP, "hyperparameters": {"n_epochs": 1, "batch_size": 8}},
        },
    )
    for job in (dpo, graded):
        run = Run.objects.get(fine_tuning_job__public_id=job.id)
        assert train_run(run.pk) == RunStatus.SUCCEEDED, run.error
        followed = raw(pm.fine_tuning.jobs.with_raw_response.retrieve(job.id))
        assert_openai_shape("FineTuningJob", followed)
        assert followed["status"] == "succeeded" and followed["fine_tuned_model"]
        assert followed["method"]["type"] == job.method.type
        events = [e.message for e in pm.fine_tuning.jobs.list_events(job.id)]
        assert events[0] == "The job has successfully completed", events
        assert any(f"dataset version v{run.dataset_version.number}" in message for message in events), events
        assert followed["fine_tuned_model"] in [m.id for m in pm.models.list()]
