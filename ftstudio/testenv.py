"""Loaded by pytest before Django (``-p ftstudio.testenv`` in pyproject): the embedded test environment.

Only defaults: CI's second pass sets DATABASE_URL and CELERY_BROKER_URL, which are kept.
"""

import os

os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
