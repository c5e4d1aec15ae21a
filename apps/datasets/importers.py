"""Parse and validate import files: OpenAI chat JSONL, Alpaca JSONL and CSV. No database here.

Every problem is reported with its line number and a plain-language reason, the checks fine-tuning
users know from the usual data-preparation scripts: not a JSON object, missing or empty messages list,
a message without role or content, unknown keys in a message, unknown role, no assistant message,
content not a string, empty content. A file with any problem imports nothing.

OpenAI chat lines take what OpenAI's fine-tuning takes: a line's ``tools`` (function definitions, kept with the
example), assistant ``tool_calls`` (content may then be empty or null), ``tool`` messages answering a call by its
``tool_call_id``, the ``developer`` role (stored as ``system``, which every chat template knows) and ``weight``
(0 or 1) on assistant messages: a turn of weight 0 is context, not learnt.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from ftstudio import csv_cells

FORMATS = ("openai", "alpaca", "csv")
ROLES = ("system", "user", "assistant", "tool")
INPUT_ROLES = {"developer": "system"}  # accepted and stored under the role every chat template renders
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id"}
OPENAI_EXTRA_KEYS = {"tags", "metadata", "tools", "parallel_tool_calls"}
ALPACA_KEYS = {"instruction", "input", "output", "system"}


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 for the file as a whole
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class Row:
    line: int
    messages: list[dict]
    tags: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    tools: list[dict] = field(default_factory=list)  # OpenAI's function definitions offered in this conversation


@dataclass
class Parsed:
    file_format: str
    rows: list[Row] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    # warnings that repeat are collected by reason, with the lines they concern
    notes: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def warnings(self) -> list[str]:
        return [f"{reason} ({describe_lines(lines)})" for reason, lines in self.notes.items()]


def describe_lines(lines: list[int], shown: int = 10) -> str:
    head = ", ".join(str(n) for n in lines[:shown])
    more = f" and {len(lines) - shown} more" if len(lines) > shown else ""
    return f"line{'s' if len(lines) > 1 else ''} {head}{more}"


def _type_name(value) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def canonical_json(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(messages: list[dict], tools: list[dict] | None = None) -> str:
    """sha256 of the conversation; with tools, of the messages and the tools (the same turns offered other tools
    are another example)."""
    blob = canonical_json(messages) if not tools else canonical_json([{"messages": messages, "tools": tools}])
    return hashlib.sha256(blob.encode()).hexdigest()


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def input_hash(messages: list[dict]) -> str:
    """Hash of the turns before the ideal output, ignoring case and spacing (finds conflicting answers)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    blob = "\x1e".join(f"{m['role']}:{normalize_text(m['content'])}" for m in messages[:last])
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Limits:
    """What one line and one message may hold (settings ``FTSTUDIO_IMPORT_MAX_LINE_BYTES`` and
    ``FTSTUDIO_IMPORT_MAX_MESSAGE_CHARS``); nesting deeper than ``max_depth`` is refused too."""

    max_line_bytes: int = 4 * 1024 * 1024
    max_message_chars: int = 500_000
    max_depth: int = 32


READ_CHUNK = 1024 * 1024


def iter_lines(stream: IO[bytes], limits: Limits) -> Iterator[tuple[int, str | Problem]]:
    """Physical lines of a binary stream, decoded, with their 1-based number (terminators kept).

    A line over the byte limit is never held: it is skipped in ``READ_CHUNK`` pieces and reported
    as a Problem, so a 50 MB single line costs one megabyte of memory and a few milliseconds.
    """
    number = 0
    cap = limits.max_line_bytes
    while True:
        raw = stream.readline(cap + 1)
        if not raw:
            return
        number += 1
        if len(raw) > cap and not raw.endswith(b"\n"):
            size = len(raw)
            while not raw.endswith(b"\n"):
                raw = stream.readline(READ_CHUNK)
                if not raw:
                    break
                size += len(raw)
            yield (
                number,
                Problem(
                    number,
                    f"the line is {size:,} bytes, over the {cap:,}-byte limit for one line "
                    "set by the administrator: split it into one example per line",
                ),
            )
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                number,
                Problem(
                    number,
                    f"not UTF-8 text (byte {exc.start + 1} of the line cannot be decoded); "
                    "save the file as UTF-8 and upload it again",
                ),
            )


def detect_format(first_line: str, filename: str = "") -> str:
    """The format from the file name, else from the first non-blank line."""
    name = filename.lower()
    if name.endswith(".csv"):
        return "csv"
    first = first_line.strip()
    if not first.startswith("{"):
        return "csv" if not name.endswith((".jsonl", ".json")) else "openai"
    try:
        obj = json.loads(first)
    except (ValueError, RecursionError):
        return "openai"
    if isinstance(obj, dict) and "messages" not in obj and ("instruction" in obj or "output" in obj):
        return "alpaca"
    return "openai"


def parse(text: str, file_format: str = "auto", filename: str = "", limits: Limits | None = None) -> Parsed:
    """Parse a whole text at once (small inputs, tests); imports use ``parse_stream``."""
    parsed = Parsed(file_format)
    parsed.rows.extend(parse_stream(io.BytesIO(text.encode()), parsed, filename=filename, limits=limits))
    return parsed


def parse_stream(
    stream: IO[bytes], parsed: Parsed, *, filename: str = "", limits: Limits | None = None
) -> Iterator[Row]:
    """Yield the valid rows of a binary stream one at a time; problems and notes go into ``parsed``.

    ``parsed.file_format`` may be "auto": it is settled from the file name or the first non-blank line.
    Memory stays bounded by one line (and one CSV record) whatever the file's size.
    """
    limits = limits or Limits()
    lines = iter_lines(stream, limits)
    if parsed.file_format == "auto":
        head: list[tuple[int, str | Problem]] = []
        first = ""
        for item in lines:
            head.append(item)
            if isinstance(item[1], str) and item[1].strip():
                first = item[1]
                break
        parsed.file_format = detect_format(first, filename)
        lines = itertools.chain(head, lines)
    if parsed.file_format not in FORMATS:
        parsed.errors.append(Problem(0, f"unknown format {parsed.file_format!r}: use auto, openai, alpaca or csv"))
        return
    count = 0
    rows = _parse_csv(lines, parsed, limits) if parsed.file_format == "csv" else _parse_jsonl(lines, parsed, limits)
    for row in rows:
        count += 1
        yield row
    if not count and not parsed.errors:
        parsed.errors.append(Problem(0, "the file holds no examples"))


def _too_deep(value, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def json_objects(
    lines: Iterator[tuple[int, str | Problem]], errors: list[Problem], limits: Limits, one: str = "object"
) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON-object line; a line that is not one goes into ``errors`` (blank lines
    are skipped). ``one`` names what a line holds in the message ("object", "pair")."""
    for number, line in lines:
        if isinstance(line, Problem):
            errors.append(line)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            msg = getattr(exc, "msg", str(exc))
            errors.append(Problem(number, f"not valid JSON ({msg} at column {getattr(exc, 'colno', '?')})"))
            continue
        except RecursionError:
            errors.append(Problem(number, f"nested too deeply: values may nest at most {limits.max_depth} levels"))
            continue
        if not isinstance(obj, dict):
            errors.append(Problem(number, f"not a JSON object: each line must be one {one}, found {_type_name(obj)}"))
            continue
        yield number, obj


def _parse_jsonl(lines: Iterator[tuple[int, str | Problem]], parsed: Parsed, limits: Limits) -> Iterator[Row]:
    check = _check_openai if parsed.file_format == "openai" else _check_alpaca
    for number, obj in json_objects(lines, parsed.errors, limits):
        # Only "metadata" and "tools" are stored as they come (messages and tags are checked field by field): bound
        # their depth.
        deep = next((key for key in ("metadata", "tools") if _too_deep(obj.get(key), limits.max_depth)), None)
        if deep:
            parsed.errors.append(
                Problem(number, f'"{deep}" is nested too deeply: values may nest at most {limits.max_depth} levels')
            )
            continue
        row = check(obj, number, parsed)
        if row is None:
            continue
        long = [
            (i, len(m["content"]))
            for i, m in enumerate(row.messages, 1)
            if len(m["content"]) > limits.max_message_chars
        ]
        if long:
            parsed.errors.extend(_long_message(number, i, n, limits) for i, n in long)
            continue
        yield row


def _long_message(line: int, index: int, chars: int, limits: Limits) -> Problem:
    return Problem(
        line,
        f"message {index} is {chars:,} characters, over the {limits.max_message_chars:,}-character "
        "limit for one message set by the administrator: shorten it or split the conversation",
    )


def _check_openai(obj: dict, line: int, parsed: Parsed) -> Row | None:
    problems: list[str] = []
    for key in sorted(set(obj) - {"messages"} - OPENAI_EXTRA_KEYS):
        parsed.notes[f"ignored unknown key {key!r}"].append(line)
    if "messages" not in obj:
        parsed.errors.append(Problem(line, 'missing the "messages" list'))
        return None
    messages = obj["messages"]
    if not isinstance(messages, list):
        parsed.errors.append(Problem(line, f'"messages" must be a list, found {_type_name(messages)}'))
        return None
    if not messages:
        parsed.errors.append(
            Problem(line, '"messages" is empty: an example needs at least a user and an assistant message')
        )
        return None
    clean: list[dict] = []
    call_ids: set[str] = set()
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            problems.append(f"message {i} is not an object (found {_type_name(m)})")
            continue
        role = INPUT_ROLES.get(m.get("role"), m.get("role"))
        where = f"message {i}" + (f" ({m['role']})" if role in ROLES else "")
        unknown = sorted(set(m) - MESSAGE_KEYS)
        if unknown:
            problems.append(
                f"{where} has unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)}: a message may only have role, content, name, weight, "
                "tool_calls and tool_call_id"
            )
        calls = m.get("tool_calls")
        if "role" not in m:
            problems.append(f'{where} has no "role"')
        elif role not in ROLES:
            problems.append(f"{where} has unknown role {m['role']!r}: use system, developer, user, assistant or tool")
        if calls is not None and role != "assistant":
            problems.append(f'{where}: only assistant messages may have "tool_calls"')
            calls = None
        if calls is not None:
            calls = _tool_calls(calls, where, problems)
            call_ids.update(c["id"] for c in calls or [])
        if calls and m.get("content") is None:
            pass  # an assistant turn that only calls tools
        elif "content" not in m:
            problems.append(f'{where} has no "content"')
        elif not isinstance(m["content"], str):
            problems.append(f"{where}: content must be a string, found {_type_name(m['content'])}")
        elif not m["content"].strip() and not calls and role != "tool":
            problems.append(f"{where} has empty content")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                problems.append(f'{where} needs "tool_call_id": the id of the tool call it answers')
            elif call_id not in call_ids:
                problems.append(f"{where} answers tool call {call_id!r}, which no earlier assistant message made")
        elif "tool_call_id" in m:
            problems.append(f'{where}: only tool messages may have "tool_call_id"')
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or isinstance(weight, bool) or weight not in (0, 1)):
            problems.append(f"{where}: weight must be 0 or 1, on assistant messages only; got {weight!r}")
        if role in ROLES and isinstance(m.get("content") or "", str):
            message = {"role": role, "content": m.get("content") or ""}
            if calls:
                message["tool_calls"] = calls
            if role == "tool" and isinstance(m.get("tool_call_id"), str):
                message["tool_call_id"] = m["tool_call_id"]
            if role == "assistant" and weight == 0:
                message["weight"] = 0
            clean.append(message)
    roles = [INPUT_ROLES.get(m.get("role"), m.get("role")) for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append("no assistant message: the last assistant turn is the ideal output the model learns")
    elif roles and roles[-1] != "assistant" and roles[-1] in ROLES:
        problems.append(f"the last message is from {roles[-1]!r}: it must be the assistant's ideal output")
    elif all(m.get("weight") == 0 for m in clean if m["role"] == "assistant"):
        problems.append("every assistant message has weight 0: there is nothing to learn from")
    tools = obj.get("tools")
    if tools is not None:
        tools = _tools(tools, problems)
    if problems:
        parsed.errors.extend(Problem(line, p) for p in problems)
        return None
    tags, metadata = obj.get("tags") or [], obj.get("metadata") or {}
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        parsed.errors.append(Problem(line, '"tags" must be a list of strings'))
        return None
    if not isinstance(metadata, dict):
        parsed.errors.append(Problem(line, f'"metadata" must be an object, found {_type_name(metadata)}'))
        return None
    return Row(line, clean, tags=tags, metadata=metadata, tools=tools or [])


def _tool_calls(calls, where: str, problems: list[str]) -> list[dict] | None:
    """OpenAI's assistant ``tool_calls``, checked and kept as ``{id, type, function: {name, arguments}}``."""
    if not isinstance(calls, list) or not calls:
        problems.append(f'{where}: "tool_calls" must be a non-empty list, found {_type_name(calls)}')
        return None
    kept = []
    for n, call in enumerate(calls, 1):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or call.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            problems.append(
                f'{where}: tool call {n} must be {{"id": "...", "type": "function", '
                '"function": {"name": "...", "arguments": "<JSON text>"}}'
            )
            continue
        try:
            json.loads(function["arguments"])
        except (ValueError, RecursionError):
            problems.append(f"{where}: tool call {n}'s arguments are not valid JSON text")
            continue
        kept.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": function["arguments"]},
            }
        )
    return kept


def _tools(tools, problems: list[str]) -> list[dict] | None:
    """The line's ``tools``: OpenAI's function definitions, kept as given once each has a name."""
    if not isinstance(tools, list):
        problems.append(f'"tools" must be a list of function definitions, found {_type_name(tools)}')
        return None
    for n, tool in enumerate(tools, 1):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("parameters", {}), dict)
        ):
            problems.append(
                f'tool {n} must be {{"type": "function", "function": {{"name": "...", "parameters": {{...}}}}}}'
            )
    return tools


def _alpaca_messages(instruction: str, input_text: str, output: str, system: str) -> list[dict]:
    user = instruction.strip() + (f"\n\n{input_text.strip()}" if input_text.strip() else "")
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _check_alpaca(obj: dict, line: int, parsed: Parsed) -> Row | None:
    problems = []
    for key in sorted(set(obj) - ALPACA_KEYS):
        parsed.notes[f"ignored unknown key {key!r}"].append(line)
    for key in ("instruction", "input", "output", "system"):
        required = key in ("instruction", "output")
        if key not in obj:
            if required:
                problems.append(f'missing "{key}"')
            continue
        if not isinstance(obj[key], str):
            problems.append(f'"{key}" must be a string, found {_type_name(obj[key])}')
        elif required and not obj[key].strip():
            problems.append(f'"{key}" is empty')
    if problems:
        parsed.errors.extend(Problem(line, p) for p in problems)
        return None
    return Row(line, _alpaca_messages(obj["instruction"], obj.get("input", ""), obj["output"], obj.get("system", "")))


def _parse_csv(lines: Iterator[tuple[int, str | Problem]], parsed: Parsed, limits: Limits) -> Iterator[Row]:
    def physical():
        for _, line in lines:
            if isinstance(line, Problem):
                parsed.errors.append(line)
                yield "\n"  # keeps the reader's line count in step with the file
            else:
                yield line

    # a cell may hold one message: the csv module's own cap (131,072 characters) becomes the message limit + 1,
    # so a longer cell is reported below with the setting's name
    csv.field_size_limit(max(limits.max_message_chars + 1, 131_072))
    reader = csv.reader(physical())
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        parsed.errors.append(Problem(1, f"not a readable CSV header ({exc})"))
        return
    columns = [h.strip().lower() for h in header]
    missing = [c for c in ("input", "output") if c not in columns]
    if missing:
        parsed.errors.append(
            Problem(
                1,
                f"the header must name the columns input and output (optional: system); "
                f"missing {', '.join(missing)}, found {', '.join(columns) or 'nothing'}",
            )
        )
        return
    extra = [c for c in columns if c not in ("input", "output", "system")]
    previous_end = reader.line_num
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            parsed.errors.append(Problem(previous_end + 1, f"not readable as CSV ({exc})"))
            break
        line = previous_end + 1
        previous_end = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(columns):
            parsed.errors.append(Problem(line, f"has {len(values)} fields, the header has {len(columns)}"))
            continue
        # cells the Studio's own export guarded against spreadsheet formulas come back as they were
        record = dict(zip(columns, (csv_cells.unguard(v) for v in values), strict=True))
        problems = [f'the "{c}" column is empty' for c in ("input", "output") if not record[c].strip()]
        problems += [
            f'the "{c}" column is {len(record[c]):,} characters, over the {limits.max_message_chars:,}-character '
            "limit for one message set by the administrator: shorten it"
            for c in ("system", "input", "output")
            if len(record.get(c, "")) > limits.max_message_chars
        ]
        if problems:
            parsed.errors.extend(Problem(line, p) for p in problems)
            continue
        metadata = {c: record[c] for c in extra if record[c] != ""}
        yield Row(
            line, _alpaca_messages(record["input"], "", record["output"], record.get("system", "")), metadata=metadata
        )
