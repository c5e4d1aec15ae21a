from django.urls import path

from . import views

urlpatterns = [
    path("", views.prompt_workspace, name="prompt_workspace"),
    path("v<int:number>/", views.prompt_version_detail, name="prompt_version_detail"),
]
