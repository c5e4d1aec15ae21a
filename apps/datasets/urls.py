from django.urls import path

from . import views

urlpatterns = [
    path("", views.example_list, name="example_list"),
    path("import/", views.example_import, name="example_import"),
    path("export/", views.example_export, name="example_export"),
    path("splits/", views.assign_splits, name="assign_splits"),
    path("examples/<int:pk>/", views.example_label, name="example_label"),
    path("examples/<int:pk>/save/", views.example_save, name="example_save"),
    path("quality/", views.quality_report, name="quality_report"),
    path("quality/findings/<int:pk>/dismiss/", views.finding_dismiss, name="finding_dismiss"),
    path("versions/", views.version_list, name="version_list"),
    path("versions/<int:number>/", views.version_detail, name="version_detail"),
    path("preferences/", views.preference_list, name="preference_list"),
    path("preferences/import/", views.preference_import, name="preference_import"),
    path("preferences/freeze/", views.preference_freeze, name="preference_freeze"),
    path("preferences/export/", views.preference_export, name="preference_export"),
    path("preferences/pairs/<int:pk>/exclude/", views.preference_exclude, name="preference_exclude"),
]
