from django.urls import path

from . import views

urlpatterns = [
    path("models", views.models_list, name="api_models"),
    path("models/<path:model_id>", views.model_detail, name="api_model_detail"),
    path("chat/completions", views.chat_completions, name="api_chat_completions"),
]
