"""The web process's client of the inference process (FTSTUDIO_INFERENCE_URL): one place that forwards a
checked chat request and turns "nobody is listening" into a 503."""

from __future__ import annotations

import httpx
from django.conf import settings

from .auth import ApiError


def open_chat(body: dict) -> tuple[httpx.Client, httpx.Response]:
    """POST to the inference process and return the (unread, streaming) response; the caller closes both."""
    client = httpx.Client(
        base_url=settings.FTSTUDIO_INFERENCE_URL,
        timeout=httpx.Timeout(settings.FTSTUDIO_INFERENCE_TIMEOUT, connect=5.0),
        headers={"Authorization": f"Bearer {settings.FTSTUDIO_INFERENCE_SECRET}"},
    )
    try:
        request = client.build_request("POST", "/v1/chat/completions", json=body)
        return client, client.send(request, stream=True)
    except httpx.TransportError as exc:
        client.close()
        raise ApiError(
            503,
            "No inference process is answering at the moment: the Studio's administrator needs to start it. "
            f"Try again in a minute. ({type(exc).__name__})",
            code="inference_unavailable",
        ) from None
