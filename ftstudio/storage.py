"""A full or read-only disk, said plainly: one function that recognises the fault in an exception (an OSError
from a write, or the database refusing a write), used by the run and evaluation services (the message a PM
sees on the page), by the middleware below (a page instead of a traceback) and by `manage.py` (the CLI)."""

from __future__ import annotations

import errno
import logging

from django.db import DatabaseError
from django.shortcuts import render

log = logging.getLogger(__name__)

_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the disk is read-only",
}
_DATABASE_TEXTS = {
    "readonly database": "the database's disk is read-only",
    "read-only": "the database's disk is read-only",
    "database or disk is full": "the database's disk is full",
    "no space left on device": "the database's disk is full",
    "could not extend file": "the database's disk is full",
}


def storage_problem(exc: BaseException | None) -> str:
    """A sentence for the user when ``exc`` (or what caused it) is a full or read-only disk, else ""."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _ERRNOS:
            where = f" ({exc.filename})" if exc.filename else ""
            return (
                f"Storage error: {_ERRNOS[exc.errno]}{where}, so nothing more could be saved. Free space or make "
                "the volume writable, then try again (runs and evaluations resume from what was saved)."
            )
        if isinstance(exc, DatabaseError):
            text = str(exc).lower()
            for needle, what in _DATABASE_TEXTS.items():
                if needle in text:
                    return (
                        f"Storage error: {what}, so the change was not saved. Free space or make the volume "
                        "writable, then try again."
                    )
        exc = exc.__cause__ or exc.__context__
    return ""


class StorageErrorMiddleware:
    """A full or read-only disk during a request: a 503 page that says so, not a 500 traceback."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        problem = storage_problem(exception)
        if not problem:
            return None
        log.error("Storage error on %s %s: %s", request.method, request.path, exception)
        return render(request, "storage_error.html", {"problem": problem}, status=503)
