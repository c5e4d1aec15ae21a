from __future__ import annotations

from django import forms
from django.conf import settings

from apps.datasets.forms import FrozenVersionField
from apps.datasets.models import PreferenceVersion
from ftstudio.asking import answers

from .launching import PRESETS
from .methods import parse_graders
from .models import BaseModel, Run, RunStatus, TrainingMethod
from .presentation import CHECKPOINTING, HYPERPARAMETERS, MEMORY_MODES, SCALE, form_label
from .signals import launch_form_asked

OVERRIDE_FIELDS = (
    "epochs",
    "max_steps",
    "learning_rate",
    "lora_r",
    "batch_size",
    "max_seq_length",
    "seed",
    "memory_mode",
    "gradient_checkpointing",
    "beta",
    "num_generations",
    "max_completion_length",
)
METHOD_CHOICES = ("method", "preference_version", "start_from", "graders")


class LaunchForm(forms.Form):
    method = forms.ChoiceField(
        required=False,  # a form without it (the API's, older pages) learns from examples
        choices=TrainingMethod.choices,
        initial=TrainingMethod.SUPERVISED,
        label="How the model learns",
        help_text="from the ideal outputs of examples, from pairs where reviewers preferred one reply, or from "
        "graders that score the replies it tries",
    )
    dataset_version = FrozenVersionField(
        required=False,
        empty_label=None,
        help_text="a frozen version; training reads its train and val splits (learning from preferences: the version "
        "the preference pairs belong to is used)",
    )
    preference_version = forms.ModelChoiceField(
        queryset=PreferenceVersion.objects.none(),
        required=False,
        empty_label="—",
        label="Preference pairs",
        help_text="learning from preferences: a frozen set of preferred / not preferred replies",
    )
    start_from = forms.ModelChoiceField(
        queryset=Run.objects.none(),
        required=False,
        empty_label="the base model",
        label="Start from",
        help_text="a finished run to go on from; learning from preferences also measures the change against it",
    )
    graders_from_rubric = forms.ChoiceField(
        required=False,
        label="Graders from the rubric",
        help_text="learning from graders: the rubric's automatic checks with their weights (and the judge once it "
        "agrees with reviewers), used when no graders are written below",
    )
    graders = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        label="Graders",
        help_text='learning from graders: a JSON list, e.g. [{"type": "string_check", "name": "exact", "input": '
        '"{{sample.output_text}}", "reference": "{{item.reference_answer}}", "operation": "eq", "weight": 1}]',
    )
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.all(), empty_label=None)
    preset = forms.ChoiceField(
        choices=[(p, p.title()) for p in PRESETS],
        initial="quick",
        help_text="fills in the hyperparameters; the fields below override it",
    )
    epochs = forms.FloatField(required=False)
    max_steps = forms.IntegerField(required=False, help_text="> 0 overrides epochs")
    learning_rate = forms.FloatField(required=False)
    lora_r = forms.IntegerField(required=False, label="LoRA rank")
    batch_size = forms.IntegerField(required=False)
    max_seq_length = forms.IntegerField(required=False, label="Max sequence length")
    seed = forms.IntegerField(required=False)
    beta = forms.FloatField(required=False)
    num_generations = forms.IntegerField(required=False)
    max_completion_length = forms.IntegerField(required=False)
    memory_mode = forms.ChoiceField(
        required=False,
        choices=[("", "as the preset says"), *MEMORY_MODES.items()],
    )
    gradient_checkpointing = forms.ChoiceField(
        required=False,
        choices=[("", "as the preset says"), *((k, v) for k, v in CHECKPOINTING.items() if isinstance(k, str))],
    )
    gpu_gb = forms.TypedChoiceField(
        required=False,
        coerce=int,
        empty_value=None,
        label="GPU card",
        help_text="the card memory the run must fit; by default the estimate picks the smallest that holds it",
    )
    devices = forms.IntegerField(
        required=False, min_value=1, label=SCALE["devices"].label, help_text=SCALE["devices"].help
    )
    nodes = forms.IntegerField(required=False, min_value=1, label=SCALE["nodes"].label, help_text=SCALE["nodes"].help)
    name = forms.CharField(required=False, max_length=120)
    launch_without_prompt = forms.BooleanField(
        required=False,
        label="Launch without trying a prompt first",
        help_text="asked only while no prompt version has been scored in this project",
    )

    # Behind the form's "Advanced" disclosure: the preset and the estimate come first, the knobs after.
    ADVANCED = (
        "epochs",
        "max_steps",
        "learning_rate",
        "lora_r",
        "batch_size",
        "max_seq_length",
        "seed",
        "beta",
        "num_generations",
        "max_completion_length",
        "memory_mode",
        "gradient_checkpointing",
        "gpu_gb",
        "devices",
        "nodes",
    )

    def main_fields(self) -> list:
        return [field for field in self if field.name not in self.ADVANCED]

    def advanced_fields(self) -> list:
        return [field for field in self if field.name in self.ADVANCED]

    def advanced_open(self) -> bool:
        """Open when a knob has an error or was set by hand (a re-shown form keeps what the person did)."""
        return any(
            field.errors or (self.is_bound and field.value() not in (None, "")) for field in self.advanced_fields()
        )

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].for_project(project)  # not an experiment's subsets
        self.fields["preference_version"].queryset = PreferenceVersion.objects.filter(project=project)
        self.fields["start_from"].queryset = Run.objects.filter(
            project=project, status=RunStatus.SUCCEEDED
        ).select_related("base_model")
        # the bar a run has to beat, beside each version: its best scored prompt (apps/prompts answers)
        asked = answers(launch_form_asked, project=project)
        bars = asked.get("prompt_bars", {})
        self.rubric_graders = asked.get("rubric_graders", {})  # (apps/evaluations answers)
        self.fields["graders_from_rubric"].choices = [("", "—")] + [
            (pk, words) for pk, (words, _graders) in self.rubric_graders.items()
        ]
        if not self.rubric_graders:
            del self.fields["graders_from_rubric"]
        self.fields["dataset_version"].label_from_instance = lambda v: (
            f"v{v.number} · {v.split_counts.get('train', 0)} train / {v.split_counts.get('val', 0)} val"
            + (f" · best {bars[v.pk]}" if v.pk in bars else " · no prompt scored")
        )
        self.prompt_scored = bool(bars)
        if self.prompt_scored:
            del self.fields["launch_without_prompt"]
        self.fields["gpu_gb"].choices = [("", "picked from the estimate")] + [
            (tier, f"a {tier} GB card") for tier in sorted(settings.FTSTUDIO_GPU_TIERS)
        ]
        for key in OVERRIDE_FIELDS:  # labels, units and help from the one mapping the run pages use too
            self.fields[key].label = form_label(key)
            self.fields[key].help_text = HYPERPARAMETERS[key].help

        # the form starts from the obvious choice: the newest version, the first registered model
        newest = self.fields["dataset_version"].queryset.values_list("pk", flat=True).first()
        first_model = self.fields["base_model"].queryset.values_list("pk", flat=True).first()
        self.fields["dataset_version"].initial = newest
        self.fields["base_model"].initial = first_model

    def clean_graders(self):
        try:
            return parse_graders(self.cleaned_data.get("graders", ""))
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc

    def method_choices(self) -> dict:
        """The method and what it needs, as `launching.launch_run` takes them."""
        choices = {k: self.cleaned_data.get(k) for k in METHOD_CHOICES}
        chosen = self.cleaned_data.get("graders_from_rubric")
        if not choices["graders"] and chosen in self.rubric_graders:
            choices["graders"] = self.rubric_graders[chosen][1]
        return {**choices, "method": choices["method"] or TrainingMethod.SUPERVISED}

    def opening_choices(self) -> dict:
        """What the form shows before anyone changes it, as data: the estimate is rendered for it on the first GET."""
        names = ("method", "dataset_version", "base_model", "preset")
        return {name: self.fields[name].initial or "" for name in names}

    def overrides(self) -> dict:
        fields = (*OVERRIDE_FIELDS, *SCALE, "gpu_gb")  # devices, nodes and the card ride along: prepare_launch
        return {k: self.cleaned_data.get(k) for k in fields if self.cleaned_data.get(k) not in (None, "")}

    def add_launch_errors(self, errors: dict[str, str]) -> None:
        for field, message in errors.items():
            self.add_error(field if field in self.fields else None, message)
