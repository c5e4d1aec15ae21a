"""The inference process and its engine held against abuse: seeds in OpenAI's range, admission all or nothing,
rows of a caller who went away leave the batch, a long body never tokenized on the engine's thread, a shared secret
with the web process, and prompt beginnings kept apart per project."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from tests import api_setup
from tests.api_setup import free_port, health
from tests.conftest import REPO
from worker.engine import Engine
from worker.protocol import EngineError, SamplingParams, parse_chat_request

inference = api_setup.inference
HI = [{"role": "user", "content": "Hi"}]
SYSTEM = {"role": "system", "content": "You are the support desk of Ember Home. Answer in two short sentences. " * 3}


def test_a_seed_outside_openai_s_range_is_a_400_naming_seed():
    for seed in (2**64 - 1, 2**63, -(2**63) - 1):
        with pytest.raises(EngineError) as bad:
            parse_chat_request({"model": "m", "messages": HI, "seed": seed, "n": 2})
        assert bad.value.status == 400 and bad.value.param == "seed"
    assert parse_chat_request({"model": "m", "messages": HI, "seed": 2**63 - 1, "n": 8}).params[-1].seed == 2**63 + 6


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = Engine(max_batch=8, allowed_roots=[str(tiny_model_dir.parent)])
    yield engine
    engine.close()


def wait_idle(engine: Engine, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = engine.stats()
        if not stats["running"] and not stats["waiting"]:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"the engine is still busy: {engine.stats()}")


def test_a_request_the_engine_cannot_admit_whole_leaves_no_row_and_no_count_behind(engine, tiny_model_dir):
    sampled = [SamplingParams(max_new_tokens=400, temperature=1.0, seed=2**64 - 1 + i) for i in range(2)]
    with pytest.raises((ValueError, RuntimeError)):  # the second row's seed is one the generator refuses
        engine.submit(model_dir=str(tiny_model_dir), messages=HI, params=sampled, client="key-1", client_limit=2)
    stats = engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0, stats
    rows = engine.submit(
        model_dir=str(tiny_model_dir),
        messages=HI,
        params=[SamplingParams(max_new_tokens=2)] * 2,
        client="key-1",
        client_limit=2,
    )  # nothing of the refused request counts against the key
    assert len(rows) == 2
    wait_idle(engine)


class TokenizerSpy:
    """The base model's tokenizer, noting the threads that tokenize with it."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.threads = tokenizer, []

    def __call__(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_prompts_are_tokenized_off_the_engine_thread_and_a_long_one_is_refused_before(engine, tiny_model_dir):
    engine.submit(model_dir=str(tiny_model_dir), messages=HI, params=[SamplingParams(max_new_tokens=1)])
    wait_idle(engine)
    base = next(iter(engine._bases.values()))
    spy = base.tokenizer = TokenizerSpy(base.tokenizer)
    try:
        engine.submit(model_dir=str(tiny_model_dir), messages=HI, params=[SamplingParams(max_new_tokens=1)])
        assert spy.threads and "engine" not in spy.threads
        spy.threads.clear()
        huge = [{"role": "user", "content": "word " * 400_000}]  # 2 MB: far over the tiny model's 512 tokens
        with pytest.raises(EngineError) as too_long:
            engine.submit(model_dir=str(tiny_model_dir), messages=huge, params=[SamplingParams(max_new_tokens=8)])
        assert too_long.value.code == "context_length_exceeded" and "at least" in too_long.value.message
        assert spy.threads == []  # refused by its length, never tokenized
    finally:
        base.tokenizer = spy.tokenizer
        wait_idle(engine)


def test_prompt_beginnings_are_reused_within_a_project_only(engine, tiny_model_dir):
    def reused_after(scope: str, question: str) -> int:
        name = tiny_model_dir.name
        before = engine.stats()["models"][name]["prefix_tokens_reused"]
        engine.submit(
            model_dir=str(tiny_model_dir),
            messages=[SYSTEM, {"role": "user", "content": question}],
            params=[SamplingParams(max_new_tokens=1)],
            scope=scope,
        )
        return wait_idle(engine)["models"][name]["prefix_tokens_reused"] - before

    reused_after("project-1", "Where is my order?")
    assert reused_after("project-2", "Can I return a lamp?") == 0  # another project's beginning: prefilled again
    assert reused_after("project-1", "Can I return a lamp?") > 0  # the same project's: reused


# --- the inference process ---------------------------------------------------------------------------------------
def post(url: str, body: dict, secret: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat_body(tiny_model_dir, **fields) -> dict:
    return {"model": "tiny", "messages": HI, "ftstudio": {"base": str(tiny_model_dir)}, **fields}


def test_the_inference_process_answers_only_the_web_process(inference, tiny_model_dir):
    body = chat_body(tiny_model_dir, max_tokens=2)
    for secret in (None, "a-guess"):
        status, payload = post(inference.url, body, secret)
        assert status == 401 and payload["error"]["code"] == "invalid_api_key"
    status, payload = post(inference.url, body, settings.FTSTUDIO_INFERENCE_SECRET)
    assert status == 200 and payload["choices"][0]["message"]["role"] == "assistant"


def test_the_inference_process_refuses_a_body_over_the_cap_unread(inference):
    with socket.create_connection(("127.0.0.1", inference.port), timeout=30) as conn:
        conn.sendall(  # the headers only: the answer comes without the 9 MB being sent
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {settings.FTSTUDIO_INFERENCE_SECRET}\r\n".encode()
            + f"Content-Length: {9 * 2**20}\r\n\r\n".encode()
        )
        answer = conn.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 400") and "at most 8388608" in answer


def test_the_rows_of_a_caller_who_went_away_without_a_stream_leave_the_batch(inference, tiny_model_dir):
    loaded = post(inference.url, chat_body(tiny_model_dir, max_tokens=1), settings.FTSTUDIO_INFERENCE_SECRET)
    assert loaded[0] == 200  # the model is loaded before the health checks are timed
    before = health(inference.url)["cancelled"]
    data = json.dumps(chat_body(tiny_model_dir, max_tokens=480, temperature=0, n=2)).encode()
    with socket.create_connection(("127.0.0.1", inference.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {settings.FTSTUDIO_INFERENCE_SECRET}\r\n".encode()
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        deadline = time.monotonic() + 20
        while health(inference.url)["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = health(inference.url)
        if state["running"] == 0 and state["cancelled"] >= before + 2:
            break
        time.sleep(0.1)
    assert state["running"] == 0 and state["cancelled"] == before + 2, state


@pytest.mark.slow  # starts the inference process
def test_the_inference_process_listens_beyond_loopback_only_with_a_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FTSTUDIO_INFERENCE_SECRET"}
    env["FTSTUDIO_VAR_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "worker.serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78 and "FTSTUDIO_INFERENCE_SECRET" in result.stderr
    assert not (tmp_path / "inference-secret").exists()
