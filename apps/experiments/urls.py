from django.urls import path

from . import views

urlpatterns = [
    path("", views.experiment_list, name="experiment_list"),
    path("new/", views.experiment_create, name="experiment_create"),
    path("<int:pk>/", views.experiment_detail, name="experiment_detail"),
    path("<int:pk>/cancel/", views.experiment_cancel, name="experiment_cancel"),
]
