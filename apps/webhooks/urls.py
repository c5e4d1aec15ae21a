from django.urls import path

from . import views

urlpatterns = [
    path("deliveries/<int:pk>/resend/", views.resend, name="webhook_resend"),
]
