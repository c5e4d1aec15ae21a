"""/v1/files and /v1/fine_tuning/jobs: OpenAI's fine-tuning API. Thin: authenticate (``api_view``), read the
request, call ``fine_tuning`` (the logic) and answer with ``shapes`` (the JSON). The service's refusals become
OpenAI's error bodies here, in ``ft_view`` (``STATUS``)."""

from __future__ import annotations

import functools
import re

from django.http import FileResponse, HttpResponse, JsonResponse

from . import fine_tuning, ft_events, ft_files, ft_jobs, graders, shapes
from .auth import ApiError, api_view, json_body, require

METADATA_QUERY = re.compile(r"^metadata\[(.+)\]$")
STATUS = {fine_tuning.Invalid: 400, fine_tuning.NotFound: 404, fine_tuning.Conflict: 409}


def ft_view(need: str, methods: tuple[str, ...] = ("GET",)):
    """``api_view`` and the one mapping of the fine-tuning service's refusals to OpenAI's status and error body."""

    def decorator(view):
        @functools.wraps(view)
        def mapped(request, *args, **kwargs):
            try:
                return view(request, *args, **kwargs)
            except fine_tuning.FineTuningError as exc:
                raise ApiError(STATUS[type(exc)], exc.message, param=exc.param, code=exc.code) from None

        return api_view(need, methods=methods)(mapped)

    return decorator


def _body(request) -> dict:
    return json_body(request)


def _query(request, allowed: set[str]) -> None:
    for key in request.GET:
        if key not in allowed and not ("metadata" in allowed and METADATA_QUERY.match(key)):
            raise ApiError(400, f"Unknown query parameter {key!r}.", param=key)


@ft_view("view", methods=("GET", "POST"))
def files(request):
    project = request.access.project
    if request.method == "POST":
        require(request.access, "label")
        uploaded = request.FILES  # reads the multipart body, which stops at the upload limit
        if getattr(request, "upload_refused", ""):
            raise ApiError(413, request.upload_refused, param="file", code="file_too_large")
        for key in set(request.POST) - {"purpose"}:
            raise ApiError(400, f"Unknown field {key!r}: send 'file' and 'purpose'.", param=key)
        record = ft_files.create_file(
            project=project,
            user=request.api_key.user,
            upload=uploaded.get("file"),
            purpose=request.POST.get("purpose", ""),
        )
        return JsonResponse(shapes.file(record))
    _query(request, {"purpose", "after", "limit", "order"})
    rows, more = ft_files.list_files(
        project,
        purpose=request.GET.get("purpose", ""),
        after=request.GET.get("after", ""),
        limit=fine_tuning.page_limit(request.GET.get("limit"), default=fine_tuning.MAX_PAGE),
    )
    return JsonResponse(shapes.page([shapes.file(f) for f in rows], more, empty_id=""))


@ft_view("view", methods=("GET", "DELETE"))
def file_detail(request, file_id: str):
    project = request.access.project
    if request.method == "DELETE":
        require(request.access, "label")
        return JsonResponse({"id": ft_files.delete_file(project, file_id), "object": "file", "deleted": True})
    return JsonResponse(shapes.file(ft_files.get_file(project, file_id)))


@ft_view("view")
def file_content(request, file_id: str):
    found = ft_files.get_file(request.access.project, file_id)
    if isinstance(found, ft_files.ResultFile):
        return HttpResponse(ft_files.file_content(found), content_type="text/csv")
    # Streamed from the store in chunks (FileResponse closes the file): a large file is never held in memory.
    return FileResponse(ft_files.open_file(found), content_type="application/octet-stream")


@ft_view("view", methods=("GET", "POST"))
def jobs(request):
    project = request.access.project
    if request.method == "POST":
        require(request.access, "run")
        job = ft_jobs.create_job(
            project=project,
            user=request.api_key.user,
            key=request.api_key,
            body=_body(request),
            idempotency_key=request.headers.get("Idempotency-Key", "").strip(),
            access=request.access,
        )
        return JsonResponse(shapes.job(job))
    _query(request, {"after", "limit", "metadata"})
    metadata = {m.group(1): v for k, v in request.GET.items() if (m := METADATA_QUERY.match(k))}
    rows, more = fine_tuning.list_jobs(
        project,
        after=request.GET.get("after", ""),
        metadata=metadata,
        limit=fine_tuning.page_limit(request.GET.get("limit")),
    )
    return JsonResponse(shapes.page([shapes.job(j) for j in rows], more))


@ft_view("view")
def job_detail(request, job_id: str):
    return JsonResponse(shapes.job(fine_tuning.get_job(request.access.project, job_id)))


def _action(action):
    @ft_view("run", methods=("POST",))
    def view(request, job_id: str):
        return JsonResponse(shapes.job(action(fine_tuning.get_job(request.access.project, job_id))))

    view.__name__ = view.__qualname__ = action.__name__.replace("_job", "")
    return view


cancel, pause, resume = _action(ft_jobs.cancel_job), _action(ft_jobs.pause_job), _action(ft_jobs.resume_job)


@ft_view("view")
def job_events(request, job_id: str):
    _query(request, {"after", "limit"})
    items, more = ft_events.slice_after(
        ft_events.events(fine_tuning.get_job(request.access.project, job_id)),
        request.GET.get("after", ""),
        fine_tuning.page_limit(request.GET.get("limit"), default=20),
    )
    return JsonResponse(shapes.page([shapes.event(e) for e in items], more))


@ft_view("view")
def job_checkpoints(request, job_id: str):
    _query(request, {"after", "limit"})
    items, more = ft_events.slice_after(
        ft_events.checkpoints(fine_tuning.get_job(request.access.project, job_id)),
        request.GET.get("after", ""),
        fine_tuning.page_limit(request.GET.get("limit"), default=10),
    )
    return JsonResponse(shapes.page(items, more))


def _grader_errors(view):
    @functools.wraps(view)
    def mapped(request):
        try:
            return view(request)
        except graders.GraderInvalid as exc:
            raise ApiError(400, exc.message, param=exc.param, code="invalid_grader") from None

    return mapped


@api_view("view", methods=("POST",))
@_grader_errors
def grader_validate(request):
    return JsonResponse(graders.validate(project=request.access.project, body=_object(request)))


@api_view("playground", methods=("POST",))  # it calls models, as a chat completion does
@_grader_errors
def grader_run(request):
    body = _object(request)
    return JsonResponse(
        graders.run(project=request.access.project, key=request.api_key, access=request.access, body=body)
    )


def _object(request) -> dict:
    body = _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    return body
