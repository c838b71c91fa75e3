"""Flask configuration objects. Environment variables override any key (prefix LEGMOVE_).

`Config` holds production-safe defaults; `DevelopmentConfig` is what `make run` uses on a
laptop; `TestConfig` pins the evaluation date so fixtures do not age.
"""
from __future__ import annotations

import json
import os


class Config:
    SERVICE_NAME = "legmove-cds"
    MAX_CONTENT_LENGTH = 5 * 1024 * 1024  # bytes; a hook call with a large prefetch stays far below
    # FHIR server access (checklist section 7)
    FHIR_CONNECT_TIMEOUT = 1.0  # seconds per connection attempt
    FHIR_READ_TIMEOUT = 2.0  # seconds per read
    FHIR_DEADLINE = 3.0  # seconds for all FHIR queries of one hook call
    FHIR_MAX_PAGES = 5  # pages followed per prefetch key before the key counts as incomplete
    FHIR_ALLOW_HTTP = False  # plain-http fhirServer (loopback test servers only)
    # fhirServer bases this deployment may query (the EHRs it serves); None = any. Set it in
    # production: otherwise a caller chooses where the service sends requests.
    FHIR_SERVER_ALLOWLIST: list[str] | None = None
    FHIR_UNAUTHENTICATED_READS = False  # query a fhirServer that came without fhirAuthorization
    FHIR_UNAUTHENTICATED_ALLOWLIST: list[str] = []  # base URLs for which that is allowed
    # Clinical knowledge
    KNOWLEDGE_OVERRIDES: dict = {}  # keys of knowledge/settings.json to override
    ENABLED_RULES: list[str] | None = None  # None: every rule that is on by default
    EXTRA_RULE_MODULES: list[str] = []  # import paths of site rule modules, loaded after rules/
    EVALUATION_DATE: str | None = None  # ISO date; None means today (UTC)
    BENCH_FLOOR = False  # POST /bench/floor: parse the body, answer no cards (benchmark baseline only)
    CORS_ORIGINS = "*"
    # Trusting CDS clients (checklist 11.1). Off means open mode, announced loudly at start-up.
    CLIENT_AUTH = False
    PUBLIC_BASE_URL: str | None = None  # e.g. "https://cds.example.org": each endpoint's JWT `aud` is this + path
    TRUSTED_ISSUERS: dict = {}  # iss -> {"jwks": {...}} | {"jwks_file": path} | {"jwks_url": url}, optional "jku": [urls]
    JWT_LEEWAY = 60  # seconds, for exp/iat/nbf (Epic sets nbf minutes before iat)
    DISCOVERY_REQUIRES_AUTH = False
    REPLAY_STORE = "sqlite:///var/legmove-replay.sqlite3"  # or redis://127.0.0.1:6379/0; shared by all workers
    JWKS_URL_TTL = 300  # seconds a fetched JWKS is reused
    JWKS_ALLOW_HTTP = False  # plain-http JWKS URLs (loopback test servers only)
    # Card feedback (checklist 10): issued cards and clinicians' responses, via SQLAlchemy.
    # None turns the feedback endpoint off (404). PostgreSQL: postgresql+psycopg://host/db
    FEEDBACK_STORE: str | None = "sqlite:///var/legmove-feedback.sqlite3"
    FEEDBACK_STORE_COMMENTS = False  # keep free-text userComment only after a privacy review


class DevelopmentConfig(Config):
    FHIR_ALLOW_HTTP = True
    FHIR_UNAUTHENTICATED_READS = True
    FHIR_UNAUTHENTICATED_ALLOWLIST = ["http://127.0.0.1", "http://localhost"]


class TestConfig(DevelopmentConfig):
    TESTING = True
    EVALUATION_DATE = "2026-11-22"


CONFIGS = {"production": Config, "development": DevelopmentConfig, "test": TestConfig}


def from_environment(app) -> None:
    """Apply LEGMOVE_* variables: JSON values where they parse, plain strings otherwise."""
    for key, raw in os.environ.items():
        if not key.startswith("LEGMOVE_") or key == "LEGMOVE_CONFIG":
            continue
        name = key[len("LEGMOVE_"):]
        try:
            app.config[name] = json.loads(raw)
        except json.JSONDecodeError:
            app.config[name] = raw
