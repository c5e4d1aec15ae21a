"""Graders: OpenAI's grader objects, checked and run on one model sample (plain Python, no Django, no torch).

A grader is a plain dict in OpenAI's shape; the same one scores an evaluation, rewards a reinforcement run and
answers ``/v1/fine_tuning/alpha/graders/run``:

* ``string_check`` ``{type, name, input, reference, operation}``: 1 when ``input`` and ``reference`` (templates)
  compare true, else 0. ``eq``/``ne``: equal / not equal; ``like``: ``input`` contains ``reference``; ``ilike``:
  the same, ignoring case.
* ``text_similarity`` ``{type, name, input, reference, evaluation_metric, pass_threshold?}``: the metric, 0-1:
  ``fuzzy_match`` (rapidfuzz's normalized Indel similarity), ``bleu`` (nltk's sentence BLEU-4, smoothed),
  ``gleu`` (nltk's sentence GLEU), ``meteor`` (nltk's METEOR; exact and stem matches only when WordNet's data is
  not installed), ``rouge_1``..``rouge_5``/``rouge_l`` (Google's rouge-score, F-measure, stemmed).
  ``cosine`` needs an embedding model, which the Studio does not have: refused when the grader is checked.
* ``score_model`` ``{type, name, model, input, range?, sampling_params?}``: a chat model reads ``input`` (messages
  whose contents are templates) and answers a number within ``range`` (default [0, 1]), which is the score.
* ``label_model`` ``{type, name, model, input, labels, passing_labels}``: the model picks one of ``labels``; 1 when
  it is one of ``passing_labels``, else 0.
* ``multi`` ``{type, name, graders: {key: grader}, calculate_output}``: the sub-graders' scores combined by a
  formula over their keys (``+ - * / **``, numbers, parentheses, ``min max abs floor ceil sqrt log exp``).
* ``rubric_check`` ``{type, name, check: {kind, text, number}}`` (the Studio's): one of a rubric's automatic
  checks (``worker/checks.py``): 1 when it passes, else 0.
* ``python`` is refused: the Studio runs no uploaded code.

Templates: ``{{sample.output_text}}``, ``{{sample.output_json.field}}`` (when the output is JSON), and
``{{item.field}}`` (``item.reference_answer``, nested with dots). A grader in a list may carry a ``weight``
(default 1): :func:`grade_weighted` is their weighted mean.

Model graders call ``call_model(model, messages, sampling) -> str``, given by the caller (the web process resolves
the model: a registered model through the inference process, or the project's judge through the one SSRF check).
An endpoint that fails or times out leaves the score **missing** (``score`` None, ``error`` says why), never 0.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from worker import checks

TYPES = ("string_check", "text_similarity", "score_model", "label_model", "multi", "rubric_check")
OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
SAMPLING = ("temperature", "top_p", "seed", "max_completions_tokens", "max_completion_tokens", "reasoning_effort")
FIELDS = {
    "string_check": {"input", "reference", "operation"},
    "text_similarity": {"input", "reference", "evaluation_metric", "pass_threshold"},
    "score_model": {"model", "input", "range", "sampling_params", "pass_threshold"},
    "label_model": {"model", "input", "labels", "passing_labels"},
    "multi": {"graders", "calculate_output"},
    "rubric_check": {"check"},
}
COMMON = {"type", "name", "weight"}
ROLES = ("user", "assistant", "system", "developer")
MAX_NESTING = 3
FORMULA_FUNCTIONS: dict[str, Callable] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
}
_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_VARIABLE = re.compile(r"(sample|item)(\.[A-Za-z_][A-Za-z0-9_]*|\.\d+)*")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")

CallModel = Callable[[str, list[dict], dict], str]


@dataclass
class GradeResult:
    """``score`` None: missing (a model grader's endpoint failed or timed out, or the item lacks a field the grader
    reads); ``error`` says why. ``details``: ``scores`` (sub-graders' by name), ``errors`` (OpenAI's error flags
    that were set), ``passed`` (with a pass threshold), ``reply`` (a model grader's answer), ``execution_time``."""

    score: float | None
    error: str = ""
    details: dict = field(default_factory=dict)


class ModelCallError(RuntimeError):
    """What ``call_model`` raises when the model gives no answer (timeout, HTTP error): the message says why."""


class _Missing(Exception):
    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


# --- validation ---------------------------------------------------------------------------------------------
def validate(spec, *, where: str = "") -> list[str]:
    """Every problem with a grader (a dict) or a list of graders with weights, each naming its field
    (``graders[0].operation: must be one of eq, ne, like, ilike``); empty when it can run. ``where`` prefixes the
    field names (``grader``, ``method.reinforcement.grader``); a list's default is ``graders``."""
    if isinstance(spec, list):
        where = where or "graders"
        if not spec:
            return [f"{where}: give at least one grader"]
        errors = []
        for i, one in enumerate(spec):
            errors += _validate_one(one, f"{where}[{i}]", depth=0)
        errors += _validate_weights({f"{where}[{i}]": g for i, g in enumerate(spec)}, where)
        names = [g.get("name") for g in spec if isinstance(g, dict)]
        for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
            errors.append(f"{where}: two graders are named {name!r}; give each its own name")
        return errors
    return _validate_one(spec, where, depth=0)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _validate_weights(graders: Mapping[str, object], where: str) -> list[str]:
    """``graders``: each grader by the field name it is reported under (``graders[0]``, ``grader.graders.a``)."""
    errors, weights = [], []
    for at, g in graders.items():
        if not isinstance(g, dict) or "weight" not in g:
            weights.append(1.0)
            continue
        w = g["weight"]
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            errors.append(f"{at}.weight: must be a number of at least 0; got {w!r}")
            continue
        weights.append(float(w))
    if not errors and sum(weights) <= 0:
        errors.append(f"{where}: the weights add up to 0; give at least one grader a weight above 0")
    return errors


def _text(spec: dict, key: str, where: str, errors: list[str], *, required: bool = True) -> None:
    value = spec.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str):
        errors.append(f"{_at(where, key)}: must be a string")
        return
    errors += _template_errors(value, _at(where, key))


def _template_errors(text: str, where: str) -> list[str]:
    errors = []
    for match in _TEMPLATE.finditer(text):
        name = match.group(1)
        if not _VARIABLE.fullmatch(name):
            errors.append(
                f"{where}: {{{{{name}}}}} is not a variable; use {{{{sample.output_text}}}}, "
                "{{sample.output_json.<field>}} or {{item.<field>}}"
            )
        elif name.startswith("sample.") and name.split(".")[1] not in SAMPLE_FIELDS:
            errors.append(f"{where}: {{{{{name}}}}}: the sample has {', '.join(SAMPLE_FIELDS)}")
        elif name in ("sample", "item"):
            example = "sample.output_text" if name == "sample" else "item.reference_answer"
            errors.append(f"{where}: {{{{{name}}}}} names no field; e.g. {{{{{example}}}}}")
    return errors


def _validate_one(spec, where: str, *, depth: int) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where or 'grader'}: must be an object with a type"]
    kind = spec.get("type")
    if kind == "python":
        return [f"{_at(where, 'type')}: python graders are refused: the Studio runs no uploaded code"]
    if kind not in TYPES:
        return [f"{_at(where, 'type')}: must be one of {', '.join(TYPES)}; got {kind!r}"]
    errors = []
    if not isinstance(spec.get("name"), str) or not spec["name"].strip():
        errors.append(f"{_at(where, 'name')}: required (a string)")
    for key in sorted(set(spec) - COMMON - FIELDS[kind]):
        errors.append(f"{_at(where, key)}: not a field of a {kind} grader")
    if kind == "string_check":
        _text(spec, "input", where, errors)
        _text(spec, "reference", where, errors)
        if spec.get("operation") not in OPERATIONS:
            errors.append(f"{_at(where, 'operation')}: must be one of {', '.join(OPERATIONS)}")
    elif kind == "text_similarity":
        _text(spec, "input", where, errors)
        _text(spec, "reference", where, errors)
        metric = spec.get("evaluation_metric")
        if metric == "cosine":
            errors.append(
                f"{_at(where, 'evaluation_metric')}: cosine needs an embedding model, which this Studio does not "
                "have; use fuzzy_match, bleu, gleu, meteor or rouge_1..rouge_5, rouge_l"
            )
        elif metric not in METRICS:
            errors.append(f"{_at(where, 'evaluation_metric')}: must be one of {', '.join(METRICS)}")
        _threshold(spec, where, errors, 0, 1)
    elif kind in ("score_model", "label_model"):
        if not isinstance(spec.get("model"), str) or not spec["model"].strip():
            errors.append(f"{_at(where, 'model')}: required (the model that grades)")
        errors += _messages_errors(spec.get("input"), _at(where, "input"))
        if kind == "score_model":
            low, high = 0.0, 1.0
            if "range" in spec:
                r = spec["range"]
                if (
                    not isinstance(r, list)
                    or len(r) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int | float) for v in r)
                    or not r[0] < r[1]
                ):
                    errors.append(f"{_at(where, 'range')}: must be two numbers, the lowest score then the highest")
                else:
                    low, high = r
            sampling = spec.get("sampling_params", {})
            if not isinstance(sampling, dict):
                errors.append(f"{_at(where, 'sampling_params')}: must be an object")
            else:
                for key in sorted(set(sampling) - set(SAMPLING)):
                    errors.append(f"{_at(where, 'sampling_params')}.{key}: not a sampling parameter")
            _threshold(spec, where, errors, low, high)
        else:
            labels, passing = spec.get("labels"), spec.get("passing_labels")
            if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(v, str) and v for v in labels):
                errors.append(f"{_at(where, 'labels')}: must be a list of at least two label strings")
            elif len(set(labels)) != len(labels):
                errors.append(f"{_at(where, 'labels')}: a label appears twice")
            elif not isinstance(passing, list) or not passing or not all(isinstance(v, str) for v in passing):
                errors.append(f"{_at(where, 'passing_labels')}: must be a non-empty list of labels")
            elif set(passing) - set(labels):
                errors.append(
                    f"{_at(where, 'passing_labels')}: {sorted(set(passing) - set(labels))[0]!r} is not one of labels"
                )
    elif kind == "multi":
        errors += _validate_multi(spec, where, depth)
    elif kind == "rubric_check":
        check = spec.get("check")
        if not isinstance(check, dict):
            errors.append(f"{_at(where, 'check')}: must be an object {{kind, text, number}}")
        else:
            for key in sorted(set(check) - {"kind", "text", "number"}):
                errors.append(f"{_at(where, 'check')}.{key}: not a field of a check")
            try:
                checks.validate(_check_spec(check))
            except (checks.CheckError, TypeError, ValueError) as exc:
                errors.append(f"{_at(where, 'check')}: {exc}")
    return errors


def _threshold(spec: dict, where: str, errors: list[str], low: float, high: float) -> None:
    t = spec.get("pass_threshold")
    if t is None:
        return
    if isinstance(t, bool) or not isinstance(t, int | float) or not low <= t <= high:
        errors.append(f"{_at(where, 'pass_threshold')}: must be a number from {low:g} to {high:g}")


def _messages_errors(messages, where: str) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [f"{where}: must be a non-empty list of messages {{role, content}}"]
    errors = []
    for i, m in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            errors.append(f"{at}: must be a message {{role, content}}")
            continue
        if m.get("role") not in ROLES:
            errors.append(f"{at}.role: must be one of {', '.join(ROLES)}")
        if m.get("type", "message") != "message":
            errors.append(f"{at}.type: must be 'message'")
        try:
            errors += _template_errors(_content_text(m.get("content")), f"{at}.content")
        except ValueError as exc:
            errors.append(f"{at}.content: {exc}")
    return errors


def _content_text(content) -> str:
    """A message's content as text: a string, a text part ({type: input_text|output_text, text}), or a list of
    them; images and audio are refused (the Studio's graders read text)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif (
            isinstance(part, dict)
            and part.get("type") in ("input_text", "output_text")
            and isinstance(part.get("text"), str)
        ):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"a {kind!r} part: the Studio's model graders read text only (a string or input_text)")
    return "\n".join(texts)


def _validate_multi(spec: dict, where: str, depth: int) -> list[str]:
    errors = []
    subs = _sub_graders(spec.get("graders"))
    if subs is None:
        return [f"{_at(where, 'graders')}: must be an object of named graders {{name: grader}}"]
    if depth + 1 > MAX_NESTING:
        return [f"{_at(where, 'graders')}: multi graders nest at most {MAX_NESTING} deep"]
    for key, sub in subs.items():
        if not key.isidentifier():
            errors.append(f"{_at(where, 'graders')}.{key}: a grader's key must be a name (letters, digits, _)")
        errors += _validate_one(sub, f"{_at(where, 'graders')}.{key}", depth=depth + 1)
    at = _at(where, "graders")
    errors += _validate_weights({f"{at}.{key}": sub for key, sub in subs.items()}, at)
    formula = spec.get("calculate_output")
    if not isinstance(formula, str) or not formula.strip():
        errors.append(f"{_at(where, 'calculate_output')}: required (a formula over the graders' names)")
    else:
        try:
            _formula_names(formula, set(subs))
        except ValueError as exc:
            errors.append(f"{_at(where, 'calculate_output')}: {exc}")
    return errors


def _sub_graders(graders) -> dict | None:
    """A multi grader's sub-graders by key: OpenAI's ``{key: grader}``, or one grader object (keyed by its name)."""
    if not isinstance(graders, dict) or not graders:
        return None
    if isinstance(graders.get("type"), str):
        return {str(graders.get("name") or "grader"): graders}
    return {str(k): v for k, v in graders.items()}


_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Call,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Mod,
    ast.USub,
    ast.UAdd,
)


def _formula_tree(formula: str) -> ast.Expression:
    if len(formula) > 1000:
        raise ValueError("the formula is longer than 1000 characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{formula!r} does not parse ({exc.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(
                f"{formula!r}: only numbers, grader names, + - * / ** % and {', '.join(FORMULA_FUNCTIONS)}"
            )
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool) or not isinstance(node.value, int | float)):
            raise ValueError(f"{formula!r}: {node.value!r} is not a number")
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in FORMULA_FUNCTIONS or node.keywords
        ):
            raise ValueError(f"{formula!r}: the functions are {', '.join(FORMULA_FUNCTIONS)}")
    return tree


def _formula_names(formula: str, names: set[str]) -> ast.Expression:
    tree = _formula_tree(formula)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names and node.id not in called:
            raise ValueError(f"{node.id!r} is not one of the graders ({', '.join(sorted(names))})")
    return tree


def _evaluate(node, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values)
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, values)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call):
        return float(FORMULA_FUNCTIONS[node.func.id](*(_evaluate(a, values) for a in node.args)))
    left, right = _evaluate(node.left, values), _evaluate(node.right, values)
    if isinstance(node.op, ast.Pow) and abs(right) > 100:
        raise ValueError("an exponent above 100")
    ops = {ast.Add: float.__add__, ast.Sub: float.__sub__, ast.Mult: float.__mul__, ast.Div: float.__truediv__}
    if isinstance(node.op, ast.Pow):
        return float(left**right)
    if isinstance(node.op, ast.Mod):
        return left % right
    return ops[type(node.op)](left, right)


# --- templates ----------------------------------------------------------------------------------------------
def namespaces(sample: Mapping, item: Mapping | None) -> dict:
    """``sample`` with ``output_json`` filled in when its output_text is JSON, and ``item``."""
    sample = dict(sample or {})
    sample.setdefault("output_text", "")
    if "output_json" not in sample:
        try:
            sample["output_json"] = json.loads(sample["output_text"])
        except (TypeError, ValueError):
            pass
    return {"sample": sample, "item": dict(item or {})}


def render(text: str, spaces: Mapping) -> str:
    """Fill ``{{sample.x}}`` and ``{{item.x}}``; a value that is not text is written as JSON. _Missing when a
    variable names nothing: the sample's output is not JSON (``sample_parse_error``), or the item lacks the field
    (``invalid_variable_error``)."""

    def one(match: re.Match) -> str:
        path = match.group(1).split(".")
        value = spaces
        for depth, key in enumerate(path):
            if isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            elif isinstance(value, Mapping) and key in value:
                value = value[key]
            else:
                name = ".".join(path[: depth + 1])
                if path[:2] == ["sample", "output_json"]:
                    raise _Missing(f"the sample has no {name} (is its output JSON?)", "sample_parse_error")
                raise _Missing(f"the item has no {name}", "invalid_variable_error")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TEMPLATE.sub(one, text)


# --- grading ------------------------------------------------------------------------------------------------
def grade(spec: dict, sample: dict, item: dict, *, call_model: CallModel | None = None) -> GradeResult:
    """Score one model sample (``{"output_text": ...}``) of one dataset item with one grader (already validated).
    A string or similarity grader's score is 0-1; a score model's lies in its range."""
    started = time.perf_counter()
    spaces = namespaces(sample, item)
    try:
        result = _grade(spec, spaces, call_model)
    except _Missing as exc:
        fails_sample = exc.flag == "sample_parse_error"
        result = GradeResult(0.0 if fails_sample else None, str(exc), {"errors": {exc.flag: True}})
    result.details.setdefault("errors", {})
    result.details.setdefault("scores", {})
    result.details["execution_time"] = time.perf_counter() - started
    if "pass_threshold" in spec and result.score is not None:
        result.details["passed"] = result.score >= spec["pass_threshold"]
    return result


def _grade(spec: dict, spaces: Mapping, call_model: CallModel | None) -> GradeResult:
    kind = spec.get("type")
    if kind == "string_check":
        got, want = render(spec["input"], spaces), render(spec["reference"], spaces)
        passed = {
            "eq": got == want,
            "ne": got != want,
            "like": want in got,
            "ilike": want.casefold() in got.casefold(),
        }[spec["operation"]]
        return GradeResult(1.0 if passed else 0.0)
    if kind == "text_similarity":
        got, want = render(spec["input"], spaces), render(spec["reference"], spaces)
        return GradeResult(similarity(spec["evaluation_metric"], got, want))
    if kind in ("score_model", "label_model"):
        return _model_grade(spec, spaces, call_model)
    if kind == "multi":
        return _multi(spec, spaces, call_model)
    if kind == "rubric_check":
        return _rubric_check(spec["check"], spaces)
    raise ValueError(f"cannot run a grader of type {kind!r}: validate it first")


def similarity(metric: str, output: str, reference: str) -> float:
    """One text_similarity metric, 0-1."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(output, reference) / 100
    if metric.startswith("rouge_"):
        from rouge_score import rouge_scorer

        name = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
        return rouge_scorer.RougeScorer([name], use_stemmer=True).score(reference, output)[name].fmeasure
    hypothesis, references = output.lower().split(), [reference.lower().split()]
    if metric == "bleu":
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        if not hypothesis or not references[0]:
            return float(hypothesis == references[0])
        return float(sentence_bleu(references, hypothesis, smoothing_function=SmoothingFunction().method1))
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return (
            float(sentence_gleu(references, hypothesis))
            if hypothesis and references[0]
            else float(hypothesis == references[0])
        )
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score(references, hypothesis, wordnet=_wordnet()))
    raise ValueError(f"the metric {metric!r} is not available here")


class _NoSynonyms:
    """WordNet's stand-in when its data is not installed: METEOR then matches exact words and stems only."""

    def synsets(self, *args, **kwargs) -> list:
        return []


def _wordnet():
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        return _NoSynonyms()


SCORE_INSTRUCTION = (
    "Grade the answer as the messages above ask. Reply with JSON only: "
    '{{"steps": ["<your reasoning, briefly>"], "result": <a number from {low:g} to {high:g}>}}.'
)
LABEL_INSTRUCTION = 'Reply with JSON only: {{"steps": ["<your reasoning, briefly>"], "result": "<one of {labels}>"}}.'


def model_messages(spec: dict, spaces: Mapping) -> list[dict]:
    """The grader's messages, templates filled, then the instruction on how to answer."""
    messages = [
        {
            "role": "system" if m["role"] == "developer" else m["role"],
            "content": render(_content_text(m["content"]), spaces),
        }
        for m in spec["input"]
    ]
    if spec["type"] == "score_model":
        low, high = spec.get("range") or (0, 1)
        instruction = SCORE_INSTRUCTION.format(low=low, high=high)
    else:
        instruction = LABEL_INSTRUCTION.format(labels=", ".join(json.dumps(v) for v in spec["labels"]))
    return [*messages, {"role": "user", "content": instruction}]


def sampling(spec: dict) -> dict:
    """The score model's sampling parameters for the chat endpoint (OpenAI spells one ``max_completions_tokens``)."""
    params = {k: v for k, v in (spec.get("sampling_params") or {}).items() if v is not None}
    if "max_completions_tokens" in params:
        params["max_completion_tokens"] = params.pop("max_completions_tokens")
    params.setdefault("temperature", 0)
    return params


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _model_grade(spec: dict, spaces: Mapping, call_model: CallModel | None) -> GradeResult:
    messages = model_messages(spec, spaces)
    if call_model is None:
        return GradeResult(None, "no model endpoint was given to this grader", {"errors": {"other_error": True}})
    try:
        reply = call_model(spec["model"], messages, sampling(spec))
    except TimeoutError as exc:
        return _server_error(f"the grader model {spec['model']!r} timed out ({exc or 'no answer in time'})")
    except Exception as exc:  # the endpoint's failure leaves the score missing, never 0
        return _server_error(f"the grader model {spec['model']!r} gave no answer: {exc}")
    details = {"reply": reply[:2000], "model": spec["model"]}
    result = _parse_result(reply)
    if spec["type"] == "score_model":
        low, high = spec.get("range") or (0, 1)
        number = result if isinstance(result, int | float) and not isinstance(result, bool) else None
        if number is None and isinstance(result, str) and _NUMBER.fullmatch(result.strip()):
            number = float(result)
        if number is None or not low <= number <= high:
            return GradeResult(
                None,
                f"the grader model's reply has no score from {low:g} to {high:g}",
                {**details, "errors": {"model_grader_parse_error": True}},
            )
        return GradeResult(float(number), "", details)
    label = result.strip() if isinstance(result, str) else None
    if label not in spec["labels"]:
        return GradeResult(
            None,
            "the grader model's reply is not one of the labels",
            {**details, "errors": {"model_grader_parse_error": True}},
        )
    return GradeResult(1.0 if label in spec["passing_labels"] else 0.0, "", {**details, "label": label})


def _server_error(message: str) -> GradeResult:
    return GradeResult(None, message, {"errors": {"model_grader_server_error": True}})


def _parse_result(reply: str):
    """The ``result`` of a JSON reply (fenced or bare), else the bare reply (a number or a label)."""
    text = reply.strip()
    found = re.search(r"\{.*\}", text, re.S)
    if found:
        try:
            data = json.loads(found.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "result" in data:
            return data["result"]
    return text.strip('"')


def _multi(spec: dict, spaces: Mapping, call_model: CallModel | None) -> GradeResult:
    subs = _sub_graders(spec["graders"])
    scores: dict[str, float | None] = {}
    errors: dict[str, bool] = {}
    messages = []
    for key, sub in subs.items():
        try:
            result = _grade(sub, spaces, call_model)
        except _Missing as exc:
            result = GradeResult(
                0.0 if exc.flag == "sample_parse_error" else None, str(exc), {"errors": {exc.flag: True}}
            )
        scores[key] = result.score
        errors.update(result.details.get("errors", {}))
        if result.error:
            messages.append(f"{key}: {result.error}")
    details = {"scores": dict(scores), "errors": errors}
    missing = [k for k, v in scores.items() if v is None]
    if missing:
        return GradeResult(None, "; ".join(messages) or f"no score from {', '.join(missing)}", details)
    try:
        value = _evaluate(_formula_names(spec["calculate_output"], set(subs)), scores)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError) as exc:
        return GradeResult(
            None, f"calculate_output: {exc}", {**details, "errors": {**errors, "formula_parse_error": True}}
        )
    if not math.isfinite(value):
        return GradeResult(
            None,
            "calculate_output gave no finite number",
            {**details, "errors": {**errors, "formula_parse_error": True}},
        )
    return GradeResult(value, "; ".join(messages), details)


def _check_spec(check: Mapping) -> checks.CheckSpec:
    number = check.get("number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int | float)):
        raise ValueError(f"number must be a number; got {number!r}")
    text = check.get("text") or ""
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    return checks.CheckSpec(str(check.get("kind", "")), text, None if number is None else float(number))


def reference_answer(item: Mapping) -> str:
    """The item's ideal output: ``reference_answer`` (OpenAI's name), else ``ideal_output``."""
    value = item.get("reference_answer", item.get("ideal_output", ""))
    return value if isinstance(value, str) else json.dumps(value)


def _rubric_check(check: Mapping, spaces: Mapping) -> GradeResult:
    item, output = spaces["item"], spaces["sample"].get("output_text") or ""
    messages = item.get("messages") or item.get("input") or []
    metadata = {k: v for k, v in item.items() if k not in ("messages", "input")}
    if isinstance(item.get("metadata"), Mapping):
        metadata.update(item["metadata"])
    spec = _check_spec(check)
    ideal = reference_answer(item)
    result = checks.run_check(
        spec,
        output,
        fields=checks.input_fields(messages if isinstance(messages, list) else [], metadata),
        ideal=ideal,
        similarity=checks.token_f1(output, ideal) if spec.kind == "similarity" else None,
    )
    return GradeResult(1.0 if result.passed else 0.0, "", {"detail": result.detail})


def weight(spec: Mapping) -> float:
    return float(spec.get("weight", 1))


def grade_weighted(
    graders: list[dict], sample: dict, item: dict, *, call_model: CallModel | None = None
) -> GradeResult:
    """A list of graders with weights: their weighted mean, missing when any grader's score is missing (a reward
    without one of its parts would be on another scale). ``details["scores"]``: each grader's by name."""
    started = time.perf_counter()
    results = {g["name"]: grade(g, sample, item, call_model=call_model) for g in graders}
    details = {
        "scores": {name: r.score for name, r in results.items()},
        "errors": {k: True for r in results.values() for k, v in r.details.get("errors", {}).items() if v},
    }
    errors = "; ".join(f"{name}: {r.error}" for name, r in results.items() if r.error)
    if any(r.score is None for r in results.values()):
        return GradeResult(None, errors, details)
    total = sum(weight(g) for g in graders)
    score = sum(weight(g) * results[g["name"]].score for g in graders) / total
    details["execution_time"] = time.perf_counter() - started
    return GradeResult(score, errors, details)


def item_from(messages: list[dict], ideal_output: str = "", metadata: Mapping | None = None) -> dict:
    """The ``item`` namespace of a Studio example: ``messages`` (its input turns), ``input_text`` (them as
    "role: content" lines, what a model grader reads), ``reference_answer`` (its ideal output), ``metadata`` and
    each text or number field of the metadata at the top level (``{{item.customer}}``)."""
    fields = {
        str(k): v for k, v in (metadata or {}).items() if isinstance(v, str | int | float) and not isinstance(v, bool)
    }
    text = "\n\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)
    return {
        **fields,
        "messages": list(messages),
        "input_text": text,
        "reference_answer": ideal_output,
        "metadata": dict(metadata or {}),
    }


def as_multi(graders: list[dict], name: str = "graders") -> dict:
    """A list of graders with weights as one OpenAI ``multi`` grader: their weighted mean (``grader_1``.. keys)."""
    subs = {f"grader_{i}": {k: v for k, v in g.items() if k != "weight"} for i, g in enumerate(graders, start=1)}
    weights = [weight(g) for g in graders]
    terms = " + ".join(f"{w:g} * {key}" for w, key in zip(weights, subs, strict=True))
    return {"type": "multi", "name": name, "graders": subs, "calculate_output": f"({terms}) / {sum(weights):g}"}
