"""Application factory: configuration, knowledge, engine and routes, built once per process."""

from __future__ import annotations

import logging
import os
import traceback

from flask import Flask
from flask_cors import CORS
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from cds_service import metrics
from cds_service.advice import Knowledge
from cds_service.authoring.rulebook import REGISTRY
from cds_service.cards.render import warm_up as warm_up_cards
from cds_service.config import CONFIGS, UnsafeConfiguration, check_safe_to_start, from_environment  # noqa: F401
from cds_service.engine.lint import prune_unused_derivations
from cds_service.engine.wrapper import engine_for
from cds_service.facts.build import params_fact
from cds_service.knowledge.settings import SettingsError, resolve_overrides  # noqa: F401 (SettingsError: start-up)
from cds_service.knowledge.terminology import Terminology
from cds_service.services import build_services
from cds_service.store import migrations
from cds_service.store.feedback import CardLedger
from cds_service.store.governance import governance_from_config, knowledge_version, rule_modes
from cds_service.web import bench_floor, health
from cds_service.web.api import bp, outcome
from cds_service.web.client_auth import verifier_from_config
from cds_service.web.logs import configure as configure_logs
from cds_service.web.preview import register_preview
from cds_service.web.rule_pages import pages as rule_pages

log = logging.getLogger(__name__)


def create_app(config: str | type | None = None, **overrides) -> Flask:
    app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    name = config if isinstance(config, str) else os.environ.get("LEGMOVE_CONFIG", "production")
    app.config.from_object(config if isinstance(config, type) else CONFIGS[name])
    from_environment(app)
    app.config.update(overrides)
    configure_logs(app.config.get("LOG_LEVEL", "INFO"))
    check_safe_to_start(app.config)
    # an object, or the path of a JSON file holding one; from here on always the object (knowledge version)
    app.config["KNOWLEDGE_OVERRIDES"] = resolve_overrides(app.config.get("KNOWLEDGE_OVERRIDES"))
    app.extensions["legmove"] = build_knowledge(app.config)
    warm_up_cards()
    app.extensions["legmove_ledger"] = ledger_from_config(app.config)
    app.extensions["legmove_governance"] = governance_from_config(
        app.config, app.extensions["legmove_ledger"], app.extensions["legmove"].terminology.settings
    )
    # settings that do not fit the params fact (an override's typo) stop start-up, not the first hook
    # call; after governance, whose own checks of the suppression settings say more
    params_fact(app.extensions["legmove"].terminology)
    app.extensions["legmove_client_verifier"] = verifier_from_config(app.config)
    if app.extensions["legmove_client_verifier"] is None:
        log.warning(
            "OPEN MODE: CDS client JWTs are NOT verified (set LEGMOVE_CLIENT_AUTH=true with "
            "LEGMOVE_PUBLIC_BASE_URL and LEGMOVE_TRUSTED_ISSUERS); use only on a trusted network"
        )
    else:
        log.info("client JWTs required from issuers: %s", ", ".join(app.config["TRUSTED_ISSUERS"]))
    CORS(
        app,
        resources={r"/cds-services*": {"origins": app.config["CORS_ORIGINS"]}},
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
    app.register_blueprint(bp)
    register_preview(app)
    # operations endpoints: their own blueprints, so the client-JWT check of `bp` does not apply
    app.register_blueprint(health.bp)
    metrics.init_app(app)
    bench_floor.init_app(app)
    app.register_blueprint(rule_pages)  # public, outside the CDS blueprint's client-JWT check
    _register_error_handlers(app)
    app.after_request(_security_headers)
    return app


def _security_headers(response):
    """Cards carry patient data: no cache (browser, proxy) may keep them (`no-store`), and a
    browser must not sniff a JSON body into something it would render (`nosniff`). Every
    response gets both; none of ours is meant to be cached."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def ledger_from_config(config) -> CardLedger | None:
    """The feedback store, on a schema this build knows (migrated first where configured). An
    unknown or outdated schema stops start-up (SchemaMismatch). A store that cannot be reached
    does not: advice matters more than its bookkeeping, so hook calls are served and the ledger
    checks the schema (a read, never a change) once it can connect."""
    url = config["FEEDBACK_STORE"]
    if not url:
        return None
    try:
        if config["FEEDBACK_STORE_AUTO_UPGRADE"]:
            migrations.upgrade(url)
        migrations.require_current(url)
    except SQLAlchemyError as exc:
        log.error(
            "feedback store unreachable at start-up (%s); feedback answers 503 until it can be reached "
            "and its schema is current",
            type(exc).__name__,
        )
        return CardLedger(url, config["FEEDBACK_STORE_COMMENTS"], schema_check=lambda: migrations.require_current(url))
    return CardLedger(url, config["FEEDBACK_STORE_COMMENTS"])


def build_knowledge(config) -> Knowledge:
    """Load terminology and rules and compile the ruleset; any defect stops start-up."""
    import rules

    rules.load_all(config["EXTRA_RULE_MODULES"])
    terminology = Terminology(config["KNOWLEDGE_OVERRIDES"])
    modes = rule_modes(REGISTRY, config)  # active | silent | off per card rule (governance.py)
    specs = prune_unused_derivations([s for s in REGISTRY.values() if s.stratum != "card" or modes[s.id] != "off"])
    engine = engine_for(specs)
    return Knowledge(
        terminology,
        {s.id: s for s in specs},
        engine,
        build_services(specs, terminology),
        {rule: mode for rule, mode in modes.items() if mode != "off"},
        knowledge_version(config["KNOWLEDGE_OVERRIDES"]),
    )


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.response is not None:
            return exc.response
        codes = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}
        response = outcome(exc.code or 500, codes.get(exc.code or 500, "processing"), exc.description or exc.name)
        for name, value in exc.get_headers():
            if name.lower() == "allow":  # a 405 must say which methods the resource has (RFC 9110)
                response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # the message may quote request data: type and frames at ERROR, the message at DEBUG only
        log.error("unhandled %s", type(exc).__name__, extra={"frames": "".join(traceback.format_tb(exc.__traceback__))})
        log.debug("unhandled error detail: %s", exc)
        return outcome(500, "exception", "internal error; the service logged the details")
