"""Key authentication for /v1/, in one place, and OpenAI's error shape.

``@api_view("playground")`` reads ``Authorization: Bearer <key>``, finds the unrevoked key (401 otherwise),
decides what its user may do in the key's project with the permission module (403 when the role lacks
the capability or the user left the project) and turns :class:`ApiError` into
``{"error": {"message", "type", "param", "code"}}`` with its status, so the openai SDK raises its usual
exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.permissions import CAPABILITIES, Access, access_for
from apps.datasets.importers import Limits
from apps.datasets.importers import _too_deep as nested_deeper_than

from . import services

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ERROR_TYPES.get(status, "api_error")


def json_body(request: HttpRequest, *, max_bytes: int | None = None):
    """The request's JSON body, or ApiError: 413 above ``max_bytes`` (refused unread), 400 when it is not JSON or
    nests deeper than the dataset imports allow."""
    if max_bytes is not None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > max_bytes:
            raise ApiError(
                413,
                f"The request body is {length:,} bytes; this server accepts at most {max_bytes:,}.",
                code="too_large",
            )
    depth = Limits().max_depth
    try:
        body = json.loads(request.body or b"null")
    except RecursionError:
        body = None
        too_deep = True
    except ValueError as exc:
        raise ApiError(400, f"The body is not valid JSON ({exc}).") from None
    else:
        too_deep = nested_deeper_than(body, depth)
    if too_deep:
        raise ApiError(400, f"The body nests too deeply: values may nest at most {depth} levels.", code="too_deep")
    return body


def error_response(exc: ApiError) -> JsonResponse:
    response = JsonResponse(
        {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}, status=exc.status
    )
    if exc.status == 409:  # a state conflict: the same request fails again (the openai SDK would retry a 409)
        response["x-should-retry"] = "false"
    return response


def authenticate(request: HttpRequest, need: str) -> tuple[services.ApiKey, Access]:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ApiError(
            401,
            "No API key: send it as 'Authorization: Bearer <key>' (create one in the project's Settings).",
            code="invalid_api_key",
        )
    key = services.find_active_key(raw.strip())
    if key is None or not key.user.is_active:
        raise ApiError(401, "Incorrect or revoked API key.", code="invalid_api_key")
    access = access_for(key.project, key.user)
    if access is None:
        raise ApiError(403, f"This key's user is no longer a member of {key.project.slug}.", code="no_access")
    require(access, need)
    return key, access


def require(access: Access, need: str) -> None:
    """403 unless the key's user may do ``need`` in the key's project (views whose methods need more than the
    capability ``api_view`` checked call it again)."""
    if not access.allows(need):
        raise ApiError(
            403,
            f"This key's user is a {access.role} in {access.project.slug}, which does not allow this ({need}).",
            code="no_access",
        )


def api_view(need: str, methods: tuple[str, ...] = ("GET",)) -> Callable:
    if need not in CAPABILITIES:
        raise ValueError(f"unknown capability {need!r}")

    def decorator(view: Callable) -> Callable:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            try:
                if request.method not in methods:
                    raise ApiError(405, f"{request.method} is not allowed here; use {', '.join(methods)}.")
                request.api_key, request.access = authenticate(request, need)
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc)

        return wrapper

    return decorator
