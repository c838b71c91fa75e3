"""Application factory: configuration, knowledge, engine and routes, built once per process."""
from __future__ import annotations

import logging
import os
import traceback

from flask import Flask
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from .advice import Knowledge
from .cards import warm_up as warm_up_cards
from .client_auth import verifier_from_config
from .api import bp, outcome
from .config import CONFIGS, from_environment
from .engine import engine_for, prune_unused_derivations
from .feedback import CardLedger
from .logs import configure as configure_logs
from .rule_pages import pages as rule_pages
from .rulebook import REGISTRY
from .services import build_services
from .terminology import Terminology

log = logging.getLogger(__name__)


def create_app(config: str | type | None = None, **overrides) -> Flask:
    app = Flask(__name__)
    name = config if isinstance(config, str) else os.environ.get("LEGMOVE_CONFIG", "production")
    app.config.from_object(config if isinstance(config, type) else CONFIGS[name])
    from_environment(app)
    app.config.update(overrides)
    configure_logs(app.config.get("LOG_LEVEL", "INFO"))
    app.extensions["legmove"] = build_knowledge(app.config)
    warm_up_cards()
    app.extensions["legmove_ledger"] = (CardLedger(app.config["FEEDBACK_STORE"], app.config["FEEDBACK_STORE_COMMENTS"])
                                        if app.config["FEEDBACK_STORE"] else None)
    app.extensions["legmove_client_verifier"] = verifier_from_config(app.config)
    if app.extensions["legmove_client_verifier"] is None:
        log.warning("OPEN MODE: CDS client JWTs are NOT verified (set LEGMOVE_CLIENT_AUTH=true with "
                    "LEGMOVE_PUBLIC_BASE_URL and LEGMOVE_TRUSTED_ISSUERS); use only on a trusted network")
    else:
        log.info("client JWTs required from issuers: %s", ", ".join(app.config["TRUSTED_ISSUERS"]))
    CORS(app, resources={r"/cds-services*": {"origins": app.config["CORS_ORIGINS"]}},
         allow_headers=["Authorization", "Content-Type"], methods=["GET", "POST", "OPTIONS"], max_age=600)
    app.register_blueprint(bp)
    app.register_blueprint(rule_pages)  # public, outside the CDS blueprint's client-JWT check
    _register_error_handlers(app)
    return app


def build_knowledge(config) -> Knowledge:
    """Load terminology and rules and compile the ruleset; any defect stops start-up."""
    import rules

    rules.load_all(config["EXTRA_RULE_MODULES"])
    terminology = Terminology(config["KNOWLEDGE_OVERRIDES"])
    enabled = config["ENABLED_RULES"]
    specs = prune_unused_derivations([s for s in REGISTRY.values()
                                      if (s.id in enabled if enabled is not None else s.enabled_by_default)
                                      or s.stratum != "card"])
    engine = engine_for(specs)
    return Knowledge(terminology, {s.id: s for s in specs}, engine, build_services(specs, terminology))


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.response is not None:
            return exc.response
        codes = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}
        return outcome(exc.code or 500, codes.get(exc.code, "processing"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # the message may quote request data: type and frames at ERROR, the message at DEBUG only
        log.error("unhandled %s", type(exc).__name__, extra={"frames": "".join(traceback.format_tb(exc.__traceback__))})
        log.debug("unhandled error detail: %s", exc)
        return outcome(500, "exception", "internal error; the service logged the details")
