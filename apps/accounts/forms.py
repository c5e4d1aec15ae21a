from django import forms

from .models import Role


class ProjectForm(forms.Form):
    name = forms.CharField(
        max_length=120, help_text="What the tuned model should do, e.g. “Support replies in house style”."
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="A member of this project.")
    role = forms.ChoiceField(choices=Role.choices)


class InviteForm(forms.Form):
    email = forms.EmailField(
        required=False, help_text="Only the person with this address can accept. Leave it empty for a join link."
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.REVIEWER)
