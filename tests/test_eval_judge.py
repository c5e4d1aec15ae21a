"""The LLM judge (worker/judge.py) against a tiny OpenAI-compatible server started by the test, through the
official `openai` client: both orders, a win only when they agree; timeouts, errors and garbage leave the pair
unjudged with the reason."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.judge import JudgeConfig, judge_pair, parse_pick, rubric_text

RUBRIC = rubric_text(
    [
        {
            "name": "Greets by name",
            "description": "opens with Hi <name>,",
            "levels": [("Pass", "Hi <name>,"), ("Fail", "no greeting")],
            "good": "Hi Cy,\nOk.\nBye",
        }
    ]
)


class Judge(BaseHTTPRequestHandler):
    mode = "first"  # first | greeting | garbage | slow | error | score (a score_model grader's answer)
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        user = body["messages"][-1]["content"]
        a = user.split("Answer A:\n")[1].split("\n\nAnswer B:")[0] if "Answer A:" in user else ""
        if self.mode == "error":
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "overloaded", "type": "server_error"}}')
            return
        if self.mode == "slow":
            time.sleep(2)
        content = {
            "first": '{"reasoning": "A reads better.", "winner": "A"}',
            "greeting": json.dumps(
                {"reasoning": "one greets by name", "winner": "A" if a.startswith("Hi Cy,") else "B"}
            ),
            "garbage": "I'm sorry, I can't compare these answers.",
            "slow": '{"winner": "A"}',
            "score": '{"steps": ["greets by name"], "result": 0.8}',
        }[self.mode]
        payload = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Judge.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def verdict(endpoint, mode, first="Hi Cy,\nIt ships today.\nBye", second="Hello.", timeout=10.0):
    Judge.mode = mode
    return judge_pair(
        JudgeConfig(endpoint, "judge-model", "sk-test", timeout_s=timeout, allow_private=True),
        rubric=RUBRIC,
        input_text="Customer: Cy",
        first=first,
        second=second,
    )


def test_a_judge_that_always_prefers_answer_a_yields_only_ties(endpoint):
    v = verdict(endpoint, "first")
    assert v.winner == "tie" and v.picks == ("first", "second") and v.position_consistent is False
    assert len(Judge.seen) == 2  # both orders asked
    a_texts = [m["messages"][-1]["content"].split("Answer A:\n")[1][:6] for m in Judge.seen]
    assert a_texts == ["Hi Cy,", "Hello."]
    assert "Greets by name" in Judge.seen[0]["messages"][-1]["content"] and Judge.seen[0]["model"] == "judge-model"


def test_a_judge_that_agrees_in_both_orders_gives_a_win_with_its_reasoning(endpoint):
    v = verdict(endpoint, "greeting")
    assert v.winner == "first" and v.position_consistent is True and "one greets by name" in v.reasoning
    assert verdict(endpoint, "greeting", first="Hello.", second="Hi Cy,\nOk.").winner == "second"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "no verdict in the judge's reply"),
        ("slow", "timed out after 0.5 s"),
        ("error", "HTTP 500"),
    ],
)
def test_timeouts_errors_and_refusals_leave_the_pair_unjudged_with_the_reason(endpoint, mode, reason):
    v = verdict(endpoint, mode, timeout=0.5)
    assert v.winner is None and reason in v.error and v.position_consistent is None


def test_the_verdict_is_read_from_json_or_a_winner_line():
    assert parse_pick('```json\n{"reasoning": "B is shorter", "winner": "b"}\n```') == ("B", "B is shorter")
    assert parse_pick("Reasoning: close.\nWinner: tie")[0] == "tie"


# --- the judge in the Studio: settings, verdicts stored per pair, the threshold that shows judge figures -----
@pytest.fixture
def judged_setup(db, team, settings, tiny_model_dir, tmp_path_factory, endpoint):
    from apps.evaluations import automatic
    from apps.evaluations.models import Generation
    from tests.eval_setup import make_evaluation

    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = True  # the judge is on loopback
    evaluation, _ = make_evaluation(
        team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True, reviewers_per_pair=1
    )
    Generation.objects.filter(candidate__position=1).update(output="Hello.")
    automatic.save_judge_settings(
        project=team.project, base_url=endpoint, model="judge-model", api_key="sk-secret-123", timeout_s=0.5
    )
    return evaluation


def test_the_key_is_stored_but_never_shown_back(team, judged_setup, endpoint):
    from apps.evaluations.models import JudgeSettings

    client = team.client("pm")
    page = client.get("/p/support/evals/judge/").content.decode()
    assert "sk-secret-123" not in page and "An API key is stored." in page and endpoint in page
    data = {
        "base_url": endpoint,
        "model": "other-model",
        "api_key": "",
        "timeout_s": 5,
        "min_human_pairs": 10,
        "min_kappa": 0.5,
    }
    assert client.post("/p/support/evals/judge/", data).status_code == 302
    row = JudgeSettings.objects.get()
    assert (row.model, row.api_key, row.min_human_pairs) == ("other-model", "sk-secret-123", 10)  # empty key keeps it
    bad = client.post("/p/support/evals/judge/", {**data, "base_url": "ftp://x"})
    assert bad.status_code == 200 and not JudgeSettings.objects.filter(base_url="ftp://x").exists()


def test_unjudged_pairs_keep_the_reason_are_never_counted_and_are_retried(team, judged_setup):
    from apps.evaluations import automatic, results
    from apps.evaluations.models import JudgeVerdict

    evaluation = judged_setup
    Judge.mode = "garbage"
    assert automatic.run_judge(evaluation.pk) == {"judged": 0, "unjudged": 9}
    assert set(JudgeVerdict.objects.values_list("judged", "winner", "error")) == {
        (False, None, "no verdict in the judge's reply")  # summarised: the endpoint's words are not shown
    }
    report = results.judge_report(evaluation, bootstrap=0)
    assert report.judged == 0 and report.unjudged == 9 and all(p.outcome.items == 0 for p in report.pairs)
    Judge.mode = "greeting"
    assert automatic.run_judge(evaluation.pk) == {"judged": 9, "unjudged": 0}
    assert automatic.run_judge(evaluation.pk) == {"judged": 0, "unjudged": 0}  # nothing left: judged pairs are kept
    assert set(JudgeVerdict.objects.values_list("attempts", flat=True)) == {2}
    labels = {
        (v.comparison.candidate_1.position, v.comparison.candidate_2.position, v.winner.position if v.winner else None)
        for v in JudgeVerdict.objects.select_related("comparison__candidate_1", "comparison__candidate_2", "winner")
    }
    assert labels == {(0, 1, 0), (0, 2, None), (1, 2, 2)}


def _humans_judge(evaluation, reviewer, prefer_greeting: bool):
    from apps.evaluations import review, selectors

    while (a := review.next_assignment(evaluation=evaluation, reviewer=reviewer)) is not None:
        greets = [s.letter for s in selectors.sides(a) if s.output.startswith("Hi Cy,")]
        other = {"A": "B", "B": "A"}
        pick = "tie" if len(greets) != 1 else greets[0] if prefer_greeting else other[greets[0]]
        review.submit_judgment(assignment=a, reviewer=reviewer, winner=pick, scores={})


@pytest.mark.parametrize(
    ("prefer_greeting", "min_pairs", "shown", "why"),
    [
        (
            True,
            30,
            False,
            "the reviewers and the judge have both judged 9 pairs so far on this rubric version (9 judged by "
            "reviewers); judge figures show from 30.",
        ),
        (True, 9, True, ""),
        # reviewers prefer the other side: the judge agrees only on the 3 ties, which chance alone would give: kappa 0
        (
            False,
            9,
            False,
            "the judge&#x27;s kappa with the reviewers is 0.00 on 9 pairs both judged; judge figures show from 0.6.",
        ),
    ],
)
def test_judge_win_rates_show_only_with_enough_human_pairs_and_agreement(
    team, judged_setup, prefer_greeting, min_pairs, shown, why
):
    from apps.evaluations import automatic
    from apps.evaluations.models import JudgeSettings

    evaluation = judged_setup
    JudgeSettings.objects.update(min_human_pairs=min_pairs)
    Judge.mode = "greeting"
    automatic.run_judge(evaluation.pk)
    _humans_judge(evaluation, team.reviewer, prefer_greeting)
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/results/").content.decode()
    assert "LLM judge" in page and "judge-based" in page and "one greets by name" in page  # reasoning shown
    assert ('id="judge-win-rates"' in page) is shown
    if shown:
        at = page.index("Position consistency")
        assert (
            'Cohen\'s kappa <span id="judge-kappa">1.00</span> (95% CI 1.00 to 1.00) <span id="judge-kappa-n">on 9 '
            "pairs judged by both the reviewers and the judge</span>"
            in page
            and "Position consistency: 67%" in page
        ), page[at : at + 600]
    else:
        assert f"Judge-based win rates are hidden: {why}" in page
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("calibrate_judge", "--evaluation", str(evaluation.pk), "--judge", "--bootstrap", "50", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert any(line.startswith("== LLM judge judge-model (both orders; position consistency 67%") for line in lines)
    assert lines[-1] == ("kappa=1.00" if prefer_greeting else "kappa=0.00")


def test_the_human_pairs_that_calibrate_the_judge_are_counted_over_every_evaluation_of_the_rubric(team, judged_setup):
    """The threshold is the rubric's, not one evaluation's: 9 human-judged pairs here and 9 on a second evaluation
    scored against the same rubric version reach a threshold of 18 that neither reaches alone."""
    from apps.evaluations import automatic, results, services
    from apps.evaluations.models import Generation, JudgeSettings
    from tests.eval_setup import fake_outputs

    first = judged_setup
    JudgeSettings.objects.update(min_human_pairs=18)
    Judge.mode = "greeting"
    automatic.run_judge(first.pk)
    _humans_judge(first, team.reviewer, prefer_greeting=True)
    report = results.judge_report(first, bootstrap=0)
    assert (report.human_pairs, report.shown) == (9, False)

    second = services.create_evaluation(
        project=team.project,
        dataset_version=first.dataset_version,
        rubric=first.rubric,
        base_model=first.base_model,
        enqueue=False,
        candidates=[
            services.CandidateSpec(c.kind, run_id=c.run_id, system_prompt=c.system_prompt, few_shot=c.few_shot)
            for c in first.candidates.order_by("position")
        ],
        max_new_tokens=6,
        reviewers_per_pair=1,
        user=team.pm,
    )
    fake_outputs(second)
    Generation.objects.filter(candidate__evaluation=second, candidate__position=1).update(output="Hello.")
    automatic.run_judge(second.pk)
    _humans_judge(second, team.reviewer, prefer_greeting=True)
    report = results.judge_report(first, bootstrap=0)
    assert (report.human_pairs, report.calibration.pairs, report.shown) == (18, 18, True)
    assert report.calibration.kappa == 1.0


def test_the_judge_gate_counts_pairs_judged_by_both_not_every_human_judged_pair(team, judged_setup):
    """Reviewers judged all 9 pairs but the judge has a verdict on only 3 of them (one item's): kappa is 1.0 on
    those 3, which is no evidence of calibration. The gate counts the 3, so a threshold of 9 keeps the judge's
    win rates hidden, and the page says how many pairs the kappa stands on."""
    from apps.evaluations import automatic
    from apps.evaluations.models import JudgeSettings, JudgeVerdict

    evaluation = judged_setup
    JudgeSettings.objects.update(min_human_pairs=9)
    Judge.mode = "greeting"
    automatic.run_judge(evaluation.pk)
    first_item = JudgeVerdict.objects.order_by("comparison__item__position").first().comparison.item_id
    JudgeVerdict.objects.exclude(comparison__item_id=first_item).update(judged=False, winner=None)
    _humans_judge(evaluation, team.reviewer, prefer_greeting=True)
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/results/").content.decode()
    assert 'id="judge-win-rates"' not in page
    assert (
        "Judge-based win rates are hidden: the reviewers and the judge have both judged 3 pairs so far on this "
        "rubric version (9 judged by reviewers); judge figures show from 9."
    ) in page
    assert '<span id="judge-kappa">1.00</span>' in page and "on 3 pairs judged by both" in page


# --- the judge's endpoint held like a webhook's: public addresses only, errors summarised, the key kept to its URL ---
def test_the_judge_endpoint_gets_the_webhooks_ssrf_check(db, team, settings, endpoint):
    from apps.evaluations import automatic, services

    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = False
    for url in (
        endpoint,  # loopback
        "http://169.254.169.254/v1",
        "http://[64:ff9b::7f00:1]/v1",  # NAT64 form of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/v1",  # 6to4 form of 169.254.169.254
    ):
        with pytest.raises(services.EvaluationError) as refused:
            automatic.save_judge_settings(project=team.project, base_url=url, model="m", api_key="sk-1")
        assert "private, loopback or reserved" in str(refused.value), url
    # A verdict asked of a private address (stored before, or resolving differently now) is refused when sent.
    v = verdict_of(JudgeConfig(endpoint, "judge-model", "sk-test", timeout_s=2))
    assert v.winner is None and "private, loopback or reserved" in v.error and Judge.seen == []


def verdict_of(config):
    return judge_pair(config, rubric="Greets by name.", input_text="Cy", first="Hi Cy,\nOk.", second="Hello.")


def test_the_endpoint_s_error_text_is_summarised_not_stored(endpoint):
    Judge.mode = "error"
    v = verdict_of(JudgeConfig(endpoint, "judge-model", "sk-test", timeout_s=2, allow_private=True))
    assert v.error == "the judge answered HTTP 500" and "overloaded" not in v.error


def test_a_changed_judge_url_needs_the_key_again(db, team, settings, endpoint):
    from apps.evaluations import automatic, services
    from apps.evaluations.models import JudgeSettings

    settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = True
    automatic.save_judge_settings(project=team.project, base_url=endpoint, model="m", api_key="sk-secret-123")
    elsewhere = endpoint.replace("/v1", "/other/v1")
    with pytest.raises(services.EvaluationError) as refused:
        automatic.save_judge_settings(project=team.project, base_url=elsewhere, model="m")
    assert "enter its API key again" in str(refused.value)
    assert JudgeSettings.objects.get().base_url == endpoint
    automatic.save_judge_settings(project=team.project, base_url=elsewhere, model="m", api_key="sk-other")
    assert (JudgeSettings.objects.get().base_url, JudgeSettings.objects.get().api_key) == (elsewhere, "sk-other")


def test_the_judge_becomes_a_rubric_grader_only_once_calibrated_and_grades_through_its_endpoint(team, judged_setup):
    """A reinforcement run trained "from the rubric's graders" is rewarded by the judge only once the judge meets the
    bar its figures need on the results page; it then scores one output through the judge's endpoint."""
    from apps.evaluations import automatic as services
    from apps.evaluations.graders import judge_calibrated, judge_call_model, rubric_graders
    from apps.evaluations.models import JudgeSettings
    from worker.graders import grade, item_from, validate

    evaluation = judged_setup
    JudgeSettings.objects.update(min_human_pairs=9)
    assert [g["type"] for g in rubric_graders(evaluation.rubric)] == []
    assert "judge figures show from 9" in judge_calibrated(evaluation.rubric)[1]
    Judge.mode = "greeting"
    services.run_judge(evaluation.pk)
    _humans_judge(evaluation, team.reviewer, prefer_greeting=True)
    (judge,) = rubric_graders(evaluation.rubric)
    assert (judge["type"], judge["model"], judge["weight"]) == ("score_model", "judge-model", 1.0)
    assert validate(judge) == []
    assert "Criterion:" in judge["input"][0]["content"]  # the rubric as the pairwise judge reads it
    Judge.mode, Judge.seen = "score", []
    item = item_from([{"role": "user", "content": "Customer: Cy"}], "Hi Cy,\nIt ships today.\nBye")
    result = grade(judge, {"output_text": "Hi Cy, it ships."}, item, call_model=judge_call_model(team.project))
    assert (result.score, result.error) == (0.8, "")
    sent = Judge.seen[0]["messages"]
    assert "Input:\nuser: Customer: Cy\n\nAnswer:\nHi Cy, it ships." == sent[1]["content"]
    Judge.mode = "error"
    failed = grade(judge, {"output_text": "Hi"}, item, call_model=judge_call_model(team.project))
    assert failed.score is None and "HTTP 500" in failed.error  # missing, never 0
