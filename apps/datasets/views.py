from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRefresh

from apps.accounts.permissions import judging_blind, project_view
from ftstudio.pagination import CountedPaginator

from . import importing, preferences, selectors, services
from . import versions as datasets_versions
from .forms import FreezeForm, ImportForm, PreferenceFreezeForm, PreferenceImportForm, SplitForm
from .models import (
    DatasetVersion,
    Example,
    ExampleStatus,
    FindingKind,
    ImportJob,
    PreferencePair,
    QualityFinding,
    QualityReport,
    ReportStatus,
    Split,
)

PAGE_SIZE = 50
FILTERS = ("status", "split", "tag", "flag")


def _filters(data) -> dict[str, str]:
    return {k: data.get(k, "").strip() for k in FILTERS if data.get(k, "").strip()}


def _preview(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@project_view("view")
def example_list(request, project):
    filters = _filters(request.GET)
    queue = selectors.example_queue(project, filters)
    status_counts, split_counts = selectors.example_counts(project)  # every count the page shows, one query
    # Page through ids only (an index scan, however deep the page), then load the 50 rows by primary key; the
    # total is known from the counts whenever it can be (no COUNT(*)).
    paginator = CountedPaginator(
        queue.values_list("id", flat=True), PAGE_SIZE, count=selectors.known_count(filters, status_counts, split_counts)
    )
    page = paginator.get_page(request.GET.get("page"))
    ids = list(page.object_list)
    by_id = {
        e.pk: e
        for e in Example.objects.filter(pk__in=ids).only(
            "id", "messages", "status", "split", "tags", "revision", "token_count", "origin"
        )
    }
    rows = []
    for pk in ids:
        example = by_id[pk]
        last_input = (example.input_messages or [{"content": ""}])[-1]["content"]
        rows.append(
            {"example": example, "input": _preview(last_input, 120), "output": _preview(example.ideal_output, 140)}
        )
    context = {
        "page": page,
        "rows": rows,
        "filters": filters,
        "query": urlencode(filters),
        "status_rows": [(v, label, status_counts.get(v, 0)) for v, label in ExampleStatus.choices],
        "split_rows": [(v, label, split_counts.get(v, 0)) for v, label in Split.choices]
        + [("none", "Unassigned", split_counts.get("", 0))],
        "total": sum(status_counts.values()),
        "statuses": ExampleStatus.choices,
        "splits": Split.choices,
        "kinds": FindingKind.choices,
        "split_form": SplitForm(),
        "first": ids[0] if ids and page.number == 1 else queue.values_list("id", flat=True).first(),
    }
    template = (
        "datasets/example_list.html#queue"
        if request.htmx and not request.htmx.boosted
        else "datasets/example_list.html"
    )
    return render(request, template, context)


@project_view("label")
def example_import(request, project):
    """Small uploads import inside the request; larger ones become a background job whose progress the page polls."""
    form = ImportForm(request.POST or None, request.FILES or None)
    report = job = None
    if getattr(request, "upload_refused", ""):  # reading stopped at the upload limit: say so, not "required"
        form = ImportForm(request.POST, {})
        form.is_valid()
        form.errors["file"] = form.error_class([request.upload_refused])
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        if upload.size > settings.FTSTUDIO_IMPORT_INLINE_BYTES:
            job = importing.start_import_job(
                project=project, upload=upload, file_format=form.cleaned_data["file_format"], user=request.user
            )
            return redirect(f"{reverse('example_import', kwargs={'slug': project.slug})}?job={job.pk}")
        report = importing.import_examples(
            project=project,
            path_or_file=upload,
            file_format=form.cleaned_data["file_format"],
            user=request.user,
            filename=upload.name,
        )
        if report.ok:
            messages.success(
                request,
                f"Imported {report.imported} examples from {upload.name}; skipped "
                f"{report.skipped_duplicates} already in the project.",
            )
    elif request.GET.get("job", "").isdigit():
        job = get_object_or_404(ImportJob, project=project, pk=int(request.GET["job"]))
    context = {"form": form, "report": report, "job": job, "limits": importing.import_limits()}
    if request.htmx and job is not None and request.GET.get("poll"):
        return render(request, "datasets/import.html#job", context)
    return render(request, "datasets/import.html", context)


@project_view("view")
def example_export(request, project):
    file_format = request.GET.get("format", "openai")
    version = request.GET.get("version") or None
    try:
        version = int(version) if version else None
        body = "".join(importing.export_lines(project=project, file_format=file_format, version=version))
    except ValueError:
        raise Http404("No such version") from None
    except services.ExportError as exc:
        messages.error(request, str(exc))
        return redirect("example_list", slug=project.slug)
    ext = "csv" if file_format == "csv" else "jsonl"
    name = f"{project.slug}-{'v' + str(version) if version else 'examples'}-{file_format}.{ext}"
    response = HttpResponse(body, content_type="text/csv" if ext == "csv" else "application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@project_view("label")
@require_POST
def assign_splits(request, project):
    form = SplitForm(request.POST)
    if form.is_valid():
        d = form.cleaned_data
        counts = datasets_versions.assign_splits(
            project=project, seed=d["seed"], ratios=(d["train"], d["val"], d["test"]), reassign=d["reassign"]
        )
        messages.success(
            request,
            "Splits assigned (near-duplicates kept together): "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + ".",
        )
    else:
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
    return redirect("example_list", slug=project.slug)


def _label_context(project, example, filters: dict[str, str], **extra):
    query = urlencode(filters)
    prev, nxt = selectors.neighbours(selectors.example_queue(project, filters), example)
    findings = selectors.open_findings_of(project, example)
    revisions = example.revisions.select_related("changed_by")[:20]
    return {
        "example": example,
        "query": query,
        "filters": filters,
        "next_id": nxt,
        "prev_id": prev,
        "findings": findings,
        "revisions": revisions,
        "statuses": ExampleStatus.choices,
        **extra,
    }


@project_view("view")
def example_label(request, project, pk):
    example = get_object_or_404(Example.objects.select_related("updated_by", "source"), project=project, pk=pk)
    return render(request, "datasets/example_label.html", _label_context(project, example, _filters(request.GET)))


@project_view("view", post_need="label")
@require_POST
def example_save(request, project, pk):
    """Autosave of the ideal output, tags and status, refused (with both texts kept) on a stale revision."""
    example = get_object_or_404(Example.objects.select_related("updated_by"), project=project, pk=pk)
    try:
        expected = int(request.POST.get("revision", ""))
    except ValueError:
        return HttpResponse("Missing or invalid revision.", status=400)
    outcome = services.edit_example(
        example=example,
        expected_revision=expected,
        user=request.user,
        text=request.POST.get("text"),
        tags=request.POST["tags"].split(",") if "tags" in request.POST else None,
        status=request.POST.get("status"),
    )
    example, conflict, error, saved = outcome.example, outcome.conflict, outcome.error, outcome.saved
    if not request.htmx:
        if conflict:
            messages.error(request, str(conflict))
        elif error:
            messages.error(request, error)
        else:
            messages.success(request, "Saved.")
        url = reverse("example_label", kwargs={"slug": project.slug, "pk": example.pk})
        query = urlencode(_filters(request.POST))
        return redirect(f"{url}?{query}" if query else url)
    context = _label_context(project, example, _filters(request.POST), conflict=conflict, error=error, saved=saved)
    return render(request, "datasets/example_label.html#save_result", context)


@project_view("view", post_need="label")
def quality_report(request, project):
    if request.method == "POST":
        report = services.start_quality_report(project=project, user=request.user)
        messages.info(request, "Quality report queued: it runs in the background; this page shows its progress.")
        return redirect("quality_report", slug=project.slug)
    current = QualityReport.objects.filter(project=project).order_by("-id").first()
    report = selectors.latest_report(project)
    groups = []
    if report:
        open_findings = report.findings.filter(dismissed=False).prefetch_related("examples")
        for kind, label in FindingKind.choices:
            count = report.summary.get(kind, 0)
            if count:
                groups.append(
                    {"kind": kind, "label": label, "count": count, "findings": open_findings.filter(kind=kind)[:20]}
                )
    context = {
        "current": current,
        "report": report,
        "groups": groups,
        "dismissed_count": report.findings.filter(dismissed=True).count() if report else 0,
    }
    if request.htmx and request.GET.get("poll"):
        if current is not None and current.status == ReportStatus.DONE:
            return HttpResponseClientRefresh()  # the finished report replaces the progress bar: reload the page
        return render(request, "datasets/quality_report.html#progress", context)
    return render(request, "datasets/quality_report.html", context)


@project_view("view", post_need="label")
@require_POST
def finding_dismiss(request, project, pk):
    finding = get_object_or_404(QualityFinding.objects.select_related("report"), report__project=project, pk=pk)
    services.dismiss_finding(finding=finding, user=request.user)
    if request.htmx:
        return render(
            request,
            "datasets/quality_report.html#finding",
            {"finding": finding, "compact": request.POST.get("compact")},
        )
    messages.success(request, "Finding dismissed: it stays dismissed until its examples change.")
    return redirect(_safe_next(request, reverse("quality_report", kwargs={"slug": project.slug})))


def _safe_next(request, fallback: str) -> str:
    """The ``next`` the form carries when it points back into this site, else ``fallback`` (no open redirect)."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return fallback


@project_view("view", post_need="label")
def version_list(request, project):
    form = FreezeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = datasets_versions.freeze_version(
                project=project, user=request.user, note=form.cleaned_data["note"]
            )
            messages.success(
                request,
                f"Froze v{version.number}: {version.example_count} approved examples "
                f"({', '.join(f'{k} {v}' for k, v in version.split_counts.items())}).",
            )
            return redirect("version_list", slug=project.slug)
        except services.FreezeError as exc:
            form.add_error(None, str(exc))
    versions = DatasetVersion.objects.filter(project=project).select_related("created_by").order_by("-number")
    approved = Example.objects.filter(project=project, status=ExampleStatus.APPROVED).count()
    return render(request, "datasets/version_list.html", {"form": form, "versions": versions, "approved": approved})


@project_view("view")
def version_detail(request, project, number):
    version = get_object_or_404(DatasetVersion.objects.select_related("created_by"), project=project, number=number)
    items = version.items.order_by("position").only("position", "split", "messages")
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "datasets/version_detail.html", {"version": version, "page": page})


# --- preference pairs ------------------------------------------------------------------------------
PAIR_PAGE_SIZE = 20


def _pair_row(pair: PreferencePair) -> dict:
    last = (pair.messages or [{"content": ""}])[-1].get("content", "")
    return {"pair": pair, "input": _preview(last or "", 160)}


def _preferences_page(request, project, *, import_form=None, freeze_form=None, report=None, status=200):
    """The Preferences page: the pool (paged, filtered), the import and freeze forms (a large file's background
    import, ``?job=``, polled in place), the frozen versions."""
    job = None
    if request.GET.get("job", "").isdigit():
        job = get_object_or_404(
            ImportJob, project=project, pk=int(request.GET["job"]), file_format=importing.PREFERENCE_FILES
        )
        if request.htmx and request.GET.get("poll"):
            return render(request, "datasets/preferences.html#job", {"job": job})
    show = request.GET.get("show", "")
    if show not in selectors.PREFERENCE_FILTERS:
        show = ""
    blind = judging_blind(project, request.user, request.access)
    pairs = selectors.preference_pool(project, show, hide_outputs_of_models=blind)
    page = Paginator(pairs, PAIR_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "rows": [_pair_row(p) for p in page.object_list],
        "show": show,
        "filters": selectors.PREFERENCE_FILTERS.items(),
        "counts": selectors.preference_counts(project),
        "blind": blind,
        "versions": selectors.frozen_preference_versions(project),
        "import_form": import_form or PreferenceImportForm(),
        "freeze_form": freeze_form or PreferenceFreezeForm(project=project),
        "report": report,
        "job": job,
        "limits": importing.import_limits(),
    }
    if request.htmx and request.GET.get("fragment") == "pool":
        return render(request, "datasets/preferences.html#pool", context)
    return render(request, "datasets/preferences.html", context, status=status)


@project_view("view")
def preference_list(request, project):
    return _preferences_page(request, project)


@project_view("view", post_need="label")
@require_POST
def preference_import(request, project):
    form = PreferenceImportForm(request.POST, request.FILES)
    if getattr(request, "upload_refused", ""):
        form = PreferenceImportForm(request.POST, {})
        form.is_valid()
        form.errors["file"] = form.error_class([request.upload_refused])
    if not form.is_valid():
        return _preferences_page(request, project, import_form=form, status=400)
    upload = form.cleaned_data["file"]
    if upload.size > settings.FTSTUDIO_IMPORT_INLINE_BYTES:  # too large to check inside the request
        job = importing.start_import_job(
            project=project, upload=upload, file_format=importing.PREFERENCE_FILES, user=request.user
        )
        return redirect(f"{reverse('preference_list', kwargs={'slug': project.slug})}?job={job.pk}")
    report = preferences.import_preference_pairs(
        project=project, path_or_file=upload, user=request.user, filename=upload.name
    )
    if not report.ok:
        return _preferences_page(request, project, import_form=form, report=report, status=400)
    messages.success(
        request,
        f"Imported {report.imported} pair{'s' if report.imported != 1 else ''} from {upload.name}; skipped "
        f"{report.skipped_duplicates} already in the pool."
        + (f" Warnings: {'; '.join(report.warnings)}." if report.warnings else ""),
    )
    return redirect("preference_list", slug=project.slug)


@project_view("view", post_need="label")
@require_POST
def preference_freeze(request, project):
    form = PreferenceFreezeForm(request.POST, project=project)
    if form.is_valid():
        try:
            version = preferences.freeze_preference_version(
                project=project,
                dataset_version=form.cleaned_data["dataset_version"],
                user=request.user,
                note=form.cleaned_data["note"],
            )
        except services.FreezeError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                f"Froze p{version.number}: {version.pair_count} pairs (train {version.split_counts.get('train', 0)}, "
                f"validation {version.split_counts.get('val', 0)}), judged on v{version.dataset_version.number}.",
            )
            return redirect("preference_list", slug=project.slug)
    return _preferences_page(request, project, freeze_form=form, status=400)


@project_view("view")
def preference_export(request, project):
    if judging_blind(project, request.user, request.access):
        return HttpResponse(
            "Preference pairs hold the model outputs reviewers preferred: they can be downloaded once your blind "
            "reviews are done.",
            status=403,
            content_type="text/plain",
        )
    version = request.GET.get("version", "")
    if version and not version.isdigit():
        raise Http404("No such preference version")
    try:
        body = "".join(preferences.preference_export_lines(project=project, version=int(version) if version else None))
    except preferences.PreferenceError:
        raise Http404("No such preference version") from None
    name = f"{project.slug}-{'p' + version if version else 'preference-pool'}.jsonl"
    response = HttpResponse(body, content_type="application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@project_view("view", post_need="label")
@require_POST
def preference_exclude(request, project, pk):
    pair = get_object_or_404(PreferencePair, project=project, pk=pk)
    pair = preferences.set_excluded(pair=pair, excluded=request.POST.get("excluded") == "1")
    if request.htmx:
        return render(request, "datasets/preferences.html#pair", {"row": _pair_row(pair)})
    messages.success(request, "Left out of the next versions." if pair.excluded else "Back in the next versions.")
    return redirect("preference_list", slug=project.slug)
