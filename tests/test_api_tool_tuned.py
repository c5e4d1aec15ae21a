"""A tool-calling fine-tune end to end: a version of tool-call conversations trains the tiny Llama through the
Studio's own run, and the tuned model, asked the same question through /v1/ with the official openai package,
writes a call that comes back parsed into ``tool_calls`` (not as text), streamed too. Nothing forces the call:
``tool_choice`` is left to the model (``auto``), so the call is the tuning's doing, as the base model shows."""

from __future__ import annotations

import json
import shutil

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from apps.api.selectors import run_model_id
from apps.datasets.models import DatasetVersionItem
from apps.runs import base_models, execution, launching
from apps.runs.models import Run
from tests import api_setup, runs_setup
from tests.factories import make_dataset_version
from tests.test_api_openai import api  # noqa: F401 - the fixture

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model  # the api fixture's
pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
# Enough for the random tiny model to learn this one reply by heart (a higher rate collapses it; fewer steps fall
# short): every projection adapted, one example a step.
OVERRIDES = {
    "max_steps": 100,
    "batch_size": 1,
    "learning_rate": 0.01,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "max_seq_length": 256,
    "save_steps": 1000,
}


@pytest.fixture
def chat_model(settings, tiny_model_dir, tmp_path):
    """The tiny Llama whose turns end at <|im_end|>, as SmolLM2-Instruct's do (the test copy's end token is
    <|im_start|>, so a reply would otherwise run on to the token limit)."""
    folder = tmp_path / "tiny-chat"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [1, 2]}))
    settings.FTSTUDIO_MODEL_ROOTS = [*settings.FTSTUDIO_MODEL_ROOTS, tmp_path]
    return base_models.register_base_model(name="tiny-chat", source_kind="local", source=str(folder))


@pytest.fixture
def tool_run(team, chat_model) -> Run:
    version = make_dataset_version(
        team.project, {"train": [[*ASK, {"role": "assistant", "content": "", "tool_calls": [CALL]}]]}
    )
    DatasetVersionItem.objects.filter(version=version).update(tools=[WEATHER])  # the example offers the tool
    run = launching.launch_run(
        project=team.project, dataset_version=version, base_model=chat_model, overrides=OVERRIDES, user=team.pm
    )
    execution.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    return run


def test_a_tool_calling_fine_tune_s_calls_come_back_as_tool_calls(api, tool_run):  # noqa: F811
    client = api("pm")
    model = run_model_id(tool_run)
    ask = {"messages": ASK, "tools": [WEATHER], "max_tokens": 40, "temperature": 0}
    reply = ChatCompletion.model_validate(client.chat.completions.create(model=model, **ask).model_dump())
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = [
        ChatCompletionChunk.model_validate(c.model_dump())
        for c in client.chat.completions.create(model=model, stream=True, **ask)
    ]
    parts = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert parts[0].id.startswith("call_") and parts[0].function.name == "get_weather"
    assert json.loads("".join(p.function.arguments or "" for p in parts)) == {"city": "Paris"}
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    untuned = client.chat.completions.create(model="tiny-chat", **ask).choices[0]  # the same random base
    assert untuned.message.tool_calls is None and untuned.finish_reason == "length"
