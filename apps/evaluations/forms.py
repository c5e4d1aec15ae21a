from __future__ import annotations

from django import forms

from apps.datasets.forms import FrozenVersionField
from apps.runs.models import BaseModel, Run, RunStatus
from ftstudio.asking import answers
from worker.checks import CheckSpec

from .models import CheckKind, EvaluationPurpose, ReviewMode, Rubric, Scale
from .services import CandidateSpec, CriterionSpec, EvaluationError
from .signals import evaluation_form_asked


class RubricForm(forms.Form):
    name = forms.CharField(max_length=120)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    review_mode = forms.ChoiceField(
        choices=ReviewMode.choices,
        initial=ReviewMode.SCORES,
        required=False,
        label="Reviewers are asked for",
        help_text="overall winner only is the fastest review; with scores, each score stays optional",
    )


class CriterionForm(forms.Form):
    name = forms.CharField(max_length=80, required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    scale = forms.ChoiceField(choices=Scale.choices, initial=Scale.LIKERT5)
    anchors = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        required=False,
        help_text='One level per line, e.g. "5: greets by name, one sentence, sign-off". '
        'Pass/fail: "1: ..." and "0: ...".',
    )
    good_example = forms.IntegerField(required=False, min_value=1, help_text="example id (optional)")
    bad_example = forms.IntegerField(required=False, min_value=1, help_text="example id (optional)")

    def clean_anchors(self) -> dict:
        anchors = {}
        for n, line in enumerate(self.cleaned_data["anchors"].splitlines(), start=1):
            if not line.strip():
                continue
            level, sep, text = line.partition(":")
            if not sep or not level.strip().isdigit():
                raise forms.ValidationError(f"Line {n}: write it as LEVEL: description (e.g. 3: partly in style).")
            anchors[level.strip()] = text.strip()
        return anchors

    def spec(self) -> CriterionSpec | None:
        d = self.cleaned_data
        if not d.get("name"):
            return None
        return CriterionSpec(
            name=d["name"],
            description=d["description"],
            scale=d["scale"],
            anchors=d["anchors"],
            good_example_id=d.get("good_example"),
            bad_example_id=d.get("bad_example"),
        )


CriterionFormSet = forms.formset_factory(CriterionForm, extra=2, max_num=20)


class CheckForm(forms.Form):
    """One automatic check: which criterion it belongs to, what it tests, its text or number."""

    criterion = forms.CharField(max_length=80, required=False, help_text="the criterion's name, as above")
    kind = forms.ChoiceField(choices=CheckKind.choices, label="Check")
    text = forms.CharField(
        max_length=4000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 1}),
        help_text="text ({customer} etc. are filled from the example's input), a regular expression, or a JSON Schema",
    )
    number = forms.FloatField(required=False, help_text="N sentences or words, or the similarity threshold 0-1")
    weight = forms.FloatField(
        required=False,
        min_value=0,
        initial=1,
        label="Weight as a grader",
        help_text="used as a grader when training from graders: its share of the reward (0: not used)",
    )

    def spec(self) -> tuple[str, CheckSpec] | None:
        d = self.cleaned_data
        if not d.get("criterion", "").strip():
            return None
        weight = 1.0 if d.get("weight") is None else d["weight"]
        return d["criterion"].strip(), CheckSpec(d["kind"], d.get("text") or "", d.get("number"), weight)


CheckFormSet = forms.formset_factory(CheckForm, extra=2, max_num=50)


def attach_checks(
    criteria: list[CriterionSpec], check_formset, previous: list[CriterionSpec] = ()
) -> list[CriterionSpec]:
    """Give each criterion the checks that name it; a check naming no criterion of the rubric is an error.
    Without a posted check formset (a client that only knows the criteria), a criterion keeps the checks it
    had in ``previous`` (the version being edited)."""
    by_name = {c.name.strip().lower(): c for c in criteria}
    kept = {p.name.strip().lower(): p.checks for p in previous}
    for c in criteria:
        c.checks = [] if check_formset is not None else list(kept.get(c.name.strip().lower(), []))
    for n, form in enumerate(check_formset.forms if check_formset is not None else [], start=1):
        if not form.is_valid() or (found := form.spec()) is None:
            continue
        name, spec = found
        if name.lower() not in by_name:
            raise EvaluationError(
                f"Automatic check {n}: this rubric has no criterion named {name!r} "
                f"(criteria: {', '.join(c.name for c in criteria) or 'none'})."
            )
        by_name[name.lower()].checks.append(spec)
    return criteria


def checks_initial(criteria: list[CriterionSpec]) -> list[dict]:
    return [
        {"criterion": c.name, "kind": check.kind, "text": check.text, "number": check.number, "weight": check.weight}
        for c in criteria
        for check in c.checks
    ]


def anchors_text(anchors: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in sorted(anchors.items(), key=lambda kv: -int(kv[0])))


class EvaluationForm(forms.Form):
    name = forms.CharField(max_length=120, required=False)
    purpose = forms.ChoiceField(
        choices=EvaluationPurpose.choices,
        initial=EvaluationPurpose.JUDGE,
        required=False,
        widget=forms.RadioSelect,
        label="What the reviewers' verdicts are for",
        help_text="to judge models, outputs are generated for the test examples; to collect preferences, for the "
        "training examples, and the verdicts become pairs on the Preferences page (test examples never do)",
    )
    dataset_version = FrozenVersionField(help_text="outputs are generated for its test split")
    include_val = forms.BooleanField(required=False, label="Also evaluate on the validation split")
    rubric = forms.ModelChoiceField(queryset=Rubric.objects.none())
    base_model = forms.ModelChoiceField(
        queryset=BaseModel.objects.all(),
        required=False,
        help_text="for the base and prompt candidates (default: the runs' base model)",
    )
    include_base = forms.BooleanField(required=False, initial=True, label="Candidate: base model")
    include_prompt = forms.BooleanField(
        required=False, initial=True, label="Candidate: base model + prompt (prompt-only baseline)"
    )
    prompt_version = forms.ModelChoiceField(
        queryset=None,
        required=False,
        label="Prompt-only baseline from the prompt workspace",
        help_text="its system prompt and chosen few-shot examples (default: the best scored version); "
        "empty: the system prompt and number of examples below",
    )
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, help_text="the prompt-only baseline's system prompt"
    )
    few_shot = forms.IntegerField(
        min_value=0, max_value=8, initial=2, help_text="examples from the train split shown to the prompt baseline"
    )
    runs = forms.ModelMultipleChoiceField(
        queryset=Run.objects.none(), required=False, widget=forms.CheckboxSelectMultiple, label="Candidates: tuned runs"
    )
    max_new_tokens = forms.IntegerField(min_value=1, max_value=2048, initial=96)
    seed = forms.IntegerField(min_value=0, initial=0)
    reviewers_per_pair = forms.IntegerField(min_value=1, max_value=10, initial=2)
    stop_when_settled = forms.BooleanField(
        required=False,
        initial=True,
        label="Stop handing out a candidate pair once it is clearly settled",
        help_text="settled means its exact interval excludes 50% at a level corrected for looking after every item, "
        "so stopping keeps false 'better' verdicts under 5%; it saves the most on large test splits "
        "(about 47 of 93 items for an 80/20 split; bench/review_stopping.py)",
    )
    pair_cap = forms.IntegerField(
        min_value=1,
        required=False,
        label="Cap of judged items per candidate pair",
        help_text="stop handing out a candidate pair once this many of its items are judged (empty: no cap); "
        "a pair also stops once it is clearly settled",
    )
    reviewers_see_examples = forms.BooleanField(
        required=False,
        initial=False,
        label="Reviewers who have finished may see the labelled outputs example by example",
        help_text="they always see the aggregate results once their own pairs are judged",
    )

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].for_project(project)  # not an experiment's subsets
        self.fields["dataset_version"].label_from_instance = (
            lambda v: f"v{v.number} ({v.split_counts.get('test', 0)} test examples)"
        )
        latest = {}
        for r in Rubric.objects.filter(project=project).order_by("name", "-version"):
            latest.setdefault(r.name, r.pk)
        self.fields["rubric"].queryset = Rubric.objects.filter(pk__in=latest.values())
        # start from the obvious choice, as the run form does: the newest version and the newest rubric
        self.fields["dataset_version"].initial = (
            self.fields["dataset_version"].queryset.values_list("pk", flat=True).first()
        )
        self.fields["rubric"].initial = (
            self.fields["rubric"].queryset.order_by("-created_at", "-pk").values_list("pk", flat=True).first()
        )
        self.fields["runs"].queryset = (
            Run.objects.filter(project=project, status=RunStatus.SUCCEEDED)
            .exclude(adapter_path="")
            .select_related("base_model")
        )
        prompts = answers(evaluation_form_asked, project=project)  # the prompt workspace's versions (apps/prompts)
        self.fields["prompt_version"].queryset = prompts["prompt_versions"].select_related("dataset_version")
        self.fields["prompt_version"].label_from_instance = prompts["prompt_words"]
        best = prompts["prompt_best"]
        self.fields["prompt_version"].initial = best.pk if best else None
        self.fields["runs"].label_from_instance = (
            lambda r: f"{r} · {r.base_model} · val loss {r.final_val_loss if r.final_val_loss is not None else '—'}"
        )

    def clean_purpose(self) -> str:
        return self.cleaned_data.get("purpose") or EvaluationPurpose.JUDGE

    def candidates(self) -> list[CandidateSpec]:
        d = self.cleaned_data
        specs = []
        if d.get("include_base"):
            specs.append(CandidateSpec("base"))
        if d.get("include_prompt") and d.get("prompt_version"):
            pv = d["prompt_version"]
            specs.append(
                CandidateSpec(
                    "prompt", system_prompt=pv.system_prompt, few_shot=len(pv.shot_messages), shots=pv.shot_messages
                )
            )
        elif d.get("include_prompt"):
            specs.append(
                CandidateSpec("prompt", system_prompt=d.get("system_prompt") or "", few_shot=d.get("few_shot") or 0)
            )
        specs += [CandidateSpec("run", run_id=r.pk) for r in d.get("runs") or []]
        return specs

    def clean(self):
        data = super().clean()
        if not self.errors and len(self.candidates()) < 2:
            raise forms.ValidationError("Pick at least two candidates to compare (e.g. the prompt baseline and a run).")
        return data


class JudgeSettingsForm(forms.Form):
    base_url = forms.URLField(max_length=500, label="Endpoint URL", help_text="OpenAI-compatible, e.g. https://host/v1")
    model = forms.CharField(max_length=200, help_text="the model name the endpoint expects")
    api_key = forms.CharField(
        max_length=500,
        required=False,
        label="API key",
        widget=forms.PasswordInput(render_value=False),
        help_text="stored, never shown back; leave empty to keep the stored key",
    )
    timeout_s = forms.FloatField(min_value=0.1, max_value=600, initial=60, label="Timeout (seconds)")
    min_human_pairs = forms.IntegerField(
        min_value=0, initial=30, label="Pairs judged by both the reviewers and the judge before judge figures show"
    )
    min_kappa = forms.FloatField(min_value=-1, max_value=1, initial=0.6, label="Kappa needed before judge figures show")


class JudgmentForm(forms.Form):
    """A reviewer's verdict on one pair as posted: the winner as shown ("A", "B" or "tie"; the service checks it),
    a comment, and optional scores ``score_<side>_<criterion id>`` that must be whole numbers (the service checks
    that each is on its criterion's scale, and refuses scores for a winner-only rubric)."""

    winner = forms.CharField(required=False, strip=False)
    comment = forms.CharField(required=False, strip=False)

    def __init__(self, data, *, criteria) -> None:
        super().__init__(data)
        self.criteria = list(criteria)
        for criterion in self.criteria:
            for letter in ("A", "B"):
                self.fields[f"score_{letter}_{criterion.pk}"] = forms.CharField(required=False)

    def clean(self) -> dict:
        cleaned = super().clean()
        scores: dict[tuple[str, int], int] = {}
        for criterion in self.criteria:
            for letter in ("A", "B"):
                name = f"score_{letter}_{criterion.pk}"
                raw = (cleaned.get(name) or "").strip()
                if raw == "":
                    continue
                try:
                    scores[(letter, criterion.pk)] = int(raw)
                except ValueError:
                    self.add_error(name, f"{criterion.name} (side {letter}): {raw!r} is not a number on the scale.")
        cleaned["scores"] = scores
        return cleaned

    def messages(self) -> list[str]:
        return [message for errors in self.errors.values() for message in errors]
