from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from ftstudio.models import TimeStamped


class Role(models.TextChoices):
    DESIGNER = "designer", "Designer"
    PM = "pm", "PM"
    REVIEWER = "reviewer", "Reviewer"


class Project(TimeStamped):
    """A workspace: one fine-tuning task, its examples, runs and evaluations."""

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="projects")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("project_detail", kwargs={"slug": self.slug})


class Membership(TimeStamped):
    """One user's one role in one project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)

    class Meta:
        ordering = ["project", "user__username"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user_and_project")]
        indexes = [models.Index(fields=["user", "project"])]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} in {self.project}"


class Invitation(TimeStamped):
    """A PM's invitation to join a project with a role: for one email address, or (no address) a join link that the
    first signed-in user who opens it may accept. Used once; only a hash of its token is stored."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=16, choices=Role.choices)
    email = models.EmailField(blank=True, help_text="empty: a join link for whoever has it")
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation to {self.project} as {self.role}"

    def get_absolute_url(self) -> str:
        return reverse("project_settings", kwargs={"slug": self.project.slug})
