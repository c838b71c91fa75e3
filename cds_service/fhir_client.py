"""Reading the client's FHIR server with `requests`: bounded in time, pages and reach.

The bearer token goes only to URLs under the `fhirServer` base (a `next` link elsewhere is not
followed), is never logged, and lives only as long as one hook call.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import requests

from .metrics import timed_fhir_fetch

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 20 * 1024 * 1024


class FhirUnavailable(Exception):
    """The server could not give us the data (network, timeout, 4xx/5xx, not FHIR)."""


@dataclass
class SearchResult:
    resources: list[dict]
    complete: bool  # False when the page cap stopped us or a next link left the server


class FhirClient:
    def __init__(self, base_url: str, token: str | None, *, connect_timeout: float, read_timeout: float,
                 deadline: float, max_pages: int):
        self.base = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline_at = time.monotonic() + deadline
        self.max_pages = max_pages
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/fhir+json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def query(self, relative: str) -> SearchResult:
        """A read (`Patient/1`) or a search (`Condition?patient=1`), following `next` links."""
        body = self._get(f"{self.base}/{relative.lstrip('/')}")
        return self.continue_bundle(body) if body.get("resourceType") == "Bundle" else SearchResult([body], True)

    def continue_bundle(self, bundle: dict, pages_read: int = 1) -> SearchResult:
        resources = entries_of(bundle)
        next_url = next_link(bundle)
        while next_url:
            if not self.same_server(next_url):
                log.warning("not following a next link outside the fhirServer base")
                return SearchResult(resources, False)
            if pages_read >= self.max_pages:
                log.warning("stopped paging after %d pages", pages_read)
                return SearchResult(resources, False)
            page = self._get(next_url)
            if page.get("resourceType") != "Bundle":
                raise FhirUnavailable("a next link did not return a Bundle")
            resources += entries_of(page)
            pages_read += 1
            next_url = next_link(page)
        return SearchResult(resources, True)

    def same_server(self, url: str) -> bool:
        return url == self.base or url.startswith(self.base + "/") or url.startswith(self.base + "?")

    @timed_fhir_fetch
    def _get(self, url: str) -> dict:
        remaining = self.deadline_at - time.monotonic()
        if remaining <= 0:
            raise FhirUnavailable("deadline for FHIR queries passed")
        timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
        try:
            with self.session.get(url, timeout=timeout, stream=True) as response:
                if response.status_code == 404 and "?" not in url:
                    return {"resourceType": "Bundle", "type": "searchset", "total": 0}  # a read that found nothing
                if response.status_code != 200:
                    raise FhirUnavailable(f"FHIR server answered HTTP {response.status_code}")
                raw = self._read_body(response)
        except requests.RequestException as exc:
            raise FhirUnavailable(f"{type(exc).__name__} talking to the FHIR server") from exc
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise FhirUnavailable("FHIR server answered with something that is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirUnavailable("FHIR server answered with JSON that is not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise FhirUnavailable("FHIR server answered with an OperationOutcome")
        if body["resourceType"] == "Bundle" and bundle_defect(body):
            raise FhirUnavailable(f"FHIR server answered with a malformed Bundle ({bundle_defect(body)})")
        return body

    def _read_body(self, response) -> bytes:
        """The read timeout is per read: a server dripping bytes could outlast it, so the
        deadline and a size cap are enforced while reading."""
        chunks, size = [], 0
        for chunk in response.iter_content(chunk_size=65536):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise FhirUnavailable(f"FHIR response larger than {MAX_RESPONSE_BYTES} bytes")
            if time.monotonic() > self.deadline_at:
                raise FhirUnavailable("deadline passed while reading a FHIR response")
            chunks.append(chunk)
        return b"".join(chunks)


def bundle_defect(bundle: dict) -> str | None:
    """Why a Bundle cannot be read at all, or None. Reading a broken Bundle as empty would let
    absence rules fire on garbage, so callers refuse it (400 for prefetch, 412 from a server)."""
    for name in ("entry", "link"):
        if bundle.get(name) is not None and not isinstance(bundle[name], list):
            return f"Bundle.{name} is not an array"
    return None


def entries_of(bundle: dict) -> list[dict]:
    """Resources of a Bundle; search outcome entries and non-objects are not data."""
    out = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        search = entry.get("search") if isinstance(entry.get("search"), dict) else {}
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(kind, str) and kind != "OperationOutcome" and search.get("mode") != "outcome":
            out.append(resource)
    return out


def failed_outcome(bundle: dict) -> bool:
    """An OperationOutcome entry of severity error/fatal means the search failed."""
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome":
            if any(isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in resource.get("issue") or []):
                return True
    return False


def next_link(bundle: dict) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None
