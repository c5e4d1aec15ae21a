from django import forms
from django.conf import settings

FORMAT_CHOICES = [
    ("auto", "Detect from the file"),
    ("openai", "OpenAI chat JSONL"),
    ("alpaca", "Alpaca JSONL"),
    ("csv", "CSV (input, output, optional system)"),
]


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
