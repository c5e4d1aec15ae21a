"""OpenAI's chat dialect as the parser reads it (worker.protocol.parse_chat_request), the tool-call forms of
worker.chat_format, and /v1/'s unknown paths. No model: fast."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageToolCall

from worker.chat_format import FORMATS, render
from worker.constrain import check
from worker.protocol import EngineError, parse_chat_request

USER = {"role": "user", "content": "Where is order #104?"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def parse(**fields):
    return parse_chat_request({"model": "m", "messages": [USER], **fields})


def refused(**fields) -> EngineError:
    with pytest.raises(EngineError) as exc:
        parse(**fields)
    assert exc.value.status == 400
    return exc.value


def test_stock_client_bodies_are_accepted_explicit_nulls_echo_fields_and_harmless_fields():
    nulls = dict.fromkeys(
        [
            "temperature",
            "top_p",
            "n",
            "stop",
            "max_tokens",
            "presence_penalty",
            "frequency_penalty",
            "logprobs",
            "top_logprobs",
            "response_format",
            "seed",
            "tools",
            "tool_choice",
            "user",
        ]
    )
    chat = parse(**nulls)
    assert chat.params[0].temperature == 1.0 and chat.params[0].max_new_tokens == 256 and not chat.logprobs

    echoed = ChatCompletionMessage(
        role="assistant",
        content=None,
        tool_calls=[
            ChatCompletionMessageToolCall(
                id="call_1", type="function", function={"name": "get_weather", "arguments": '{"city": "Oslo"}'}
            )
        ],
    ).model_dump()  # refusal, annotations, audio, function_call: null
    plain = ChatCompletionMessage(role="assistant", content="It is on its way.").model_dump()
    chat = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                USER,
                plain,
                echoed,
                {"role": "tool", "tool_call_id": "call_1", "content": "5 C"},
            ],
            "store": True,
            "metadata": {"team": "support"},
            "service_tier": "auto",
            "user": "ann",
            "modalities": ["text"],
            "top_p": 0,
            "tools": [WEATHER],
            "tool_choice": "none",
        }
    )
    assert [m["role"] for m in chat.messages] == ["developer", "user", "assistant", "assistant", "tool"]
    assert chat.messages[2] == {"role": "assistant", "content": "It is on its way."}
    assert chat.messages[3]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert chat.params[0].greedy  # top_p 0: only the most likely token
    assert chat.tool_choice == "none" and chat.forced_tools is None


def test_every_refusal_names_its_field():
    assert refused(logit_bias={"1": 5}).param == "logit_bias"
    assert refused(presence_penalty=0.5).param == "presence_penalty"
    assert refused(top_logprobs=21, logprobs=True).param == "top_logprobs"
    assert refused(top_logprobs=2).param == "top_logprobs"  # without logprobs
    assert refused(tools=[{"type": "function", "function": {"name": "bad name"}}]).param == "tools[0].function.name"
    assert refused(tools=[{"type": "code_interpreter"}]).param == "tools[0].type"
    assert refused(tool_choice="required").param == "tool_choice"  # no tools
    assert refused(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}).param == (
        "tool_choice"
    )
    assert refused(response_format={"type": "xml"}).param == "response_format.type"
    assert refused(response_format={"type": "json_schema", "json_schema": {"schema": {}}}).param == (
        "response_format.json_schema"
    )
    unusable = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "$ref": "#/nope"}}}
    assert refused(response_format=unusable).param == "response_format.json_schema.schema"
    with pytest.raises(EngineError) as bad:
        parse_chat_request({"model": "m", "messages": [USER, {"role": "assistant", "content": "x", "parts": 1}]})
    assert bad.value.param == "messages[1].parts"
    with pytest.raises(EngineError) as bad:
        parse_chat_request({"model": "m", "messages": [{"role": "tool", "content": "5 C"}]})
    assert bad.value.param == "messages[0].tool_call_id"


def test_tools_legacy_functions_and_response_format_are_read():
    chat = parse(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert chat.forced_tools == [WEATHER["function"]] and chat.parallel_tool_calls
    chat = parse(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert chat.forced_tools == [WEATHER["function"]] and not chat.parallel_tool_calls
    legacy = parse(functions=[WEATHER["function"]], function_call={"name": "get_weather"})
    assert legacy.legacy_functions and legacy.forced_tools == [WEATHER["function"]]
    assert parse(tools=[WEATHER]).tool_choice == "auto"
    assert parse(response_format={"type": "text"}).params[0].grammar is None
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    grammar = parse(response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    assert '"ok"' in grammar.params[0].grammar
    assert parse(response_format={"type": "json_object"}).params[0].grammar.startswith("start: %json")


def test_hermes_and_llama3_tool_calls_are_parsed_and_their_grammars_compile():
    hermes = FORMATS["hermes"]
    content, calls = hermes.parse(
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    assert content == "Let me look." and [json.loads(c.arguments)["city"] for c in calls] == ["Oslo", "Paris"]
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")
    assert hermes.parse("<tool_call>{not json</tool_call>") == ("<tool_call>{not json</tool_call>", [])
    assert hermes.parse("No call here.") == ("No call here.", [])
    assert hermes.hold_from("Sure <tool") == len("Sure ") and hermes.hold_from("Sure.") == len("Sure.")
    llama = FORMATS["llama3_json"]
    content, calls = llama.parse('{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert content is None and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert llama.parse("Hello there") == ("Hello there", [])
    for fmt in (hermes, llama):
        for parallel in (True, False):
            check(fmt.grammar([WEATHER["function"]], parallel))  # llguidance compiles it


def _tokenizer(template: str):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tokenizer.chat_template = template
    return tokenizer


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_without_tool_support_gets_the_hermes_form_and_developer_becomes_system():
    tokenizer = _tokenizer(CHATML)
    text = render(
        tokenizer,
        [
            {"role": "developer", "content": "Be brief."},
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "w", "arguments": {"a": 1}}}],
            },
            {"role": "tool", "content": "5 C", "tool_call_id": "c"},
        ],
        tools=[WEATHER["function"]],
    )
    assert "<|im_start|>developer" not in text and text.startswith("<|im_start|>system\nBe brief.")
    assert "<tools>" in text and '"get_weather"' in text  # tools go into the system turn
    assert '<tool_call>\n{"name": "w", "arguments": {"a": 1}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n5 C\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_a_template_with_tool_support_renders_the_tools_itself():
    native = (
        "{% if tools %}TOOLS:{{ tools | map(attribute='function.name') | join(',') }}|{% endif %}"
        "{% for m in messages %}{{ m['role'] }}:{{ m['content'] }}"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}[{{ c.function.name }}]{% endfor %}{% endif %}|"
        "{% endfor %}"
    )
    text = render(
        _tokenizer(native),
        [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "w", "arguments": {}}}],
            },
        ],
        tools=[WEATHER["function"]],
    )
    assert text == "TOOLS:get_weather|system:Be brief.|assistant:[w]|"


def test_unknown_v1_paths_and_wrong_methods_answer_in_openai_s_error_shape(client):
    # (GET /v1/chat/completions lists stored completions, so the wrong method there is PUT)
    for method, path in (("get", "/v1/nope"), ("post", "/v1/embeddings"), ("put", "/v1/chat/completions")):
        response = getattr(client, method)(path)
        body = response.json()
        assert response["Content-Type"] == "application/json"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert response.status_code == (405 if path == "/v1/chat/completions" else 404)
