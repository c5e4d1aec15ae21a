from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.permissions import project_view
from apps.fleet.selectors import job_silence
from ftstudio.asking import answers

from . import automatic, generation, preferences, review, selectors, services
from . import results as evaluations_results
from .blind import evaluation_sight
from .forms import (
    CheckFormSet,
    CriterionFormSet,
    EvaluationForm,
    JudgeSettingsForm,
    JudgmentForm,
    RubricForm,
    anchors_text,
    attach_checks,
    checks_initial,
)
from .models import (
    Assignment,
    Evaluation,
    EvaluationStatus,
    Generation,
    JudgeSettings,
    ReviewMode,
    Rubric,
    UnblindingReason,
)
from .signals import evaluation_list_asked


# --- rubrics ------------------------------------------------------------------------------------------
@project_view("view")
def rubric_list(request, project):
    rubrics = Rubric.objects.filter(project=project).prefetch_related("criteria").order_by("name", "-version")
    latest, older = {}, []
    for r in rubrics:
        if r.name in latest:
            older.append(r)
        else:
            latest[r.name] = r
    return render(request, "evaluations/rubric_list.html", {"rubrics": list(latest.values()), "older": older})


def _criteria_from(formset, checks, previous=()) -> list[services.CriterionSpec]:
    """The criteria of the form, each with the automatic checks that name it (EvaluationError if one names none)."""
    return attach_checks(
        [spec for form in formset.forms if form.is_valid() and (spec := form.spec()) is not None],
        checks if checks.is_bound else None,
        previous,
    )


def _check_formset(request, initial=()):
    """The automatic checks' formset; unbound when a POST carries none (then no checks change)."""
    data = request.POST if request.method == "POST" and "k-TOTAL_FORMS" in request.POST else None
    return CheckFormSet(data, prefix="k", initial=list(initial))


@project_view("rubric")
def rubric_create(request, project):
    form = RubricForm(request.POST or None)
    formset = CriterionFormSet(request.POST or None, prefix="c")
    checks = _check_formset(request)
    if (
        request.method == "POST"
        and form.is_valid()
        and formset.is_valid()
        and (checks.is_valid() or not checks.is_bound)
    ):
        try:
            rubric = services.create_rubric(
                project=project,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                review_mode=form.cleaned_data["review_mode"] or ReviewMode.SCORES,
                criteria=_criteria_from(formset, checks),
                user=request.user,
            )
        except services.EvaluationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Saved rubric {rubric}.")
            return redirect(rubric)
    return render(
        request, "evaluations/rubric_form.html", {"form": form, "formset": formset, "checks": checks, "rubric": None}
    )


@project_view("view")
def rubric_detail(request, project, pk):
    rubric = get_object_or_404(Rubric.objects.select_related("created_by"), project=project, pk=pk)
    versions = Rubric.objects.filter(project=project, name=rubric.name).order_by("-version")
    criteria = rubric.criteria.select_related("good_example", "bad_example").prefetch_related("auto_checks")
    return render(
        request, "evaluations/rubric_detail.html", {"rubric": rubric, "versions": versions, "criteria": criteria}
    )


@project_view("rubric")
def rubric_edit(request, project, pk):
    rubric = get_object_or_404(Rubric, project=project, pk=pk)
    specs = services.criteria_specs(rubric)
    initial = [
        {
            "name": s.name,
            "description": s.description,
            "scale": s.scale,
            "anchors": anchors_text(s.anchors or {}),
            "good_example": s.good_example_id,
            "bad_example": s.bad_example_id,
        }
        for s in specs
    ]
    checks = _check_formset(request, checks_initial(specs))
    form = RubricForm(
        request.POST or None,
        initial={"name": rubric.name, "description": rubric.description, "review_mode": rubric.review_mode},
    )
    form.fields["name"].disabled = True
    formset = CriterionFormSet(request.POST or None, prefix="c", initial=initial)
    if (
        request.method == "POST"
        and form.is_valid()
        and formset.is_valid()
        and (checks.is_valid() or not checks.is_bound)
    ):
        try:
            new = services.revise_rubric(
                rubric=rubric,
                description=form.cleaned_data["description"],
                review_mode=form.cleaned_data["review_mode"] or None,
                criteria=_criteria_from(formset, checks, specs),
                user=request.user,
            )
        except services.EvaluationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Saved {new}; evaluations keep the version they used.")
            return redirect(new)
    return render(
        request, "evaluations/rubric_form.html", {"form": form, "formset": formset, "checks": checks, "rubric": rubric}
    )


# --- evaluations --------------------------------------------------------------------------------------
@project_view("view")
def evaluation_list(request, project):
    evaluations = list(
        Evaluation.objects.filter(project=project)
        .select_related("dataset_version", "rubric", "base_model")
        .prefetch_related("candidates")
    )
    blind = {e.pk for e in evaluations if not evaluation_sight(e, request.user, request.access).labels}
    stale = answers(evaluation_list_asked, project=project, evaluations=evaluations)  # freshness: stale marks
    return render(request, "evaluations/evaluation_list.html", {"evaluations": evaluations, "blind": blind, **stale})


@project_view("evaluate")
def evaluation_create(request, project):
    form = EvaluationForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            evaluation = services.create_evaluation(
                project=project,
                dataset_version=d["dataset_version"],
                rubric=d["rubric"],
                base_model=d["base_model"],
                candidates=form.candidates(),
                name=d["name"],
                max_new_tokens=d["max_new_tokens"],
                seed=d["seed"],
                reviewers_per_pair=d["reviewers_per_pair"],
                include_val=d["include_val"],
                reviewers_see_examples=d["reviewers_see_examples"],
                pair_cap=d["pair_cap"],
                stop_when_settled=d["stop_when_settled"],
                purpose=d["purpose"],
                user=request.user,
            )
        except services.EvaluationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Evaluation {evaluation} queued: outputs are being generated.")
            return redirect(evaluation)
    return render(
        request,
        "evaluations/evaluation_form.html",
        {
            "form": form,
            "no_versions": not form.fields["dataset_version"].queryset.exists(),
            "no_rubrics": not form.fields["rubric"].queryset.exists(),
        },
    )


def _get_evaluation(project, pk) -> Evaluation:
    return get_object_or_404(
        Evaluation.objects.select_related("dataset_version", "rubric", "base_model", "created_by"),
        project=project,
        pk=pk,
    )


def _sight(request, evaluation):
    """What this member may see of the evaluation's labels; seeing them is recorded (see permissions)."""
    sight = evaluation_sight(evaluation, request.user, request.access)
    if sight.labels and request.access.allows("review"):
        review.record_unblinding(evaluation=evaluation, user=request.user, reason=UnblindingReason.FINISHED)
    return sight


@project_view("view")
def evaluation_detail(request, project, pk):
    evaluation = _get_evaluation(project, pk)
    sight = _sight(request, evaluation)
    context = {"evaluation": evaluation, "sight": sight, "totals": selectors.review_totals(evaluation)}
    if evaluation.status in (EvaluationStatus.QUEUED, EvaluationStatus.GENERATING):
        context["worker_silence"] = job_silence(selectors.evaluation_queue(evaluation.pk), evaluation)
    if sight.examples:
        context["candidates"] = evaluation.candidates.select_related("run")
    if request.access.allows("evaluate"):
        context["progress"] = selectors.reviewer_progress(evaluation)
        if sight.labels:
            context["stopping"] = selectors.stopping(evaluation)
    if request.access.allows("review"):
        context["my_remaining"] = selectors.remaining_for(evaluation, request.user)
    template = "evaluations/evaluation_detail.html#status" if request.htmx else "evaluations/evaluation_detail.html"
    return render(request, template, context)


@project_view("evaluate")
@require_POST
def evaluation_reveal(request, project, pk):
    """A PM who could still review chooses to see the labels instead: their blind review of it ends."""
    evaluation = _get_evaluation(project, pk)
    sight = evaluation_sight(evaluation, request.user, request.access)
    if not (sight.labels or sight.reveal):
        messages.error(request, sight.reason)
        return redirect(evaluation)
    review.record_unblinding(evaluation=evaluation, user=request.user, reason=UnblindingReason.REVEALED)
    return redirect("evaluation_results", slug=project.slug, pk=evaluation.pk)


@project_view("evaluate")
@require_POST
def evaluation_resume(request, project, pk):
    evaluation = _get_evaluation(project, pk)
    try:
        generation.resume_evaluation(evaluation)
    except services.EvaluationError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Generation resumed: finished outputs are kept.")
    return redirect(evaluation)


@project_view("evaluate")
@require_POST
def evaluation_run_checks(request, project, pk):
    """Run the rubric's automatic checks on an existing evaluation's outputs (those not checked yet)."""
    evaluation = _get_evaluation(project, pk)
    if evaluation.status != EvaluationStatus.READY:
        messages.error(request, "The automatic checks run once every output is generated.")
    else:
        automatic.schedule_checks(evaluation.pk)
        messages.success(
            request, "Automatic checks queued: results appear on the results page when the worker is done."
        )
    return redirect(evaluation)


@project_view("evaluate")
@require_POST
def evaluation_run_judge(request, project, pk):
    """Ask the project's LLM judge about every pair of the evaluation that has no usable verdict yet."""
    evaluation = _get_evaluation(project, pk)
    if evaluation.status != EvaluationStatus.READY:
        messages.error(request, "The judge runs once every output is generated.")
    elif not JudgeSettings.objects.filter(project=project).exists():
        messages.error(request, "Configure the project's LLM judge first.")
    else:
        automatic.schedule_judge(evaluation.pk)
        messages.success(request, "LLM judge queued: each pair is judged in both orders; unjudged pairs are retried.")
    return redirect(evaluation)


@project_view("view", post_need="label")
@require_POST
def evaluation_harvest(request, project, pk):
    """Turn the reviewers' clear verdicts of an evaluation that collects preferences into preference pairs."""
    evaluation = _get_evaluation(project, pk)
    raw = request.POST.get("min_agreement", "").strip()
    if raw and not raw.isdigit():
        messages.error(request, "The number of agreeing verdicts must be a whole number (or empty: all must agree).")
        return redirect(evaluation)
    try:
        result = preferences.harvest_preferences(
            evaluation=evaluation, user=request.user, min_agreement=int(raw) if raw else None
        )
    except preferences.PreferenceError as exc:
        messages.error(request, str(exc))
        return redirect(evaluation)
    messages.success(
        request,
        f"Added {result.created} preference pair{'s' if result.created != 1 else ''} to the Preferences page; "
        f"skipped {result.skipped_ties} tied, {result.skipped_disagreement} where reviewers disagreed and "
        f"{result.skipped_existing} already there"
        + (f", and {result.skipped_invalid} whose output was empty or too long." if result.skipped_invalid else "."),
    )
    return redirect(evaluation)


@project_view("view", post_need="label")
@require_POST
def evaluation_improve(request, project, pk, generation):
    """A designer's better reply to one output: it becomes the preferred side of a pair, the output the other."""
    evaluation = _get_evaluation(project, pk)
    output = get_object_or_404(
        Generation.objects.select_related("item", "candidate__evaluation__dataset_version"),
        candidate__evaluation=evaluation,
        pk=generation,
    )
    back = reverse("evaluation_results", kwargs={"slug": project.slug, "pk": evaluation.pk})
    if not evaluation_sight(evaluation, request.user, request.access).examples:
        messages.error(request, "You cannot see this evaluation's outputs example by example yet.")
        return redirect(back)
    try:
        pair = preferences.improve_output(generation=output, text=request.POST.get("text", ""), user=request.user)
    except preferences.PreferenceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, f"Saved as pair #{pair.pk} on the Preferences page: your reply preferred over the model's."
        )
    return redirect(f"{back}?show={request.POST.get('show', '')}#example-{output.item.position}")


@project_view("evaluate")
def judge_settings(request, project):
    """The project's judge endpoint. The key is write-only: the page says whether one is stored, never which."""
    current = JudgeSettings.objects.filter(project=project).first()
    initial = (
        {
            "base_url": current.base_url,
            "model": current.model,
            "timeout_s": current.timeout_s,
            "min_human_pairs": current.min_human_pairs,
            "min_kappa": current.min_kappa,
        }
        if current
        else None
    )
    form = JudgeSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            automatic.save_judge_settings(project=project, **form.cleaned_data)
        except services.EvaluationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Saved the LLM judge's settings.")
            return redirect("judge_settings", slug=project.slug)
    return render(
        request, "evaluations/judge_settings.html", {"form": form, "has_key": bool(current and current.api_key)}
    )


@project_view("view")
def evaluation_results(request, project, pk):
    evaluation = _get_evaluation(project, pk)
    sight = _sight(request, evaluation)
    if not sight.labels:
        return render(
            request, "evaluations/results_hidden.html", {"evaluation": evaluation, "sight": sight}, status=403
        )
    context = {"evaluation": evaluation, "sight": sight}
    if sight.examples:
        show = request.GET.get("show", "")
        if show not in selectors.FILTERS:
            show = ""
        candidates, items, verdicts = selectors.side_by_side(evaluation, show=show)
        page = Paginator(items, 20).get_page(request.GET.get("page"))
        context.update(
            {
                "page": page,
                "rows": selectors.rows_for(page.object_list, candidates, verdicts),
                "show": show,
                "filters": selectors.FILTERS.items(),
                "candidates": candidates,
            }
        )
        if request.htmx and request.GET.get("fragment") == "examples":
            return render(request, "evaluations/results.html#examples", context)
    context["results"] = results = evaluations_results.evaluation_results(evaluation)
    context["ranking_height"] = 24 * len(results.ranking) + 24
    context["calibrations"] = (
        evaluations_results.check_calibrations(evaluation, bootstrap=400) if results.judgment_count else []
    )
    context["judge"] = judge = evaluations_results.judge_report(evaluation, bootstrap=400)
    if judge and judge.judged:
        context["judge_examples"] = (
            evaluation.judge_verdicts.filter(judged=True)
            .select_related("comparison__item", "comparison__candidate_1", "comparison__candidate_2", "winner")
            .order_by("comparison__order_key")[:20]
        )
    return render(request, "evaluations/results.html", context)


@project_view("view")
def evaluation_export(request, project, pk):
    evaluation = _get_evaluation(project, pk)
    sight = _sight(request, evaluation)
    if not sight.examples:
        reason = (
            sight.reason
            or "The judgments export names the candidate of every output; the PM has not shared it with reviewers."
        )
        return HttpResponse(reason, status=403, content_type="text/plain")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="evaluation-{evaluation.pk}-judgments.csv"'
    review.write_judgments_csv(evaluation, response)
    return response


# --- review -------------------------------------------------------------------------------------------
@project_view("review")
def review_queue(request, project):
    return render(request, "evaluations/review_queue.html", {"queue": selectors.queue_for(project, request.user)})


def _to_next_pair(request, project, evaluation):
    assignment = review.next_assignment(evaluation=evaluation, reviewer=request.user)
    if assignment is None:
        messages.info(request, f"Nothing left for you to review in {evaluation}. Thank you!")
        return redirect("review_queue", slug=project.slug)
    return redirect("review_item", slug=project.slug, token=assignment.token)


@project_view("review")
@require_POST
def review_next(request, project, pk):
    """Hand out the reviewer's next pair: a POST, since it assigns one (a link preview must not)."""
    return _to_next_pair(request, project, get_object_or_404(Evaluation, project=project, pk=pk))


@project_view("review")
def review_item(request, project, token):
    assignment = (
        Assignment.objects.select_related("comparison__item", "evaluation__rubric")
        .filter(token=token, reviewer=request.user, evaluation__project=project)
        .first()
    )
    if assignment is None:
        raise Http404("No such review item")
    evaluation = assignment.evaluation
    if evaluation.status != EvaluationStatus.READY:
        raise Http404("This evaluation is not ready for review")
    criteria = list(
        evaluation.rubric.criteria.all()
    )  # scores posted for a winner-only rubric are refused by the service
    errors: list[str] = []
    if request.method == "GET":
        review.mark_shown(assignment)
    if request.method == "POST":
        form = JudgmentForm(request.POST, criteria=criteria)
        if not form.is_valid():
            errors = form.messages()
        else:
            try:
                review.submit_judgment(
                    assignment=assignment,
                    reviewer=request.user,
                    winner=form.cleaned_data["winner"],
                    scores=form.cleaned_data["scores"],
                    comment=form.cleaned_data["comment"],
                )
            except services.EvaluationError as exc:
                errors.append(str(exc))
            else:
                return _to_next_pair(request, project, evaluation)
    done = assignment.completed_at is not None
    item = assignment.comparison.item
    context = {
        "assignment": assignment,
        "item_input": item.input_messages,
        "ideal": item.ideal_output,
        "criteria": criteria if evaluation.rubric.review_mode == ReviewMode.SCORES else [],
        "sides": selectors.sides(assignment),
        "errors": errors,
        "done": done,
        "remaining": selectors.remaining_for(evaluation, request.user),
        "next_url": reverse("review_next", kwargs={"slug": project.slug, "pk": evaluation.pk}),
    }
    return render(request, "evaluations/review_item.html", context, status=400 if errors else 200)
