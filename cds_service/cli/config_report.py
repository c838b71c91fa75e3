"""`legmove-cds check-config`: what the configuration chosen by LEGMOVE_CONFIG and LEGMOVE_*
variables will do, and which of it is unsafe in production. Reads the configuration exactly as
`create_app` does, without starting anything, so a deployment can be checked before it serves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from flask import Config as FlaskConfig

from cds_service.config import CONFIGS, from_environment
from cds_service.knowledge.settings import SettingsError, resolve_overrides
from cds_service.knowledge.settings import load as load_settings


@dataclass(frozen=True)
class Item:
    topic: str
    says: str
    unsafe: bool = False  # unsafe for production


def load_config(name: str | None = None) -> tuple[str, FlaskConfig]:
    name = name or os.environ.get("LEGMOVE_CONFIG", "production")
    if name not in CONFIGS:
        raise KeyError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    holder = _Holder()
    holder.config.from_object(CONFIGS[name])
    from_environment(holder)
    return name, holder.config


class _Holder:
    """from_environment writes to `app.config`; this is the smallest thing that has one."""

    def __init__(self):
        self.config = FlaskConfig(root_path=os.getcwd())


def _masked(url: str | None) -> str:
    """A database URL without its password."""
    if not url:
        return "off"
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def report(config) -> list[Item]:
    items: list[Item] = []
    add = lambda topic, says, unsafe=False: items.append(Item(topic, says, unsafe))  # noqa: E731
    if config["CLIENT_AUTH"]:
        issuers = ", ".join(config["TRUSTED_ISSUERS"]) or "NONE (start-up will fail)"
        add(
            "client auth",
            f"hook calls need a JWT from: {issuers}; audience base {config['PUBLIC_BASE_URL'] or 'UNSET'}",
            unsafe=not config["TRUSTED_ISSUERS"] or not config["PUBLIC_BASE_URL"],
        )
        add(
            "client auth",
            f"replay store {_masked(config['REPLAY_STORE'])}; discovery "
            f"{'needs' if config['DISCOVERY_REQUIRES_AUTH'] else 'does not need'} a token",
        )
        if any("sandbox.cds-hooks.org" in iss for iss in config["TRUSTED_ISSUERS"]):
            add("client auth", "the public CDS Hooks Sandbox is trusted: its private key is public", unsafe=True)
        if config["JWKS_ALLOW_HTTP"]:
            add("client auth", "JWKS may be fetched over plain http", unsafe=True)
    else:
        declared = config.get("OPEN_MODE") is True
        add(
            "client auth",
            "OPEN MODE: client JWTs are not verified; anyone who reaches the port may call"
            + (" (declared with OPEN_MODE)" if declared else ""),
            unsafe=True,
        )
    allowlist = config["FHIR_SERVER_ALLOWLIST"]
    if allowlist is None:
        add("fhirServer", "any fhirServer a caller names is queried (with its token)", unsafe=True)
    elif allowlist == ["*"]:
        add(
            "fhirServer",
            "any fhirServer is allowed (explicit '*'): callers choose where requests and tokens go",
            unsafe=True,
        )
    else:
        add("fhirServer", f"queried only under: {', '.join(allowlist) or 'nothing (fetching is off)'}")
    if config["FHIR_ALLOW_HTTP"]:
        add("fhirServer", "plain-http FHIR servers are allowed", unsafe=True)
    if config["FHIR_UNAUTHENTICATED_READS"]:
        bases = ", ".join(config["FHIR_UNAUTHENTICATED_ALLOWLIST"]) or "no base URL"
        add("fhirServer", f"tokenless reads allowed for: {bases}", unsafe=True)
    add(
        "fhirServer",
        f"timeouts connect {config['FHIR_CONNECT_TIMEOUT']} s, read {config['FHIR_READ_TIMEOUT']} s, "
        f"deadline {config['FHIR_DEADLINE']} s per call, at most {config['FHIR_MAX_PAGES']} pages per key",
    )
    store = config["FEEDBACK_STORE"]
    add(
        "feedback",
        f"store {_masked(store)}"
        + ("; free-text comments KEPT" if store and config["FEEDBACK_STORE_COMMENTS"] else ""),
    )
    if isinstance(store, str) and store.startswith("sqlite:///") and not store.startswith("sqlite:////"):
        add("feedback", "the SQLite path is relative to the working directory")
    add("CORS", f"origins {config['CORS_ORIGINS']}")
    if config["PREVIEW_ENABLED"]:
        add(
            "preview",
            "the card preview page /preview is served"
            if not config["CLIENT_AUTH"]
            else "PREVIEW_ENABLED is set but client auth is on: /preview is not served",
            unsafe=not config["CLIENT_AUTH"],
        )
    else:
        add("preview", "/preview is off")
    if config.get("EVALUATION_DATE"):
        add("clinical", f"the clinical 'today' is pinned to {config['EVALUATION_DATE']}", unsafe=True)
    if config["KNOWLEDGE_OVERRIDES"]:
        given = config["KNOWLEDGE_OVERRIDES"]
        origin = f" (from {given})" if isinstance(given, str) else ""
        try:
            load_settings(given)
            add("clinical", f"knowledge overrides{origin}: {', '.join(sorted(resolve_overrides(given)))}")
        except SettingsError as exc:
            add("clinical", f"knowledge overrides{origin} stop start-up: {exc}", unsafe=True)
    if config["EXTRA_RULE_MODULES"]:
        add("clinical", f"site rule modules: {', '.join(config['EXTRA_RULE_MODULES'])}")
    return items


def rule_states(config) -> list[tuple[str, str, bool]]:
    """(rule id, title, on) for every card rule, as create_app would enable them."""
    import rules
    from cds_service.authoring.rulebook import CARD, REGISTRY

    rules.load_all(config["EXTRA_RULE_MODULES"])
    enabled = config["ENABLED_RULES"]
    out = []
    for spec in REGISTRY.values():
        if spec.stratum == CARD:
            out.append((spec.id, spec.title, spec.id in enabled if enabled is not None else spec.enabled_by_default))
    return sorted(out, key=lambda r: (len(r[0]), r[0]))
