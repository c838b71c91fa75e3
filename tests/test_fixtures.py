"""Every rule's firing and non-firing fixtures, through prefetch, over HTTP and through a real FHIR server.

Each fixture pins its whole answer: `expect.cards` lists exactly the cards the request gives, by rule,
indicator, variant and number of suggestions (tests/fixture_pins.py says what each means), compared as a
multiset. A silent fixture also names its near-miss: `near_miss.varies`, the firing fixture of the same
rule it differs from, and `near_miss.derived`, findings that must have been derived for the request (the
`derived_findings` spy records them from the engine), so an empty answer for the wrong reason (a request
that never reached the rule's inputs) fails.

`expect.fires` / `expect.silent` stay: they say which rules a fixture is about, and the rule catalog
(`legmove-cds rules`) lists fixtures by them; they must agree with `expect.cards`.

A fixture may carry a `config` (e.g. ENABLED_RULES for a rule that is off by default, or
KNOWLEDGE_OVERRIDES for the AASM 2024 profile); it then runs against an app built with it.
"""

import copy
import json
import threading
from functools import cache

import pytest
import requests
from werkzeug.serving import make_server

from cds_service.app import create_app
from cds_service.authoring.rulebook import REGISTRY
from conftest import (
    FIXTURES,
    as_server_request,
    assert_valid_cds_response,
    fixture_id,
    load_fixture,
    namespace_map,
    namespaced,
    prefetched_resources,
    rewrite_references,
)
from fixture_pins import card_keys, finding_names, is_silent_fixture, rule_of, sorted_cards

CARD_FIELDS = {"rule": str, "indicator": str, "variant": str, "suggestions": int}
NEAR_MISS_FIELDS = {"varies", "derived"}
SILENT_FIXTURES = [p for p in FIXTURES if is_silent_fixture(p.stem)]


@cache
def _configured_app(config_json: str):
    return create_app("test", LOG_LEVEL="WARNING", FEEDBACK_STORE=None, **json.loads(config_json))


@cache
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


def _describe(keys: list[dict]) -> str:
    return ", ".join(f"{k['rule']}/{k['indicator']}/{k['variant'] or '-'}/{k['suggestions']}" for k in keys) or "none"


def assert_expected_cards(fixture, response, derived=None):
    """The answer is exactly the pinned cards; with the `derived_findings` spy (cleared before the
    call), every finding the fixture's near-miss names was derived for this request."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert_valid_cds_response(body)
    got, expected = card_keys(body), sorted_cards(fixture["expect"]["cards"])
    assert got == expected, (
        f"{fixture['description']}\n  expected cards: {_describe(expected)}\n  got cards:      {_describe(got)}"
    )
    if derived is not None:
        missing = sorted(set(fixture.get("near_miss", {}).get("derived", [])) - derived.names())
        reached = "" if derived.evaluations else " (the request never reached the rule engine)"
        assert not missing, (
            f"{fixture['description']}\n  findings the near-miss names but not derived{reached}: {missing}"
        )


@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_through_prefetch(client, derived_findings, path):
    fixture = load_fixture(path)
    response = client_for(fixture, client).post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert_expected_cards(fixture, response, derived_findings)


class _HttpAnswer:
    """The slice of a Flask test response that assert_expected_cards reads, from a real HTTP response."""

    def __init__(self, response):
        self.status_code, self._response = response.status_code, response

    def get_json(self):
        return self._response.json()

    def get_data(self, as_text=False):
        return self._response.text


@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_over_http(derived_findings, path):
    fixture = load_fixture(path)
    base = _http_server(json.dumps(fixture.get("config") or {}, sort_keys=True))
    response = requests.post(f"{base}/cds-services/{fixture['service']}", json=fixture["request"], timeout=30)
    assert response.headers["Content-Type"].startswith("application/json")
    assert_expected_cards(fixture, _HttpAnswer(response), derived_findings)


@pytest.mark.fhir_server
@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_through_fhir_server(client, fhir_server, derived_findings, path):
    fixture = load_fixture(path)
    if str(fixture.get("fhir_server", "")).startswith("skip"):
        pytest.skip(fixture["fhir_server"])
    request = fixture["request"]
    fhir_server.transaction(namespaced(prefetched_resources(request), path.stem))
    call = as_server_request(request, fhir_server)
    # a draft may refer to a resource that now lives on the server under its namespaced id
    call["context"] = rewrite_references(call["context"], namespace_map(prefetched_resources(request), path.stem))
    derived_findings.clear()
    response = client_for(fixture, client).post(f"/cds-services/{fixture['service']}", json=call)
    assert_expected_cards(fixture, response, derived_findings)


# ---- the pins themselves ------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=fixture_id)
def test_fixture_pins_well_formed_cards(path):
    fixture = load_fixture(path)
    cards = fixture["expect"]["cards"]
    assert isinstance(cards, list)
    for card in cards:
        assert set(card) == set(CARD_FIELDS), f"a pinned card has exactly {sorted(CARD_FIELDS)}: {card}"
        assert all(
            isinstance(card[name], kind) and not isinstance(card[name], bool) for name, kind in CARD_FIELDS.items()
        ), card
        assert card["rule"] in REGISTRY and REGISTRY[card["rule"]].stratum == "card", card
        assert card["indicator"] in ("info", "warning", "critical") and card["suggestions"] >= 0, card
    fired = rule_of(cards)
    assert set(fixture["expect"]["fires"]) <= fired, "every rule in `fires` has a pinned card"
    assert not set(fixture["expect"]["silent"]) & fired, "no rule in `silent` has a pinned card"
    rule = path.parent.name
    if is_silent_fixture(path.stem):
        assert rule in fixture["expect"]["silent"] and rule not in fired, f"a silent fixture pins no {rule} card"
    else:
        assert path.stem.startswith("fires-") and rule in fired, f"a firing fixture pins a {rule} card"
        assert "near_miss" not in fixture, "only a silent fixture names a near-miss"


@pytest.mark.parametrize("path", SILENT_FIXTURES, ids=fixture_id)
def test_silent_fixture_names_its_near_miss(path):
    fixture = load_fixture(path)
    near_miss = fixture.get("near_miss")
    assert isinstance(near_miss, dict) and set(near_miss) <= NEAR_MISS_FIELDS and near_miss, (
        f"a silent fixture says which near-miss it is: {sorted(NEAR_MISS_FIELDS)}"
    )
    varied = path.parent / f"{near_miss['varies']}.json"
    assert near_miss["varies"].startswith("fires-") and varied.is_file(), f"{varied.name}: no such firing fixture"
    assert path.parent.name in rule_of(load_fixture(varied)["expect"]["cards"]), (
        f"{varied.name} does not fire {path.parent.name}"
    )
    derived = near_miss.get("derived", [])
    assert isinstance(derived, list) and len(set(derived)) == len(derived)
    assert set(derived) <= finding_names(), f"unknown finding names: {sorted(set(derived) - finding_names())}"


def test_every_card_rule_has_a_firing_and_a_non_firing_fixture():
    fixtures = {p: load_fixture(p) for p in FIXTURES}
    for rule_id, spec in REGISTRY.items():
        if spec.stratum != "card":
            continue
        assert any(rule_id in rule_of(f["expect"]["cards"]) for f in fixtures.values()), (
            f"{rule_id} has no firing fixture"
        )
        assert any(
            p.parent.name == rule_id and is_silent_fixture(p.stem) and f.get("near_miss") for p, f in fixtures.items()
        ), f"{rule_id} has no non-firing fixture with its near-miss"


# ---- the check can fail -------------------------------------------------------------------


def test_the_pin_rejects_a_missing_an_unlisted_and_a_changed_card(client, derived_findings):
    fixture = load_fixture(next(p for p in FIXTURES if fixture_id(p) == "R19/fires-pregnancy"))
    response = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert_expected_cards(fixture, response, derived_findings)
    cards = fixture["expect"]["cards"]
    assert len(cards) == 2
    changed = [dict(cards[0], variant="rls"), dict(cards[0], indicator="warning"), dict(cards[0], suggestions=0)]
    for wrong in (
        [cards[0]],
        cards + [cards[0]],
        [changed[0], cards[1]],
        [changed[1], cards[1]],
        [changed[2], cards[1]],
        [],
    ):
        pinned = copy.deepcopy(fixture)
        pinned["expect"]["cards"] = wrong
        with pytest.raises(AssertionError, match="expected cards"):
            assert_expected_cards(pinned, response)


def test_the_near_miss_check_rejects_a_finding_that_was_not_derived(client, derived_findings):
    fixture = load_fixture(next(p for p in FIXTURES if fixture_id(p) == "R1/silent-rls-resolved"))
    response = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert_expected_cards(fixture, response, derived_findings)
    pinned = copy.deepcopy(fixture)
    pinned["near_miss"]["derived"] = ["rls"]  # resolved RLS: the finding is not derived
    with pytest.raises(AssertionError, match="not derived: \\['rls'\\]"):
        assert_expected_cards(pinned, response, derived_findings)


def test_the_spy_records_findings_without_changing_the_answer(client, derived_findings):
    fixture = load_fixture(next(p for p in FIXTURES if fixture_id(p) == "R1/fires-no-ferritin"))
    spied = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"]).get_json()
    assert {"rls", "iron_check_due"} <= derived_findings.names() and "rls" in derived_findings.from_chart()
    assert "iron_check_due" not in derived_findings.from_chart(), "a review due on patient-view rests on the hook"
    with derived_findings.paused():
        plain = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"]).get_json()
    assert card_keys(spied) == card_keys(plain) == sorted_cards(fixture["expect"]["cards"])
    for body in (spied, plain):
        for card in body["cards"]:
            card.pop("uuid")
            for suggestion in card.get("suggestions", []):
                suggestion.pop("uuid")
    assert spied == plain
