"""OpenAI's grader endpoints (``/v1/fine_tuning/alpha/graders/validate`` and ``/run``) and the grader checks the
reinforcement jobs share: a grader is checked by ``worker.graders.validate`` (python refused, every error naming its
field), its models must be ones this Studio can call, and it runs with ``call_model_for``:

* a model id of this project (``GET /v1/models``: a base model or a fine-tuned one) goes to the inference process,
  as a chat request does (with its secret);
* the project's LLM judge model goes to the judge's endpoint through the one SSRF check
  (``apps.evaluations.graders.judge_call_model``).

Anything else is a 400 naming ``grader.model``: the Studio calls no other endpoint."""

from __future__ import annotations

import json
import time

from apps.evaluations.graders import judge_call_model
from apps.evaluations.models import JudgeSettings
from worker import graders as wg

from . import selectors
from .auth import ApiError
from .inference import open_chat

ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)
DETAILS = (
    "python_grader_server_error_type",
    "python_grader_runtime_error_details",
    "model_grader_server_error_details",
)


class GraderInvalid(ValueError):
    """A grader that cannot run here: ``param`` the field at fault (``grader.operation``), the message why."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _models(spec) -> list[tuple[str, str]]:
    """(field, model) of every model grader in ``spec`` (a multi's too)."""
    if not isinstance(spec, dict):
        return []
    found = [("model", spec["model"])] if spec.get("type") in ("score_model", "label_model") else []
    if spec.get("type") == "multi":
        for key, sub in (wg._sub_graders(spec.get("graders")) or {}).items():
            found += [(f"graders.{key}.{at}", model) for at, model in _models(sub)]
    return found


def check_grader(grader, *, project, user=None, access=None, where: str = "grader") -> dict:
    """The grader if it can run here; GraderInvalid naming the first field at fault."""
    if grader is None:
        raise GraderInvalid(f'{where} is required: a grader object such as {{"type": "string_check", ...}}.', where)
    errors = wg.validate(grader, where=where)
    if errors:
        field, message = errors[0].split(": ", 1)
        more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
        raise GraderInvalid(f"{field}: {message}{more}.", field)
    judge = JudgeSettings.objects.filter(project=project).values_list("model", flat=True).first()
    for at, model in _models(grader):
        if model == judge:
            continue
        try:
            target = selectors.resolve_model(project, model)
        except selectors.UnknownModel:
            raise GraderInvalid(
                f"{where}.{at}: no model {model!r} here. A grader's model is a model id from GET /v1/models or this "
                "project's LLM judge model; the Studio calls no other endpoint.",
                f"{where}.{at}",
            ) from None
        if user is not None and access is not None:
            from .views import refuse_blind_candidate

            refuse_blind_candidate(target, user, access, param=f"{where}.{at}")
    return grader


def call_model_for(project, *, key=None):
    """``call_model(model, messages, sampling) -> str`` for graders of this project (see the module's docstring)."""
    judge = judge_call_model(project)
    judge_model = JudgeSettings.objects.filter(project=project).values_list("model", flat=True).first()

    def call(model: str, messages: list[dict], sampling: dict) -> str:
        if judge is not None and model == judge_model:
            return judge(model, messages, sampling)
        try:
            target = selectors.resolve_model(project, model, servable=True)
        except selectors.UnknownModel as exc:
            raise wg.ModelCallError(str(exc)) from None
        body = {
            "model": model,
            "messages": messages,
            **{k: v for k, v in sampling.items() if k != "reasoning_effort"},
            "ftstudio": {
                **selectors.inference_target(target),
                "client": f"key-{key.pk}" if key is not None else "graders",
                "scope": f"project-{project.pk}",
            },
        }
        try:
            client, upstream = open_chat(body)
        except ApiError as exc:
            raise wg.ModelCallError(exc.message) from None
        try:
            payload = json.loads(upstream.read() or b"{}")
        except ValueError:
            raise wg.ModelCallError("the inference process gave an unreadable answer") from None
        finally:
            upstream.close()
            client.close()
        if upstream.status_code != 200:
            message = (payload.get("error") or {}).get("message", "") if isinstance(payload, dict) else ""
            raise wg.ModelCallError(f"the model answered HTTP {upstream.status_code} {message}".strip())
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise wg.ModelCallError("the model's answer has no message") from None

    return call


def run_response(grader: dict, result: wg.GradeResult, *, elapsed: float) -> dict:
    """OpenAI's RunGraderResponse. A missing score (a model grader's endpoint failed) answers reward 0 with the
    error flag that says so set, and ``ftstudio.score_missing`` true: the reward is not a grade."""
    flags = result.details.get("errors", {})
    errors = {flag: bool(flags.get(flag)) for flag in ERROR_FLAGS} | dict.fromkeys(DETAILS)
    if flags.get("model_grader_server_error"):
        errors["model_grader_server_error_details"] = result.error[:500]
    if result.error and not any(flags.values()):
        errors["other_error"] = True
    scores = {k: v for k, v in result.details.get("scores", {}).items()}
    return {
        "reward": 0.0 if result.score is None else float(result.score),
        "metadata": {
            "name": grader.get("name", ""),
            "type": grader.get("type", ""),
            "errors": errors,
            "execution_time": round(elapsed, 4),
            "scores": scores,
            "token_usage": None,
            "sampled_model_name": None,
        },
        "sub_rewards": scores if grader.get("type") == "multi" else {},
        "model_grader_token_usage_per_model": {},
        "ftstudio": {
            "score_missing": result.score is None,
            "error": result.error,
            "passed": result.details.get("passed"),
        },
    }


def run(*, project, key, access, body: dict) -> dict:
    """``POST /v1/fine_tuning/alpha/graders/run``: {grader, model_sample, item} -> RunGraderResponse."""
    for field in sorted(set(body) - {"grader", "model_sample", "item"}):
        raise GraderInvalid(f"Unknown field {field!r}: send grader, model_sample and item.", field)
    grader = check_grader(body.get("grader"), project=project, user=key.user, access=access)
    sample = body.get("model_sample")
    if not isinstance(sample, str):
        raise GraderInvalid("model_sample is required: the model's output, a string.", "model_sample")
    item = body.get("item", {})
    if item is None:
        item = {}
    if not isinstance(item, dict):
        raise GraderInvalid("item must be an object: the dataset item the grader's {{item.*}} read.", "item")
    started = time.perf_counter()
    result = wg.grade(grader, {"output_text": sample}, item, call_model=call_model_for(project, key=key))
    return run_response(grader, result, elapsed=time.perf_counter() - started)


def validate(*, project, body: dict) -> dict:
    """``POST /v1/fine_tuning/alpha/graders/validate``: {grader} -> {grader}, or GraderInvalid."""
    for field in sorted(set(body) - {"grader"}):
        raise GraderInvalid(f"Unknown field {field!r}: send grader.", field)
    return {"grader": check_grader(body.get("grader"), project=project)}
