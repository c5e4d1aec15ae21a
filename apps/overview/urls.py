from django.urls import path

from . import settings_page, views

urlpatterns = [
    path("", views.project_detail, name="project_detail"),
    path("settings/", settings_page.project_settings, name="project_settings"),
    path("settings/webhooks/", settings_page.webhook_endpoints, name="webhook_endpoints"),
]
