"""OpenAI's tool-calling training lines in the importer: tools kept with the example, tool calls, tool results,
the developer role and weight 0 turns; shown readably (and escaped) in the labelling view."""

import io
import json

from apps.datasets import importing
from apps.datasets.models import Example

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The <b>weather</b> in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def tool_line(city="Paris", tools=(WEATHER,), **extra) -> dict:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {
        "tools": list(tools),
        "messages": [
            {"role": "developer", "content": "You answer about the weather."},
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "Checking.", "weight": 0},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "<script>alert(1)</script> 18C"},
            {"role": "assistant", "content": f"It is 18C in {city}."},
        ],
        **extra,
    }


def import_lines(project, *lines):
    text = "".join(json.dumps(line) + "\n" for line in lines)
    return importing.import_examples(project=project, path_or_file=io.BytesIO(text.encode()), file_format="openai")


def test_a_tool_call_conversation_imports_with_its_tools_calls_and_weights(team):
    report = import_lines(team.project, tool_line())
    assert report.ok, report.errors
    example = Example.objects.get(project=team.project)
    assert example.tools == [WEATHER]
    roles = [m["role"] for m in example.messages]
    assert roles == ["system", "user", "assistant", "assistant", "tool", "assistant"]  # developer kept as system
    assert example.messages[2]["weight"] == 0 and "weight" not in example.messages[5]
    assert example.messages[3]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert example.messages[4]["tool_call_id"] == "call_1"


def test_the_same_turns_offered_other_tools_are_another_example_and_a_reimport_is_a_duplicate(team):
    other_tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    assert import_lines(team.project, tool_line(), tool_line(tools=(WEATHER, other_tool))).imported == 2
    again = import_lines(team.project, tool_line())
    assert again.imported == 0 and again.skipped_duplicates == 1


def test_bad_tool_lines_name_the_message_and_the_reason(team):
    orphan = tool_line()
    orphan["messages"][4]["tool_call_id"] = "call_9"
    bad_weight = tool_line()
    bad_weight["messages"][5]["weight"] = 0.5
    bad_arguments = tool_line()
    bad_arguments["messages"][3]["tool_calls"][0]["function"]["arguments"] = "{city: Paris"
    user_calls = tool_line()
    user_calls["messages"][1]["tool_calls"] = user_calls["messages"][3]["tool_calls"]
    report = import_lines(
        team.project, orphan, bad_weight, bad_arguments, user_calls, {**tool_line(), "tools": "weather"}
    )
    errors = [str(e) for e in report.errors]
    assert not report.ok and not Example.objects.filter(project=team.project).exists()
    assert "line 1: message 5 (tool) answers tool call 'call_9', which no earlier assistant message made" in errors
    assert "line 2: message 6 (assistant): weight must be 0 or 1, on assistant messages only; got 0.5" in errors
    assert "line 3: message 4 (assistant): tool call 1's arguments are not valid JSON text" in errors
    assert 'line 4: message 2 (user): only assistant messages may have "tool_calls"' in errors
    assert 'line 5: "tools" must be a list of function definitions, found a string' in errors


def test_an_openai_export_reimports_to_the_same_tool_examples(team):
    import_lines(team.project, tool_line(), tool_line("Oslo"))
    exported = "".join(importing.export_lines(project=team.project, file_format="openai"))
    report = importing.import_examples(
        project=team.other_project, path_or_file=io.BytesIO(exported.encode()), file_format="openai"
    )
    assert report.imported == 2
    mine = Example.objects.filter(project=team.project).order_by("id")
    theirs = Example.objects.filter(project=team.other_project).order_by("id")
    assert [(e.messages, e.tools, e.content_hash) for e in mine] == [
        (e.messages, e.tools, e.content_hash) for e in theirs
    ]


def test_the_labelling_view_shows_tools_calls_and_results_escaped(team):
    import_lines(team.project, tool_line())
    example = Example.objects.get(project=team.project)
    page = team.client("designer").get(f"/p/support/data/examples/{example.pk}/").content.decode()
    assert "Tools the model may call" in page and "<code>get_weather</code>: The &lt;b&gt;weather&lt;/b&gt;" in page
    assert "Calls <code>get_weather</code> with <code>{&quot;city&quot;: &quot;Paris&quot;}</code>" in page
    assert "Tool result" in page and "&lt;script&gt;alert(1)&lt;/script&gt; 18C" in page
    assert "<script>alert(1)</script>" not in page
    assert "(context only, not learnt)" in page


def test_a_final_turn_that_only_calls_a_tool_is_not_an_empty_output_for_the_quality_report():
    from apps.datasets.quality import Item

    messages = tool_line()["messages"][:4]
    messages[3] = {"role": "assistant", "content": "", "tool_calls": messages[3]["tool_calls"]}
    assert Item(1, messages).output == 'get_weather({"city": "Paris"})'


def test_token_counts_include_the_tools_and_the_tool_calls(team, settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)
    assert import_lines(team.project, tool_line(), tool_line(tools=())).imported == 2
    with_tools, without = Example.objects.filter(project=team.project).order_by("id")
    assert with_tools.token_count > without.token_count + 20  # the function definition is part of the prompt
    plain = {
        **tool_line(),
        "messages": [m for m in tool_line()["messages"] if not m.get("tool_calls") and m["role"] != "tool"],
    }
    import_lines(team.other_project, {**plain, "tools": []})
    assert without.token_count > Example.objects.get(project=team.other_project).token_count  # the call is counted
