"""OpenAI's chat dialect through /v1/ with the official openai package and LangChain's ChatOpenAI, against a live
server and a real inference process on the tiny random Llama: tools, structured outputs, logprobs, stock bodies.
Every answer and stream chunk is validated with the SDK's own types."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from tests import api_setup, runs_setup
from tests.test_api_openai import HELLO, api  # noqa: F401 - the fixture

inference = api_setup.inference
tiny_base_model = runs_setup.tiny_base_model
pytestmark = pytest.mark.django_db(transaction=True)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


def checked(reply) -> ChatCompletion:
    """The raw JSON body, validated by the SDK's own model (not just what the SDK tolerates)."""
    return ChatCompletion.model_validate(reply.model_dump(exclude_unset=True))


def chunks_of(stream) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate(c.model_dump(exclude_unset=True)) for c in stream]


def test_a_tool_call_round_trip_named_required_and_streamed(api):  # noqa: F811
    client = api("pm")
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    reply = checked(
        client.chat.completions.create(
            model="tiny-llama",
            messages=ask,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=0,
        )
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.refusal is None
    (call,) = choice.message.tool_calls  # the random model writes what the grammar lets it: one get_weather call
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in {"Oslo", "Paris"}
    assert call.id.startswith("call_") and reply.system_fingerprint.startswith("fp_")

    # The code runs the tool and sends the conversation back (the assistant turn as the SDK returned it).
    answer = checked(
        client.chat.completions.create(
            model="tiny-llama",
            messages=[
                *ask,
                choice.message.model_dump(),
                {"role": "tool", "tool_call_id": call.id, "content": "5 C and rain"},
            ],
            tools=[WEATHER, TIME],
            max_tokens=8,
            temperature=0,
        )
    )
    assert answer.choices[0].message.content is not None and answer.usage.completion_tokens > 0

    required = checked(
        client.chat.completions.create(
            model="tiny-llama",
            messages=ask,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=0,
        )
    )
    assert len(required.choices[0].message.tool_calls) == 1
    assert required.choices[0].message.tool_calls[0].function.name in {"get_weather", "get_time"}

    chunks = chunks_of(
        client.chat.completions.create(
            model="tiny-llama",
            messages=ask,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=0,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = [t for d in deltas for t in d.tool_calls or []]
    assert [(t.index, t.function.name, t.function.arguments) for t in streamed] == [
        (0, "get_weather", call.function.arguments)
    ]
    assert not "".join(d.content or "" for d in deltas)  # the call's text is not also sent as content
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and chunks[-1].system_fingerprint

    legacy = client.chat.completions.create(
        model="tiny-llama",
        messages=ask,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        max_tokens=60,
        temperature=0,
    )
    assert legacy.choices[0].finish_reason == "function_call"
    assert legacy.choices[0].message.function_call.name == "get_weather"

    none = checked(
        client.chat.completions.create(
            model="tiny-llama", messages=ask, tools=[WEATHER], tool_choice="none", max_tokens=6, temperature=0
        )
    )
    assert none.choices[0].message.tool_calls is None and none.choices[0].finish_reason in {"stop", "length"}


class Ticket(BaseModel):
    urgent: bool
    team: Literal["billing", "shipping"]
    priority: int = Field(ge=1, le=5)


def test_structured_outputs_parse_into_a_pydantic_model_and_json_mode(api):  # noqa: F811
    client = api("pm")
    parsed = client.chat.completions.parse(
        model="tiny-llama", messages=HELLO, response_format=Ticket, max_tokens=40, temperature=0
    )
    ticket = parsed.choices[0].message.parsed
    assert isinstance(ticket, Ticket) and 1 <= ticket.priority <= 5
    sampled = client.chat.completions.parse(
        model="tiny-llama", messages=HELLO, response_format=Ticket, max_tokens=40, temperature=1.2, seed=3, n=2
    )
    assert all(isinstance(c.message.parsed, Ticket) for c in sampled.choices)

    free = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=12, temperature=0)
    json_mode = checked(
        client.chat.completions.create(
            model="tiny-llama",
            messages=HELLO,
            response_format={"type": "json_object"},
            max_tokens=40,
            temperature=0,
        )
    )
    text = json_mode.choices[0].message.content
    assert text.startswith("{") and text != free.choices[0].message.content
    if json_mode.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    text_mode = client.chat.completions.create(
        model="tiny-llama", messages=HELLO, response_format={"type": "text"}, max_tokens=12, temperature=0
    )
    assert text_mode.choices[0].message.content == free.choices[0].message.content


def test_logprobs_and_top_logprobs_come_back_and_stream(api):  # noqa: F811
    client = api("pm")
    reply = checked(
        client.chat.completions.create(
            model="tiny-llama", messages=HELLO, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
        )
    )
    choice = reply.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == reply.usage.completion_tokens
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy: the chosen token is the likeliest
    plain = client.chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None

    chunks = chunks_of(
        client.chat.completions.create(
            model="tiny-llama", messages=HELLO, max_tokens=6, temperature=0, logprobs=True, stream=True
        )
    )
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, pytest.approx(t.logprob)) for t in tokens]
    assert all(t.top_logprobs == [] for t in streamed)


def test_stock_code_the_developer_role_echoed_messages_nulls_and_harmless_fields(api, live_server):  # noqa: F811
    client = api("pm")
    first = checked(
        client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "developer", "content": "Answer briefly."}, *HELLO],
            max_tokens=8,
            temperature=0,
            store=True,
            metadata={"team": "support"},
            service_tier="auto",
            top_p=0,
        )
    )
    message = first.choices[0].message
    assert message.refusal is None and first.system_fingerprint.startswith("fp_")
    same_as_system = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "system", "content": "Answer briefly."}, *HELLO],
        max_tokens=8,
        temperature=0,
    )
    assert message.content == same_as_system.choices[0].message.content  # developer is read as system here
    assert first.system_fingerprint == same_as_system.system_fingerprint

    body = {
        "model": "tiny-llama",
        "messages": [*HELLO, message.model_dump(), {"role": "user", "content": "Thanks"}],
        "max_tokens": 4,
        **dict.fromkeys(["temperature", "top_p", "n", "stop", "seed", "logprobs", "top_logprobs", "tools"]),
        **dict.fromkeys(["response_format", "presence_penalty", "frequency_penalty", "user"]),
    }
    again = client.chat.completions.create(**body)
    assert again.choices[0].message.content is not None

    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="tiny-llama", input="hi")
    assert unknown.value.body["code"] == "unknown_url"


def test_langchain_chat_openai_binds_tools_and_gives_structured_output(api, live_server):  # noqa: F811
    from langchain_openai import ChatOpenAI

    key = api("pm").api_key
    llm = ChatOpenAI(
        model="tiny-llama", base_url=f"{live_server.url}/v1", api_key=key, temperature=0, max_tokens=60, max_retries=0
    )
    called = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    assert called.tool_calls[0]["name"] == "get_weather" and called.tool_calls[0]["args"]["city"] in {"Oslo", "Paris"}
    ticket = llm.with_structured_output(Ticket, method="json_schema").invoke("Order #104 is late")
    assert isinstance(ticket, Ticket)
    via_tool = llm.with_structured_output(Ticket, method="function_calling").invoke("Order #104 is late")
    assert isinstance(via_tool, Ticket)


def test_constrained_and_free_rows_share_a_batch_and_free_rows_write_what_they_write_alone(tiny_model_dir):
    from worker.constrain import lark_for_response_format
    from worker.models import load_generator, render_prompt
    from worker.protocol import SamplingParams
    from worker.runner import BatchRunner, Request

    model, tokenizer = load_generator(str(tiny_model_dir), device="cpu")
    ids = tokenizer(render_prompt(tokenizer, HELLO), add_special_tokens=False)["input_ids"]
    schema = {**Ticket.model_json_schema(), "additionalProperties": False}  # as strict mode sends it
    grammar = lark_for_response_format({"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})

    def run(*params):
        runner = BatchRunner(model, tokenizer, max_batch=8)
        requests = [Request(prompt_ids=list(ids), params=p) for p in params]
        for r in requests:
            runner.add(r)
        while runner.busy:
            runner.step()
        return requests

    free = SamplingParams(max_new_tokens=12, logprobs=True)
    (alone,) = run(free)
    mixed = run(free, SamplingParams(max_new_tokens=40, grammar=grammar), free)
    assert mixed[0].output_ids == alone.output_ids == mixed[2].output_ids
    assert [e["logprob"] for e in mixed[0].logprobs] == pytest.approx([e["logprob"] for e in alone.logprobs])
    ticket = Ticket.model_validate_json(tokenizer.decode(mixed[1].output_ids, skip_special_tokens=True))
    assert mixed[1].finish_reason == "stop" and 1 <= ticket.priority <= 5


def test_every_answer_and_stream_chunk_is_a_valid_openai_object_by_the_pinned_schema(api, live_server):  # noqa: F811
    """The raw bodies (not what the SDK tolerates) against OpenAI's published CreateChatCompletionResponse and
    CreateChatCompletionStreamResponse: a plain reply, logprobs, a tool call, a JSON schema answer, usage last."""
    import httpx

    from tests.openai_schema import assert_openai_shape

    headers = {"Authorization": f"Bearer {api('pm').api_key}"}
    url = f"{live_server.url}/v1/chat/completions"
    ticket = {"type": "json_schema", "json_schema": {"name": "ticket", "strict": True, "schema": {
        **Ticket.model_json_schema(), "additionalProperties": False}}}  # fmt: skip
    forced = {"type": "function", "function": {"name": "get_weather"}}
    bodies = {
        "plain": {},
        "logprobs": {"logprobs": True, "top_logprobs": 2},
        "tools": {"tools": [WEATHER, TIME], "tool_choice": forced, "max_tokens": 60},
        "json_schema": {"response_format": ticket, "max_tokens": 40},
    }
    for name, extra in bodies.items():
        body = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 6, "temperature": 0, **extra}
        answer = httpx.post(url, json=body, headers=headers, timeout=120).json()
        assert_openai_shape("CreateChatCompletionResponse", answer)
        message = answer["choices"][0]["message"]
        assert "refusal" in message and message["refusal"] is None, name  # required, null when none
        if name == "logprobs":
            assert len(answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
        if name == "tools":
            assert answer["choices"][0]["finish_reason"] == "tool_calls" and message["tool_calls"]

        chunks = []
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=streamed, headers=headers, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[len("data: ") :]))
        for chunk in chunks:
            assert_openai_shape("CreateChatCompletionStreamResponse", chunk)
        *answering, last = chunks
        assert last["choices"] == [] and last["usage"]["total_tokens"] == answer["usage"]["total_tokens"], name
        assert all(c.get("usage") is None for c in answering), name  # usage comes in the last chunk only
        assert answering[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"], name
