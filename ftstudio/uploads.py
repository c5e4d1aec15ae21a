"""The upload limit (FTSTUDIO_MAX_UPLOAD_BYTES) held while the body arrives, not after it was read in full.

* :class:`UploadLimitMiddleware` answers 413 to a request whose Content-Length is over the limit (plus room for the
  form's other fields), before anything reads the body: JSON in OpenAI's shape under /v1/, a short page elsewhere.
* :class:`UploadLimitHandler`, the first upload handler, stops reading a multipart body once a file passes the limit
  and notes why on ``request.upload_refused`` (a body whose length was not announced, or announced wrong).
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpResponse, JsonResponse

FORM_ROOM = 64 * 1024  # multipart boundaries, headers and the form's small fields beside the file


def too_large_message(size: int | None = None) -> str:
    limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
    limit_text = f"{limit / 2**20:,.0f} MB" if limit >= 2**20 else f"{limit:,} bytes"
    if size is None:
        return f"The file is too large: the limit is {limit_text}."
    return f"The upload is {size:,} bytes; the limit is {limit_text}."


def too_large_response(request, message: str):
    if request.path.startswith("/v1/"):
        error = {"message": message, "type": "invalid_request_error", "param": "file", "code": "file_too_large"}
        return JsonResponse({"error": error}, status=413)
    return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")


class UploadLimitMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.FTSTUDIO_MAX_UPLOAD_BYTES + FORM_ROOM:
            return too_large_response(request, too_large_message(length))
        return self.get_response(request)


class UploadLimitHandler(FileUploadHandler):
    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > settings.FTSTUDIO_MAX_UPLOAD_BYTES:
            self.request.upload_refused = too_large_message()
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size):
        return None
