"""Reading the client's FHIR server with `requests`: bounded in time, memory, pages and reach.

The bearer token goes only to URLs under the `fhirServer` base (`url_policy`: a `next` link
elsewhere is not followed, and redirects are never followed, since a 3xx could send the token to
another origin or take an https call to plain http), is never logged, and lives only as long as
one hook call.

Time: the per-read timeout alone cannot bound a call, because a server that sends one byte per
second beats it forever (with `Content-Length` a buffered read waits for the whole block). So
every socket a client opens is registered, and a timer shuts them all down when the call's
deadline passes: a blocked connect, header or body read then returns at once, and the sockets
are released instead of being left to a thread that was given up on. The body is read with
`read1` (at most one socket read per call), checking the deadline between reads.

Memory: a process holds at most `FHIR_BUFFER_BUDGET` bytes of FHIR responses at once over all
its calls (one response larger than the budget is read only when nothing else is held); a reader
that would go past it waits, within its own deadline, for the calls holding it to end.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import cast

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from cds_service.fhir import url_policy
from cds_service.metrics import timed_fhir_fetch

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # FHIR_MAX_RESPONSE_BYTES
READ_SIZE = 65536
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id


class FhirUnavailable(Exception):
    """The server could not give us the data (network, timeout, 4xx/5xx, not FHIR). The message
    is for the log: it may name the exception, which a caller must not see."""


@dataclass
class SearchResult:
    resources: list[dict]
    complete: bool  # False when the page cap stopped us or a next link left the server


class MemoryBudget:
    """Bytes of FHIR responses held by this process at once (all calls, all threads)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def reserve(self, amount: int, until: float) -> None:
        with self._cond:
            while self.used and self.used + amount > self.limit:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    raise FhirUnavailable("deadline passed waiting for memory to buffer a FHIR response")
                self._cond.wait(remaining)
            self.used += amount

    def release(self, amount: int) -> None:
        if amount:
            with self._cond:
                self.used -= amount
                self._cond.notify_all()


_BUDGETS: dict[int, MemoryBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(limit: int) -> MemoryBudget:
    """One budget per process (per configured limit), shared by every call."""
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(limit, MemoryBudget(limit))


class _Tripwire:
    """The sockets one client opened; `trip` shuts them down so blocked reads return."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.tripped = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if not self.tripped:
                return
        self._shutdown(sock)

    def trip(self) -> None:
        with self._lock:
            self.tripped = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class _TrippableHTTPConnection(HTTPConnection):
    tripwire: _Tripwire

    def _new_conn(self):
        sock = super()._new_conn()
        self.tripwire.add(sock)
        return sock


class _TrippableHTTPSConnection(HTTPSConnection):
    tripwire: _Tripwire

    def _new_conn(self):
        sock = super()._new_conn()
        self.tripwire.add(sock)
        return sock


class _TrippableHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrippableHTTPConnection
    tripwire: _Tripwire

    def _new_conn(self):
        conn = cast(_TrippableHTTPConnection, super()._new_conn())  # ConnectionCls makes one of ours
        conn.tripwire = self.tripwire
        return conn


class _TrippableHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrippableHTTPSConnection
    tripwire: _Tripwire

    def _new_conn(self):
        conn = cast(_TrippableHTTPSConnection, super()._new_conn())  # ConnectionCls makes one of ours
        conn.tripwire = self.tripwire
        return conn


class _TrippablePoolManager(PoolManager):
    def __init__(self, tripwire: _Tripwire, **kwargs):
        super().__init__(**kwargs)
        self.tripwire = tripwire
        self.pool_classes_by_scheme = {"http": _TrippableHTTPPool, "https": _TrippableHTTPSPool}

    def _new_pool(self, scheme, host, port, request_context=None):
        # pool_classes_by_scheme makes one of ours
        pool = cast(_TrippableHTTPPool | _TrippableHTTPSPool, super()._new_pool(scheme, host, port, request_context))
        pool.tripwire = self.tripwire
        return pool


class _TrippableAdapter(HTTPAdapter):
    def __init__(self, tripwire: _Tripwire):
        self.tripwire = tripwire
        super().__init__(max_retries=0, pool_maxsize=4)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        self.poolmanager = _TrippablePoolManager(
            self.tripwire, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )


class FhirClient:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        connect_timeout: float,
        read_timeout: float,
        deadline: float,
        max_pages: int,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        budget: MemoryBudget | None = None,
    ):
        self.base = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline_at = time.monotonic() + deadline
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.budget = budget or budget_for(4 * max_response_bytes)
        self._reserved = 0
        self._reserved_lock = threading.Lock()
        self._tripwire = _Tripwire()
        self.session = requests.Session()
        adapter = _TrippableAdapter(self._tripwire)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept"] = "application/fhir+json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._timer = threading.Timer(deadline, self._tripwire.trip)
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        """End the fetching: in-flight reads of other threads stop at once."""
        self._timer.cancel()
        self._tripwire.trip()
        self.session.close()

    def release_memory(self) -> None:
        """Give back this call's share of the budget. Called when the hook call is over, not at
        close(): the parsed resources live (at about six times their size) until then."""
        with self._reserved_lock:
            reserved, self._reserved = self._reserved, 0
        self.budget.release(reserved)

    def query(self, relative: str) -> SearchResult:
        """A read (`Patient/1`) or a search (`Condition?patient=1`), following `next` links."""
        body = self._get(f"{self.base}/{relative.lstrip('/')}")
        return self.continue_bundle(body) if body.get("resourceType") == "Bundle" else SearchResult([body], True)

    def read(self, resource_type: str, resource_id: str) -> dict | None:
        """One resource by id (`Medication/123`); None when the server has no such resource or
        answers with a different one. The id is checked first, so it cannot change the path."""
        if not _TYPE.fullmatch(resource_type) or not _ID.fullmatch(resource_id):
            raise FhirUnavailable("not a valid resource type and id to read")
        body = self._get(f"{self.base}/{resource_type}/{resource_id}")
        if body.get("resourceType") != resource_type or body.get("id") != resource_id:
            return None  # a 404 (read as an empty Bundle) or the wrong resource: nothing usable
        return body

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
        """Parsed scheme, host, port and path prefix, never a string prefix (url_policy)."""
        return url_policy.is_under(url, self.base)

    @timed_fhir_fetch
    def _get(self, url: str) -> dict:
        remaining = self.deadline_at - time.monotonic()
        if remaining <= 0 or self._tripwire.tripped:
            raise FhirUnavailable("deadline for FHIR queries passed")
        timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
        try:
            with self.session.get(url, timeout=timeout, stream=True, allow_redirects=False) as response:
                if response.is_redirect or 300 <= response.status_code < 400:
                    raise FhirUnavailable(
                        f"FHIR server answered HTTP {response.status_code}; redirects are not followed"
                    )
                if response.status_code == 404 and "?" not in url:
                    return {"resourceType": "Bundle", "type": "searchset", "total": 0}  # a read that found nothing
                if response.status_code != 200:
                    raise FhirUnavailable(f"FHIR server answered HTTP {response.status_code}")
                raw = self._read_body(response)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if time.monotonic() >= self.deadline_at or self._tripwire.tripped:
                raise FhirUnavailable(f"deadline passed talking to the FHIR server ({type(exc).__name__})") from exc
            raise FhirUnavailable(f"{type(exc).__name__} talking to the FHIR server") from exc
        try:
            body = orjson.loads(raw)  # bytes straight to objects: no decoded copy; NaN and 1e999 refused
        except orjson.JSONDecodeError as exc:  # invalid UTF-8 included
            raise FhirUnavailable("FHIR server answered with something that is not JSON") from exc
        del raw
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirUnavailable("FHIR server answered with JSON that is not a FHIR resource")
        if body["resourceType"] == "OperationOutcome":
            raise FhirUnavailable("FHIR server answered with an OperationOutcome")
        if body["resourceType"] == "Bundle" and bundle_defect(body):
            raise FhirUnavailable(f"FHIR server answered with a malformed Bundle ({bundle_defect(body)})")
        return body

    def _read_body(self, response) -> bytearray:
        """At most one socket read per step, the deadline checked between steps (the tripwire
        ends a step that blocks), a size cap, and memory reserved from the process budget."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            raise FhirUnavailable(f"FHIR response larger than {self.max_response_bytes} bytes")
        body = bytearray()
        while True:
            if time.monotonic() >= self.deadline_at or self._tripwire.tripped:
                raise FhirUnavailable("deadline passed while reading a FHIR response")
            chunk = response.raw.read1(READ_SIZE, decode_content=True)
            if not chunk:
                if response.raw.length_remaining:
                    raise FhirUnavailable("FHIR response ended early")
                return body
            if len(body) + len(chunk) > self.max_response_bytes:
                raise FhirUnavailable(f"FHIR response larger than {self.max_response_bytes} bytes")
            self._reserve(len(chunk))
            body += chunk

    def _reserve(self, amount: int) -> None:
        self.budget.reserve(amount, self.deadline_at)
        with self._reserved_lock:
            self._reserved += amount


def bundle_defect(bundle: dict) -> str | None:
    """Why a Bundle cannot be read at all, or None. Reading a broken Bundle as empty would let
    absence rules fire on garbage, so callers refuse it (400 for prefetch, 412 from a server)."""
    for name in ("entry", "link"):
        if bundle.get(name) is not None and not isinstance(bundle[name], list):
            return f"Bundle.{name} is not an array"
    return None


def entries_of(bundle: dict) -> list[dict]:
    """Resources of a Bundle; search outcome entries and non-objects are not data."""
    return read_entries(bundle)[0]


def read_entries(bundle: dict) -> tuple[list[dict], bool]:
    """The resources of a Bundle (as `entries_of`) and whether the search failed: an
    OperationOutcome entry of severity error/fatal. One walk of the entries for both, since a
    prefetched Bundle needs both and walking a 20,000-entry Bundle twice was most of the data
    stage. Outcome entries are read up to the first error/fatal one."""
    out: list[dict] = []
    failed = False
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = resource.get("resourceType")
        if kind == "OperationOutcome":
            failed = failed or any(
                isinstance(i, dict) and i.get("severity") in ("error", "fatal") for i in resource.get("issue") or []
            )
            continue
        search = entry.get("search")
        if isinstance(kind, str) and (search.get("mode") if isinstance(search, dict) else None) != "outcome":
            out.append(resource)
    return out, failed


def next_link(bundle: dict) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None
