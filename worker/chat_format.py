"""OpenAI chat messages and tools as a model's chat template sees them, and tool calls read back from its output.
No Django here.

* :func:`render` renders messages (``developer`` becomes ``system`` where the template does not know it) and
  tools. A template with tool support (``tools`` in its text) renders them itself through transformers'
  ``apply_chat_template(tools=...)``; for one without, tools, assistant ``tool_calls`` and ``tool`` results are
  written in the Hermes form (``<tool_call>{json}</tool_call>``, ``<tool_response>``), the one Qwen and SmolLM
  style templates use, so a model tuned on that form sees what it was tuned on.
* :data:`FORMATS` is the small registry of tool-call forms per model family (as vLLM's ``--tool-call-parser``):
  each one parses calls out of the output and writes the grammar that forces a call (``tool_choice`` required
  or named), for :mod:`worker.constrain`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

STRICT_JSON = {"whitespace_flexible": False}  # llguidance: compact JSON, no runs of blank space


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object's text, as OpenAI returns it
    id: str

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(obj, argument_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(argument_key, obj.get("arguments", {}))
    if isinstance(arguments, str):  # some models write the arguments' JSON as a string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False), new_call_id())


def _closed(schema):
    """The schema with ``additionalProperties: false`` wherever an object lists its properties and says nothing
    about others: a forced call writes the declared arguments, not whatever keys the model goes on inventing."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _closed(v) if k != "const" and k != "enum" else v for k, v in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def _schema(tools: list[dict], argument_key: str) -> dict:
    """One call's JSON: the name of one of ``tools`` and arguments matching its parameters."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["name"]},
                argument_key: _closed(t.get("parameters") or {"type": "object", "properties": {}}),
            },
            "required": ["name", argument_key],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": STRICT_JSON}


@dataclass(frozen=True)
class HermesFormat:
    """``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (Qwen 2/2.5/3, Hermes, SmolLM3 style)."""

    name: str = "hermes"
    start: str = "<tool_call>"
    _pattern = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        at = text.find(self.start)
        if at < 0:
            return text, []
        calls = []
        for body in self._pattern.findall(text[at:]):
            try:
                call = _call(json.loads(body), "arguments")
            except ValueError:
                call = None
            if call is None:
                return text, []  # not a well-formed call: the text is the answer
            calls.append(call)
        return (text[:at].strip() or None), calls

    def hold_from(self, text: str) -> int:
        """Where a call may begin in text written so far (streaming shows what comes before as content)."""
        at = text.find(self.start)
        if at >= 0:
            return at
        for k in range(min(len(self.start) - 1, len(text)), 0, -1):
            if text.endswith(self.start[:k]):
                return len(text) - k
        return len(text)

    def grammar(self, tools: list[dict], parallel: bool) -> str:
        call = f'call: "<tool_call>\\n" %json {json.dumps(_schema(tools, "arguments"))} "\\n</tool_call>"'
        return ('start: call ("\\n" call)*\n' if parallel else "start: call\n") + call

    def render_call(self, call: dict) -> str:
        return "<tool_call>\n" + json.dumps(call, ensure_ascii=False) + "\n</tool_call>"


@dataclass(frozen=True)
class Llama3JsonFormat:
    """Llama 3.1/3.2's JSON form: ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``)."""

    name: str = "llama3_json"
    start: str = "{"

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for part in body.split(";"):
            try:
                call = _call(json.loads(part), "parameters")
            except ValueError:
                call = None
            if call is None:
                return text, []
            calls.append(call)
        return None, calls

    def hold_from(self, text: str) -> int:
        """An answer that is a call begins with its JSON: hold everything until then."""
        stripped = text.lstrip()
        return 0 if not stripped or stripped.startswith("{") else len(text)

    def grammar(self, tools: list[dict], parallel: bool) -> str:
        call = f"call: %json {json.dumps(_schema(tools, 'parameters'))}"
        return ('start: call ("; " call)*\n' if parallel else "start: call\n") + call

    def render_call(self, call: dict) -> str:
        return json.dumps({"name": call["name"], "parameters": call["arguments"]}, ensure_ascii=False)


FORMATS = {"hermes": HermesFormat(), "llama3_json": Llama3JsonFormat()}


def template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    return template if isinstance(template, str) else json.dumps(template)


def tool_format(tokenizer):
    """The tool-call form this model's template speaks (Hermes when the template says nothing about tools)."""
    template = template_text(tokenizer)
    if "<|python_tag|>" in template or ('"parameters"' in template and "ipython" in template):
        return FORMATS["llama3_json"]
    return FORMATS["hermes"]


def _hermes_system(tools: list[dict]) -> str:
    listed = "\n".join(json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def render(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text the model continues: its chat template with the assistant turn opened.

    ``messages`` are checked OpenAI messages (``worker.protocol.parse_chat_request``): an assistant turn may carry
    ``tool_calls`` (arguments as dicts), a ``tool`` turn a ``tool_call_id``; ``tools`` are function definitions
    ({name, description, parameters})."""
    template = template_text(tokenizer)
    messages = [
        {**m, "role": "system"} if m["role"] == "developer" and "developer" not in template else m for m in messages
    ]
    if not template:
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        return "\n".join(lines) + "\nassistant:"
    native = "tools" in template and "tool_calls" in template
    if native:
        wrapped = [{"type": "function", "function": t} for t in tools] if tools else None
        messages = [{**m, "content": m.get("content") or ""} for m in messages]
        return tokenizer.apply_chat_template(messages, tools=wrapped, tokenize=False, add_generation_prompt=True)
    fmt = tool_format(tokenizer)
    plain: list[dict] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(fmt.render_call(c["function"]) for c in m["tool_calls"])
            plain.append({"role": "assistant", "content": "\n".join(p for p in (m.get("content"), calls) if p)})
        elif m["role"] == "tool":
            response = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if plain and plain[-1].get("tool_responses"):  # consecutive results go in one user turn
                plain[-1]["content"] += "\n" + response
            else:
                plain.append({"role": "user", "content": response, "tool_responses": True})
        else:
            plain.append({"role": m["role"], "content": m.get("content") or ""})
    plain = [{"role": m["role"], "content": m["content"]} for m in plain]
    if tools:
        if plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + _hermes_system(tools)}
        else:
            plain.insert(0, {"role": "system", "content": _hermes_system(tools)})
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
