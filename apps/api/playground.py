"""The playground: one message (typed or a test example) to several candidates at once, answers streaming
side by side. Not blind: PMs and designers only (``playground``); reviewers keep the blind queue.

The page is plain HTML; ``static/js/playground.js`` posts the form once per chosen candidate to
``playground_stream`` and reads each SSE stream into its column. That view goes through the same
checks and the same forwarding as ``/v1/chat/completions``.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.shortcuts import render

from apps.accounts.permissions import project_view
from apps.datasets.models import Example
from apps.evaluations.blind import may_call_run
from apps.evaluations.services import DEFAULT_PROMPT
from worker.protocol import EngineError, parse_chat_request

from . import selectors
from .auth import ApiError, error_response
from .views import forward_chat, refuse_blind_candidate


def candidates_for(project, user, access) -> list[dict]:
    """Base models, each also with the prompt (the prompt-only baseline), and the project's succeeded runs (less the
    candidates of evaluations the user reviews blind)."""
    options = []
    for target in selectors.project_models(project):
        if target.run is not None and not may_call_run(target.run, user, access):
            continue
        if target.run is None:
            label = str(target.base_model)
            options.append({"value": f"base:{target.id}", "label": f"{label} (base)"})
            options.append({"value": f"prompt:{target.id}", "label": f"{label} + prompt"})
        else:
            options.append({"value": f"run:{target.id}", "label": f"{target.run} (run #{target.run.pk})"})
    return options


@project_view("playground")
def playground(request, project):
    examples = Example.objects.filter(project=project, split="test").order_by("id").only("id", "messages")[:50]
    picks = []
    for e in examples:
        turns = [m for m in e.input_messages if m.get("role") == "user"]
        if turns:
            picks.append({"id": e.pk, "text": turns[-1]["content"]})
    return render(
        request,
        "api/playground.html",
        {
            "candidates": candidates_for(project, request.user, request.access),
            "examples": picks,
            "default_prompt": DEFAULT_PROMPT,
        },
    )


@project_view("playground")
def playground_stream(request, project):
    if request.method != "POST":
        return error_response(ApiError(405, "POST the playground form here."))
    kind, _, model_id = request.POST.get("candidate", "").partition(":")
    message = request.POST.get("message", "").strip()
    try:
        if kind not in {"base", "prompt", "run"} or not model_id:
            raise ApiError(400, "Choose a candidate.", param="candidate")
        if not message:
            raise ApiError(400, "Type a message or pick a test example.", param="message")
        system = request.POST.get("system", "").strip()
        messages = [{"role": "system", "content": system}] if kind == "prompt" and system else []
        messages.append({"role": "user", "content": message})
        body = {
            "model": model_id,
            "messages": messages,
            "stream": True,
            "temperature": _number(request.POST.get("temperature"), 0.0, "temperature"),
            "max_tokens": int(_number(request.POST.get("max_tokens"), 128, "max_tokens")),
        }
        try:
            chat = parse_chat_request(body, max_tokens_cap=settings.FTSTUDIO_API_MAX_TOKENS)
        except EngineError as exc:
            raise ApiError(exc.status, exc.message, param=exc.param, code=exc.code) from None
        try:
            target = selectors.resolve_model(project, model_id, servable=True)
        except selectors.UnknownModel as exc:
            raise ApiError(404, str(exc), param="candidate") from None
        refuse_blind_candidate(target, request.user, request.access, param="candidate")
        return forward_chat(body, chat, target, project=project, client=f"user-{request.user.pk}")
    except ApiError as exc:
        return error_response(exc)


def _number(raw: str | None, default: float, name: str) -> float:
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number; got {raw!r}.", param=name)
    return value
