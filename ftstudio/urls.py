from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", include("apps.api.urls")),
    path("", include("apps.accounts.urls")),
    path("p/<slug:slug>/", include("apps.overview.urls")),
    path("p/<slug:slug>/data/", include("apps.datasets.urls")),
    path("p/<slug:slug>/runs/", include("apps.runs.urls")),
    path("p/<slug:slug>/evals/", include("apps.evaluations.urls")),
    path("p/<slug:slug>/experiments/demo/", include("apps.demo.urls")),
    path("p/<slug:slug>/experiments/", include("apps.experiments.urls")),
    path("p/<slug:slug>/prompts/", include("apps.prompts.urls")),
    path("p/<slug:slug>/freshness/", include("apps.freshness.urls")),
    path("p/<slug:slug>/playground/", include("apps.api.playground_urls")),
    path("p/<slug:slug>/traffic/", include("apps.traffic.urls")),
    path("p/<slug:slug>/settings/webhooks/", include("apps.webhooks.urls")),
]
