"""The inference protocol, torch-free: what the web process and the inference process agree on. No Django here.

The web process (``apps/api``) imports only this module of the inference side: it checks a chat request with
:func:`parse_chat_request` before anything is forwarded, so a field the engine cannot honour is a 400 naming it;
the inference process (``worker.serve``) parses the same body again with the same function.

* :class:`SamplingParams`: how one choice is written (length, temperature, top-p, seed, stops, grammar, logprobs).
* :class:`EngineError`: a refused request, carrying an HTTP status and OpenAI's error ``type``/``code``/``param``
  (:func:`error_body` writes OpenAI's error object).
* :class:`ChatRequest` and :func:`parse_chat_request`: the one definition of which OpenAI chat-completions
  fields are supported, and how messages, tools, ``tool_choice`` and ``response_format`` are read.
* :func:`adapter_problem`: why an adapter folder cannot be served (the web process lists only servable models).

Imports neither torch nor transformers (``tests/test_code_shape.py`` checks it in a fresh interpreter).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from worker.constrain import GrammarError, check, lark_for_response_format

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
SUPPORTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "user",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    # Accepted and ignored: they change nothing in the answer (store/metadata may be kept one day).
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
}
# Fields accepted only at the value that leaves the output unchanged.
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "modalities": ["text"]}
# Message fields besides role/content/name, per role; OpenAI's echo fields on assistant turns
# (``message.model_dump()`` sent back) are accepted and dropped.
MESSAGE_FIELDS = {
    "assistant": {"tool_calls", "function_call", "refusal", "annotations", "audio"},
    "tool": {"tool_call_id"},
}
MAX_N = 8
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's range (a 64-bit signed integer)
MAX_TOP_LOGPROBS = 20
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # llguidance Lark grammar the output must follow (worker/constrain.py)
    logprobs: bool = False  # record each chosen token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class EngineError(Exception):
    """A request the engine refuses; ``status``/``code``/``param`` map onto OpenAI's error object."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.param, self.kind = message, status, code, param, kind


def adapter_problem(path: str) -> str | None:
    """Why an adapter folder cannot be served (None when it can)."""
    folder = Path(path)
    if not folder.is_dir():
        return f"the adapter folder {folder.name} is missing"
    missing = [n for n in ("adapter_config.json", "adapter_model.safetensors") if not (folder / n).is_file()]
    if missing:
        return f"the adapter folder {folder.name} has no {', '.join(missing)}"
    return None


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    params: list[SamplingParams]  # one per choice (OpenAI's n)
    stream: bool
    include_usage: bool
    extension: dict
    logprobs: bool = False
    tools: list[dict] = field(default_factory=list)  # function definitions: {name, description, parameters}
    tool_choice: str | dict = "none"  # "none", "auto", "required" or {"name": ...}
    parallel_tool_calls: bool = True
    legacy_functions: bool = False  # asked with functions/function_call: answered with function_call
    tool_format: object = None  # the model family's form (worker.chat_format), set by the inference process

    @property
    def forced_tools(self) -> list[dict] | None:
        """The tools a call must be made to (``required``: any, named: that one); None when not forced."""
        if self.tool_choice == "required":
            return self.tools
        if isinstance(self.tool_choice, dict):
            return [t for t in self.tools if t["name"] == self.tool_choice["name"]]
        return None


def bad_request(message: str, param: str | None, code: str | None = None) -> EngineError:
    return EngineError(message, status=400, param=param, code=code)


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"{name} must be a number from {low} to {high}; got {value!r}.", name)
    return float(value)


def _text(content, where: str, parts: tuple[str, ...] = ("text",)) -> str:
    """A message's content: a string, or content parts of the given types (joined)."""
    if isinstance(content, list):
        if not all(
            isinstance(p, dict) and p.get("type") in parts and isinstance(p.get(p["type"]), str) for p in content
        ):
            raise bad_request(f"{where}: only {' and '.join(parts)} parts are supported.", where)
        return "".join(p[p["type"]] for p in content)
    if not isinstance(content, str):
        raise bad_request(f"{where} must be a string.", where)
    return content


def _tool_call(call, where: str) -> dict:
    """An assistant turn's tool call, with its arguments as a dict (what chat templates expect)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"{where} must be {{id, type: function, function: {{name, arguments}}}}.", where)
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise bad_request(f"{where}.function.arguments must be a JSON object's text.", f"{where}.function.arguments")
    return {
        "id": str(call.get("id") or ""),
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _message(i: int, m) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise bad_request(f"{where}.role must be one of {', '.join(ROLES)}.", f"{where}.role")
    m = {k: v for k, v in m.items() if v is not None}  # an explicit null is an absent field
    role = m["role"]
    unknown = set(m) - {"role", "content", "name"} - MESSAGE_FIELDS.get(role, set())
    if unknown:
        name = sorted(unknown)[0]
        raise bad_request(
            f"{where}.{name} is not supported on a {role} message.", f"{where}.{name}", code="unsupported_parameter"
        )
    parts = ("text", "refusal") if role == "assistant" else ("text",)
    content = _text(m["content"], f"{where}.content", parts) if "content" in m else None
    if role == "assistant":
        if content is None and isinstance(m.get("refusal"), str):
            content = m["refusal"]
        calls = m.get("tool_calls", [])
        if "function_call" in m:  # the legacy form of one call
            calls = [*calls, {"id": "", "type": "function", "function": m["function_call"]}]
        if not isinstance(calls, list):
            raise bad_request(f"{where}.tool_calls must be a list.", f"{where}.tool_calls")
        calls = [_tool_call(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(calls)]
        if content is None and not calls:
            raise bad_request(f"{where}.content is required when the turn has no tool_calls.", f"{where}.content")
        return {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
    if content is None:
        raise bad_request(f"{where}.content must be a string.", f"{where}.content")
    if role in ("tool", "function"):
        call_id = m.get("tool_call_id") if role == "tool" else m.get("name")
        if not isinstance(call_id, str):
            missing = "tool_call_id" if role == "tool" else "name"
            raise bad_request(f"{where}.{missing} is required on a {role} message.", f"{where}.{missing}")
        return {"role": "tool", "content": content, "tool_call_id": call_id}
    return {"role": role, "content": content}


def _tools(body: dict) -> tuple[list[dict], bool]:
    """The function definitions of ``tools`` (or the legacy ``functions``), checked."""
    if "tools" in body and "functions" in body:
        raise bad_request("Send tools or the legacy functions, not both.", "functions")
    legacy = "functions" in body
    name = "functions" if legacy else "tools"
    raw = body.get(name, [])
    if not isinstance(raw, list) or len(raw) > 128:
        raise bad_request(f"{name} must be a list of up to 128 functions.", name)
    tools = []
    for k, item in enumerate(raw):
        where = f"{name}[{k}]" if legacy else f"tools[{k}].function"
        function = item if legacy else (item.get("function") if isinstance(item, dict) else None)
        if not legacy and (not isinstance(item, dict) or item.get("type") != "function"):
            raise bad_request(
                f"tools[{k}].type must be function (the only kind of tool served here).", f"tools[{k}].type"
            )
        if not isinstance(function, dict) or not FUNCTION_NAME.match(str(function.get("name", ""))):
            raise bad_request(f"{where}.name must be 1-64 letters, digits, _ or -.", f"{where}.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise bad_request(f"{where}.parameters must be a JSON schema object.", f"{where}.parameters")
        unknown = set(function) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise bad_request(f"{where}.{sorted(unknown)[0]} is not supported.", f"{where}.{sorted(unknown)[0]}")
        tools.append({k2: v for k2, v in function.items() if k2 != "strict" and v is not None})
    return tools, legacy


def _tool_choice(body: dict, tools: list[dict], legacy: bool) -> str | dict:
    name = "function_call" if legacy else "tool_choice"
    if "tool_choice" in body and legacy:
        raise bad_request("tool_choice goes with tools; with the legacy functions send function_call.", "tool_choice")
    choice = body.get(name, "auto" if tools else "none")
    if isinstance(choice, dict):
        picked = choice.get("name") if legacy else (choice.get("function") or {}).get("name")
        if (not legacy and choice.get("type") != "function") or picked not in {t["name"] for t in tools}:
            raise bad_request(f"{name} names no function of {'functions' if legacy else 'tools'}.", name)
        return {"name": picked}
    options = ("none", "auto") if legacy else ("none", "auto", "required")
    if choice not in options:
        raise bad_request(f"{name} must be {', '.join(options)} or a named function.", name)
    if choice != "none" and not tools:
        raise bad_request(f"{name}={choice} needs {'functions' if legacy else 'tools'}.", name)
    return choice


def _response_format(body: dict) -> str | None:
    """The Lark grammar the output must follow for ``response_format`` (None: free text)."""
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request("response_format.type must be text, json_object or json_schema.", "response_format.type")
    if rf["type"] == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("response_format.json_schema needs a name and a schema.", "response_format.json_schema")
        if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
            raise bad_request(
                "response_format.json_schema.schema must be a JSON schema object.", "response_format.json_schema.schema"
            )
    grammar = lark_for_response_format(rf)
    if grammar is not None:
        try:
            check(grammar)
        except GrammarError as exc:
            raise bad_request(
                f"response_format: this schema cannot be enforced ({exc}).", "response_format.json_schema.schema"
            ) from None
    return grammar


def parse_chat_request(
    body, *, max_tokens_cap: int = 1024, default_max_tokens: int = 256, internal: bool = False
) -> ChatRequest:
    """Check an OpenAI chat-completions body; raises EngineError (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", None)
    body = {k: v for k, v in body.items() if v is not None}  # an explicit null is an absent field, as OpenAI reads it
    allowed = SUPPORTED | ({"ftstudio"} if internal else set())
    for name in body:
        if name in NEUTRAL and body[name] in (NEUTRAL[name], None):
            continue
        if name not in allowed:
            raise bad_request(
                f"{name} is not supported by this server (supported: {', '.join(sorted(SUPPORTED))}).",
                name,
                code="unsupported_parameter",
            )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: a model id from GET /v1/models.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects.", "messages")
    clean = [_message(i, m) for i, m in enumerate(messages)]
    if (
        "max_tokens" in body
        and "max_completion_tokens" in body
        and body["max_tokens"] is not None
        and body["max_completion_tokens"] is not None
    ):
        raise bad_request("Send max_tokens or max_completion_tokens, not both.", "max_tokens")
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(limit_name)
    if max_tokens is None:
        max_tokens = min(default_max_tokens, max_tokens_cap)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad_request(f"{limit_name} must be a positive integer; got {max_tokens!r}.", limit_name)
    if max_tokens > max_tokens_cap:
        raise bad_request(
            f"{limit_name}={max_tokens} is above this server's cap of {max_tokens_cap} tokens.", limit_name
        )
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if top_p == 0.0:  # only the most likely token: greedy
        temperature, top_p = 0.0, 1.0
    n = body.get("n", 1) if body.get("n") is not None else 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise bad_request(f"n must be an integer from 1 to {MAX_N}; got {n!r}.", "n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX):
        raise bad_request(f"seed must be an integer from {SEED_MIN} to {SEED_MAX}; got {seed!r}.", "seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise bad_request("stop must be a string or a list of up to 4 non-empty strings.", "stop")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false.", "stream")
    options = body.get("stream_options") or {}
    if options and not stream:
        raise bad_request("stream_options is only allowed when stream is true.", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise bad_request(
            "stream_options supports include_usage (and include_obfuscation, a no-op here).", "stream_options"
        )
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise bad_request("logprobs must be true or false.", "logprobs")
    top_logprobs = body.get("top_logprobs", 0)
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise bad_request(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}.", "top_logprobs")
    if top_logprobs and not logprobs:
        raise bad_request("top_logprobs needs logprobs: true.", "top_logprobs")
    tools, legacy = _tools(body)
    tool_choice = _tool_choice(body, tools, legacy)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_request("parallel_tool_calls must be true or false.", "parallel_tool_calls")
    grammar = _response_format(body)
    if grammar is not None and (tool_choice == "required" or isinstance(tool_choice, dict)):
        raise bad_request("A forced tool call and a JSON response_format cannot both shape the output.", "tool_choice")
    params = [
        SamplingParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed + i,
            stop=tuple(stop),
            grammar=grammar,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        for i in range(n)
    ]
    extension = body.get("ftstudio") or {}
    return ChatRequest(
        model=model,
        messages=clean,
        params=params,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        extension=extension,
        logprobs=logprobs,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        legacy_functions=legacy,
    )


def error_body(exc: EngineError) -> dict:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
