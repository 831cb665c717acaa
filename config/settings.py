"""Settings for every deployment, read from the environment.

Embedded default (no ``DATABASE_URL`` / ``CELERY_BROKER_URL``): SQLite in ``var/`` and Celery tasks
executed in-process, so ``make demo`` runs the same services and task code as a PostgreSQL + Redis
deployment with nothing but Python installed.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from config.env import envbool, envint, envlist, envnetworks, envopt, envpairs, envstr
from people.mapping import role_map_from_pairs

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("FWUPD_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DJANGO_DEBUG", False)
_INSECURE_DEV_KEY = "insecure-development-key-do-not-use-in-production-0123456789abcdef"
SECRET_KEY = envstr("DJANGO_SECRET_KEY", _INSECURE_DEV_KEY)
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "manifests",
    "campaigns",
    "workers",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (console CSS/JS, Swagger UI) served by the web process itself, also with
    # DEBUG off, where django.contrib.staticfiles serves nothing (STATIC section below).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
            ],
        },
    },
]

_database_url = envopt("DATABASE_URL")
if _database_url:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
else:
    # The embedded default keeps its database in var/, created on first use.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": envstr("FWUPD_SQLITE_PATH", str(VAR_DIR / "fwupd.sqlite3")),
            # Several threads write at once in the embedded default (the gateway's event thread,
            # the reconcile loop): WAL lets readers run beside the writer, and IMMEDIATE
            # transactions take the write lock up front instead of upgrading a read lock,
            # which is what deadlocks two writers until the busy timeout.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

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
# `manage.py collectstatic --noinput` gathers the files here before the web tier starts
# (README, "Running for real"); WhiteNoise serves them, compressed, with long cache lifetimes.
STATIC_ROOT = Path(envstr("DJANGO_STATIC_ROOT", str(VAR_DIR / "static")))
# Production serves content-hashed names (safe to cache for ever) from collectstatic's
# manifest; without a real deployment (tests, make demo) names stay plain and WhiteNoise finds
# the files in the apps directly, so nothing needs collecting first.
_STATIC_MANIFEST = envbool(
    "DJANGO_STATIC_MANIFEST",
    not DEBUG and SECRET_KEY != _INSECURE_DEV_KEY,
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if _STATIC_MANIFEST
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not _STATIC_MANIFEST
WHITENOISE_AUTOREFRESH = not _STATIC_MANIFEST  # and no STATIC_ROOT needed to exist

# Firmware images are stored content-addressed by SHA-256 (manifests.images.storage).
FIRMWARE_STORAGE_ROOT = Path(envstr("FIRMWARE_STORAGE_ROOT", str(VAR_DIR / "images")))
# Largest SUIT envelope the decoder accepts; bounds memory use on hostile input.
SUIT_MAX_ENVELOPE_SIZE = envint("SUIT_MAX_ENVELOPE_SIZE", 256 * 1024, minimum=1024)
# Largest firmware image accepted for upload.
FIRMWARE_MAX_IMAGE_SIZE = envint("FIRMWARE_MAX_IMAGE_SIZE", 64 * 1024 * 1024, minimum=1024)

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = envopt("CELERY_BROKER_URL")
# No broker configured: run tasks in-process through the same task code (embedded default).
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", CELERY_BROKER_URL is None)
if CELERY_TASK_ALWAYS_EAGER and CELERY_BROKER_URL is None:
    # Celery's eager apply_async still takes a producer from the broker pool to round-trip the
    # arguments through the serializer. Left unset, the broker is AMQP on a default host and
    # kombu warns "No hostname was supplied" on every task; kombu's in-process memory transport
    # (named host: its default would warn too) means no broker is ever dialled.
    CELERY_BROKER_URL = "memory://localhost/"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = envopt("CELERY_RESULT_BACKEND")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Registration liveness (docs/lwm2m.md, "Registration liveness"): a device whose registration
# expired (registration or last Update + lifetime) more than REGISTRATION_GRACE_SECONDS ago is
# taken offline by the workers' sweep, every REGISTRY_SWEEP_SECONDS. The grace is what a live
# gateway needs to report the expiry itself and for an Update it saw in time to be applied:
# its own expiry sweep (LWM2M_EXPIRY_SWEEP_SECONDS, 1 s), the event batch flush and Celery queue
# (seconds under load), and clock differences between hosts (NTP: milliseconds). 30 s is an
# order of magnitude above that, and small next to any lifetime a device uses (minutes to days):
# a larger grace only keeps a dead gateway's devices "online" longer.
REGISTRATION_GRACE_SECONDS = envint("REGISTRATION_GRACE_SECONDS", 30, minimum=0)
REGISTRY_SWEEP_SECONDS = envint("REGISTRY_SWEEP_SECONDS", 30, minimum=1)
# How often running campaigns are moved forward (seconds).
CAMPAIGN_RECONCILE_SECONDS = envint("CAMPAIGN_RECONCILE_SECONDS", 5, minimum=1)
# A device's rollout ending (an event applied by a worker) asks for a pass of its campaign at
# once, so the next device goes out without waiting for the beat
# (campaigns.rollouts.campaign_nudge).
CAMPAIGN_NUDGE = envbool("CAMPAIGN_NUDGE", True)
CELERY_BEAT_SCHEDULE = {
    "reconcile-campaigns": {
        "task": "workers.tasks.campaigns_reconcile_all_task",
        "schedule": float(CAMPAIGN_RECONCILE_SECONDS),
    },
    # Key expiry has no event: re-evaluate live releases every minute.
    "reevaluate-releases": {
        "task": "workers.tasks.releases_reevaluate_task",
        "schedule": 60.0,
    },
    # Devices held back for a clock that was off are asked to read their information again.
    "reread-off-clocks": {
        "task": "workers.tasks.devices_clock_reread_task",
        "schedule": 60.0,
    },
    # Registrations whose lifetime ran out are taken offline by the workers, not only by the
    # gateway that held them (which may have died): docs/lwm2m.md, "Registration liveness".
    "sweep-registrations": {
        "task": "workers.tasks.registry_sweep_task",
        "schedule": float(REGISTRY_SWEEP_SECONDS),
    },
}
# A device held back because its clock was off (rollout pending with clock_skew) has /3/0 read
# again (`read_info`) once its last reading is this old, at most once per such period (minutes).
DEVICE_CLOCK_REREAD_MINUTES = envint("DEVICE_CLOCK_REREAD_MINUTES", 15, minimum=1)

if not DEBUG and SECRET_KEY != _INSECURE_DEV_KEY:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "WARNING")},
}

# --- LwM2M gateway ------------------------------------------------------------------------
# Where `manage.py lwm2m_gateway` listens by default (overridden by --bind).
LWM2M_BIND = envstr("LWM2M_BIND", "0.0.0.0:5683")
# Stable id of this gateway process; devices record which gateway holds them (command routing).
LWM2M_GATEWAY_ID = envopt("LWM2M_GATEWAY_ID")
# Base URI devices use to download firmware from this gateway (coap://host:port); derived from the
# bind address when unset (not usable behind NAT or with a 0.0.0.0 bind: set it in production).
LWM2M_PUBLIC_URI = envopt("LWM2M_PUBLIC_URI")
# Command bus between Celery tasks and gateways: redis://... (per-gateway Redis stream) or
# memory:// (in-process, embedded default). Unset: the Celery broker when it is Redis, else memory.
LWM2M_COMMAND_BUS_URL = envopt("LWM2M_COMMAND_BUS_URL")
# Registration lifetime bounds (seconds) and how often expiries are swept.
LWM2M_MIN_LIFETIME = envint("LWM2M_MIN_LIFETIME", 1, minimum=1)
LWM2M_MAX_LIFETIME = envint("LWM2M_MAX_LIFETIME", 7 * 86400, minimum=1)
LWM2M_EXPIRY_SWEEP_SECONDS = envint("LWM2M_EXPIRY_SWEEP_SECONDS", 1, minimum=1)
# Receive buffer asked for the gateway's CoAP socket, bytes (capped by net.core.rmem_max).
LWM2M_RECV_BUFFER_BYTES = envint("LWM2M_RECV_BUFFER_BYTES", 4 * 1024 * 1024, minimum=65536)
# Largest registration payload accepted (bytes); larger gets 4.13.
LWM2M_MAX_PAYLOAD = envint("LWM2M_MAX_PAYLOAD", 16 * 1024, minimum=256)
# How long the gateway waits for a device to answer one request (seconds) and how often it polls
# /5/0/3 and /5/0/5 during an update (notifications are best-effort).
LWM2M_REQUEST_TIMEOUT = envint("LWM2M_REQUEST_TIMEOUT", 30, minimum=1)
LWM2M_FW_POLL_SECONDS = envint("LWM2M_FW_POLL_SECONDS", 10, minimum=1)
# Give up on an update that has not reached a final state after this long (seconds).
LWM2M_FW_UPDATE_TIMEOUT = envint("LWM2M_FW_UPDATE_TIMEOUT", 3600, minimum=1)
# Secret the DTLS PSKs are encrypted under at rest (HKDF input); defaults to SECRET_KEY.
LWM2M_PSK_ENCRYPTION_KEY = envopt("LWM2M_PSK_ENCRYPTION_KEY")
# Secret the payload key-encryption keys are encrypted under at rest (HKDF input, its own label);
# defaults to SECRET_KEY (docs/suit.md, "Encrypted payloads").
PAYLOAD_KEY_ENCRYPTION_KEY = envopt("PAYLOAD_KEY_ENCRYPTION_KEY")
# DTLS (PSK) listener HOST:PORT next to LWM2M_BIND; unset = no DTLS. Needs a specific address (the
# DTLS transport answers from the address it is bound to, so not 0.0.0.0 or ::). docs/lwm2m.md.
LWM2M_DTLS_BIND = envopt("LWM2M_DTLS_BIND")
# coaps://host:port devices use for DTLS downloads; derived from LWM2M_DTLS_BIND when unset.
LWM2M_DTLS_PUBLIC_URI = envopt("LWM2M_DTLS_PUBLIC_URI")
# Whether plain-CoAP (NoSec) registrations are accepted; 0 = DTLS devices only. An endpoint that
# has a PSK is refused over NoSec either way (when the DTLS listener is on). Default: on only with
# DEBUG (`make demo`, labs); a production gateway needs a DTLS listener or this set explicitly.
LWM2M_ACCEPT_NOSEC = envbool("LWM2M_ACCEPT_NOSEC", DEBUG)
# Who may register: "provisioned" (endpoints with a Device or DevicePSK row; others get 4.03 and
# no row) or "open" (any well-formed name: labs, simulated fleets). Default: open only with DEBUG.
LWM2M_ADMISSION = envstr("LWM2M_ADMISSION", "open" if DEBUG else "provisioned")
if LWM2M_ADMISSION not in ("provisioned", "open"):
    raise ValueError(f"LWM2M_ADMISSION={LWM2M_ADMISSION!r}: expected provisioned or open")
# Most registrations one gateway holds; past it a new endpoint gets 5.03 (bounds memory).
LWM2M_MAX_REGISTRATIONS = envint("LWM2M_MAX_REGISTRATIONS", 100_000, minimum=1)
# How often the gateway reloads DevicePSK rows into its in-memory key cache (seconds); a handshake
# with an unknown identity or a failed key also brings the next reload forward.
LWM2M_PSK_REFRESH_SECONDS = envint("LWM2M_PSK_REFRESH_SECONDS", 60, minimum=1)
# A DTLS handshake whose peer has been silent this long (or that has run four times this long)
# is dropped and logged (seconds). At least the longest wait of a client's retransmission timer
# (RFC 6347 4.2.4: doubled from 1 s; mbed TLS gives up after waiting 32 s), or a client still
# retransmitting loses its handshake; sessions open only for cookie-verified addresses, so a
# long timeout costs no slot per spoofed ClientHello.
LWM2M_DTLS_HANDSHAKE_TIMEOUT = envint("LWM2M_DTLS_HANDSHAKE_TIMEOUT", 60, minimum=1)
# Most DTLS sessions one gateway keeps; past it the least recently active one is closed. A
# registered DTLS device keeps its session, so this matches LWM2M_MAX_REGISTRATIONS.
LWM2M_DTLS_MAX_SESSIONS = envint("LWM2M_DTLS_MAX_SESSIONS", 100_000, minimum=1)
# --- end LwM2M gateway --------------------------------------------------------------------

# --- REST API -------------------------------------------------------------------------------
# Owned by the api app: DRF, OpenAPI schema (drf-spectacular, Swagger UI from local static
# files), django-filter, token + session auth, the role matrix and outbound webhooks.
INSTALLED_APPS += [
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "api",
]
REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes anonymous requests 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Every endpoint is checked against the one table in api/permissions.py.
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.RoleMatrixPermission"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "api.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.LimitOffsetPagination",
    "PAGE_SIZE": envint("API_PAGE_SIZE", 50, minimum=1),
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "fwupd campaign manager API",
    "DESCRIPTION": "Releases, approvals, devices, staged campaigns and the audit trail.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and the docs page are endpoints like any other: in the role matrix.
    "SERVE_PERMISSIONS": ["api.permissions.RoleMatrixPermission"],
    # Swagger UI from drf-spectacular-sidecar's bundled files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "manifests.models.Role",
        "ApprovingRoleEnum": "api.serializers.APPROVING_ROLES",
        "ReleaseKindEnum": "manifests.models.ReleaseKind",
        "PolicyKindEnum": "manifests.models.PolicyKind",
        "PayloadFormatEnum": "manifests.models.PayloadFormat",
        "ReleaseStatusEnum": "manifests.models.ReleaseStatus",
        "CampaignStatusEnum": "campaigns.models.CampaignStatus",
        "WebhookDeliveryStatusEnum": "api.models.DeliveryStatus",
        "TrustPolicyStatusEnum": "manifests.models.TrustPolicyStatus",
        "PayloadKeyStatusEnum": "manifests.models.PayloadKeyStatus",
    },
}
# Outbound webhooks: HTTP timeout per attempt (seconds), attempts before a delivery is marked
# failed, and the backoff between attempts (base * 2**n seconds, capped).
WEBHOOK_TIMEOUT_SECONDS = envint("WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1)
WEBHOOK_MAX_ATTEMPTS = envint("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_BACKOFF_BASE_SECONDS = envint("WEBHOOK_BACKOFF_BASE_SECONDS", 10, minimum=0)
WEBHOOK_BACKOFF_MAX_SECONDS = envint("WEBHOOK_BACKOFF_MAX_SECONDS", 3600, minimum=1)
# Networks webhooks may reach although they are not public (loopback, private, link-local...:
# refused by default, so a webhook cannot aim the server at itself or its neighbours), e.g.
# "10.20.0.0/16,fd00:1::/64" for receivers on an internal network. Empty: public addresses only.
WEBHOOK_ALLOWED_NETWORKS = envnetworks("WEBHOOK_ALLOWED_NETWORKS", [])
# --- end REST API -------------------------------------------------------------------------

# --- Console ----------------------------------------------------------------------------------
# Owned by the console app (docs/console.md): server-rendered operator pages with Django's
# login, and the cookie and transport settings a browser-facing site needs in production.
INSTALLED_APPS += ["console"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "login"
# Production = DEBUG off and a real secret key (the test the cookie lines above use). Each
# setting below can still be set on its own through the environment, e.g. to run behind a proxy.
_PRODUCTION = not DEBUG and SECRET_KEY != _INSECURE_DEV_KEY
SESSION_COOKIE_SECURE = envbool("DJANGO_SESSION_COOKIE_SECURE", _PRODUCTION)
CSRF_COOKIE_SECURE = envbool("DJANGO_CSRF_COOKIE_SECURE", _PRODUCTION)
SESSION_COOKIE_HTTPONLY = True
# Forms carry the CSRF token in a hidden field and htmx only GETs: no script reads the cookie.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# A console session lasts a working day (seconds).
SESSION_COOKIE_AGE = envint("DJANGO_SESSION_COOKIE_AGE", 8 * 3600, minimum=60)
SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", _PRODUCTION)
# HSTS: one year with subdomains and preload in production; DJANGO_SECURE_HSTS_SECONDS=0 while
# trying TLS out (browsers remember HSTS, so start small on a new host name).
SECURE_HSTS_SECONDS = envint(
    "DJANGO_SECURE_HSTS_SECONDS", 365 * 86400 if _PRODUCTION else 0, minimum=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", _PRODUCTION)
SECURE_HSTS_PRELOAD = envbool("DJANGO_SECURE_HSTS_PRELOAD", _PRODUCTION)
# Behind a TLS-terminating proxy that sets it: DJANGO_SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO
_proxy_ssl_header = envopt("DJANGO_SECURE_PROXY_SSL_HEADER")
if _proxy_ssl_header:
    SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header, "https")
# Origins (scheme://host[:port]) a form may be posted from when they differ from the Host.
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# --- end Console ------------------------------------------------------------------------------

# --- People: accounts and sign-in ---------------------------------------------------------
# Owned by the people app (docs/console.md "Signing in", docs/architecture.md): password
# sign-in and OpenID Connect single sign-on (mozilla-django-oidc), accounts managed with
# `manage.py user`. Every OIDC_* setting is read when used, so `manage.py check` validates them
# (people/checks.py) and the provider is only contacted at a sign-in.
INSTALLED_APPS += ["people"]
AUTHENTICATION_BACKENDS = [
    "people.backends.LocalPasswordBackend",
    "people.oidc.ConsoleOIDCBackend",
]
# Password sign-in (console, admin site); 0 leaves single sign-on as the only way in.
CONSOLE_LOCAL_LOGIN = envbool("CONSOLE_LOCAL_LOGIN", True)
# Single sign-on is on when a client id is set.
OIDC_RP_CLIENT_ID = envopt("OIDC_RP_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = envopt("OIDC_RP_CLIENT_SECRET")
# The provider's issuer URL (or its /.well-known/openid-configuration); each endpoint below may
# also be given on its own and then wins over the discovered one.
OIDC_OP_DISCOVERY = envopt("OIDC_OP_DISCOVERY")
OIDC_OP_ISSUER = envopt("OIDC_OP_ISSUER")
OIDC_OP_AUTHORIZATION_ENDPOINT = envopt("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = envopt("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = envopt("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = envopt("OIDC_OP_JWKS_ENDPOINT")
# ID tokens are verified with the provider's published keys (JWKS), never a shared secret.
OIDC_RP_SIGN_ALGO = envstr("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = envstr("OIDC_RP_SCOPES", "openid email profile")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = envint("OIDC_TIMEOUT_SECONDS", 10, minimum=1)
# The login page's "Sign in with <name>".
OIDC_PROVIDER_NAME = envstr("OIDC_PROVIDER_NAME", "single sign-on")
# Accounts are matched by (issuer, this claim's value); `email` or the username claim also
# join an existing account at the first sign-in (docs/console.md).
OIDC_MATCH_CLAIM = envstr("OIDC_MATCH_CLAIM", "sub")
OIDC_USERNAME_CLAIM = envstr("OIDC_USERNAME_CLAIM", "preferred_username")
# Roles from the provider's groups at each sign-in, e.g. OIDC_ROLE_CLAIM=groups
# OIDC_ROLE_MAP="fw-qa=qa,fw-sec=security"; OIDC_REQUIRE_ROLE=1 refuses users no group maps.
OIDC_ROLE_CLAIM = envopt("OIDC_ROLE_CLAIM")
OIDC_ROLE_MAP = role_map_from_pairs(envpairs("OIDC_ROLE_MAP"))
OIDC_REQUIRE_ROLE = envbool("OIDC_REQUIRE_ROLE", False)
# --- end People -----------------------------------------------------------------------------

# --- Ops: probes, metrics, logs -------------------------------------------------------------
# Owned by the ops app (docs/operations.md): /healthz, /readyz and /metrics (answered first, by
# OpsEndpointsMiddleware, before host checks and HTTPS redirects), request ids, JSON logs.
INSTALLED_APPS += ["ops"]
MIDDLEWARE = ["ops.middleware.RequestIdMiddleware", "ops.middleware.OpsEndpointsMiddleware"] + [
    m for m in MIDDLEWARE if not m.startswith("ops.")
]
# Each readiness check (database, broker, firmware store) must answer within this (seconds).
READINESS_TIMEOUT_SECONDS = envint("READINESS_TIMEOUT_SECONDS", 2, minimum=1)
# Who may read /metrics: a bearer token (METRICS_TOKEN, or METRICS_TOKEN_FILE naming a file that
# holds it) and/or client networks (CIDR list). Both set: both required. Neither: /metrics is off.
METRICS_TOKEN = envopt("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = envnetworks("METRICS_ALLOWED_NETWORKS", [])
# Prefix of the Redis keys holding the workers' counts for /metrics (dispatches, device events).
METRICS_TALLY_PREFIX = envstr("METRICS_TALLY_PREFIX", "fwupd:metrics:")
# Celery queues whose length /metrics reports (Redis broker only).
METRICS_CELERY_QUEUES = envlist("METRICS_CELERY_QUEUES", ["celery"])
# Log lines as text (default) or one JSON object per line with request_id, campaign and device.
LOG_FORMAT = envstr("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ValueError(f"LOG_FORMAT={LOG_FORMAT!r}: expected text or json")
# Fields: time, level, logger, message, request_id, campaign, device (ops.logs.JsonFormatter).
LOGGING["formatters"]["json"] = {"()": "ops.logs.JsonFormatter"}
if LOG_FORMAT == "json":
    LOGGING["handlers"]["console"]["formatter"] = "json"
    # The worker keeps Django's handler (and so the JSON format) instead of installing its own.
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# --- end Ops --------------------------------------------------------------------------------
