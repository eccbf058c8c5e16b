"""Settings for the chat backend, read from the environment (twelve-factor).

Every variable is listed in README.md with its default.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from corsheaders.defaults import default_headers as default_cors_headers
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (DEBUG=1 for development)"
        )
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # django.contrib.admin, its site throttling failed sign-ins.
    "accounts.admin_site.StaffAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks",
    "huey.contrib.djhuey",
    "accounts",
    "conversations",
    "chatkit",
    "web",
]

MIDDLEWARE = [
    # Outermost: it times and counts every request, however it is answered.
    "chatkit.metrics.HTTPMetricsMiddleware",
    "chatkit.middleware.RequestIDMiddleware",
    # Outside the others, so that it sees the response as they left it.
    "chatkit.middleware.HeadWithoutBodyMiddleware",
    # Before anything that answers by itself (the 413 below, CommonMiddleware),
    # so that a browser may read those answers too; it answers preflights.
    "corsheaders.middleware.CorsMiddleware",
    # /metrics to METRICS_TOKEN's holder, by any Host and over plain HTTP
    # (Prometheus scrapes each instance by its address, behind the TLS
    # proxy). Without the token the request goes on like any other, to the
    # redirect, 400 or 404 of a path that does not exist.
    "chatkit.metrics.MetricsEndpointMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Above the probes, so that their answers carry it too.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # /healthz and /readyz by any Host (probes come by address), before
    # CommonMiddleware checks it against ALLOWED_HOSTS for everything else.
    "chatkit.middleware.HealthProbeMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Last, so its 413 still gets every header the middleware above adds; it
    # still runs before any view reads the body.
    "chatkit.middleware.BodySizeLimitMiddleware",
]

# Browsers on these origins may call the API (ChatKit JS, a front end served
# elsewhere): comma-separated, scheme and host (https://app.example.com).
# Credentials are bearer tokens, not cookies, so none are allowed.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = (
    *default_cors_headers,
    "idempotency-key",
    "last-event-id",
    "x-request-id",
)
CORS_EXPOSE_HEADERS = ["X-Request-ID", "Retry-After", "Idempotent-Replayed"]

ROOT_URLCONF = "chatbot_project.urls"
WSGI_APPLICATION = "chatbot_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: a SQLite file by default so `make run` works on a bare machine;
# PostgreSQL through DATABASE_URL in CI and production.
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DB_CONN_MAX_AGE = env_int("DB_CONN_MAX_AGE", 60)
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 15000)
DB_LOCK_TIMEOUT_MS = env_int("DB_LOCK_TIMEOUT_MS", 5000)
DB_CONNECT_TIMEOUT_SECONDS = env_int("DB_CONNECT_TIMEOUT_SECONDS", 5)

_default_db = dj_database_url.parse(
    DATABASE_URL, conn_max_age=DB_CONN_MAX_AGE, conn_health_checks=True
)
DB_POOL = env_bool("DB_POOL", True)
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 2)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 20)
if _default_db["ENGINE"] == "django.db.backends.postgresql":
    _options = _default_db.setdefault("OPTIONS", {})
    if DB_POOL:
        # psycopg's pool: handing a connection back (connection.close(), as
        # runs do while they wait on a provider) costs nothing, and each
        # process opens at most DB_POOL_MAX_SIZE connections however many
        # threads it runs. Off (DB_POOL=0) behind PgBouncer.
        _default_db["CONN_MAX_AGE"] = 0
        # With a pool, Django turns health checks into the pool's own check;
        # this backend makes that check recover from a failover at once.
        _default_db["CONN_HEALTH_CHECKS"] = True
        _default_db["ENGINE"] = "chatbot_project.postgresql"
        _options["pool"] = {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_CONNECT_TIMEOUT_SECONDS * 2,
        }
    _options.setdefault("connect_timeout", DB_CONNECT_TIMEOUT_SECONDS)
    # Nothing may hang: a stuck statement or lock wait becomes an error that
    # the API turns into 503 SERVICE_UNAVAILABLE.
    _options.setdefault(
        "options",
        f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS} -c lock_timeout={DB_LOCK_TIMEOUT_MS}",
    )
elif _default_db["ENGINE"] == "django.db.backends.sqlite3":
    _options = _default_db.setdefault("OPTIONS", {})
    # IMMEDIATE takes the write lock at BEGIN, so read-then-write transactions
    # (the session quota) serialize instead of failing with "database is locked".
    _options.setdefault("transaction_mode", "IMMEDIATE")
    _options.setdefault("timeout", 20)
    _options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
    # Tests use a file, so that a second, independent connection can read it.
    _db_file = Path(_default_db["NAME"])
    _default_db.setdefault("TEST", {"NAME": str(_db_file.with_name(f"test_{_db_file.name}"))})
DATABASES = {"default": _default_db}
# A read replica for list endpoints (off by default); see conversations/db_router.py.
DATABASE_REPLICA_URL = os.environ.get("DATABASE_REPLICA_URL", "")
if DATABASE_REPLICA_URL:
    _replica = dj_database_url.parse(
        DATABASE_REPLICA_URL, conn_max_age=DB_CONN_MAX_AGE, conn_health_checks=True
    )
    _replica.setdefault("TEST", {"MIRROR": "default"})
    DATABASES["replica"] = _replica
DATABASE_ROUTERS = ["conversations.db_router.ReplicaRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where collectstatic writes and whitenoise serves from (tests use their own).
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", "") or BASE_DIR / "staticfiles")
# Pages still render (with unhashed URLs) when collectstatic has not run.
WHITENOISE_MANIFEST_STRICT = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Cache (throttle counters): per-process memory unless CACHE_URL names Redis.
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
    }
elif CACHE_URL in ("", "locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ImproperlyConfigured("CACHE_URL must be empty, locmem:// or a redis:// URL")

# Limits.
MAX_SESSIONS_PER_USER = env_int("MAX_SESSIONS_PER_USER", 100)
# Fair shares (README, "Fair shares"): per user, whatever the thread counts.
# Open event streams hold request threads (2 processes x 128 by default);
# counted in the cache, so across processes only with a shared CACHE_URL.
MAX_STREAMS_PER_USER = env_int("MAX_STREAMS_PER_USER", 8)
# A stream's slot is renewed while the stream lives; a crashed process's
# slots expire after this.
STREAM_SLOT_TTL_SECONDS = env_int("STREAM_SLOT_TTL_SECONDS", 60)
# Queued + in progress, across all the user's threads (worker threads: 128).
MAX_ACTIVE_RUNS_PER_USER = env_int("MAX_ACTIVE_RUNS_PER_USER", 4)
# Every body the contract allows must fit. The largest is a run's: input and
# instructions of 32,000 characters each and metadata of 16 keys of 64 and
# values of 512 characters. In JSON's default ASCII-only escaping an astral
# character (an emoji) is a surrogate pair, 12 bytes, so that text is
# 12 * (32000 + 32000 + 16 * (64 + 512)) = 878,592 bytes, plus under 1 KB of
# names and punctuation. 1 MiB leaves some 165 KB for whitespace.
MAX_BODY_BYTES = env_int("MAX_BODY_BYTES", 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES
REGISTRATION_OPEN = env_bool("REGISTRATION_OPEN", True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["chatkit.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["chatkit.renderers.EnvelopeJSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "chatkit.schema.ChatkitAutoSchema",
    "EXCEPTION_HANDLER": "chatkit.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_THROTTLE_CLASSES": ["api_common.UserThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "auth": os.environ.get("THROTTLE_AUTH", "20/min") or None,
        "runs": os.environ.get("THROTTLE_RUNS", "30/min") or None,
        "user": os.environ.get("THROTTLE_USER", "600/min") or None,
    },
    # Client address for anonymous throttling: the last NUM_PROXIES entries of
    # X-Forwarded-For are your proxies; 0 trusts REMOTE_ADDR only.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "chatkit.negotiation.JSONContentNegotiation",
}

JWT_ACCESS_TOKEN_MINUTES = env_int("JWT_ACCESS_TOKEN_MINUTES", 15)
JWT_REFRESH_TOKEN_DAYS = env_int("JWT_REFRESH_TOKEN_DAYS", 7)
# How long each process may reuse a verified token and a token's user row
# (accounts/authentication.py); 0 turns that off.
AUTH_CACHE_SECONDS = env_int("AUTH_CACHE_SECONDS", 5)

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=JWT_ACCESS_TOKEN_MINUTES),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=JWT_REFRESH_TOKEN_DAYS),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": os.environ.get("JWT_SIGNING_KEY", SECRET_KEY),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "sub",
    "TOKEN_OBTAIN_SERIALIZER": "accounts.serializers.TokenObtainSerializer",
    "TOKEN_REFRESH_SERIALIZER": "accounts.serializers.TokenRefreshSerializer",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Chat backend API",
    "DESCRIPTION": (
        "Chat sessions, threads, messages and runs. Every response is an envelope: "
        '`{"success": true, "data": ...}` or `{"success": false, "error": {...}}`.'
    ),
    "VERSION": "1.0.0",
    # 3.1: full JSON Schema, so the document can describe metadata keys and each
    # server-sent event's JSON data.
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chatkit.schema.envelope_postprocessing_hook",
    ],
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

if not DEBUG:
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
    # Load balancers probe over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
    # Both only take effect once SECURE_HSTS_SECONDS is above 0.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be text or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "chatkit.logging.RequestIDFilter"}},
    "formatters": {
        "text": {
            "format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s",
        },
        "json": {"()": "chatkit.logging.JSONFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# Metrics (README, Metrics): GET /metrics answers only to
# "Authorization: Bearer <METRICS_TOKEN>"; unset, there is no such endpoint.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters")
# host:port on which `manage.py worker` serves its own /metrics (the runs it
# carries out); empty: none.
WORKER_METRICS_BIND = os.environ.get("WORKER_METRICS_BIND", "")
if WORKER_METRICS_BIND and not WORKER_METRICS_BIND.rpartition(":")[2].isdigit():
    raise ImproperlyConfigured("WORKER_METRICS_BIND must be host:port, e.g. 0.0.0.0:9101")

# Runs and providers.
# A queued run waits for a worker at most this long; an in-progress run that
# made no progress (no piece from its provider) for this long is given up by
# its carrier, which stops renewing its heartbeat.
RUN_TIMEOUT_SECONDS = env_int("RUN_TIMEOUT_SECONDS", 300)
# Each process renews the heartbeat of the runs it carries this often, whatever
# the provider is doing; an in-progress run whose heartbeat is older than the
# window lost its carrier (a killed worker, a crashed web process) and is expired.
RUN_HEARTBEAT_SECONDS = env_float("RUN_HEARTBEAT_SECONDS", 5.0)
RUN_HEARTBEAT_WINDOW_SECONDS = env_float("RUN_HEARTBEAT_WINDOW_SECONDS", 3 * RUN_HEARTBEAT_SECONDS)
if not 0 < RUN_HEARTBEAT_SECONDS < RUN_HEARTBEAT_WINDOW_SECONDS:
    raise ImproperlyConfigured(
        "RUN_HEARTBEAT_WINDOW_SECONDS must be longer than RUN_HEARTBEAT_SECONDS (> 0): "
        "a live carrier must beat within the window"
    )
LLM_PROVIDER = os.environ.get("LLM_PROVIDER", "echo")
LLM_MODEL = os.environ.get("LLM_MODEL", "")
LLM_TIMEOUT_SECONDS = float(os.environ.get("LLM_TIMEOUT_SECONDS", "60"))
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 2)
LLM_CONTEXT_MAX_MESSAGES = env_int("LLM_CONTEXT_MAX_MESSAGES", 50)
LLM_CONTEXT_MAX_CHARS = env_int("LLM_CONTEXT_MAX_CHARS", 48000)
OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "") or None
ECHO_DELAY_MS = env_int("ECHO_DELAY_MS", 0)
STREAM_FLUSH_MS = env_int("STREAM_FLUSH_MS", 200)
SSE_PING_SECONDS = env_int("SSE_PING_SECONDS", 15)
SSE_POLL_MS = env_int("SSE_POLL_MS", 250)
# On PostgreSQL, followers of a run wake on a notification (LISTEN/NOTIFY)
# sent with its stored events instead of polling every SSE_POLL_MS; off
# (SSE_NOTIFY=0), or on SQLite, they poll.
SSE_NOTIFY = env_bool("SSE_NOTIFY", True)
# With notifications, one query per process this often looks at every run its
# streams follow: a lost notification costs at most this much latency.
SSE_SAFETY_POLL_SECONDS = env_float("SSE_SAFETY_POLL_SECONDS", 5.0)

# Background runs: Django's Tasks API (the django-tasks backport), so the
# engine is a setting. The default engine is huey with thread workers and its
# queue in the database the app already has (a SQLite file next to a SQLite
# database; tables in PostgreSQL), or Redis with TASKS_QUEUE=redis.
TASKS = {
    "default": {
        "BACKEND": os.environ.get("TASKS_BACKEND", "huey.contrib.djhuey.tasks_backend.HueyBackend"),
    }
}
WORKER_THREADS = env_int("WORKER_THREADS", 128)
TASKS_QUEUE = os.environ.get("TASKS_QUEUE", "database")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TASKS_DATABASE_URL = os.environ.get("TASKS_DATABASE_URL", DATABASE_URL)
_tasks_db = dj_database_url.parse(TASKS_DATABASE_URL)
HUEY: dict = {
    "name": "runs",
    "immediate": False,
    "consumer": {
        "workers": WORKER_THREADS,
        "worker_type": "thread",
        # Idle workers poll every 50 ms, backing off to 500 ms at most.
        "initial_delay": 0.05,
        "backoff": 1.15,
        "max_delay": 0.5,
        "periodic": False,
        "check_worker_health": True,
    },
}
if TASKS_QUEUE == "redis":
    HUEY.update(huey_class="huey.RedisHuey", url=REDIS_URL, blocking=True)
elif _tasks_db["ENGINE"] == "django.db.backends.postgresql":
    HUEY.update(
        huey_class="huey.PostgresHuey",
        # Tables are made by `migrate` and the worker, not at import time.
        create_tables=False,
        # One shared connection for all worker threads; blocking (LISTEN per
        # thread) would cost a connection for each of them.
        blocking=False,
        **{
            param: str(_tasks_db[key])
            for param, key in (
                ("host", "HOST"),
                ("port", "PORT"),
                ("dbname", "NAME"),
                ("user", "USER"),
                ("password", "PASSWORD"),
            )
            if _tasks_db.get(key)
        },
    )
elif _tasks_db["ENGINE"] == "django.db.backends.sqlite3":
    _queue_file = Path(_tasks_db["NAME"])
    HUEY.update(
        huey_class="huey.SqliteHuey",
        create_tables=False,
        filename=os.environ.get(
            "TASKS_SQLITE_PATH", str(_queue_file.with_name(f"{_queue_file.stem}-tasks.sqlite3"))
        ),
    )
else:
    raise ImproperlyConfigured("TASKS_DATABASE_URL must be SQLite or PostgreSQL")
