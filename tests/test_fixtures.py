"""Every rule's firing and non-firing fixtures, through prefetch and through a real FHIR server.

A fixture may carry a `config` (e.g. ENABLED_RULES for a rule that is off by default, or
KNOWLEDGE_OVERRIDES for the AASM 2024 profile); it then runs against an app built with it.
"""
import json
import threading
from functools import lru_cache

import pytest
import requests
from werkzeug.serving import make_server

from conftest import (FIXTURES, as_server_request, assert_valid_cds_response, fired_rules, fixture_id, load_fixture,
                      namespace_map, namespaced, prefetched_resources, rewrite_references)
from cds_service.app import create_app
from cds_service.authoring.rulebook import REGISTRY


@lru_cache(maxsize=None)
def _configured_app(config_json: str):
    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json))


@lru_cache(maxsize=None)
def _http_server(config_json: str) -> str:
    """A real HTTP server (threaded werkzeug) for one configuration; daemon thread, lives for the session."""
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def client_for(fixture, default_client):
    if not fixture.get("config"):
        return default_client
    return _configured_app(json.dumps(fixture["config"], sort_keys=True)).test_client()


def assert_expected_cards(fixture, response):
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    fired = fired_rules(body)
    assert set(fixture["expect"]["fires"]) <= fired, fixture["description"]
    assert not set(fixture["expect"]["silent"]) & fired, fixture["description"]


@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_through_prefetch(client, path):
    fixture = load_fixture(path)
    response = client_for(fixture, client).post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert_expected_cards(fixture, response)


class _HttpAnswer:
    """The slice of a Flask test response that assert_expected_cards reads, from a real HTTP response."""

    def __init__(self, response):
        self.status_code, self._response = response.status_code, response

    def get_json(self):
        return self._response.json()

    def get_data(self, as_text=False):
        return self._response.text


@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_over_http(path):
    fixture = load_fixture(path)
    base = _http_server(json.dumps(fixture.get("config") or {}, sort_keys=True))
    response = requests.post(f"{base}/cds-services/{fixture['service']}", json=fixture["request"], timeout=30)
    assert response.headers["Content-Type"].startswith("application/json")
    assert_expected_cards(fixture, _HttpAnswer(response))


@pytest.mark.fhir_server
@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_through_fhir_server(client, fhir_server, path):
    fixture = load_fixture(path)
    if str(fixture.get("fhir_server", "")).startswith("skip"):
        pytest.skip(fixture["fhir_server"])
    request = fixture["request"]
    fhir_server.transaction(namespaced(prefetched_resources(request), path.stem))
    call = as_server_request(request, fhir_server)
    # a draft may refer to a resource that now lives on the server under its namespaced id
    call["context"] = rewrite_references(call["context"], namespace_map(prefetched_resources(request), path.stem))
    response = client_for(fixture, client).post(f"/cds-services/{fixture['service']}", json=call)
    assert_expected_cards(fixture, response)


def test_every_card_rule_has_a_firing_and_a_non_firing_fixture():
    fixtures = [load_fixture(p) for p in FIXTURES]
    for rule_id, spec in REGISTRY.items():
        if spec.stratum != "card":
            continue
        assert any(rule_id in f["expect"]["fires"] for f in fixtures), f"{rule_id} has no firing fixture"
        assert any(rule_id in f["expect"]["silent"] for f in fixtures), f"{rule_id} has no non-firing fixture"
