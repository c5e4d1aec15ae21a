from django.urls import path

from . import playground

urlpatterns = [
    path("", playground.playground, name="playground"),
    path("stream/", playground.playground_stream, name="playground_stream"),
]
