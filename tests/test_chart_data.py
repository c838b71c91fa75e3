"""Real chart data read right: references, text values, partial dates, stale entries, logging.

The clinical cases are fixtures (fhir_fixtures/, run on both data paths by test_fixtures.py);
these tests check what a fixture cannot express: what the cards say, what is logged, and what
the service asks the FHIR server for.
"""
import logging

from conftest import EXTENSION, ROOT, load_fixture


def _call(client, rule, name):
    fixture = load_fixture(ROOT / "fhir_fixtures" / rule / f"{name}.json")
    response = client.post(f"/cds-services/{fixture['service']}", json=fixture["request"])
    assert response.status_code == 200, response.get_data(as_text=True)
    return {card["extension"][EXTENSION]["rule"]: card for card in response.get_json()["cards"]}


def test_normal_ferritin_in_rls_logs_no_warning(client, caplog):
    """Iron stores in range match no card rule: normal, so nothing at WARNING (it used to log
    'finding iron_stores ... is consumed by no rule' on every such chart)."""
    with caplog.at_level(logging.DEBUG):
        cards = _call(client, "R4", "fires-chart-review")
    assert "R4" in cards and "R2" not in cards
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records
                                                                              if r.levelno >= logging.WARNING]
    assert any("iron_stores" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
