"""/v1/: OpenAI's models and chat-completions endpoints for a project's keys.

Thin: authenticate (``api_view``), check the body with the inference process's own parser, resolve the
public model id, forward, and relay the answer (JSON, or SSE chunks) while counting the key's tokens.
"""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse

from worker.engine import EngineError
from worker.serve import parse_chat_request

from . import selectors, services, stored
from .auth import ApiError, api_view, error_response
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


@api_view("playground", methods=("POST",))
def chat_completions(request):
    try:
        body = json.loads(request.body or b"null")
    except ValueError as exc:
        raise ApiError(400, f"The body is not valid JSON ({exc}).") from None
    store = stored.wanted(body, request.api_key)  # takes out store and metadata; 400 on bad metadata
    try:
        chat = parse_chat_request(body, max_tokens_cap=settings.FTSTUDIO_API_MAX_TOKENS)
    except EngineError as exc:
        raise ApiError(exc.status, exc.message, param=exc.param, code=exc.code) from None
    try:
        target = selectors.resolve_model(request.access.project, chat.model, servable=True)
    except selectors.UnknownModel as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    return stored.capture(forward_chat(body, chat, target, key=request.api_key), store)


def forward_chat(body: dict, chat, target: selectors.ModelTarget, *, key=None, client: str | None = None):
    """Send a checked request to the inference process and answer with what it says (JSON or SSE).
    Used by /v1/ (``key``: usage is counted and the per-key limit applies) and by the playground."""
    limit = settings.FTSTUDIO_API_MAX_CONCURRENT_PER_KEY
    forwarded = {
        **body,
        "ftstudio": {
            **selectors.inference_target(target),
            "client": f"key-{key.pk}" if key is not None else client,
            "client_limit": limit,
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
    response = StreamingHttpResponse(
        _relay(client_, upstream, key, chat.include_usage), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _relay(client, upstream, key, include_usage: bool):
    """SSE chunks from the inference process to the caller. Closing this generator (the caller went away)
    closes the upstream connection, and the inference process drops the rows at its next token."""
    usage = {}
    try:
        for line in upstream.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                yield b"data: [DONE]\n\n"
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            if not include_usage:
                if not chunk.get("choices") and "usage" in chunk:
                    continue  # the usage-only chunk the caller did not ask for
                chunk.pop("usage", None)
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    finally:
        upstream.close()
        client.close()
        if usage and key is not None:
            services.record_usage(
                key=key,
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            )
