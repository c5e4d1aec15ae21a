from __future__ import annotations

from django import forms

from apps.datasets.models import DatasetVersion
from apps.datasets.selectors import frozen_versions
from apps.evaluations.models import Rubric
from apps.evaluations.selectors import newest_rubric
from apps.runs.models import BaseModel

from .services import MAX_SHOTS


class PromptVersionForm(forms.Form):
    dataset_version = forms.ModelChoiceField(
        queryset=DatasetVersion.objects.none(),
        empty_label=None,
        help_text="few-shot examples come from its train split; the prompt is scored on its validation split",
    )
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), max_length=8000)
    shots = forms.TypedMultipleChoiceField(
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Few-shot examples (train split)",
        help_text=f"shown before each input, in this order; at most {MAX_SHOTS}",
    )
    rubric = forms.ModelChoiceField(
        queryset=Rubric.objects.none(),
        required=False,
        help_text="its automatic checks score each output (empty: similarity only)",
    )
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.all(), empty_label=None)
    note = forms.CharField(max_length=200, required=False, help_text="what this version tries")

    def __init__(self, *args, project, dataset_version, train_items, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].queryset = frozen_versions(project)
        self.fields["dataset_version"].initial = dataset_version.pk if dataset_version else None
        self.fields["dataset_version"].label_from_instance = (
            lambda v: f"v{v.number} · {v.split_counts.get('train', 0)} train / {v.split_counts.get('val', 0)} val"
        )
        self.fields["shots"].choices = [(i.position, _shot_label(i)) for i in train_items]
        latest = {}
        for r in Rubric.objects.filter(project=project).order_by("name", "-version"):
            latest.setdefault(r.name, r.pk)
        self.fields["rubric"].queryset = Rubric.objects.filter(pk__in=latest.values())
        rubric = newest_rubric(project)
        self.fields["rubric"].initial = rubric.pk if rubric else None
        self.fields["base_model"].initial = (
            self.fields["base_model"].queryset.order_by("name").values_list("pk", flat=True).first()
        )


def _shot_label(item) -> str:
    user = " ".join(m.get("content", "") for m in item.input_messages if m.get("role") == "user")
    return f"#{item.position}: {user[:90]} → {item.ideal_output[:90]}"
