from django.contrib import admin

from .models import Candidate, Criterion, Evaluation, Judgment, Rubric


class CriterionInline(admin.TabularInline):
    model = Criterion
    extra = 0
    raw_id_fields = ("good_example", "bad_example")


@admin.register(Rubric)
class RubricAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "project", "created_at")
    list_filter = ("project",)
    inlines = [CriterionInline]


class CandidateInline(admin.TabularInline):
    model = Candidate
    extra = 0
    raw_id_fields = ("run",)


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "status", "done", "total", "created_at")
    list_filter = ("status", "project")
    raw_id_fields = ("dataset_version", "rubric", "base_model")
    inlines = [CandidateInline]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ("id", "evaluation", "reviewer", "winner", "created_at")
    list_select_related = ("evaluation", "reviewer", "winner")
    raw_id_fields = ("assignment", "comparison", "evaluation", "reviewer", "winner")
