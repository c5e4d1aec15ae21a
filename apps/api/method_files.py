"""The training files of OpenAI's dpo and reinforcement jobs, checked line by line before anything is imported
(each problem names its line and field):

* dpo: one preference pair a line, ``{"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
  "preferred_output": [{"role": "assistant", ...}], "non_preferred_output": [{"role": "assistant", ...}]}``; the two
  outputs differ.
* reinforcement: one prompt a line, ``{"messages": [...], <any other fields>}``, the conversation ending on the
  user's turn (the model writes the reply the grader scores); the other fields are the grader's ``{{item.*}}``,
  and every field the grader reads must be on every line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_LISTED = 1  # the first problem is named, the others counted, as the supervised import does
_ITEM_FIELD = re.compile(r"\{\{\s*item\.([A-Za-z_][A-Za-z0-9_]*)")


def _message_errors(messages, where: str) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [f"{where} must be a non-empty list of messages"]
    for i, m in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            return [f"{at} must be an object with role and content"]
        if m.get("role") not in ROLES:
            return [f"{at}.role must be one of {', '.join(ROLES)}; got {m.get('role')!r}"]
        content = m.get("content")
        if content is None and not (m.get("role") == "assistant" and m.get("tool_calls")):
            return [f"{at}.content is required"]
        if content is not None and not isinstance(content, str | list):
            return [f"{at}.content must be a string or a list of content parts"]
    return []


def _output_errors(output, where: str) -> list[str]:
    if not isinstance(output, list) or len(output) != 1:
        return [f"{where} must be a list of one assistant message"]
    errors = _message_errors(output, where)
    if not errors and output[0].get("role") != "assistant":
        errors = [f"{where}[0].role must be 'assistant'"]
    return errors


def preference_line_errors(row) -> list[str]:
    """What is wrong with one line of a dpo training file (empty when it is a usable pair)."""
    if not isinstance(row, dict):
        return ["must be a JSON object with input, preferred_output and non_preferred_output"]
    for key in sorted(set(row) - {"input", "preferred_output", "non_preferred_output"}):
        return [f"unknown field {key!r} (a pair has input, preferred_output and non_preferred_output)"]
    given = row.get("input")
    if not isinstance(given, dict):
        return ["input must be an object with messages"]
    for key in sorted(set(given) - {"messages", "tools", "parallel_tool_calls"}):
        return [f"unknown field input.{key!r}"]
    errors = _message_errors(given.get("messages"), "input.messages")
    if errors:
        return errors
    if given["messages"][-1].get("role") == "assistant":
        return ["input.messages must end before the reply (the last turn is the assistant's)"]
    if "tools" in given and not isinstance(given["tools"], list):
        return ["input.tools must be a list"]
    for key in ("preferred_output", "non_preferred_output"):
        errors = _output_errors(row.get(key), key)
        if errors:
            return errors
    if row["preferred_output"] == row["non_preferred_output"]:
        return ["preferred_output and non_preferred_output are the same reply"]
    return []


def item_fields(grader) -> set[str]:
    """The top-level item fields a grader's templates read (``{{item.reference_answer}}`` -> reference_answer)."""
    if isinstance(grader, dict):
        return set().union(*(item_fields(v) for v in grader.values())) if grader else set()
    if isinstance(grader, list):
        return set().union(*(item_fields(v) for v in grader)) if grader else set()
    return set(_ITEM_FIELD.findall(grader)) if isinstance(grader, str) else set()


def reinforcement_line_errors(row, needed: Iterable[str] = ()) -> list[str]:
    """What is wrong with one line of a reinforcement training file, given the item fields its grader reads."""
    if not isinstance(row, dict):
        return ["must be a JSON object with messages"]
    errors = _message_errors(row.get("messages"), "messages")
    if errors:
        return errors
    if row["messages"][-1].get("role") not in ("user", "tool"):
        return ["messages must end on the user's turn: the model writes the reply that the grader scores"]
    for name in sorted(set(needed) - set(row)):
        return [f"no field {name!r}, which the grader reads ({{{{item.{name}}}}})"]
    return []


def check_lines(stream, check) -> tuple[int, list[str]]:
    """(lines read, problems as "line N: ..."), ``check(row) -> list[str]`` on each non-blank line."""
    count, problems = 0, []
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            problems.append(f"line {number}: is not UTF-8 text")
            continue
        if not text.strip():
            continue
        count += 1
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: is not JSON ({exc.msg} at column {exc.colno})")
            continue
        problems += [f"line {number}: {p}" for p in check(row)]
    if not count and not problems:
        problems.append("the file has no lines")
    return count, problems


def summary(problems: list[str]) -> str:
    """The first problem, and how many more."""
    more = len(problems) - MAX_LISTED
    return problems[0] + (f" (and {more} more problem{'s' * (more > 1)})" if more > 0 else "")
