from django.urls import path, re_path

from . import ft_views, stored_views, views

urlpatterns = [
    path("models", views.models_list, name="api_models"),
    path("models/<path:model_id>", views.model_detail, name="api_model_detail"),
    path("chat/completions", stored_views.chat_completions_root, name="api_chat_completions"),
    path("chat/completions/<str:completion_id>", stored_views.completion_detail, name="api_stored_completion"),
    path(
        "chat/completions/<str:completion_id>/messages",
        stored_views.completion_messages,
        name="api_stored_completion_messages",
    ),
    path("files", ft_views.files, name="api_files"),
    path("files/<str:file_id>", ft_views.file_detail, name="api_file_detail"),
    path("files/<str:file_id>/content", ft_views.file_content, name="api_file_content"),
    path("fine_tuning/jobs", ft_views.jobs, name="api_jobs"),
    path("fine_tuning/jobs/<str:job_id>", ft_views.job_detail, name="api_job_detail"),
    path("fine_tuning/jobs/<str:job_id>/cancel", ft_views.cancel, name="api_job_cancel"),
    path("fine_tuning/jobs/<str:job_id>/pause", ft_views.pause, name="api_job_pause"),
    path("fine_tuning/jobs/<str:job_id>/resume", ft_views.resume, name="api_job_resume"),
    path("fine_tuning/jobs/<str:job_id>/events", ft_views.job_events, name="api_job_events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", ft_views.job_checkpoints, name="api_job_checkpoints"),
    path("fine_tuning/alpha/graders/validate", ft_views.grader_validate, name="api_grader_validate"),
    path("fine_tuning/alpha/graders/run", ft_views.grader_run, name="api_grader_run"),
    re_path(r"^.*$", views.unknown_path, name="api_unknown_path"),  # last: OpenAI's 404 shape, not an HTML page
]
