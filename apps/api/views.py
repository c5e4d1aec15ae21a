"""/v1/: OpenAI's models and chat-completions endpoints for a project's keys.

Thin: authenticate (``api_view``), check the body with the inference process's own parser, resolve the
public model id, forward, and relay the answer (JSON, or SSE chunks) while counting the key's tokens.
"""

from __future__ import annotations

import json
import logging

import httpx
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.evaluations.blind import may_call_run
from worker.protocol import EngineError, parse_chat_request

from . import selectors, services, stored
from .auth import ApiError, api_view, error_response, json_body
from .inference import open_chat

log = logging.getLogger(__name__)


def _model_object(target: selectors.ModelTarget) -> dict:
    return {"id": target.id, "object": "model", "created": target.created, "owned_by": target.owned_by}


@api_view("view")
def models_list(request):
    return JsonResponse(
        {"object": "list", "data": [_model_object(t) for t in selectors.project_models(request.access.project)]}
    )


@api_view("view")
def model_detail(request, model_id: str):
    try:
        return JsonResponse(_model_object(selectors.resolve_model(request.access.project, model_id)))
    except selectors.UnknownModel as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None


@csrf_exempt
def unknown_path(request):
    """Any other /v1/ path: OpenAI's JSON error (the SDK raises NotFoundError), before any key check."""
    return error_response(ApiError(404, f"Invalid URL ({request.method} {request.path}).", code="unknown_url"))


@api_view("playground", methods=("POST",))
def chat_completions(request):
    body = json_body(request, max_bytes=settings.FTSTUDIO_API_MAX_BODY_BYTES)
    store = stored.wanted(body, request.api_key)  # takes out store and metadata; 400 on bad metadata
    try:
        chat = parse_chat_request(body, max_tokens_cap=settings.FTSTUDIO_API_MAX_TOKENS)
    except EngineError as exc:
        raise ApiError(exc.status, exc.message, param=exc.param, code=exc.code) from None
    try:
        target = selectors.resolve_model(request.access.project, chat.model, servable=True)
    except selectors.UnknownModel as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    refuse_blind_candidate(target, request.api_key.user, request.access, param="model")
    return stored.capture(forward_chat(body, chat, target, project=request.access.project, key=request.api_key), store)


def refuse_blind_candidate(target: selectors.ModelTarget, user, access, *, param: str) -> None:
    """403 while the user reviews blind an evaluation of which this run is a candidate (``may_call_run``)."""
    if target.run is not None and not may_call_run(target.run, user, access):
        raise ApiError(
            403,
            "This model is a candidate of an evaluation you are reviewing blind; it can be called once you have "
            "judged your pairs.",
            param=param,
            code="blind_review",
        )


def forward_chat(body: dict, chat, target: selectors.ModelTarget, *, project, key=None, client: str | None = None):
    """Send a checked request to the inference process and answer with what it says (JSON or SSE).
    Used by /v1/ (``key``: usage is counted and the per-key limit applies) and by the playground."""
    limit = settings.FTSTUDIO_API_MAX_CONCURRENT_PER_KEY
    forwarded = {
        **body,
        "ftstudio": {
            **selectors.inference_target(target),
            "client": f"key-{key.pk}" if key is not None else client,
            "client_limit": limit,
            "scope": f"project-{project.pk}",  # prompt beginnings are reused within one project only
        },
    }
    if chat.stream:
        forwarded["stream_options"] = {"include_usage": True}  # counted for the key; dropped below if not asked
    client_, upstream = open_chat(forwarded)
    if upstream.status_code != 200 or not chat.stream:
        try:
            payload = json.loads(upstream.read() or b"{}")
        finally:
            upstream.close()
            client_.close()
        if upstream.status_code == 200:
            usage = payload.get("usage") or {}
            if key is not None:
                services.record_usage(
                    key=key,
                    prompt_tokens=usage.get("prompt_tokens", 0),
                    completion_tokens=usage.get("completion_tokens", 0),
                )
        elif not isinstance(payload.get("error"), dict):
            return error_response(ApiError(502, "The inference process gave an unreadable answer.", kind="api_error"))
        return JsonResponse(payload, status=upstream.status_code)
    seen: dict = {}  # the usage the inference process counted, for storage even when the caller did not ask
    response = StreamingHttpResponse(
        _relay(client_, upstream, key, chat.include_usage, seen), content_type="text/event-stream"
    )
    response.counted_usage = seen
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _relay(client, upstream, key, include_usage: bool, seen: dict | None = None):
    """SSE chunks from the inference process to the caller. Closing this generator (the caller went away)
    closes the upstream connection, and the inference process drops the rows at its next token.

    An upstream that ends before ``[DONE]`` (the inference process died or was stopped) ends the caller's stream
    with an error event, so a cut answer never looks finished (the openai SDK raises), and the tokens sent so far
    are counted: the prompt (from the ``X-Prompt-Tokens`` header) and one completion token per content chunk."""
    usage, sent, finished, cut = {}, 0, False, None
    try:
        try:
            for line in upstream.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    finished = True
                    yield b"data: [DONE]\n\n"
                    break
                chunk = json.loads(data)
                if "error" in chunk:  # the inference process's own error event (it was stopped, or failed)
                    cut = chunk["error"]
                    break
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if seen is not None:
                        seen["usage"] = usage
                sent += sum(1 for c in chunk.get("choices") or () if (c.get("delta") or {}).get("content"))
                if not include_usage:
                    if not chunk.get("choices") and "usage" in chunk:
                        continue  # the usage-only chunk the caller did not ask for
                    chunk.pop("usage", None)
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("the inference process's stream broke off: %s: %s", type(exc).__name__, exc)
        if not finished:
            if not usage and sent:  # counted before the caller hears of the cut
                prompt = upstream.headers.get("X-Prompt-Tokens", "0")
                usage = {"prompt_tokens": int(prompt) if prompt.isdigit() else 0, "completion_tokens": sent}
            _record(key, usage)
            usage = {}
            error = cut or {
                "message": "The inference process stopped before this answer was finished; try again.",
                "type": "api_error",
                "param": None,
                "code": "inference_interrupted",
            }
            yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    finally:
        upstream.close()
        client.close()
        _record(key, usage)


def _record(key, usage: dict) -> None:
    if usage and key is not None:
        services.record_usage(
            key=key, prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0)
        )
