from __future__ import annotations

from django import forms

from apps.datasets.models import DatasetVersion
from apps.datasets.selectors import frozen_versions
from apps.evaluations.models import Rubric
from apps.runs.launching import PRESETS
from apps.runs.models import BaseModel


class ExperimentForm(forms.Form):
    dataset_version = forms.ModelChoiceField(
        queryset=DatasetVersion.objects.none(),
        label="Dataset version",
        help_text="its train split is cut into nested subsets; its test split scores every point",
    )
    versus = forms.ModelChoiceField(
        queryset=DatasetVersion.objects.none(),
        required=False,
        label="Compare with (optional)",
        help_text="a second version, e.g. the curated one: the same subsets, on one chart",
    )
    label = forms.CharField(max_length=80, required=False, help_text='what to call the first version, e.g. "raw"')
    versus_label = forms.CharField(max_length=80, required=False, help_text='and the second, e.g. "curated"')
    fractions = forms.CharField(initial="0.125,0.25,0.5,1", help_text="shares of the train split, comma-separated")
    preset = forms.ChoiceField(choices=[(p, p.title()) for p in PRESETS], initial="quick")
    steps = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=100_000,
        label="Same number of training steps for every size",
        help_text="e.g. 30: every run trains that many steps and smaller subsets get more epochs, so the curve "
        "measures data, not training length; empty: the preset's epochs (smaller subsets also train fewer steps)",
    )
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.order_by("name"))
    rubric = forms.ModelChoiceField(queryset=Rubric.objects.none(), help_text="its automatic checks score every output")
    seed = forms.IntegerField(min_value=0, initial=0)

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        versions = frozen_versions(project)
        self.fields["dataset_version"].queryset = versions
        self.fields["versus"].queryset = versions
        self.fields["rubric"].queryset = Rubric.objects.filter(project=project).order_by("-created_at", "-version")
        self.fields["dataset_version"].initial = versions.first()
        self.fields["rubric"].initial = self.fields["rubric"].queryset.first()
        self.fields["base_model"].initial = BaseModel.objects.order_by("name").first()
