from django.urls import path

from . import views

urlpatterns = [
    path("", views.traffic, name="traffic"),
    path("storage/", views.storage, name="traffic_storage"),
    path("drift/", views.measure_drift, name="traffic_drift"),
    path("review/", views.review_sample, name="traffic_review"),
]
