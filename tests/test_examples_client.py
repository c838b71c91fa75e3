"""Every example patient, as `legmove-cds invoke` and the preview page feed it to the service.

The client fills each prefetch template itself: from the chart in hand (the `--bundle` path and the
preview's example patients, answered by bundle_search), or from a FHIR server that `legmove-cds load`
filled (ids renamed per patient, references rewritten). Either way the service must reach the cards the
fixture pins (exactly its cards, and for a silent fixture the findings its near-miss names), which checks
the local search, the renaming and the client's prefetch together.
"""

import pytest
import requests

from cds_service.cli import cds_client
from cds_service.fhir.examples import all_examples, as_transaction
from conftest import FHIR_TOKEN, FIXTURES, FhirServer, fixture_id, load_fixture
from test_fixtures import assert_expected_cards, client_for

EXAMPLES = all_examples()


def _example(path):
    return EXAMPLES[f"{path.parent.name}/{path.stem}"]


def _templates(client, example) -> dict:
    services = client.get("/cds-services").get_json()["services"]
    return cds_client.pick_service(services, example.hook, example.service)["prefetch"]


def _call(client, example, prefetch: dict, **extra):
    body = {
        "hook": example.hook,
        "hookInstance": f"example-{example.patient_id}"[:64],
        "context": example.request["context"],
        "prefetch": prefetch,
        **extra,
    }
    return client.post(f"/cds-services/{example.service}", json=body)


def _searchable(path) -> dict:
    """The fixture, unless its data cannot be found by a search (a local one behaves like a server)."""
    fixture = load_fixture(path)
    for path_name in ("fhir_server", "client"):
        if str(fixture.get(path_name, "")).startswith("skip"):
            pytest.skip(fixture[path_name])
    return fixture


@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_every_example_from_the_chart_in_hand(client, derived_findings, path):
    fixture = _searchable(path)
    example = _example(path)
    service_client = client_for(fixture, client)
    got = cds_client.prefetch_from_resources(
        _templates(service_client, example), example.request["context"], example.resources()
    )
    assert got.warnings == []
    derived_findings.clear()
    assert_expected_cards(fixture, _call(service_client, example, got.values), derived_findings)


@pytest.fixture(scope="module")
def loaded_server(tmp_path_factory):
    server = FhirServer(tmp_path_factory.mktemp("examples-sekmet"))
    with requests.Session() as session:
        for example in EXAMPLES.values():
            response = session.post(server.base_url, json=as_transaction(example), headers=server.headers(), timeout=30)
            assert response.status_code == 200, (example.name, response.text[:300])
    yield server
    server.stop()


@pytest.mark.fhir_server
@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_every_example_loaded_onto_a_fhir_server_then_prefetched_by_the_client(
    client, loaded_server, derived_findings, path
):
    fixture = _searchable(path)
    example = _example(path)
    service_client = client_for(fixture, client)
    with requests.Session() as session:
        got = cds_client.prefetch_from_server(
            _templates(service_client, example),
            example.request["context"],
            session,
            loaded_server.base_url,
            FHIR_TOKEN,
            timeout=30,
        )
    assert got.warnings == []
    derived_findings.clear()
    assert_expected_cards(fixture, _call(service_client, example, got.values), derived_findings)
