from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from .models import DatasetVersion
from .selectors import frozen_versions

FORMAT_CHOICES = [
    ("auto", "Detect from the file"),
    ("openai", "OpenAI chat JSONL"),
    ("alpaca", "Alpaca JSONL"),
    ("csv", "CSV (input, output, optional system)"),
]


class FrozenVersionField(forms.ModelChoiceField):
    """A dataset version of one project (`for_project`) that a person froze, to launch a run or an evaluation by hand.
    An experiment's subsets (``derived_from``, shown as "v5 (part of v1)") are neither offered nor accepted: the
    experiment makes its own runs through the services."""

    def __init__(self, **kwargs) -> None:
        super().__init__(queryset=DatasetVersion.objects.none(), **kwargs)
        self.subsets = DatasetVersion.objects.none()

    def for_project(self, project) -> None:
        self.queryset = frozen_versions(project)
        self.subsets = DatasetVersion.objects.filter(project=project, derived_from__isnull=False).select_related(
            "derived_from"
        )

    def to_python(self, value):
        try:
            return super().to_python(value)
        except ValidationError:
            subset = self.subsets.filter(pk=value).first() if str(value).isdigit() else None
            if subset is None:
                raise
            raise ValidationError(
                f"v{subset.number} is part of v{subset.derived_from.number}, a subset an experiment froze for its own "
                "runs: pick a version a person froze.",
                code="subset_version",
            ) from None


class ImportForm(forms.Form):
    file = forms.FileField(
        help_text="One example per line (JSONL) or per row (CSV). Nothing is imported if any line has a problem."
    )
    file_format = forms.ChoiceField(label="Format", choices=FORMAT_CHOICES, initial="auto")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise forms.ValidationError(f"The file is {upload.size:,} bytes; the limit is {limit:,}.")
        return upload


class SplitForm(forms.Form):
    seed = forms.IntegerField(initial=0, min_value=0, help_text="Same seed and examples, same splits.")
    train = forms.IntegerField(label="Train %", initial=80, min_value=0, max_value=100)
    val = forms.IntegerField(label="Validation %", initial=10, min_value=0, max_value=100)
    test = forms.IntegerField(label="Test %", initial=10, min_value=0, max_value=100)
    reassign = forms.BooleanField(required=False, label="Reassign examples that already have a split")

    def clean(self):
        data = super().clean()
        if all(k in data for k in ("train", "val", "test")) and data["train"] + data["val"] + data["test"] != 100:
            raise forms.ValidationError("Train, validation and test must add up to 100%.")
        return data


class FreezeForm(forms.Form):
    note = forms.CharField(required=False, max_length=200, help_text="What changed, for whoever picks this version.")


class PreferenceImportForm(forms.Form):
    file = forms.FileField(
        label="Preference file",
        help_text="OpenAI's preference format, one pair per line. Nothing is imported if any line has a problem.",
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = settings.FTSTUDIO_MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise forms.ValidationError(f"The file is {upload.size:,} bytes; the limit is {limit:,}.")
        return upload


class PreferenceFreezeForm(forms.Form):
    dataset_version = FrozenVersionField(
        label="Judged on",
        help_text="the examples version whose test examples will judge the models trained on these pairs; "
        "no pair may have the input of one of them",
    )
    note = forms.CharField(required=False, max_length=200, help_text="What changed, for whoever picks this version.")

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["dataset_version"]
        field.for_project(project)
        field.label_from_instance = lambda v: f"v{v.number} ({v.split_counts.get('test', 0)} test examples)"
        field.initial = field.queryset.values_list("pk", flat=True).first()
