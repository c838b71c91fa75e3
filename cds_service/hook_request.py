"""Validation of an incoming hook call (CDS Hooks 2.0, sections HTTP Request and Hooks): shape, types, consistency.

Every problem becomes a `BadRequest` with a message that says what is wrong, never a stack
trace. Unknown fields are ignored, as the spec requires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USER_ID = re.compile(r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
SELECTION = re.compile(r"^[A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


class BadRequest(Exception):
    pass


@dataclass
class HookRequest:
    hook: str
    hook_instance: str
    context: dict
    prefetch: dict
    fhir_server: str | None
    access_token: str | None
    scope: str | None  # fhirAuthorization.scope: SMART scopes granted to the token (see scopes.py)
    patient_id: str
    user_id: str
    draft_orders: list[dict]
    selections: list[str] | None


def parse_hook_request(body, served_hooks: set[str]) -> HookRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    hook = _string(body, "hook")
    if hook not in served_hooks:
        raise BadRequest(f"this service does not serve the hook '{hook[:60]}'")
    hook_instance = _string(body, "hookInstance")
    if len(hook_instance) > 128:
        raise BadRequest("'hookInstance' must be at most 128 characters (the spec asks for a UUID)")
    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequest("'context' is required and must be an object")
    prefetch = body.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise BadRequest("'prefetch' must be an object")
    fhir_server, token = _fhir_access(body, context)
    scope = body["fhirAuthorization"].get("scope") if token else None
    patient_id = _context_string(context, "patientId", FHIR_ID)
    user_id = _context_string(context, "userId", USER_ID)
    if "encounterId" in context:
        _context_string(context, "encounterId", FHIR_ID)
    draft_orders, selections = [], None
    if hook in ("order-select", "order-sign"):
        draft_orders = _draft_orders(context)
    if hook == "order-select":
        selections = context.get("selections")
        if not isinstance(selections, list) or not all(isinstance(s, str) and SELECTION.match(s) for s in selections):
            raise BadRequest("context.selections must be an array of 'Type/id' strings")
    return HookRequest(
        hook, hook_instance, context, prefetch, fhir_server, token, scope, patient_id, user_id, draft_orders, selections
    )


def _string(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"'{name}' is required and must be a non-empty string")
    return value


def _context_string(context: dict, name: str, pattern: re.Pattern) -> str:
    value = context.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise BadRequest(f"context.{name} is required and must match {pattern.pattern}")
    return value


def _fhir_access(body: dict, context: dict) -> tuple[str | None, str | None]:
    server = body.get("fhirServer")
    if server is not None and (not isinstance(server, str) or not re.match(r"^https?://[^\s]+$", server)):
        raise BadRequest("'fhirServer' must be an absolute http(s) URL")
    auth = body.get("fhirAuthorization")
    if auth is None:
        return server, None
    if server is None:
        raise BadRequest("'fhirAuthorization' requires 'fhirServer'")
    if not isinstance(auth, dict):
        raise BadRequest("'fhirAuthorization' must be an object")
    token = auth.get("access_token")
    if not isinstance(token, str) or not token:
        raise BadRequest("fhirAuthorization.access_token is required")
    if not isinstance(auth.get("token_type"), str) or auth["token_type"].lower() != "bearer":
        raise BadRequest("fhirAuthorization.token_type must be 'Bearer'")
    if "expires_in" in auth and (isinstance(auth["expires_in"], bool) or not isinstance(auth["expires_in"], int)):
        raise BadRequest("fhirAuthorization.expires_in must be an integer")
    for name in ("scope", "subject", "patient"):
        if name in auth and not isinstance(auth[name], str):
            raise BadRequest(f"fhirAuthorization.{name} must be a string")
    patient = auth.get("patient")
    if patient is not None and patient != context.get("patientId"):
        raise BadRequest("fhirAuthorization.patient differs from context.patientId")
    return server, token


def _draft_orders(context: dict) -> list[dict]:
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("context.draftOrders is required and must be a FHIR Bundle")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise BadRequest("context.draftOrders.entry must be an array")
    return [
        e["resource"]
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and isinstance(e["resource"].get("resourceType"), str)
    ]
