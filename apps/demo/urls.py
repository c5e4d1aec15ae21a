from django.urls import path

from . import views

urlpatterns = [
    path("", views.experiment_demo, name="experiment_demo"),
]
