"""What the CDS Hooks Sandbox does with our discovery document, checked against a real FHIR server.

The sandbox fills search prefetch with `POST {type}/_search` and the template's query as a
form-encoded body (GET only as a fallback). Every search template we publish must therefore mean
the same thing sent that way, raw or percent-encoded (commas separate token values, pipes separate
system and code; a `+` or a bare space would change meaning in a form body).
"""

from urllib.parse import parse_qsl, urlencode

import pytest
import requests

from cds_service.fhir.examples import all_examples, as_transaction
from cds_service.fhir.prefetch import expand
from conftest import FhirServer

CHARTS = ["R2/fires-low-ferritin-ugl", "R3/fires-sertraline-order-sign", "R12/fires-repeat-emg-stable"]

pytestmark = pytest.mark.fhir_server


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A server of its own: the shared one holds the same charts under other ids (test_fixtures.py)."""
    fhir_server = FhirServer(tmp_path_factory.mktemp("sandbox-sekmet"))
    for name in CHARTS:
        response = requests.post(
            fhir_server.base_url, json=as_transaction(all_examples()[name]), headers=fhir_server.headers(), timeout=30
        )
        assert response.status_code == 200, response.text[:300]
    yield fhir_server
    fhir_server.stop()


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text[:300]
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []))


def test_every_search_template_means_the_same_as_a_form_encoded_post_search(client, loaded):
    services = client.get("/cds-services").get_json()["services"]
    headers = loaded.headers()
    form = dict(headers, **{"Content-Type": "application/x-www-form-urlencoded"})
    compared = found = 0
    for name in CHARTS:
        context = all_examples()[name].request["context"]
        for service in services:
            for key, template in service.get("prefetch", {}).items():
                query = expand(template, context)
                if "?" not in query:
                    continue
                kind, params = query.split("?", 1)
                # a literal "+" or space would read differently in a form body; %20 reads the same
                assert "+" not in params and " " not in params, (key, template)
                by_get = _ids(requests.get(f"{loaded.base_url}/{query}", headers=headers, timeout=30))
                raw = requests.post(f"{loaded.base_url}/{kind}/_search", data=params, headers=form, timeout=30)
                encoded = requests.post(
                    f"{loaded.base_url}/{kind}/_search", data=urlencode(parse_qsl(params)), headers=form, timeout=30
                )
                assert _ids(raw) == by_get == _ids(encoded), f"{service['id']} {key} on {name}"
                compared += 1
                found += bool(by_get)
    assert compared >= 3 * 7 and found >= 6, "the charts must give the comparison something to find"
