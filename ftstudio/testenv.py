"""Loaded by pytest before Django (``-p ftstudio.testenv`` in pyproject): the embedded test environment.

Only defaults: CI's second pass sets DATABASE_URL and CELERY_BROKER_URL, which are kept.
"""

import os
from pathlib import Path

os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests publish to, and their worker subprocesses consume from, a broker folder of their own, so a
# `make run` worker on the same machine never steals a test's messages.
os.environ.setdefault(
    "FTSTUDIO_BROKER_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test-broker" / str(os.getpid()))
)
