"""Flask configuration objects. Environment variables override any key (prefix LEGMOVE_).

`Config` holds production-safe defaults; `DevelopmentConfig` is what `make run` uses on a
laptop; `TestConfig` pins the evaluation date so fixtures do not age.
"""

from __future__ import annotations

import json
import os

from cds_service.fhir import url_policy


class Config:
    SERVICE_NAME = "legmove-cds"
    MAX_CONTENT_LENGTH = 5 * 1024 * 1024  # bytes; a hook call with a large prefetch stays far below
    # FHIR server access (CDS Hooks 2.0, section "FHIR Resource Access")
    FHIR_CONNECT_TIMEOUT = 1.0  # seconds per connection attempt
    FHIR_READ_TIMEOUT = 2.0  # seconds per read
    FHIR_DEADLINE = 3.0  # seconds for all FHIR queries of one hook call
    FHIR_MAX_PAGES = 5  # pages followed per prefetch key before the key counts as incomplete
    FHIR_ALLOW_HTTP = False  # plain-http fhirServer (loopback test servers only)
    # fhirServer bases this deployment may query (the EHRs it serves), compared by scheme, host,
    # port and path prefix (url_policy.py); ["*"] = any. Required: without it a caller chooses
    # where the service sends requests and tokens, so start-up refuses when it is unset.
    FHIR_SERVER_ALLOWLIST: list[str] | None = None
    FHIR_UNAUTHENTICATED_READS = False  # query a fhirServer that came without fhirAuthorization
    FHIR_UNAUTHENTICATED_ALLOWLIST: list[str] = []  # base URLs for which that is allowed
    # One FHIR response, decoded. A search page of _count=100 resources is well under 1 MB; parsed
    # JSON takes about six times its size in memory (a 20 MB bundle: 124 MB and a second of CPU).
    FHIR_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
    # FHIR response bytes one process holds at once, over all its concurrent calls, until each call
    # ends: a reader that would exceed it waits (within its deadline) for the calls holding it.
    # 12 MiB of responses is about 75 MB parsed, so a worker (about 100 MB idle) stays under 250 MB.
    FHIR_BUFFER_BUDGET = 12 * 1024 * 1024
    # Clinical knowledge
    KNOWLEDGE_OVERRIDES: dict = {}  # keys of knowledge/settings.json to override
    ENABLED_RULES: list[str] | None = None  # None: every rule that is on by default
    EXTRA_RULE_MODULES: list[str] = []  # import paths of site rule modules, loaded after rules/
    EVALUATION_DATE: str | None = None  # ISO date; None means today (UTC)
    BENCH_FLOOR = False  # POST /bench/floor: parse the body, answer no cards (benchmark baseline only)
    CORS_ORIGINS = "*"
    # Trusting CDS clients. Off needs OPEN_MODE = true (LEGMOVE_OPEN_MODE=true), said explicitly:
    # start-up refuses a configuration that verifies no client and did not say it means to.
    CLIENT_AUTH = False
    OPEN_MODE = False
    PUBLIC_BASE_URL: str | None = None  # e.g. "https://cds.example.org": each endpoint's JWT `aud` is this + path
    # iss -> {"jwks": {...}} | {"jwks_file": path} | {"jwks_url": url}, optional "jku": [urls]
    TRUSTED_ISSUERS: dict = {}
    JWT_LEEWAY = 60  # seconds, for exp/iat/nbf (Epic sets nbf minutes before iat)
    JWT_MAX_LIFETIME = 300  # seconds allowed between iat and exp (CDS Hooks 2.0 advises 5 minutes)
    DISCOVERY_REQUIRES_AUTH = False
    REPLAY_STORE = "sqlite:///var/legmove-replay.sqlite3"  # or redis://127.0.0.1:6379/0; shared by all workers
    JWKS_URL_TTL = 300  # seconds a fetched JWKS is reused
    JWKS_ALLOW_HTTP = False  # plain-http JWKS URLs (loopback test servers only)
    # Card feedback (CDS Hooks 2.0, section "Feedback"): issued cards and clinicians' responses, via SQLAlchemy.
    # None turns the feedback endpoint off (404). PostgreSQL: postgresql+psycopg://host/db
    FEEDBACK_STORE: str | None = "sqlite:///var/legmove-feedback.sqlite3"
    FEEDBACK_STORE_COMMENTS = False  # keep free-text userComment only after a privacy review
    # Migrate the feedback store in create_app (one process: tests, a laptop). Off in production,
    # where `legmove-cds db upgrade` or gunicorn.conf.py's on_starting does it before workers start.
    FEEDBACK_STORE_AUTO_UPGRADE = False
    # The card preview page (/preview, cds_service/web/preview.py): a browser CDS client for trying the
    # service. Off in production unless set; never served while CLIENT_AUTH is on (see preview.py).
    PREVIEW_ENABLED = False
    HEALTH_CHECK_TIMEOUT = 2.0  # seconds for all readiness checks together (health.py)
    # Governance (cds_service/store/governance.py), in the same database as feedback.
    RULE_MODES: dict = {}  # rule id -> "active" | "silent" | "off"; unset rules follow ENABLED_RULES
    # HMAC key for the patient hash in the call and card log; the same on every instance, never
    # stored in the database. Required in production; rotating it starts suppressions over.
    PATIENT_HASH_KEY: str | None = None
    RETENTION_DAYS = 400  # `legmove-cds prune` deletes call and card rows older than this


LOOPBACK = [
    "http://127.0.0.1:*",
    "http://localhost:*",
    "http://[::1]:*",
    "https://127.0.0.1:*",
    "https://localhost:*",
    "https://[::1]:*",
]


class DevelopmentConfig(Config):
    OPEN_MODE = True
    PREVIEW_ENABLED = True
    FHIR_ALLOW_HTTP = True
    FHIR_SERVER_ALLOWLIST = LOOPBACK
    FHIR_UNAUTHENTICATED_READS = True
    FHIR_UNAUTHENTICATED_ALLOWLIST = LOOPBACK
    FEEDBACK_STORE_AUTO_UPGRADE = True
    PATIENT_HASH_KEY = "legmove-development-patient-hash-key"  # fixed, public: start-up warns


class TestConfig(DevelopmentConfig):
    TESTING = True
    EVALUATION_DATE = "2026-11-22"


CONFIGS = {"production": Config, "development": DevelopmentConfig, "test": TestConfig}


def from_environment(app) -> None:
    """Apply LEGMOVE_* variables: JSON values where they parse, plain strings otherwise."""
    app.config.update(environment_overrides())


def environment_overrides() -> dict:
    out = {}
    for key, raw in os.environ.items():
        if not key.startswith("LEGMOVE_") or key == "LEGMOVE_CONFIG":
            continue
        name = key[len("LEGMOVE_") :]
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def settings(name: str | None = None) -> dict:
    """The settings create_app would use, without building an app (migration command)."""
    source = CONFIGS[name or os.environ.get("LEGMOVE_CONFIG", "production")]
    values = {key: getattr(source, key) for key in dir(source) if key.isupper()}
    values.update(environment_overrides())
    return values


class UnsafeConfiguration(Exception):
    """A configuration that would serve without saying who may call or where tokens may go."""


def check_safe_to_start(config) -> None:
    """Refuse to start on defaults that are unsafe on a network. Verifying no client must be
    said explicitly (OPEN_MODE), and so must "any FHIR server" (FHIR_SERVER_ALLOWLIST ["*"]):
    otherwise any caller could make the service send the EHR's token to a server of its choice."""
    if not config["CLIENT_AUTH"] and not config["OPEN_MODE"]:
        raise UnsafeConfiguration(
            "client JWTs are not verified and OPEN_MODE is not set: set LEGMOVE_CLIENT_AUTH=true "
            "(with PUBLIC_BASE_URL and TRUSTED_ISSUERS), or LEGMOVE_OPEN_MODE=true on a "
            "trusted network"
        )
    allowlist = config["FHIR_SERVER_ALLOWLIST"]
    if not isinstance(allowlist, list) or not all(isinstance(base, str) for base in allowlist):
        raise UnsafeConfiguration(
            "FHIR_SERVER_ALLOWLIST is not set: list the EHR FHIR base URLs this deployment "
            "serves (LEGMOVE_FHIR_SERVER_ALLOWLIST='[\"https://ehr.example.org/fhir\"]'), "
            'or ["*"] for any'
        )
    for name in ("FHIR_SERVER_ALLOWLIST", "FHIR_UNAUTHENTICATED_ALLOWLIST"):
        bad = [base for base in config[name] if not url_policy.valid_base(base)]
        if bad:
            raise UnsafeConfiguration(f"{name} holds entries that are not http(s) base URLs: {bad}")
