"""A CDS client, as an EHR is one: discovery, prefetch, the hook call. Used by `legmove-cds invoke`.

It reads the service's discovery document (never a hard-coded service id), picks the service for
the hook, fills each prefetch template from the FHIR server (or from a bundle in hand), and posts
the hook request with a fresh hookInstance. A prefetch query that fails is left out of the
request rather than sent as empty, so the service fetches it itself or answers 412: an unread
search must never look like "nothing on file".
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cds_service.fhir.bundle_search import search
from cds_service.fhir.prefetch import expand


class ClientError(Exception):
    """What went wrong, for the person at the terminal."""


@dataclass
class Prefetched:
    values: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class ClientSigner:
    """Signs each call as a CDS client (CDS Hooks 2.0, Trusting CDS Clients): a fresh JWT per request,
    ES384 for an EC P-384 key or RS384 for an RSA key, `aud` the exact URL called, a new `jti`."""

    def __init__(self, key_file: Path, issuer: str, kid: str | None = None):
        try:
            key = load_pem_private_key(Path(key_file).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ClientError(f"cannot read a PEM private key from {key_file}: {type(exc).__name__}") from None
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
            self.algorithm = "ES384"
        elif isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS384"
        else:
            raise ClientError("the client key must be EC P-384 (ES384) or RSA (RS384)")
        self.key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = key
        self.issuer, self.kid = issuer, kid

    def headers(self, url: str) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": url, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        token = jwt.encode(
            claims,
            self.key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, "typ": "JWT"} if self.kid else {"typ": "JWT"},
        )
        return {"Authorization": f"Bearer {token}"}


def _signed(signer: ClientSigner | None, url: str) -> dict:
    return signer.headers(url) if signer else {}


def service_base(url: str) -> str:
    """Accept the service root or its discovery URL."""
    url = url.rstrip("/")
    return url[: -len("/cds-services")] if url.endswith("/cds-services") else url


def discover(session: requests.Session, base: str, timeout: float, signer: ClientSigner | None = None) -> list[dict]:
    url = f"{base}/cds-services"
    try:
        response = session.get(url, headers=_signed(signer, url), timeout=timeout)
    except requests.RequestException as exc:
        raise ClientError(f"cannot reach the CDS service at {base}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise ClientError(f"discovery at {base}/cds-services answered {response.status_code}")
    try:
        services = response.json()["services"]
    except (ValueError, KeyError, TypeError):
        raise ClientError(f"{base}/cds-services is not a CDS Hooks discovery document") from None
    return [s for s in services if isinstance(s, dict)]


def pick_service(services: list[dict], hook: str, service_id: str | None = None) -> dict:
    """The service for `hook` (or the one named): the first discovery entry that matches."""
    matching = [s for s in services if s.get("hook") == hook and (service_id is None or s.get("id") == service_id)]
    if not matching:
        offered = ", ".join(f"{s.get('id')} ({s.get('hook')})" for s in services) or "none"
        wanted = f"service {service_id!r} for hook {hook!r}" if service_id else f"a service for hook {hook!r}"
        raise ClientError(f"discovery offers no {wanted}; it offers: {offered}")
    return matching[0]


def prefetch_from_server(
    templates: dict, context: dict, session: requests.Session, fhir_server: str, token: str | None, timeout: float
) -> Prefetched:
    out = Prefetched()
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for key, template in templates.items():
        query = expand(template, context)
        if query is None:
            out.warnings.append(f"{key}: the template needs a context field this call lacks; left out")
            continue
        try:
            response = session.get(f"{fhir_server.rstrip('/')}/{query}", headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            out.warnings.append(f"{key}: {type(exc).__name__} from the FHIR server; left out")
            continue
        if response.status_code == 404 and "?" not in query:
            out.values[key] = None  # a read of a resource that is not there: "no data"
        elif response.status_code != 200:
            out.warnings.append(f"{key}: the FHIR server answered {response.status_code}; left out")
        else:
            try:
                out.values[key] = response.json()
            except ValueError:
                out.warnings.append(f"{key}: the FHIR server's answer is not JSON; left out")
    return out


def prefetch_from_resources(templates: dict, context: dict, resources: list[dict]) -> Prefetched:
    out = Prefetched()
    for key, template in templates.items():
        query = expand(template, context)
        if query is None:
            out.warnings.append(f"{key}: the template needs a context field this call lacks; left out")
            continue
        value, unused = search(resources, query)
        out.values[key] = value
        if unused:
            out.warnings.append(f"{key}: search parameter(s) {', '.join(unused)} not applied to the bundle")
    return out


def hook_context(hook: str, patient_id: str, user_id: str, drafts: list[dict]) -> dict:
    context: dict[str, object] = {"userId": user_id, "patientId": patient_id}
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    if hook == "order-select":
        context["selections"] = [f"{d['resourceType']}/{d['id']}" for d in drafts]
    return context


def hook_request(hook: str, context: dict, prefetch: dict | None, fhir_server: str | None, token: str | None) -> dict:
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
    if fhir_server and token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "legmove-cds-cli",
            "patient": context["patientId"],
        }
    if prefetch:
        body["prefetch"] = prefetch
    return body


def call(
    session: requests.Session,
    base: str,
    service_id: str,
    body: dict,
    timeout: float,
    signer: ClientSigner | None = None,
) -> requests.Response:
    url = f"{base}/cds-services/{service_id}"
    try:
        return session.post(url, json=body, headers=_signed(signer, url), timeout=timeout)
    except requests.RequestException as exc:
        raise ClientError(f"the hook call to {base} failed: {type(exc).__name__}") from None
