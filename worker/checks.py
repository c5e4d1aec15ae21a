"""Automatic checks on a model's output: plain Python, no Django.

A rubric designer writes them without code (``apps/evaluations``: a check belongs to a criterion and is
versioned with its rubric); the evaluation task runs them here on every output and stores one result per
(generation, check). Each check answers pass or fail with a short reason a person can read.

Kinds (``CheckSpec.kind``), with what ``text`` and ``number`` mean:

* ``starts_with`` / ``ends_with`` / ``contains`` / ``not_contains``: ``text``, compared after stripping the
  output's surrounding whitespace. ``{field}`` placeholders are filled from the example's input (see
  :func:`input_fields`): ``Hi {customer},`` becomes ``Hi Ann,`` for Ann's message. ``{{`` and ``}}`` are
  literal braces.
* ``regex``: ``text`` is a regular expression searched anywhere in the output (the ``regex`` package,
  with a timeout so a catastrophically backtracking pattern fails the check instead of hanging a worker);
  it must compile when the rubric is saved.
* ``max_sentences`` / ``max_words``: at most ``number`` sentences (ends at ``.``, ``!`` or ``?``, or the
  text's end) or words (whitespace-separated).
* ``valid_json``: the whole output parses as JSON.
* ``json_schema``: the output parses as JSON and validates against the JSON Schema in ``text``
  (``jsonschema``, the draft the schema declares, else the latest); the schema must be valid when saved.
* ``similarity``: token F1 against the ideal output (the figure the evaluation already stores for every
  output, :func:`token_f1`) is at least ``number`` (0-1).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import regex

KINDS: dict[str, str] = {
    "starts_with": "starts with",
    "ends_with": "ends with",
    "contains": "contains",
    "not_contains": "does not contain",
    "regex": "matches the regular expression",
    "max_sentences": "at most N sentences",
    "max_words": "at most N words",
    "valid_json": "is valid JSON",
    "json_schema": "is JSON matching the schema",
    "similarity": "similarity to the ideal at least",
}
TEXT_KINDS = {"starts_with", "ends_with", "contains", "not_contains", "regex", "json_schema"}
NUMBER_KINDS = {"max_sentences", "max_words", "similarity"}

REGEX_TIMEOUT_S = 0.5  # per output: far above any sane pattern on a reply, far below a stuck worker
MAX_PATTERN_CHARS = 1000
MAX_OUTPUT_CHARS = 100_000  # outputs are capped by max_new_tokens; this is a guard, not a limit in practice
_SENTENCE_END = regex.compile(r"[.!?]+(?=\s|$)")


_TOKEN = re.compile(r"\w+", re.UNICODE)


def token_f1(output: str, ideal: str) -> float:
    """Token-overlap F1 between an output and the ideal output (lower-cased word tokens, multiset overlap)."""
    a, b = _TOKEN.findall(output.lower()), _TOKEN.findall(ideal.lower())
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


class CheckError(ValueError):
    """A check that cannot be run as written; the message says why."""


@dataclass(frozen=True)
class CheckSpec:
    kind: str
    text: str = ""
    number: float | None = None
    weight: float = 1.0  # its share of the reward when the rubric's checks grade a training run (worker/graders.py)


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str


def describe(spec: CheckSpec) -> str:
    """A short human label, e.g. ``starts with "Hi {customer},"`` or ``at most 40 words``."""
    words = KINDS.get(spec.kind, spec.kind)
    if spec.kind in ("max_sentences", "max_words"):
        return f"at most {spec.number:g} {'sentences' if spec.kind == 'max_sentences' else 'words'}"
    if spec.kind == "similarity":
        return f"similarity to the ideal at least {spec.number:g}"
    if spec.kind == "json_schema":
        return "is JSON matching the schema"
    if spec.kind in TEXT_KINDS:
        return f"{words} {json.dumps(spec.text, ensure_ascii=False)}"
    return words


def placeholders(text: str) -> list[str]:
    """The ``{field}`` names a template uses; CheckError if its braces do not parse."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise CheckError(
            f"the braces in {text!r} do not parse ({exc}); write {{{{ and }}}} for literal braces"
        ) from exc


def validate(spec: CheckSpec) -> None:
    """Refuse a check that could never run: unknown kind, missing text or number, a regex that does not
    compile, an invalid JSON Schema, bad placeholders."""
    from jsonschema import SchemaError, validators

    if spec.kind not in KINDS:
        raise CheckError(f"unknown check {spec.kind!r}; use one of {', '.join(KINDS)}")
    if spec.kind in TEXT_KINDS and not spec.text:
        raise CheckError(f"'{KINDS[spec.kind]}' needs a text")
    if spec.kind in NUMBER_KINDS:
        if spec.number is None:
            raise CheckError(f"'{KINDS[spec.kind]}' needs a number")
        if spec.kind == "similarity" and not 0 <= spec.number <= 1:
            raise CheckError(f"a similarity threshold is between 0 and 1 (got {spec.number:g})")
        if spec.kind != "similarity" and (spec.number < 1 or spec.number != int(spec.number)):
            raise CheckError(f"'{KINDS[spec.kind]}' needs a whole number of at least 1 (got {spec.number:g})")
    if spec.kind in ("starts_with", "ends_with", "contains", "not_contains"):
        for name in placeholders(spec.text):
            if not name.isidentifier():
                raise CheckError(f"placeholder {{{name}}} is not a field name (letters, digits, underscores)")
    if spec.kind == "regex":
        if len(spec.text) > MAX_PATTERN_CHARS:
            raise CheckError(f"the regular expression is longer than {MAX_PATTERN_CHARS} characters")
        try:
            regex.compile(spec.text)
        except regex.error as exc:
            raise CheckError(f"the regular expression {spec.text!r} does not compile: {exc}") from exc
    if spec.kind == "json_schema":
        try:
            schema = json.loads(spec.text)
        except json.JSONDecodeError as exc:
            raise CheckError(f"the schema is not JSON: {exc}") from exc
        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise CheckError(f"the schema is not a valid JSON Schema: {exc.message}") from exc


def input_fields(messages: list[dict], metadata: Mapping | None = None) -> dict[str, str]:
    """Fields for ``{field}`` placeholders: the example's metadata (text and number values), then every
    ``Key: value`` line of the input's user turns (keys lower-cased, spaces as underscores), which win.
    The demo's input carries ``Customer: Ann`` and its metadata ``{"customer": "Ann"}``: ``{customer}``."""
    fields = {
        str(k).lower(): str(v)
        for k, v in (metadata or {}).items()
        if isinstance(v, str | int | float) and not isinstance(v, bool)
    }
    for message in messages:
        if message.get("role") != "user":
            continue
        for line in str(message.get("content", "")).split("\n"):
            key, sep, value = line.partition(": ")
            key = key.strip().lower().replace(" ", "_")
            if sep and key.isidentifier():
                fields[key] = value.strip()
    return fields


def fill(text: str, fields: Mapping[str, str]) -> str:
    missing = [name for name in placeholders(text) if name not in fields]
    if missing:
        raise CheckError(f"the input has no field {missing[0]!r} (fields: {', '.join(sorted(fields)) or 'none'})")
    return text.format_map(dict(fields))


def run_check(
    spec: CheckSpec,
    output: str,
    *,
    fields: Mapping[str, str] | None = None,
    ideal: str = "",
    similarity: float | None = None,
) -> CheckResult:
    """Run one check on one output. ``similarity`` is the output's token F1 against ``ideal`` (required
    for the similarity check). A check that cannot be evaluated on this output (a placeholder the input
    lacks, a regex timeout) fails, with the reason."""
    fields = fields or {}
    text = output.strip()[:MAX_OUTPUT_CHARS]
    try:
        if spec.kind in ("starts_with", "ends_with", "contains", "not_contains"):
            wanted = fill(spec.text, fields)
            found = {
                "starts_with": text.startswith(wanted),
                "ends_with": text.endswith(wanted),
                "contains": wanted in text,
                "not_contains": wanted not in text,
            }[spec.kind]
            return CheckResult(found, f"{KINDS[spec.kind]} {wanted!r}: {'yes' if found else 'no'}")
        if spec.kind == "regex":
            try:
                match = regex.search(spec.text, text, timeout=REGEX_TIMEOUT_S)
            except TimeoutError:
                return CheckResult(False, f"the regular expression took over {REGEX_TIMEOUT_S:g} s on this output")
            return CheckResult(match is not None, f"matched {match.group(0)[:60]!r}" if match else "no match")
        if spec.kind == "max_sentences":
            n = len(_SENTENCE_END.findall(text)) + (
                1 if text and text[-1] not in ".!?" else 0
            )  # a trailing fragment counts
            return CheckResult(n <= spec.number, f"{n} sentence{'s' * (n != 1)} (at most {spec.number:g})")
        if spec.kind == "max_words":
            n = len(text.split())
            return CheckResult(n <= spec.number, f"{n} word{'s' * (n != 1)} (at most {spec.number:g})")
        if spec.kind in ("valid_json", "json_schema"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                return CheckResult(False, f"not JSON: {exc}")
            if spec.kind == "valid_json":
                return CheckResult(True, "valid JSON")
            from jsonschema import validators

            schema = json.loads(spec.text)
            error = next(iter(validators.validator_for(schema)(schema).iter_errors(value)), None)
            if error is None:
                return CheckResult(True, "matches the schema")
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            return CheckResult(False, f"at {where}: {error.message}"[:300])
        if spec.kind == "similarity":
            if similarity is None:
                raise CheckError("no similarity to the ideal was computed for this output")
            ok = similarity >= spec.number
            return CheckResult(ok, f"token F1 {similarity:.2f} ({'>=' if ok else '<'} {spec.number:g})")
    except CheckError as exc:
        return CheckResult(False, f"could not run: {exc}"[:300])
    raise CheckError(f"unknown check {spec.kind!r}")
