from django import forms

from .models import Role


class ProjectForm(forms.Form):
    name = forms.CharField(
        max_length=120, help_text="What the tuned model should do, e.g. “Support replies in house style”."
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)
