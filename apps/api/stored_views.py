"""/v1/chat/completions as OpenAI's stored completions: list, retrieve, messages, update (metadata), delete.

A key sees only its own project's completions (any other id is a 404) and needs the ``label`` capability:
reviewers' keys see no traffic.
"""

from __future__ import annotations

import json

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import selectors, services, stored
from .auth import ApiError, api_view
from .views import chat_completions

MAX_LIMIT = 100


def _message(message: dict) -> dict:
    """The stored answer as OpenAI's response message: its content, refusal and tool calls."""
    found = {"role": "assistant", "content": message.get("content"), "refusal": message.get("refusal")}
    if message.get("tool_calls"):
        found["tool_calls"] = message["tool_calls"]
    return found


def completion_object(row) -> dict:
    """OpenAI's stored chat completion; fields we have no value for are left out (their schema allows no null)."""
    obj = {
        "id": row.public_id,
        "object": "chat.completion",
        "created": row.created,
        "model": row.model,
        "choices": [
            {
                "index": c.get("index", i),
                "message": _message(c.get("message") or {}),
                "finish_reason": c.get("finish_reason") or "stop",
                "logprobs": None,
            }
            for i, c in enumerate(row.choices)
        ],
        "usage": row.usage,
        "metadata": row.metadata,
        "temperature": row.request.get("temperature"),
        "top_p": row.request.get("top_p"),
        "seed": row.request.get("seed"),
    }
    return {name: value for name, value in obj.items() if value is not None}


def _page_args(request) -> tuple[str, int, str]:
    order = request.GET.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'.", param="order")
    raw = request.GET.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}; got {raw!r}.", param="limit")
    return request.GET.get("after", ""), int(raw), order


def _page(items: list, limit: int, objects) -> JsonResponse:
    """OpenAI's list; an empty page's first_id and last_id are "" (ChatCompletionList types them as required
    strings, so null breaks typed clients), as the files list does (``shapes.page``)."""
    more = len(items) > limit
    items = items[:limit]
    data = [objects(x) for x in items]
    return JsonResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "",
            "has_more": more,
        }
    )


def _metadata_filter(request) -> dict:
    pairs = {}
    for name, value in request.GET.items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata[") : -1]] = value
    return stored.check_metadata(pairs, "metadata")


@api_view("label")
def _list(request):
    after, limit, order = _page_args(request)
    project = request.access.project
    rows = selectors.stored_completions(project, model=request.GET.get("model", ""), metadata=_metadata_filter(request))
    if order == "desc":
        rows = rows.reverse()
    if after:
        anchor = selectors.stored_completion(project, after)
        if anchor is None:
            raise ApiError(404, f"No stored chat completion {after!r} in this project.", param="after")
        # past the anchor in (created_at, id) order, written so the (project, created_at, id) index serves it
        if order == "asc":
            rows = rows.filter(created_at__gte=anchor.created_at).exclude(
                created_at=anchor.created_at, id__lte=anchor.id
            )
        else:
            rows = rows.filter(created_at__lte=anchor.created_at).exclude(
                created_at=anchor.created_at, id__gte=anchor.id
            )
    return _page(list(rows[: limit + 1]), limit, completion_object)


@csrf_exempt
def chat_completions_root(request):
    """POST creates a chat completion; GET lists the stored ones."""
    return _list(request) if request.method == "GET" else chat_completions(request)


def _find(request, completion_id: str):
    row = selectors.stored_completion(request.access.project, completion_id)
    if row is None:
        raise ApiError(404, f"No stored chat completion found with id '{completion_id}'.", param="completion_id")
    return row


@api_view("label", methods=("GET", "POST", "DELETE"))
def completion_detail(request, completion_id: str):
    row = _find(request, completion_id)
    if request.method == "DELETE":
        services.delete_stored_completion(completion=row)
        return JsonResponse({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})
    if request.method == "POST":
        try:
            body = json.loads(request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"The body is not valid JSON ({exc}).") from None
        if not isinstance(body, dict) or "metadata" not in body or set(body) - {"metadata"}:
            raise ApiError(400, 'Send {"metadata": {...}}: only the metadata of a stored completion can change.')
        row = services.update_stored_metadata(completion=row, metadata=stored.check_metadata(body["metadata"]))
    return JsonResponse(completion_object(row))


@api_view("label")
def completion_messages(request, completion_id: str):
    row = _find(request, completion_id)
    after, limit, order = _page_args(request)
    messages = [
        {"id": f"{row.public_id}-{i}", "role": m.get("role"), "content": m.get("content"), "name": m.get("name")}
        for i, m in enumerate(row.messages)
    ]
    for m in messages:
        if m["name"] is None:
            del m["name"]
        m["content_parts"] = None
    if order == "desc":
        messages.reverse()
    if after:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise ApiError(404, f"No message {after!r} in this completion.", param="after")
        messages = messages[ids.index(after) + 1 :]
    return _page(messages[: limit + 1], limit, lambda m: m)
