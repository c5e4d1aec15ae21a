"""Settings for Fine-Tuning Studio, read from the environment.

Embedded default (``make run`` / ``make test``): SQLite and Celery's filesystem broker under ``var/``.
Production (docker-compose): ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis).
Every variable is documented in README.md. A wrong value stops the process with a message that
names the variable, rather than failing later in a request.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from worker.artifacts import cache_location, var_dir
from worker.artifacts import timeouts as artifact_timeouts
from worker.inference_auth import shared_secret

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = var_dir(os.environ)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off.")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off: refusing to start. "
            "Set DJANGO_SECRET_KEY to a long random string (or DJANGO_DEBUG=1 for local development)."
        )
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "axes",
    "apps.accounts",
    "apps.datasets",
    "apps.runs",
    "apps.evaluations",
    "apps.prompts",
    "apps.freshness",
    "apps.demo",
    "apps.api",
    "apps.traffic",
    "apps.webhooks",
    "apps.experiments",
    "apps.fleet",
    "apps.overview",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "ftstudio.uploads.UploadLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "ftstudio.storage.StorageErrorMiddleware",
    # last, as django-axes asks: it turns a locked-out log-in into the lockout page
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "ftstudio.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.project_nav",
                "apps.runs.context_processors.reaper_alarm",
            ],
            "libraries": {"studio": "ftstudio.templatetags.studio"},
        },
    },
]

WSGI_APPLICATION = "ftstudio.wsgi.application"
ASGI_APPLICATION = "ftstudio.asgi.application"

# --- Database -------------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")))
except Exception as exc:  # dj_database_url raises several types for bad URLs
    raise ImproperlyConfigured(
        f"DATABASE_URL is not a valid database URL ({exc}). "
        "Expected e.g. postgres://user:password@host:5432/name or sqlite:////absolute/path.sqlite3."
    ) from exc
if _db.get("ENGINE") not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
    raise ImproperlyConfigured(
        f"DATABASE_URL uses an unsupported engine ({_db.get('ENGINE')}): use postgres:// or sqlite://."
    )
if _db["ENGINE"].endswith("sqlite3"):
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the web server read while the worker writes; a busy timeout waits instead of failing.
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _db["CONN_MAX_AGE"] = 0
    # A file, not memory, so a real worker subprocess started by a test sees the test database;
    # one per test process, so two test runs on one machine never share it.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Login throttling (django-axes): after FTSTUDIO_LOGIN_FAILURE_LIMIT wrong passwords for one username from one
# address, that pair is locked out for FTSTUDIO_LOGIN_COOLOFF_MINUTES (log-in page and admin alike). Only the
# axes backend sees passwords; `Client.force_login` in tests does not authenticate and is never throttled.
AUTHENTICATION_BACKENDS = [
    "apps.accounts.backends.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("FTSTUDIO_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = int(os.environ.get("FTSTUDIO_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("FTSTUDIO_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "apps.accounts.views.locked_out"
# The address is REMOTE_ADDR (gunicorn serves clients directly in docker-compose; a reverse proxy in front would
# make every client one address, then set AXES_CLIENT_IP_CALLABLE to read the header that proxy overwrites).
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "project_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_ROOT = Path(os.environ.get("FTSTUDIO_MEDIA_ROOT", VAR_DIR / "media")).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Uploads: size-limited, validated by the importers.
FTSTUDIO_MAX_UPLOAD_BYTES = int(os.environ.get("FTSTUDIO_MAX_UPLOAD_BYTES", str(200 * 1024 * 1024)))
# Imports read the file as a stream, one line at a time: a line over this many bytes, or a message over this
# many characters, is a line-numbered error (the long line is skipped, never held in memory).
FTSTUDIO_IMPORT_MAX_LINE_BYTES = int(os.environ.get("FTSTUDIO_IMPORT_MAX_LINE_BYTES", str(4 * 1024 * 1024)))
FTSTUDIO_IMPORT_MAX_MESSAGE_CHARS = int(os.environ.get("FTSTUDIO_IMPORT_MAX_MESSAGE_CHARS", "500000"))
# Uploads up to this size import inside the request; larger ones run as a background task with a progress bar.
FTSTUDIO_IMPORT_INLINE_BYTES = int(os.environ.get("FTSTUDIO_IMPORT_INLINE_BYTES", str(2 * 1024 * 1024)))
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Over FTSTUDIO_MAX_UPLOAD_BYTES: refused by Content-Length, and reading stops at the limit (ftstudio/uploads.py).
FILE_UPLOAD_HANDLERS = [
    "ftstudio.uploads.UploadLimitHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# --- Models ---------------------------------------------------------------------------------------
# Weights are only loaded from directories under these roots (comma-separated absolute paths).
FTSTUDIO_MODEL_CACHE = Path(os.environ.get("FTSTUDIO_MODEL_CACHE", VAR_DIR / "models")).resolve()
FTSTUDIO_MODEL_ROOTS = [Path(p).resolve() for p in env_list("FTSTUDIO_MODEL_ROOTS", str(FTSTUDIO_MODEL_CACHE))] + [
    FTSTUDIO_MODEL_CACHE
]
# The tokenizer that counts tokens in imports and the quality report (a folder with tokenizer.json);
# empty: the shipped SmolLM2's.
FTSTUDIO_TOKENIZER_DIR = os.environ.get("FTSTUDIO_TOKENIZER_DIR", "")
if FTSTUDIO_TOKENIZER_DIR and not (Path(FTSTUDIO_TOKENIZER_DIR) / "tokenizer.json").is_file():
    raise ImproperlyConfigured(
        f"FTSTUDIO_TOKENIZER_DIR={FTSTUDIO_TOKENIZER_DIR!r} holds no tokenizer.json: "
        "name a model folder in Hugging Face format, or leave it unset for the shipped model's tokenizer."
    )
# Hub ids are only resolved when the server is allowed online (never in tests or the demo).
FTSTUDIO_ALLOW_HUB = env_bool("FTSTUDIO_ALLOW_HUB", False)

# --- Artifacts (worker/artifacts.py, apps/runs/artifacts.py) ----------------------------------------------
# Where checkpoints and adapters are kept beyond the worker that wrote them: "" keeps them under MEDIA_ROOT on this
# node (one machine, `make run`); s3://bucket/prefix stores them in an S3-compatible store (credentials and endpoint
# from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION), so workers on several nodes
# share no disk. Checked (bucket, credentials) when a worker or the web process starts.
FTSTUDIO_ARTIFACTS_URL = os.environ.get("FTSTUDIO_ARTIFACTS_URL", "").strip()
if FTSTUDIO_ARTIFACTS_URL and urlparse(FTSTUDIO_ARTIFACTS_URL).scheme not in {"s3", "file"}:
    raise ImproperlyConfigured(
        f"FTSTUDIO_ARTIFACTS_URL={FTSTUDIO_ARTIFACTS_URL!r}: use s3://bucket/prefix or file:///path."
    )
if urlparse(FTSTUDIO_ARTIFACTS_URL).scheme == "s3":
    # Uploads waiting for a background import (and anything else saved through default_storage) go to the same
    # bucket, under <prefix>/media/, so the worker that imports them needs no disk shared with the web process.
    from botocore.config import Config as _botocore_config

    _artifacts = urlparse(FTSTUDIO_ARTIFACTS_URL)
    _store_timeouts = artifact_timeouts(os.environ)
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": _artifacts.netloc,
            "location": "/".join(p for p in (_artifacts.path.strip("/"), "media") if p),
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL") or None,
            "addressing_style": "path",
            "access_key": os.environ.get("AWS_ACCESS_KEY_ID") or None,
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            "region_name": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            "file_overwrite": False,
            # A file read back (a /v1/files download) spills to a temporary file past this size, not to memory.
            "max_memory_size": 5 * 1024 * 1024,
            "client_config": _botocore_config(  # a store that never answers fails uploads in bounded time
                retries={"max_attempts": _store_timeouts["tries"], "mode": "standard"},
                connect_timeout=_store_timeouts["connect_timeout"],
                read_timeout=_store_timeouts["read_timeout"],
                s3={"addressing_style": "path"},
            ),
        },
    }
# A worker's bounded cache of artifacts fetched from the store (adapters of other nodes' runs).
FTSTUDIO_ARTIFACT_CACHE, FTSTUDIO_ARTIFACT_CACHE_BYTES = cache_location(os.environ)

# --- Workers and queues by hardware (apps/fleet) ---------------------------------------------------------
# GPU memory tiers, GB: a base model needing N GB trains on queue gpu-<smallest tier >= N>g.
FTSTUDIO_GPU_TIERS = [int(t) for t in env_list("FTSTUDIO_GPU_TIERS", "24,48,80")]
# Every worker writes a WorkerBeat row this often; one silent for 3 beats is not counted as serving its queues.
FTSTUDIO_WORKER_BEAT_SECONDS = float(os.environ.get("FTSTUDIO_WORKER_BEAT_SECONDS", "30"))
# Training kernels (worker/train.py choose_kernels; each run's log names what it used): attention "auto" is
# FlashAttention-2 where the flash-attn package is installed on a GPU, else PyTorch's sdpa ("sdpa", "eager" and
# "flash_attention_2" force one); Liger's fused kernels where the liger-kernel package is installed on a GPU.
FTSTUDIO_ATTENTION = os.environ.get("FTSTUDIO_ATTENTION", "auto")
FTSTUDIO_LIGER_KERNELS = env_bool("FTSTUDIO_LIGER_KERNELS", False)

# --- Inference (the /v1/ API and the playground) --------------------------------------------------------
# The inference process (python -m worker.serve) the web process forwards chat requests to.
FTSTUDIO_INFERENCE_URL = os.environ.get("FTSTUDIO_INFERENCE_URL", "http://127.0.0.1:8001").rstrip("/")
if urlparse(FTSTUDIO_INFERENCE_URL).scheme not in {"http", "https"}:
    raise ImproperlyConfigured(f"FTSTUDIO_INFERENCE_URL={FTSTUDIO_INFERENCE_URL!r} is not an http(s) URL.")
FTSTUDIO_INFERENCE_TIMEOUT = float(os.environ.get("FTSTUDIO_INFERENCE_TIMEOUT", "300"))
# Sent with every forwarded request; the inference process refuses requests without it (worker/inference_auth.py).
# Generated once under FTSTUDIO_VAR_DIR in the local setup; required when DJANGO_DEBUG is off.
FTSTUDIO_INFERENCE_SECRET = shared_secret(os.environ, generate=DEBUG)
if not FTSTUDIO_INFERENCE_SECRET:
    raise ImproperlyConfigured(
        "FTSTUDIO_INFERENCE_SECRET is not set and DJANGO_DEBUG is off: refusing to start. Set it to a long random "
        "string, the same for the web process and the inference process."
    )
# A chat request body above this many bytes is refused before it is read (413).
FTSTUDIO_API_MAX_BODY_BYTES = int(os.environ.get("FTSTUDIO_API_MAX_BODY_BYTES", str(2 * 1024 * 1024)))
# Largest max_tokens a request may ask for, and how many requests one key may have running at once.
FTSTUDIO_API_MAX_TOKENS = int(os.environ.get("FTSTUDIO_API_MAX_TOKENS", "1024"))
FTSTUDIO_API_MAX_CONCURRENT_PER_KEY = int(os.environ.get("FTSTUDIO_API_MAX_CONCURRENT_PER_KEY", "8"))
# Stored chat completions waiting for the web process's writer thread; beyond this they are dropped and counted.
FTSTUDIO_STORE_QUEUE_SIZE = int(os.environ.get("FTSTUDIO_STORE_QUEUE_SIZE", "10000"))

# --- Webhooks (apps/webhooks/services.py) ----------------------------------------------------------
# Private, loopback and reserved addresses are refused as webhook URLs (no SSRF into the Studio's network) unless 1.
FTSTUDIO_WEBHOOK_ALLOW_PRIVATE = os.environ.get("FTSTUDIO_WEBHOOK_ALLOW_PRIVATE", "0") == "1"
FTSTUDIO_WEBHOOK_TIMEOUT = float(os.environ.get("FTSTUDIO_WEBHOOK_TIMEOUT", "10"))
# Retries: the pause doubles from BASE seconds up to CAP seconds; a delivery is given up after RETRY_HOURS.
FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS = float(os.environ.get("FTSTUDIO_WEBHOOK_RETRY_BASE_SECONDS", "30"))
FTSTUDIO_WEBHOOK_RETRY_CAP_SECONDS = float(os.environ.get("FTSTUDIO_WEBHOOK_RETRY_CAP_SECONDS", str(4 * 3600)))
FTSTUDIO_WEBHOOK_RETRY_HOURS = float(os.environ.get("FTSTUDIO_WEBHOOK_RETRY_HOURS", "25"))

# --- Celery ---------------------------------------------------------------------------------------
BROKER_DIR = Path(os.environ.get("FTSTUDIO_BROKER_DIR", VAR_DIR / "broker")).resolve()
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "") or "filesystem://"
_broker_scheme = urlparse(CELERY_BROKER_URL).scheme
if _broker_scheme not in {"filesystem", "redis", "rediss", "amqp", "memory"}:
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL={CELERY_BROKER_URL!r} is not a broker URL this app supports: "
        "use redis://host:6379/0 (production) or filesystem:// (embedded default)."
    )
if _broker_scheme in {"redis", "rediss"} and not urlparse(CELERY_BROKER_URL).hostname:
    raise ImproperlyConfigured(f"CELERY_BROKER_URL={CELERY_BROKER_URL!r} names no Redis host.")
if _broker_scheme == "filesystem":
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
    # kombu's own filesystem transport can hand a worker a half-written message and stop it: ftstudio/broker.py.
    CELERY_BROKER_TRANSPORT = "ftstudio.broker:Transport"
else:
    # Above the longest run: an unacknowledged long training task must not be redelivered mid-run.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "43200"))}

CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "")
if not CELERY_RESULT_BACKEND:
    if _broker_scheme in {"redis", "rediss"}:
        CELERY_RESULT_BACKEND = CELERY_BROKER_URL
    else:
        (VAR_DIR / "celery-results").mkdir(parents=True, exist_ok=True)
        CELERY_RESULT_BACKEND = f"file://{VAR_DIR / 'celery-results'}"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
# Long tasks (runs, evaluations) beat from a background thread every FTSTUDIO_HEARTBEAT_SECONDS for their whole
# life; one with no beat for FTSTUDIO_HEARTBEAT_STALE_SECONDS (and no live process on this host) has lost its
# worker and may be taken over. Each app's recovery pass (ftstudio/queueing.py; scheduled only by the worker
# started with `-B`: the embedded worker, `worker-cpu` in compose) runs every FTSTUDIO_REAPER_INTERVAL seconds; it
# re-sends queued work whose message is older than FTSTUDIO_REQUEUE_AFTER_SECONDS (a lost message) and no worker holds.
FTSTUDIO_REAPER_INTERVAL = int(os.environ.get("FTSTUDIO_REAPER_INTERVAL", "60"))
# A data-scaling experiment refuses a subset with fewer training examples than this (a run on 3 examples
# says nothing about the task); the same reaper interval drives `experiments.advance_open`.
FTSTUDIO_EXPERIMENT_MIN_TRAIN = int(os.environ.get("FTSTUDIO_EXPERIMENT_MIN_TRAIN", "8"))
FTSTUDIO_HEARTBEAT_STALE_SECONDS = int(os.environ.get("FTSTUDIO_HEARTBEAT_STALE_SECONDS", "300"))
FTSTUDIO_HEARTBEAT_SECONDS = float(os.environ.get("FTSTUDIO_HEARTBEAT_SECONDS", "30"))
# A long task's progress, checkpoint and final writes are tried once more this many seconds after a database error
# (a restart, a dropped connection) before the task gives up (apps/runs/leases.py retry_once).
FTSTUDIO_DB_RETRY_SECONDS = float(os.environ.get("FTSTUDIO_DB_RETRY_SECONDS", "2"))
FTSTUDIO_REQUEUE_AFTER_SECONDS = int(os.environ.get("FTSTUDIO_REQUEUE_AFTER_SECONDS", "900"))
# Staff see an alarm when a recovery pass has not run for this long (default: three missed intervals, at least
# 5 minutes).
FTSTUDIO_REAPER_ALARM_SECONDS = int(
    os.environ.get("FTSTUDIO_REAPER_ALARM_SECONDS", str(max(300, 3 * FTSTUDIO_REAPER_INTERVAL)))
)
if FTSTUDIO_HEARTBEAT_STALE_SECONDS < 2 * FTSTUDIO_HEARTBEAT_SECONDS and "FTSTUDIO_HEARTBEAT_SECONDS" in os.environ:
    raise ImproperlyConfigured(
        f"FTSTUDIO_HEARTBEAT_STALE_SECONDS={FTSTUDIO_HEARTBEAT_STALE_SECONDS} must be at least twice "
        f"FTSTUDIO_HEARTBEAT_SECONDS={FTSTUDIO_HEARTBEAT_SECONDS:g}, or live workers look dead."
    )

# --- Security (production) ------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("FTSTUDIO_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
