"""Shared test fixtures: the app, the fixture requests, a real FHIR server, response checks."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from cds_service.app import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fhir_fixtures").glob("R*/*.json"))
EXTENSION = "org.legmove-cds.explanation"
FHIR_TOKEN = "test-token-7f3a"


def load_fixture(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def fixture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def fired_rules(body: dict) -> set[str]:
    return {card["extension"][EXTENSION]["rule"] for card in body["cards"]}


@pytest.fixture(scope="session")
def app():
    return create_app("test", LOG_LEVEL="WARNING")


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def derived_findings():
    """The findings the engine derives during the test, in any thread (tests/fixture_pins.py);
    the engine is back as shipped afterwards. `.clear()` before a call to see only that call's."""
    from fixture_pins import DerivedFindings

    with DerivedFindings().recording() as spy:
        yield spy


# ---- checklist 9.9: machine-checkable response rules ------------------------------------


def _no_empties(value, path="$"):
    if isinstance(value, dict):
        for key, item in value.items():
            if item in (None, "", [], {}) and not (path == "$" and key == "cards"):
                raise AssertionError(f"empty value at {path}.{key}")
            _no_empties(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if item in (None, "", [], {}):
                raise AssertionError(f"empty value at {path}[{i}]")
            _no_empties(item, f"{path}[{i}]")


def assert_valid_cds_response(body: dict) -> None:
    assert isinstance(body.get("cards"), list)
    _no_empties(body)
    uuids = []
    for card in body["cards"]:
        assert isinstance(card["summary"], str) and len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        if "url" in card["source"]:
            assert re.match(r"^https?://", card["source"]["url"])
        assert card["detail"], "every card explains itself"
        rule = card["extension"][EXTENSION]["rule"]
        assert card["source"]["topic"]["code"] == rule, "source.topic names the rule (the text need not)"
        assert any(
            link["label"] == "Why this card" and link["url"].endswith(f"/rules/{rule}")
            for link in card.get("links", [])
        ), "every card links to its rule page"
        uuids.append(card["uuid"])
        suggestions = card.get("suggestions")
        if suggestions:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            if card["selectionBehavior"] == "at-most-one":
                assert sum(1 for s in suggestions if s.get("isRecommended")) <= 1
            suggestion_ids = [s["uuid"] for s in suggestions]
            assert len(set(suggestion_ids)) == len(suggestion_ids)
            uuids += suggestion_ids
            for suggestion in suggestions:
                assert suggestion["label"]
                for action in suggestion.get("actions", []):
                    assert action["type"] in ("create", "update", "delete") and action["description"]
                    if action["type"] == "delete":
                        assert (
                            re.match(r"^[A-Za-z]+/[A-Za-z0-9\-.]+$", action["resourceId"]) and "resource" not in action
                        )
                    else:
                        assert isinstance(action["resource"], dict) and action["resource"]["resourceType"]
        else:
            assert "selectionBehavior" not in card
        for reason in card.get("overrideReasons", []):
            assert reason["code"] and reason["system"] and reason["display"]
        for link in card.get("links", []):
            assert link["label"] and link["url"] and link["type"] in ("absolute", "smart")
            assert "appContext" not in link or link["type"] == "smart"
        explanation = card["extension"][EXTENSION]
        assert explanation["rule"] and explanation["resources"], "each card names the rule and resources it rests on"
        assert "actionSelectionBehavior" not in json.dumps(card)
    assert len(set(uuids)) == len(uuids)


# ---- a real FHIR server on loopback ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FhirServer:
    """sekmet-fhir, simulator off, fresh data directory, bearer-token auth."""

    def __init__(self, workdir: Path, server_auth: str | None = None):
        """`server_auth`: YAML flow mapping replacing the static-bearer-token default."""
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        workdir.mkdir(parents=True, exist_ok=True)
        settings = workdir / "settings.yaml"
        settings.write_text(
            f"base_url: {self.base_url}\nhost: 127.0.0.1\nport: {self.port}\ndata_dir: {workdir / 'data'}\n"
            "simulator: {enabled: false}\nlog_inbound: false\nvalidation: {inbound: 'off'}\n"
            f"server_auth: {server_auth or f'{{types: [bearer], tokens: [{FHIR_TOKEN}]}}'}\n",
            encoding="utf-8",
        )
        executable = shutil.which("sekmet", path=str(Path(sys.executable).parent)) or "sekmet"
        self.log = open(workdir / "server.log", "w")  # noqa: SIM115 - the process writes it until stop() closes it
        self.process = subprocess.Popen(
            [executable, "serve", "-c", str(settings)],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sekmet exited early; see {self.log.name}")
            try:
                if requests.get(f"{self.base_url}/metadata", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("sekmet did not start within 60 s")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {FHIR_TOKEN}", "Content-Type": "application/fhir+json"}

    def transaction(self, resources: list[dict]) -> None:
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                for r in resources
            ],
        }
        response = requests.post(self.base_url, json=bundle, headers=self.headers(), timeout=30)
        assert response.status_code == 200, response.text[:500]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory):
    server = FhirServer(tmp_path_factory.mktemp("sekmet"))
    yield server
    server.stop()


def prefetched_resources(request: dict) -> list[dict]:
    out = []
    for value in (request.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            out += [e["resource"] for e in value.get("entry", [])]
        elif isinstance(value, dict):
            out.append(value)
    return out


def as_server_request(request: dict, server: FhirServer, keep_prefetch: tuple[str, ...] = ()) -> dict:
    """The same hook call, with the data on the FHIR server instead of in the prefetch."""
    call = copy.deepcopy(request)
    call["prefetch"] = {k: v for k, v in call.get("prefetch", {}).items() if k in keep_prefetch}
    call["fhirServer"] = server.base_url
    call["fhirAuthorization"] = {
        "access_token": FHIR_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
        "patient": call["context"]["patientId"],
    }
    return call


def namespace_map(resources: list[dict], prefix: str) -> dict[str, str]:
    """`Type/id` -> `Type/prefix.id` for every resource `namespaced` renames."""
    return {
        f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/" + f"{prefix}.{r['id']}"[:64]
        for r in resources
        if r["resourceType"] != "Patient"
    }


def rewrite_references(value, mapping: dict[str, str]):
    """A copy of `value` whose `reference` fields point to the renamed resources."""
    if isinstance(value, dict):
        return {
            k: (mapping.get(v, v) if k == "reference" and isinstance(v, str) else rewrite_references(v, mapping))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [rewrite_references(v, mapping) for v in value]
    return value


def namespaced(resources: list[dict], prefix: str) -> list[dict]:
    """Fixture resource ids repeat across fixtures (rls-1); one server holds them all. References
    between the renamed resources (a MedicationRequest's medicationReference) follow them."""
    mapping = namespace_map(resources, prefix)
    out = []
    for resource in resources:
        resource = rewrite_references(copy.deepcopy(resource), mapping)
        if resource["resourceType"] != "Patient":
            resource["id"] = mapping[f"{resource['resourceType']}/{resource['id']}"].split("/", 1)[1]
        out.append(resource)
    return out


def patient_variant(request: dict, number: int) -> tuple[dict, str]:
    """The fixture's hook call for a new patient: every id and reference carries `pNNNN`."""
    pid = f"p{number:04d}"
    text = json.dumps(request)
    old = request["context"]["patientId"]
    text = text.replace(f'"Patient/{old}"', f'"Patient/{pid}"').replace(f'"{old}"', f'"{pid}"')
    call = json.loads(text)
    for value in list(call.get("prefetch", {}).values()) + [call["context"].get("draftOrders")]:
        for entry in (
            (value or {}).get("entry", []) if isinstance(value, dict) and value.get("resourceType") == "Bundle" else []
        ):
            resource = entry["resource"]
            if resource["resourceType"] != "Patient":
                resource["id"] = f"{pid}-{resource['id']}"
    if "selections" in call["context"]:
        call["context"]["selections"] = [s.replace("/", f"/{pid}-", 1) for s in call["context"]["selections"]]
    call["hookInstance"] = f"{pid}-{call['hookInstance']}"
    return call, pid


# ---- a fresh database on the local PostgreSQL --------------------------------------------

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "legmove_test"):
    """The URL of a database created on the local server for one test or module, dropped afterwards."""
    import sqlalchemy

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh database shared by the tests of one module."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture()
def fresh_postgres():
    """A fresh database for one test."""
    with fresh_postgres_database() as url:
        yield url
