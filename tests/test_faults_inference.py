"""A stream cut by a dying inference process (kill -9, or SIGTERM past its grace period) ends with an error the
official openai SDK raises, never as if the answer were whole; the tokens sent are counted for the key."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import openai
import pytest

from apps.api import services as api_services
from apps.api.models import ApiKey
from tests import runs_setup
from tests.api_setup import InferenceProcess
from tests.conftest import REPO

tiny_base_model = runs_setup.tiny_base_model
pytestmark = pytest.mark.django_db(transaction=True)
HELLO = [{"role": "user", "content": "Hello, where is my order?"}]


@pytest.fixture
def slow_inference(tiny_model_dir, tmp_path):
    """An inference process of its own (the test kills it) whose every decode step takes 0.1 s and never stops at
    an end-of-sequence token (tests/faults), so a 200-token stream lasts about 20 s."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), os.environ.get("PYTHONPATH", str(REPO))]),
        "FTSTUDIO_FAULT_DECODE_STEP_SECONDS": "0.1",
        "FTSTUDIO_INFERENCE_GRACE_SECONDS": "1",
    }
    process = InferenceProcess([str(Path(tiny_model_dir).parent)], tmp_path / "inference.log", env=env)
    yield process
    process.stop()


@pytest.fixture
def client(settings, live_server, slow_inference, team, tiny_base_model):
    settings.FTSTUDIO_INFERENCE_URL = slow_inference.url
    raw = api_services.create_api_key(project=team.project, user=team.pm, name="pm")[1]
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=raw, max_retries=0, timeout=60)


def read_until_cut(stream, kill) -> tuple[list[str], BaseException | None]:
    """Read the stream; after the third piece of text call ``kill``; return the text and what the SDK raised."""
    pieces: list[str] = []
    try:
        for chunk in stream:
            assert not chunk.choices or chunk.choices[0].finish_reason is None, "a cut stream must not finish"
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 3:
                    kill()
    except openai.APIError as exc:
        return pieces, exc
    return pieces, None


def test_kill_9_mid_stream_raises_in_the_sdk_and_counts_the_tokens_sent(client, slow_inference):
    stream = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=200, temperature=0, stream=True
    )
    started = time.monotonic()
    pieces, error = read_until_cut(stream, lambda: os.killpg(slow_inference.process.pid, signal.SIGKILL))
    assert error is not None, f"the stream ended as if whole after {len(pieces)} pieces"
    assert "stopped before this answer was finished" in error.message
    assert time.monotonic() - started < 15
    key = ApiKey.objects.get(name="pm")
    assert key.completion_tokens >= len(pieces) >= 3 and key.prompt_tokens > 0


def test_sigterm_errors_open_streams_after_the_grace_period_and_exits(client, slow_inference):
    stream = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, max_tokens=200, temperature=0, stream=True
    )
    pieces, error = read_until_cut(stream, lambda: os.kill(slow_inference.process.pid, signal.SIGTERM))
    assert error is not None and "stopped before this answer was finished" in error.message
    assert slow_inference.process.wait(timeout=15) == 0  # grace (1 s) + the handlers' error events, then exits
    assert ApiKey.objects.get(name="pm").completion_tokens >= 3
