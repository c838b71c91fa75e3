"""The bundled example patients: the test fixtures, shipped as the data package `legmove_examples`.

Each fixture is a complete CDS Hooks request whose prefetch holds one small chart. The preview
page and `legmove-cds load` show or upload those charts, so a newcomer can see real cards without
a chart of their own. Fixtures reuse resource ids across charts (`rls-1`), so a chart meant to
share a FHIR server with the others gets ids prefixed with its patient id (`as_transaction`).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Example:
    name: str  # "R3/fires-sertraline-order-sign"
    description: str
    hook: str
    service: str
    request: dict
    expect: dict = field(default_factory=dict)  # {"fires": [rule ids], "silent": [rule ids]}

    @property
    def patient_id(self) -> str:
        return self.request["context"]["patientId"]

    @property
    def rule(self) -> str:
        return self.name.split("/", 1)[0]

    def resources(self) -> list[dict]:
        """The chart: every resource of the prefetch (a Bundle's entries, or a single resource)."""
        out: dict[tuple[str, str], dict] = {}
        for value in (self.request.get("prefetch") or {}).values():
            if not isinstance(value, dict):
                continue
            items = (
                [e.get("resource") for e in value.get("entry") or []]
                if value.get("resourceType") == "Bundle"
                else [value]
            )
            for resource in items:
                if isinstance(resource, dict) and resource.get("resourceType") not in (None, "OperationOutcome"):
                    out.setdefault((resource["resourceType"], str(resource.get("id"))), resource)
        return [copy.deepcopy(r) for r in out.values()]

    def draft_orders(self) -> list[dict]:
        bundle = self.request["context"].get("draftOrders") or {}
        return [copy.deepcopy(e["resource"]) for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]


def _natural(name: str) -> tuple:
    rule, _, stem = name.partition("/")
    return (int(rule[1:]) if rule[1:].isdigit() else 0, stem)


@lru_cache(maxsize=1)
def all_examples() -> dict[str, Example]:
    root = importlib.resources.files("legmove_examples")
    found = {}
    for folder in root.iterdir():
        if not folder.is_dir() or not folder.name.startswith("R"):
            continue
        for item in folder.iterdir():
            if item.name.endswith(".json"):
                data = json.loads(item.read_text(encoding="utf-8"))
                name = f"{folder.name}/{item.name[:-5]}"
                found[name] = Example(
                    name, data["description"], data["request"]["hook"], data["service"], data["request"], data["expect"]
                )
    return dict(sorted(found.items(), key=lambda kv: _natural(kv[0])))


def as_transaction(example: Example) -> dict:
    """A FHIR transaction that PUTs the example's chart; ids other than the Patient's get the
    patient id as prefix (references rewritten to match), so all examples fit on one server."""
    prefix = example.patient_id
    renamed = {}
    resources = example.resources()
    for resource in resources:
        if resource["resourceType"] != "Patient" and resource.get("id"):
            new_id = f"{prefix}.{resource['id']}"[:64]
            renamed[f"{resource['resourceType']}/{resource['id']}"] = f"{resource['resourceType']}/{new_id}"
            resource["id"] = new_id
    for resource in resources:
        _rewrite_references(resource, renamed)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": r,
                "request": (
                    {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
                    if r.get("id")
                    else {"method": "POST", "url": r["resourceType"]}
                ),
            }
            for r in resources
        ],
    }


def _rewrite_references(value, renamed: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in renamed:
                value[key] = renamed[item]
            else:
                _rewrite_references(item, renamed)
    elif isinstance(value, list):
        for item in value:
            _rewrite_references(item, renamed)
