"""Each hook's `labs` template (and its fhirServer lab searches) asks only for the analytes its
rules can use, and that is never less than what its cards rest on.

The analytes come from the compiled criteria (services.analytes_read) plus `analytes=` where a
render function reads results beyond them. A missing declaration shows up here: a fixture's card
that cites a result of an analyte its hook does not ask for, or a card on the fhirServer path
that differs from the one made when every analyte is searched.
"""

import dataclasses
import json
from datetime import date
from functools import cache
from urllib.parse import parse_qsl

import pytest
from durable.lang import c, m, none, when_all

from cds_service.app import create_app
from cds_service.authoring.rulebook import CARD, RuleSpec
from cds_service.fhir.fhir_read import codings_of
from cds_service.fhir.prefetch import queries, server_searches
from cds_service.services import LAB_KINDS, analytes_read, build_services, services_at
from conftest import (
    FIXTURES,
    as_server_request,
    fixture_id,
    load_fixture,
    namespace_map,
    namespaced,
    prefetched_resources,
    rewrite_references,
)

ORDER_FIXTURES = [p for p in FIXTURES if load_fixture(p)["service"] != "legmove-patient-view"]


@cache
def _app(config_json: str):
    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json))


def app_for(fixture):
    return _app(json.dumps(fixture.get("config") or {}, sort_keys=True))


def service_of(app, fixture):
    return services_at(app.extensions["legmove"].services, fixture["service"])[fixture["request"]["hook"]]


def template_analytes(app, template: str) -> set[str]:
    """The analytes whose codes a `labs` template lists."""
    term = app.extensions["legmove"].terminology
    codes = dict(parse_qsl(template.split("?", 1)[1]))["code"].split(",")
    return {term.observation_codes[tuple(code.split("|", 1))].name for code in codes}


def search_analytes(app, searches: list[str]) -> set[str]:
    """The analytes whose codes the fhirServer lab searches ask for (codes without a system)."""
    term = app.extensions["legmove"].terminology
    codes = {code for q in searches for code in dict(parse_qsl(q.split("?", 1)[1]))["code"].split(",")}
    return {a.name for (_, code), a in term.observation_codes.items() if code in codes}


def _spec(*conditions) -> RuleSpec:
    return RuleSpec(id="T", title="t", citation="t", stratum=CARD, condition=when_all(*conditions), module=__name__)


def test_analytes_are_read_from_the_criteria_and_a_lab_without_analyte_means_all():
    named = _spec(
        c.f << ((m.kind == "lab") & (m.analyte == "ferritin")), none((m.kind == "pending_test") & (m.analyte == "tsat"))
    )
    assert analytes_read(named) == {"ferritin", "tsat"}
    declared = dataclasses.replace(named, analytes=("hemoglobin",))
    assert analytes_read(declared) == {"ferritin", "tsat", "hemoglobin"}
    assert analytes_read(_spec(c.f << (m.kind == "lab"))) is None
    assert analytes_read(_spec(c.f << ((m.kind == "lab") & (m.analyte != "ferritin")))) is None
    assert analytes_read(_spec(c.f << ((m.kind == "condition") & (m.code == "G25.81")))) == set()


def test_a_rule_that_reads_labs_without_naming_an_analyte_is_refused_at_start():
    from cds_service.knowledge.terminology import Terminology

    silent_on_analytes = dataclasses.replace(
        _spec(c.f << ((m.kind == "condition") & (m.code == "G25.81"))),
        hooks=("order-sign",),
        needs=("labs", "conditions"),
    )
    with pytest.raises(ValueError, match="rule T reads labs but neither"):
        build_services([silent_on_analytes], Terminology())
    declared = dataclasses.replace(silent_on_analytes, analytes=("ferritin",))
    assert build_services([declared], Terminology())[("legmove-order-sign", "order-sign")].analytes == {"ferritin"}


def test_order_hooks_ask_only_for_their_analytes_and_patient_view_for_what_its_rules_read(app):
    services = {s.hook: s for s in app.extensions["legmove"].services.values()}
    term = app.extensions["legmove"].terminology
    every = set(term.analytes)
    sign, select, view = services["order-sign"], services["order-select"], services["patient-view"]
    assert sign.analytes == {"ferritin", "tsat"}  # R20's iron verdict is the only lab an order-sign rule reads
    # order-select: iron (R1, R2, R19, R20) and the first-tier labs R8 lists; no screening scores, no PLMS
    # index, no eGFR (R23, the one order-select rule that reads it, is off by default)
    assert sign.analytes < select.analytes < every
    assert not select.analytes & {"gad7", "phq9", "plms_index", "egfr", "sodium", "creatinine", "ast", "alt"}
    assert view.analytes == every
    for service in (sign, select, view):
        # the template lists the codes of exactly those analytes (but the placeholder-only PLMS index)
        listed = template_analytes(app, service.prefetch["labs"])
        assert listed == service.analytes - {"plms_index"}, service.id
        assert service.prefetch["labs"] == queries(term, service.analytes)["labs"]
        searches = server_searches(term, service.prefetch, date(2026, 11, 22), service.analytes)["labs"]
        assert search_analytes(app, searches) == service.analytes, service.id
    counts = {hook: service.prefetch["labs"].count("|") for hook, service in services.items()}
    assert counts["order-sign"] < counts["order-select"] < counts["patient-view"], counts


def test_an_analyte_follows_the_rules_switched_on():
    everything = create_app(
        "test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, ENABLED_RULES=[f"R{n}" for n in range(1, 25)]
    )
    select = next(s for s in everything.extensions["legmove"].services.values() if s.hook == "order-select")
    assert "egfr" in select.analytes and "egfr" in template_analytes(everything, select.prefetch["labs"])


def _cited_analytes(app, fixture, card) -> set[str]:
    """Analytes of the lab facts a card's evidence cites and of the Observations it names as resources."""
    explanation = card["extension"]["org.legmove-cds.explanation"]
    cited = {e["analyte"] for e in explanation.get("evidence", []) if e.get("kind") in LAB_KINDS}
    term = app.extensions["legmove"].terminology
    by_ref = {f"{r['resourceType']}/{r.get('id')}": r for r in prefetched_resources(fixture["request"])}
    for ref in explanation.get("resources", []):
        resource = by_ref.get(ref)
        if resource and resource["resourceType"] == "Observation":
            found = term.observation_analyte(
                codings_of(resource.get("code")), [resource.get("code", {}).get("text") or ""]
            )
            if found:
                cited.add(found[0].name)
    return cited


def test_every_lab_a_fixture_card_cites_is_of_an_analyte_its_hook_asks_for():
    checked = 0
    for path in FIXTURES:
        fixture = load_fixture(path)
        app = app_for(fixture)
        service = service_of(app, fixture)
        response = app.test_client().post(f"/cds-services/{fixture['service']}", json=fixture["request"])
        assert response.status_code == 200, path
        for card in response.get_json()["cards"]:
            cited = _cited_analytes(app, fixture, card)
            rule = card["extension"]["org.legmove-cds.explanation"]["rule"]
            assert cited <= service.analytes, (
                f"{path.parent.name}/{path.name}: {rule} cites "
                f"{sorted(cited - service.analytes)}, which {service.id} does not ask "
                f"for; declare analytes= on the rule"
            )
            checked += bool(cited)
    assert checked >= 20  # cards that cite a lab at all


def _without_uuids(value):
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


@cache
def _app_searching_every_analyte(config_json: str):
    """The same service, but its fhirServer lab searches ask for every analyte (as before)."""
    app = create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json))
    services = app.extensions["legmove"].services
    every = queries(app.extensions["legmove"].terminology)["labs"]
    for key, service in services.items():
        services[key] = dataclasses.replace(service, analytes=None, prefetch={**service.prefetch, "labs": every})
    return app


@pytest.mark.fhir_server
@pytest.mark.parametrize("path", ORDER_FIXTURES, ids=fixture_id)
def test_order_hooks_give_the_same_cards_as_when_every_analyte_is_searched(fhir_server, path):
    fixture = load_fixture(path)
    if str(fixture.get("fhir_server", "")).startswith("skip"):
        pytest.skip(fixture["fhir_server"])
    prefix = path.stem  # the ids tests/test_fixtures.py gives them: loading twice changes nothing
    resources = prefetched_resources(fixture["request"])
    fhir_server.transaction(namespaced(resources, prefix))
    call = as_server_request(fixture["request"], fhir_server)
    call["context"] = rewrite_references(call["context"], namespace_map(resources, prefix))
    config = json.dumps(fixture.get("config") or {}, sort_keys=True)
    narrow = _app(config).test_client().post(f"/cds-services/{fixture['service']}", json=call)
    wide = _app_searching_every_analyte(config).test_client().post(f"/cds-services/{fixture['service']}", json=call)
    assert narrow.status_code == wide.status_code == 200
    assert _without_uuids(narrow.get_json()) == _without_uuids(wide.get_json())
