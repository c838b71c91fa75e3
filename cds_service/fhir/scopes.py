"""SMART on FHIR scopes of `fhirAuthorization.scope`: which resource types the service may read.

CDS Hooks 2.0 (FHIR Resource Access) hands the service a token with the scopes the EHR granted.
Querying a type the token does not grant only earns a 403 and wastes the call's deadline, so such
keys are not queried and count as unknown. Understood forms (SMART App Launch 1.0 and 2.0):

- v1 `patient/Observation.read` (read and search), `.write`, `.*`;
- v2 `patient/Observation.rs`: letters from `cruds`, in that order; a search needs `s`, a read `r`;
- wildcards `patient/*.read`, `patient/*.*`, `patient/*.rs`;
- `patient/`, `user/` and `system/` levels alike (each lets us read the context patient's data);
- v2 granular scopes `patient/Observation.rs?category=laboratory`: only searches within those
  parameters are allowed, so they are added to the query (several granular scopes for one type
  are alternatives, each its own query). What lies outside them stays unseen, so such a key is
  never proof of absence.

Other scopes (`launch`, `openid`, `fhirUser`, `offline_access`) are ignored. A request without
`fhirAuthorization.scope` carries no statement about scopes: the server alone decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(\?\S*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Grant:
    """What a token allows on one resource type for one kind of access."""

    unrestricted: bool
    filters: tuple[str, ...] = ()  # url-encoded extra search parameters, one per granular scope

    def queries(self, query: str) -> list[str]:
        """The query (or queries) that stay within this grant."""
        if self.unrestricted:
            return [query]
        joiner = "&" if "?" in query else "?"
        return [f"{query}{joiner}{extra}" for extra in self.filters]


@dataclass(frozen=True)
class Scopes:
    # (resource type or "*", permission letters, url-encoded filter or "")
    entries: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)

    def grant(self, resource_type: str, search: bool) -> Grant | None:
        """None when the type may not be read this way at all."""
        needed = "s" if search else "r"
        matching = [(t, p, f) for t, p, f in self.entries if t in ("*", resource_type) and needed in p]
        if not matching:
            return None
        if any(not f for _, _, f in matching):
            return Grant(True)
        if not search:
            return None  # a granular scope limits searches; a plain read cannot honour it
        return Grant(False, tuple(dict.fromkeys(f for _, _, f in matching)))


def parse_scopes(scope: str | None) -> Scopes | None:
    """None when the request said nothing about scopes."""
    if scope is None:
        return None
    entries = []
    for text in scope.split():
        match = _SCOPE.match(text)
        if not match:
            continue
        _, resource_type, permissions, query = match.groups()
        letters = _V1.get(permissions, permissions)
        if not letters:
            continue
        params = parse_qsl(query[1:], keep_blank_values=False) if query else []
        if query and not params:
            continue  # a malformed granular part grants nothing we can honour
        entries.append((resource_type, letters, urlencode(params)))
    return Scopes(tuple(entries))
