"""`legmove-cds` through its real entry point (a subprocess), against a real sekmet-fhir and the
service started with `legmove-cds serve` (gunicorn), both on loopback: `load` a chart, then
`invoke` the hooks with prefetch filled by the client, with `--no-prefetch`, and from a bundle."""

import json
import os
import re
from pathlib import Path

import pytest
import requests

from conftest import FHIR_TOKEN, ROOT, FhirServer, load_fixture
from served_app import ServedService, run_cli

SERTRALINE = ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json"
NO_FERRITIN = ROOT / "fhir_fixtures/R1/fires-no-ferritin.json"
SERTRALINE_PATIENT = load_fixture(SERTRALINE)["request"]["context"]["patientId"]
NO_FERRITIN_PATIENT = load_fixture(NO_FERRITIN)["request"]["context"]["patientId"]

pytestmark = pytest.mark.fhir_server


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    fhir = FhirServer(tmp_path_factory.mktemp("cli-sekmet"))
    service = ServedService(tmp_path_factory.mktemp("cli-service"))
    loaded = run_cli("load", "--fhir-server", fhir.base_url, "--token", FHIR_TOKEN, SERTRALINE, NO_FERRITIN)
    yield fhir, service, loaded
    service.stop()
    fhir.stop()


def rules_of(stdout: str) -> set[str]:
    return {card["extension"]["org.legmove-cds.explanation"]["rule"] for card in json.loads(stdout)["cards"]}


def test_load_puts_the_fixture_charts_on_the_server_and_summarises(servers):
    fhir, _, loaded = servers
    assert loaded.returncode == 0, loaded.stderr
    assert "2 of 2 bundles loaded" in loaded.stdout
    assert SERTRALINE_PATIENT in loaded.stdout and NO_FERRITIN_PATIENT in loaded.stdout
    assert "Condition" in loaded.stdout  # the per-type summary table
    # ids are prefixed with the patient id so charts sharing ids (rls-1) do not overwrite each other
    found = requests.get(f"{fhir.base_url}/Condition?patient={SERTRALINE_PATIENT}", headers=fhir.headers(), timeout=10)
    ids = [e["resource"]["id"] for e in found.json().get("entry", [])]
    assert ids and all(i.startswith(f"{SERTRALINE_PATIENT}.") for i in ids)


def test_invoke_order_sign_fills_prefetch_from_the_fhir_server(servers):
    fhir, service, _ = servers
    result = run_cli(
        "invoke",
        "order-sign",
        "--patient",
        SERTRALINE_PATIENT,
        "--fhir-server",
        fhir.base_url,
        "--token",
        FHIR_TOKEN,
        "--draft",
        SERTRALINE,
        "--service",
        service.base_url,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert rules_of(result.stdout) == {"R3"}


def test_invoke_renders_cards_for_the_terminal(servers):
    fhir, service, _ = servers
    result = run_cli(
        "invoke",
        "order-sign",
        "--patient",
        SERTRALINE_PATIENT,
        "--fhir-server",
        fhir.base_url,
        "--token",
        FHIR_TOKEN,
        "--draft-rxnorm",
        "312941",
        "--service",
        f"{service.base_url}/cds-services",
        "--explain",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1 card(s)" in out and "prefetch key(s) sent" in out
    assert "[WARNING]" in out and "sertraline 50 MG Oral Tablet" in out
    assert "Suggestion 1: Remove this order" in out and "delete MedicationRequest/draft-rxnorm-312941" in out
    assert "Source: Leg-movement CDS: RLS-worsening drug ordered" in out and "/rules/R3" in out
    assert '"rule": "R3"' in out  # --explain shows the extension


def test_invoke_without_prefetch_lets_the_service_read_the_server(servers):
    fhir, service, _ = servers
    result = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        NO_FERRITIN_PATIENT,
        "--fhir-server",
        fhir.base_url,
        "--token",
        FHIR_TOKEN,
        "--no-prefetch",
        "--service",
        service.base_url,
    )
    assert result.returncode == 0, result.stderr
    assert f"for Patient/{NO_FERRITIN_PATIENT}: 1 card(s)\n" in result.stdout  # no prefetch keys sent
    assert "[INFO] RLS on the problem list and no ferritin" in result.stdout
    as_json = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        NO_FERRITIN_PATIENT,
        "--fhir-server",
        fhir.base_url,
        "--token",
        FHIR_TOKEN,
        "--no-prefetch",
        "--service",
        service.base_url,
        "--json",
    )
    assert "R1" in rules_of(as_json.stdout)


def test_invoke_from_a_bundle_needs_no_fhir_server(servers):
    _, service, _ = servers
    result = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        NO_FERRITIN_PATIENT,
        "--bundle",
        NO_FERRITIN,
        "--service",
        service.base_url,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert "R1" in rules_of(result.stdout)
    other = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        "somebody-else",
        "--bundle",
        NO_FERRITIN,
        "--service",
        service.base_url,
        "--json",
    )
    assert other.returncode == 0 and json.loads(other.stdout)["cards"] == [], "another patient's chart gives no card"


def test_a_failed_prefetch_query_is_left_out_so_the_service_does_not_take_it_for_empty(servers):
    fhir, service, _ = servers
    # a wrong token: every client query fails; the service may not read either (no token, tokenless reads
    # are only for loopback in the test config, so it reads with the wrong token and fails) -> 412, no cards
    result = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        NO_FERRITIN_PATIENT,
        "--fhir-server",
        fhir.base_url,
        "--token",
        "wrong-token",
        "--service",
        service.base_url,
    )
    assert result.returncode == 1
    assert "the FHIR server answered 401; left out" in result.stdout
    assert "answered 412" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--patient", "x"], "exactly one of --fhir-server URL or --bundle FILE"),
        (["--patient", "x", "--bundle", str(NO_FERRITIN), "--no-prefetch"], "--no-prefetch needs --fhir-server"),
        (
            ["--patient", "x", "--bundle", str(NO_FERRITIN), "--draft-rxnorm", "312941"],
            "patient-view has no draft orders",
        ),
    ],
)
def test_invoke_refuses_contradictory_options_with_a_clear_message(args, message):
    result = run_cli("invoke", "patient-view", *args, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_invoke_says_when_the_service_cannot_be_reached():
    from conftest import _free_port

    result = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        "x",
        "--bundle",
        NO_FERRITIN,
        "--service",
        f"http://127.0.0.1:{_free_port()}",
        timeout=60,
    )
    assert result.returncode == 1 and "cannot reach the CDS service" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_rxnorm_code_is_a_clear_error():
    result = run_cli(
        "invoke", "order-sign", "--patient", "x", "--bundle", NO_FERRITIN, "--draft-rxnorm", "999999999", timeout=60
    )
    assert result.returncode == 2 and "not in the bundled table" in result.stderr


def test_load_reports_a_refused_bundle_and_exits_non_zero(servers):
    fhir, _, _ = servers
    result = run_cli("load", "--fhir-server", fhir.base_url, "--token", "wrong-token", NO_FERRITIN)
    assert result.returncode == 1
    assert "0 of 1 bundles loaded" in result.stdout and "HTTP 401" in result.stderr


def test_check_config_names_what_is_unsafe_in_production():
    result = run_cli("check-config", timeout=60, LEGMOVE_CONFIG="production")
    assert result.returncode == 1
    assert "OPEN MODE" in result.stdout and "any fhirServer a caller names" in result.stdout
    assert "UNSAFE" in result.stdout and "rules off (4): R9, R10, R23, R24" in result.stdout
    safe = run_cli(
        "check-config",
        timeout=60,
        LEGMOVE_CONFIG="production",
        LEGMOVE_CLIENT_AUTH="true",
        LEGMOVE_PUBLIC_BASE_URL="https://cds.example.org",
        LEGMOVE_TRUSTED_ISSUERS='{"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks"}}',
        LEGMOVE_FHIR_SERVER_ALLOWLIST='["https://ehr.example.org/fhir"]',
        LEGMOVE_FEEDBACK_STORE="postgresql+psycopg://cds:secret@db.example.org/cds",
        LEGMOVE_ENABLED_RULES='["R1", "R3"]',
    )
    assert safe.returncode == 0, safe.stdout
    assert "UNSAFE" not in safe.stdout and "https://ehr.example.org" in safe.stdout
    assert "secret" not in safe.stdout and "cds:***@db.example.org" in safe.stdout
    assert "rules on (2): R1, R3" in safe.stdout


def test_check_config_flags_the_sandbox_issuer_and_a_pinned_date():
    result = run_cli(
        "check-config",
        "--config",
        "development",
        timeout=60,
        LEGMOVE_CLIENT_AUTH="true",
        LEGMOVE_PUBLIC_BASE_URL="http://localhost:8080",
        LEGMOVE_TRUSTED_ISSUERS='{"https://sandbox.cds-hooks.org": {"jwks_url": "https://x"}}',
        LEGMOVE_EVALUATION_DATE="2026-11-22",
    )
    assert result.returncode == 0  # development: reported, not failed
    assert "Sandbox is trusted" in result.stdout and "pinned to 2026-11-22" in result.stdout


def test_rules_prints_the_catalog_that_docs_rules_md_holds():
    result = run_cli("rules", timeout=60)
    assert result.returncode == 0
    assert result.stdout == (ROOT / "docs/rules.md").read_text(encoding="utf-8")


def test_serve_uses_gunicorn_conf_py_of_the_working_directory_and_port_from_the_environment(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(f"accesslog = {str(tmp_path / 'access.log')!r}\n", encoding="utf-8")
    service = ServedService(tmp_path, cwd=tmp_path, options_from_env=True)
    try:
        assert requests.get(f"{service.base_url}/cds-services", timeout=10).status_code == 200
    finally:
        service.stop()
    assert "/cds-services" in (tmp_path / "access.log").read_text(encoding="utf-8")


def test_invoke_signs_as_a_trusted_client_when_the_service_enforces_client_auth(tmp_path):
    """The service verifies the CLI's ES384 JWT like any EHR's: refused without the key, cards with it."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from conftest import _free_port

    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "client.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [dict(public, kid="cli-1", use="sig")]}))
    port = _free_port()
    service = ServedService(
        tmp_path,
        port=port,
        CLIENT_AUTH="true",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        DISCOVERY_REQUIRES_AUTH="true",
        REPLAY_STORE=f"sqlite:///{tmp_path / 'replay.sqlite3'}",
        TRUSTED_ISSUERS=json.dumps({"https://cli.example.org": {"jwks_file": str(tmp_path / "jwks.json")}}),
    )
    try:
        call = [
            "invoke",
            "patient-view",
            "--patient",
            NO_FERRITIN_PATIENT,
            "--bundle",
            NO_FERRITIN,
            "--service",
            service.base_url,
        ]
        unsigned = run_cli(*call, timeout=60)
        assert unsigned.returncode == 1 and "discovery at" in unsigned.stderr and "answered 401" in unsigned.stderr
        signed = run_cli(
            *call,
            "--client-key",
            tmp_path / "client.pem",
            "--client-iss",
            "https://cli.example.org",
            "--client-kid",
            "cli-1",
            "--json",
            timeout=60,
        )
        assert signed.returncode == 0, signed.stderr
        assert "R1" in rules_of(signed.stdout)
    finally:
        service.stop()


def _synthea_dir() -> Path | None:
    """The shared Synthea charts beside the clone (or where LEGMOVE_SYNTHEA_DIR points)."""
    folder = Path(os.environ.get("LEGMOVE_SYNTHEA_DIR", ROOT.parent / "shared" / "data" / "synthea"))
    return folder if folder.is_dir() and any(folder.glob("*.json.gz")) else None


def test_load_a_real_synthea_chart_then_invoke_on_the_id_the_server_gave(servers):
    folder = _synthea_dir()
    if folder is None:
        pytest.skip("no Synthea charts at ../shared/data/synthea (set LEGMOVE_SYNTHEA_DIR)")
    fhir, service, _ = servers
    chart = min(folder.glob("*.json.gz"), key=lambda p: p.stat().st_size)  # gzip, POSTs with urn:uuid references
    loaded = run_cli("load", "--fhir-server", fhir.base_url, "--token", FHIR_TOKEN, chart)
    assert loaded.returncode == 0, loaded.stderr
    assert "1 of 1 bundles loaded" in loaded.stdout
    (patient,) = re.findall(r"patients: (\S+)", loaded.stdout)
    result = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        patient,
        "--fhir-server",
        fhir.base_url,
        "--token",
        FHIR_TOKEN,
        "--service",
        service.base_url,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["cards"], list)


def test_invoke_names_what_discovery_offers_when_the_service_id_does_not_serve_the_hook(servers):
    _, service, _ = servers
    result = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        NO_FERRITIN_PATIENT,
        "--bundle",
        NO_FERRITIN,
        "--service",
        service.base_url,
        "--service-id",
        "no-such-service",
    )
    assert result.returncode == 1
    assert "discovery offers no service 'no-such-service' for hook 'patient-view'" in result.stderr
    assert "legmove-patient-view (patient-view)" in result.stderr
    env_token = run_cli(
        "invoke",
        "patient-view",
        "--patient",
        NO_FERRITIN_PATIENT,
        "--fhir-server",
        servers[0].base_url,
        "--no-prefetch",
        "--service",
        service.base_url,
        "--json",
        FHIR_TOKEN=FHIR_TOKEN,
        CDS_SERVICE_URL="http://127.0.0.1:9",
    )  # --service wins over the env
    assert env_token.returncode == 0, env_token.stderr
    assert "R1" in rules_of(env_token.stdout)
