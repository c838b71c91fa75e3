"""The OpenAPI description is true: schemathesis generates requests from it (valid and invalid)
and checks every answer against it, through the real WSGI app."""

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from cds_service.app import create_app
from cds_service.services import ALIASES

# generated fhirServer URLs must never be dialled (no network in tests): allow none of them
APP = create_app("test", LOG_LEVEL="ERROR", FHIR_SERVER_ALLOWLIST=[])
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]


@schema.parametrize()
@settings(max_examples=60, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(checks=CHECKS)


def test_openapi_names_every_service_in_discovery():
    discovery = APP.test_client().get("/cds-services").get_json()
    document = APP.test_client().get("/openapi.json").get_json()
    documented = set(document["components"]["parameters"]["serviceId"]["schema"]["enum"])
    assert {s["id"] for s in discovery["services"]} | set(ALIASES) == documented
