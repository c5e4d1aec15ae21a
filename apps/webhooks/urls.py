from django.urls import path

from . import views

urlpatterns = [
    path("", views.endpoints, name="webhook_endpoints"),
    path("deliveries/<int:pk>/resend/", views.resend, name="webhook_resend"),
]
