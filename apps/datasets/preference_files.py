"""OpenAI's preference (DPO) JSONL: parse and write it. No database here.

One pair per line, as OpenAI's preference fine-tuning takes it::

    {"input": {"messages": [...], "tools": [...]}, "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

The input is a conversation whose last turn is not the assistant's (every turn before the reply); each output is a
list holding one assistant message. Messages are checked by the example importer's own rules (``importers``: roles,
content, tool calls and the ids tool messages answer), and the same limits apply (bytes per line, characters per
message, nesting depth). Every problem carries its line number; a file with any problem imports nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from . import importers
from .importers import Limits, Problem, canonical_json

TOP_KEYS = {"input", "preferred_output", "non_preferred_output"}
INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
OUTPUTS = (("preferred_output", "the preferred output"), ("non_preferred_output", "the non-preferred output"))


@dataclass
class PairRow:
    """One valid pair: the input turns, the tools offered, and one assistant message on each side."""

    line: int
    messages: list[dict]
    tools: list[dict]
    preferred: dict
    non_preferred: dict


@dataclass
class PairsParsed:
    rows: list[PairRow] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    notes: dict[str, list[int]] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        return [f"{reason} ({importers.describe_lines(lines)})" for reason, lines in self.notes.items()]


def pair_hash(messages: list[dict], tools: list[dict], preferred: dict, non_preferred: dict) -> str:
    """sha256 of the whole pair: the same input with the same two replies is one pair (de-duplicates re-imports)."""
    blob = canonical_json([{"messages": messages, "tools": tools or [], "preferred": preferred, "no": non_preferred}])
    return hashlib.sha256(blob.encode()).hexdigest()


def pair_input_hash(messages: list[dict], preferred: dict) -> str:
    """The input's hash exactly as an Example's ``input_hash`` (turns before the reply, case and spacing ignored),
    so a pair's input can be matched with a version's test examples."""
    return importers.input_hash([*messages, preferred])


def _same_reply(a: dict, b: dict) -> bool:
    return " ".join(a.get("content", "").split()) == " ".join(b.get("content", "").split()) and (
        a.get("tool_calls") or []
    ) == (b.get("tool_calls") or [])


def check_pair(messages, tools, preferred, non_preferred, *, line: int = 0, limits: Limits | None = None):
    """Check one pair given as Python values; returns ``(PairRow | None, problems)`` with plain-language reasons.

    The import reads lines through this, and the evaluations app checks the pairs it builds with it.
    """
    limits = limits or Limits()
    problems: list[str] = []
    if not isinstance(messages, list) or not messages:
        found = "an empty list" if isinstance(messages, list) else importers._type_name(messages)
        return None, [f'"input.messages" must be a non-empty list of messages (the conversation), found {found}']
    if tools is not None and not isinstance(tools, list):
        return None, [f'"input.tools" must be a list of function definitions, found {importers._type_name(tools)}']
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        problems.append(
            "the input ends with an assistant turn: the input is every turn before the reply, so its last turn "
            "is the user's (or a tool's)"
        )
    outputs: list[dict | None] = []
    for (key, name), value in zip(OUTPUTS, (preferred, non_preferred), strict=True):
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
            found = f"a list of {len(value)}" if isinstance(value, list) else importers._type_name(value)
            problems.append(f'"{key}" must be a list holding one assistant message, found {found}')
            outputs.append(None)
        elif value[0].get("role") != "assistant":
            problems.append(f"{name} is from {value[0].get('role')!r}: it must be an assistant message")
            outputs.append(None)
        else:
            outputs.append(value[0])
    if problems:
        return None, problems
    clean_input: list[dict] | None = None
    replies: list[dict] = []
    for (_, name), output in zip(OUTPUTS, outputs, strict=True):
        # the example importer's rules over input + this reply: a message's index past the input is the reply
        scratch = importers.Parsed("openai")
        row = importers._check_openai({"messages": [*messages, output], "tools": tools}, line, scratch)
        reply_at = f"message {len(messages) + 1}"
        for problem in scratch.errors:
            text = problem.message.replace(f"{reply_at} (assistant)", name).replace(reply_at, name)
            if text not in problems:
                problems.append(text)
        if row is not None:
            clean_input, reply = row.messages[:-1], row.messages[-1]
            reply.pop("weight", None)  # a weight means nothing on a preference
            replies.append(reply)
    if problems or clean_input is None or len(replies) != 2:
        return None, problems or ["not a valid pair"]
    long = [
        (i, len(m["content"]))
        for i, m in enumerate([*clean_input, *replies], 1)
        if len(m["content"]) > limits.max_message_chars
    ]
    if long:
        return None, [importers._long_message(line, i, n, limits).message for i, n in long]
    if _same_reply(*replies):
        return None, [
            "the preferred and non-preferred outputs are the same reply: a pair teaches nothing unless they differ"
        ]
    return PairRow(line, clean_input, tools or [], replies[0], replies[1]), []


def parse_pairs(stream: IO[bytes], parsed: PairsParsed, *, limits: Limits | None = None) -> Iterator[PairRow]:
    """Yield the valid pairs of a binary stream one line at a time; problems and notes go into ``parsed``.
    Memory stays bounded by one line whatever the file's size."""
    limits = limits or Limits()
    count = 0
    for number, obj in importers.json_objects(importers.iter_lines(stream, limits), parsed.errors, limits, "pair"):
        for key in sorted(set(obj) - TOP_KEYS):
            parsed.notes.setdefault(f"ignored unknown key {key!r}", []).append(number)
        missing = [key for key in ("input", "preferred_output", "non_preferred_output") if key not in obj]
        if missing:
            parsed.errors.append(
                Problem(
                    number,
                    f"missing {', '.join(missing)}: each line needs input, preferred_output and non_preferred_output",
                )
            )
            continue
        given = obj["input"]
        if not isinstance(given, dict) or "messages" not in given:
            found = "an object without messages" if isinstance(given, dict) else importers._type_name(given)
            parsed.errors.append(
                Problem(number, f'"input" must be an object holding the conversation\'s "messages", found {found}')
            )
            continue
        for key in sorted(set(given) - INPUT_KEYS):
            parsed.notes.setdefault(f"ignored unknown key 'input.{key}'", []).append(number)
        if importers._too_deep(given.get("tools"), limits.max_depth):
            parsed.errors.append(
                Problem(
                    number, f'"input.tools" is nested too deeply: values may nest at most {limits.max_depth} levels'
                )
            )
            continue
        row, problems = check_pair(
            given["messages"],
            given.get("tools"),
            obj["preferred_output"],
            obj["non_preferred_output"],
            line=number,
            limits=limits,
        )
        if problems:
            parsed.errors.extend(Problem(number, p) for p in problems)
            continue
        count += 1
        yield row
    if not count and not parsed.errors:
        parsed.errors.append(Problem(0, "the file holds no preference pairs"))


def parse_text(text: str, limits: Limits | None = None) -> PairsParsed:
    """Parse a whole text at once (small inputs, tests)."""
    parsed = PairsParsed()
    parsed.rows.extend(parse_pairs(io.BytesIO(text.encode()), parsed, limits=limits))
    return parsed


def pair_line(messages: list[dict], tools: list[dict], preferred: dict, non_preferred: dict) -> str:
    """One pair as a line of OpenAI's preference JSONL (what ``parse_pairs`` reads back)."""
    given = {"messages": messages, **({"tools": tools} if tools else {})}
    record = {"input": given, "preferred_output": [preferred], "non_preferred_output": [non_preferred]}
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_lines(pairs: Iterable[tuple[list, list, dict, dict]]) -> Iterator[str]:
    for messages, tools, preferred, non_preferred in pairs:
        yield pair_line(messages, tools, preferred, non_preferred)
