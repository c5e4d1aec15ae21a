from django.urls import path

from . import views

urlpatterns = [
    path("", views.traffic, name="traffic"),
    path("storage/", views.storage, name="traffic_storage"),
]
