from django.urls import path

from . import views

urlpatterns = [
    path("rubrics/", views.rubric_list, name="rubric_list"),
    path("rubrics/new/", views.rubric_create, name="rubric_create"),
    path("rubrics/<int:pk>/", views.rubric_detail, name="rubric_detail"),
    path("rubrics/<int:pk>/edit/", views.rubric_edit, name="rubric_edit"),
    path("", views.evaluation_list, name="evaluation_list"),
    path("new/", views.evaluation_create, name="evaluation_create"),
    path("<int:pk>/", views.evaluation_detail, name="evaluation_detail"),
    path("<int:pk>/resume/", views.evaluation_resume, name="evaluation_resume"),
    path("<int:pk>/reveal/", views.evaluation_reveal, name="evaluation_reveal"),
    path("<int:pk>/checks/", views.evaluation_run_checks, name="evaluation_run_checks"),
    path("<int:pk>/judge/", views.evaluation_run_judge, name="evaluation_run_judge"),
    path("<int:pk>/harvest/", views.evaluation_harvest, name="evaluation_harvest"),
    path("<int:pk>/outputs/<int:generation>/improve/", views.evaluation_improve, name="evaluation_improve"),
    path("judge/", views.judge_settings, name="judge_settings"),
    path("<int:pk>/results/", views.evaluation_results, name="evaluation_results"),
    path("<int:pk>/judgments.csv", views.evaluation_export, name="evaluation_export"),
    path("review/", views.review_queue, name="review_queue"),
    path("review/<int:pk>/next/", views.review_next, name="review_next"),
    path("review/item/<uuid:token>/", views.review_item, name="review_item"),
]
