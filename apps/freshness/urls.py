from django.urls import path

from . import views

urlpatterns = [
    path("", views.freshness, name="freshness"),
    path("compare/", views.compare, name="evaluation_diff"),
]
