"""Is a URL inside an allowed base URL? One answer for every place that decides where requests
(and the client's FHIR token) may go: the fhirServer allowlist, the unauthenticated-reads
allowlist and the `next` links of a search.

A string-prefix test is not enough: `https://ehr.example.org:443@attacker.example/fhir` starts
with `https://ehr.example.org` but names the host `attacker.example` (the part before `@` is
userinfo, RFC 3986 section 3.2.1). So both URLs are parsed and compared part by part: scheme,
host, port (the scheme's default when absent) and path prefix on segment boundaries. URLs that
carry userinfo, dot segments (which HTTP libraries resolve before sending), backslashes, control
characters or an unparseable port are refused outright.

A base may name the port `*` (`http://127.0.0.1:*`): any port on that host, for loopback test
servers whose port is chosen at random. The base `*` on its own allows every URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = re.compile(r"[^\x21-\x7e]|\\")  # spaces, controls, non-ASCII, backslash


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str
    port: int | None  # None: any port (bases only)
    path: str  # without trailing slash; "" for the root
    query: str


def _parse(url: str, *, is_base: bool) -> _Parts | None:
    """The comparable parts of an absolute http(s) URL, or None when it is not one we accept."""
    if not isinstance(url, str) or not url or _UNSAFE.search(url):
        return None
    any_port = False
    if is_base:
        url, replaced = re.subn(r"^(https?://[^/?#@]*):\*(?=[/?#]|$)", r"\1", url, count=1)
        any_port = bool(replaced)
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        return None
    scheme = split.scheme.lower()
    if scheme not in DEFAULT_PORTS or not split.hostname or "@" in split.netloc or split.fragment:
        return None
    segments = unquote(split.path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return None
    if is_base and split.query:
        return None
    return _Parts(
        scheme,
        split.hostname.lower().rstrip("."),
        None if any_port else (port or DEFAULT_PORTS[scheme]),
        split.path.rstrip("/"),
        split.query,
    )


def is_under(url: str, base: str) -> bool:
    """`url` is `base` itself, a path below it, or either with a query string."""
    if base == ANY:
        return _parse(url, is_base=False) is not None
    target, allowed = _parse(url, is_base=False), _parse(base, is_base=True)
    if target is None or allowed is None:
        return False
    return (
        target.scheme == allowed.scheme
        and target.host == allowed.host
        and (allowed.port is None or target.port == allowed.port)
        and (target.path == allowed.path or target.path.startswith(allowed.path + "/"))
    )


def under_any(url: str, bases: list[str] | tuple[str, ...]) -> bool:
    return any(is_under(url, base) for base in bases)


def acceptable(url: str) -> bool:
    """An absolute http(s) URL without userinfo, dot segments or unsafe characters."""
    return _parse(url, is_base=False) is not None


def valid_base(base: str) -> bool:
    """A usable allowlist entry: `*`, or an http(s) base URL (port `*` allowed) without query."""
    return base == ANY or _parse(base, is_base=True) is not None
