"""The LLM judge (worker/judge.py) against a tiny OpenAI-compatible server started by the test, through the
official `openai` client: both orders, a win only when they agree; timeouts, errors and garbage leave the pair
unjudged with the reason."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.judge import JudgeConfig, judge_pair, parse_pick, rubric_text

RUBRIC = rubric_text([{"name": "Greets by name", "description": "opens with Hi <name>,",
                       "levels": [("Pass", "Hi <name>,"), ("Fail", "no greeting")], "good": "Hi Cy,\nOk.\nBye"}])


class Judge(BaseHTTPRequestHandler):
    mode = "first"  # first | greeting | garbage | slow | error
    seen: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        user = body["messages"][-1]["content"]
        a = user.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
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
            "greeting": json.dumps({"reasoning": "one greets by name", "winner": "A" if a.startswith("Hi Cy,") else "B"}),
            "garbage": "I'm sorry, I can't compare these answers.",
            "slow": '{"winner": "A"}',
        }[self.mode]
        payload = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
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
    return judge_pair(JudgeConfig(endpoint, "judge-model", "sk-test", timeout_s=timeout), rubric=RUBRIC,
                      input_text="Customer: Cy", first=first, second=second)


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


@pytest.mark.parametrize(("mode", "reason"), [
    ("garbage", "no verdict in the judge's reply"),
    ("slow", "timed out after 0.5 s"),
    ("error", "HTTP 500"),
])
def test_timeouts_errors_and_refusals_leave_the_pair_unjudged_with_the_reason(endpoint, mode, reason):
    v = verdict(endpoint, mode, timeout=0.5)
    assert v.winner is None and reason in v.error and v.position_consistent is None


def test_the_verdict_is_read_from_json_or_a_winner_line():
    assert parse_pick('```json\n{"reasoning": "B is shorter", "winner": "b"}\n```') == ("B", "B is shorter")
    assert parse_pick("Reasoning: close.\nWinner: tie")[0] == "tie"
