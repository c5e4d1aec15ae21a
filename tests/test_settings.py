"""Bad configuration stops the process with a message naming the variable."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # each test starts a Python process with other settings


def _check(env: dict, *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_debug_off_without_secret_key_refuses_to_start():
    result = _check({"DJANGO_DEBUG": "0"})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_debug_off_without_the_inference_secret_refuses_to_start():
    env = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 50, "DJANGO_ALLOWED_HOSTS": "studio.example.com"}
    result = _check({**env, "FTSTUDIO_INFERENCE_SECRET": ""})
    assert result.returncode != 0 and "FTSTUDIO_INFERENCE_SECRET is not set" in result.stderr


def test_bad_database_url_names_the_variable():
    result = _check({"DJANGO_DEBUG": "1", "DATABASE_URL": "mysqlish://nope"})
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_bad_broker_url_names_the_variable():
    result = _check({"DJANGO_DEBUG": "1", "CELERY_BROKER_URL": "carrier-pigeon://loft"})
    assert result.returncode != 0
    assert "CELERY_BROKER_URL" in result.stderr


def test_bad_boolean_names_the_variable():
    result = _check({"DJANGO_DEBUG": "maybe"})
    assert result.returncode != 0 and "DJANGO_DEBUG" in result.stderr


def test_deploy_check_is_clean_with_production_settings():
    env = {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "x" * 30 + "-a-long-random-production-secret-Q9z!",
        "DJANGO_ALLOWED_HOSTS": "studio.example.com",
        "FTSTUDIO_INFERENCE_SECRET": "another-long-random-string-for-the-inference-process",
    }
    result = _check(env, "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr
