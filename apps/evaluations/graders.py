"""A rubric's graders: what a reinforcement run is rewarded by when it trains "from the rubric's graders".

Each automatic check of the rubric becomes a ``rubric_check`` grader with the check's weight (a check of weight 0
is left out), and the project's LLM judge becomes a ``score_model`` grader on the judge's model once it meets the
calibration bar the results page uses to show its figures (enough pairs judged by both the reviewers and the
judge on this rubric version, and a kappa at or above the project's threshold: ``selectors.judge_report``).
The graders are plain dicts in OpenAI's shapes (``worker/graders.py``); ``judge_call_model`` is the endpoint a
model grader of the judge's model is called through (the one SSRF check)."""

from __future__ import annotations

from django.conf import settings

from worker import graders as wg

from .models import Evaluation, JudgeSettings, Rubric

JUDGE_WEIGHT = 1.0
JUDGE_INSTRUCTION = (
    "You are a strict, impartial reviewer. Score one answer to the input below against the rubric: 1 when it "
    "meets every criterion fully, 0 when it meets none, in between for partly."
)


def check_grader(*, criterion: str, check, name: str) -> dict:
    """One automatic check (an ``AutoCheck`` or a ``worker.checks.CheckSpec``) as a ``rubric_check`` grader."""
    return {
        "type": "rubric_check",
        "name": name,
        "check": {"kind": check.kind, "text": check.text, "number": check.number},
        "weight": float(check.weight),
    }


def _name(criterion: str, label: str, taken: set[str]) -> str:
    base = f"{criterion}: {label}"[:200]
    name, n = base, 2
    while name in taken:
        name, n = f"{base} ({n})", n + 1
    taken.add(name)
    return name


def _check_graders(criteria) -> list[tuple[str, dict]]:
    """(where, grader) for every check of ``criteria`` (``CriterionSpec``s or ``Criterion`` rows with
    ``checks``), where = "Criterion n (name), automatic check m"."""
    from worker.checks import describe

    out, taken = [], set()
    for n, c in enumerate(criteria, start=1):
        for m, check in enumerate(c.checks, start=1):
            grader = check_grader(criterion=c.name, check=check, name=_name(c.name, describe(check), taken))
            out.append((f"Criterion {n} ({c.name}), automatic check {m}", grader))
    return out


def check_graders_problem(criteria) -> str:
    """Why the rubric's checks could not grade a training run (a weight below 0, weights adding up to 0), or ""."""
    found = _check_graders(criteria)
    if not found:
        return ""
    for where, grader in found:
        errors = wg.validate(grader)
        if errors:
            return f"{where}: {errors[0].split(': ', 1)[1]}."
    errors = wg.validate([g for _, g in found])
    if errors:
        field, message = errors[0].split(": ", 1)
        if field.endswith(".weight"):
            index = int(field.split("[")[1].split("]")[0])
            return f"{found[index][0]}: the weight {message.removeprefix('must be ')}."
        return "The automatic checks' weights as graders add up to 0: give at least one a weight above 0."
    return ""


def judge_calibrated(rubric: Rubric) -> tuple[bool, str]:
    """Whether the project's judge meets the calibration bar on this rubric version, and if not why."""
    from .results import judge_report

    evaluation = Evaluation.objects.filter(rubric=rubric).order_by("-created_at", "-pk").first()
    if not JudgeSettings.objects.filter(project=rubric.project_id).exists():
        return False, "this project has no LLM judge"
    if evaluation is None:
        return False, "no evaluation has used this rubric version yet, so the judge is not calibrated on it"
    report = judge_report(evaluation, bootstrap=0)
    if report is None or not report.shown:
        return False, report.why_hidden if report else "the judge has judged nothing on this rubric version"
    return True, ""


def judge_grader(rubric: Rubric, judge: JudgeSettings) -> dict:
    """The judge as a ``score_model`` grader: it reads the rubric, the item's input and the sample, and scores 0-1."""
    from .automatic import judge_rubric_text

    return {
        "type": "score_model",
        "name": f"judge ({judge.model})",
        "model": judge.model,
        "input": [
            {"role": "system", "content": f"{JUDGE_INSTRUCTION}\n\nRubric:\n{judge_rubric_text(rubric)}"},
            {"role": "user", "content": "Input:\n{{item.input_text}}\n\nAnswer:\n{{sample.output_text}}"},
        ],
        "range": [0, 1],
        "sampling_params": {"temperature": 0},
        "weight": JUDGE_WEIGHT,
    }


def rubric_graders(rubric: Rubric) -> list[dict]:
    """The rubric's graders with their weights: every check of weight above 0, then the judge once calibrated."""
    criteria = rubric.criteria.prefetch_related("auto_checks")
    rows = [_Criterion(c.name, [a.spec for a in c.auto_checks.all()]) for c in criteria]
    found = [g for _, g in _check_graders(rows) if g["weight"] > 0]
    judge = JudgeSettings.objects.filter(project=rubric.project_id).first()
    if judge is not None and judge_calibrated(rubric)[0]:
        found.append(judge_grader(rubric, judge))
    return found


class _Criterion:
    def __init__(self, name: str, checks: list) -> None:
        self.name, self.checks = name, checks


def judge_call_model(project, *, client=None):
    """``call_model`` for graders on the project's judge model: its endpoint through the one SSRF check. None when
    the project has no judge. Any other model raises ``ModelCallError`` (the caller tries its own models first)."""
    from worker.judge import JudgeConfig, client_for

    judge = JudgeSettings.objects.filter(project=project).first()
    if judge is None:
        return None
    config = JudgeConfig(
        judge.base_url,
        judge.model,
        judge.api_key,
        timeout_s=judge.timeout_s,
        allow_private=settings.FTSTUDIO_WEBHOOK_ALLOW_PRIVATE,
    )

    def call(model: str, messages: list[dict], sampling: dict) -> str:
        import openai

        if model != judge.model:
            raise wg.ModelCallError(f"{model!r} is not this project's judge model")
        try:
            response = (client or client_for(config)).chat.completions.create(
                model=model, messages=messages, **sampling
            )
        except openai.APITimeoutError as exc:
            raise TimeoutError(f"no answer in {config.timeout_s:g} s") from exc
        except openai.APIStatusError as exc:
            raise wg.ModelCallError(f"the judge answered HTTP {exc.status_code}") from exc
        except openai.APIError as exc:
            raise wg.ModelCallError("the judge could not be reached") from exc
        if not response.choices or not response.choices[0].message.content:
            raise wg.ModelCallError("the judge's reply was empty")
        return response.choices[0].message.content

    return call


def on_launch_form_asked(sender, *, project, **kwargs) -> dict:
    """The run form's "graders from a rubric" choice: the project's newest rubric and its graders (its automatic
    checks with their weights, and the judge once calibrated), when it has any."""
    from .selectors import newest_rubric

    rubric = newest_rubric(project)
    graders = rubric_graders(rubric) if rubric is not None else []
    if not graders:
        return {}
    words = f"{rubric.name} (version {rubric.version}): {len(graders)} grader{'s' if len(graders) != 1 else ''}"
    return {"rubric_graders": {str(rubric.pk): (words, graders)}}
