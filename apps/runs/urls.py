from django.urls import path

from . import views

urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("new/", views.run_create, name="run_create"),
    path("estimate/", views.run_estimate, name="run_estimate"),
    path("compare/", views.run_compare, name="run_compare"),
    path("<int:pk>/", views.run_detail, name="run_detail"),
    path("<int:pk>/cancel/", views.run_cancel, name="run_cancel"),
    path("<int:pk>/resume/", views.run_resume, name="run_resume"),
    path("<int:pk>/adapter.zip", views.run_adapter, name="run_adapter"),
    path("<int:pk>/exports/", views.run_exports, name="run_exports"),
    path("<int:pk>/exports/<int:export_pk>/download", views.run_export_download, name="run_export_download"),
]
