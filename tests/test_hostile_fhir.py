"""A hostile or broken FHIR server, for real, on loopback: it drips bytes under a Content-Length,
stalls its headers, sends 20 MB bundles, redirects, or hides behind userinfo in the fhirServer
URL. The deadline holds, memory stays bounded, the token goes nowhere it should not."""

import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from cds_service.app import create_app
from cds_service.fhir import url_policy
from conftest import ROOT, fired_rules, load_fixture
from serving import RawServer, Service, rss_mb, send_json

R1 = load_fixture(ROOT / "fhir_fixtures/R1/fires-no-ferritin.json")
TOKEN = "hostile-test-token"
DEADLINE = 2.0


def hook_call(fhir_server: str, prefetch: dict | None = None) -> dict:
    body = copy.deepcopy(R1["request"])
    body["prefetch"] = prefetch or {}
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "legmove-cds",
    }
    return body


def empty_bundle() -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "searchset", "total": 0}).encode()


def drip_body(conn, head):
    """Announces 100 000 bytes, then sends one every 0.2 s: each byte beats any read timeout."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(300):
        conn.sendall(b" ")
        time.sleep(0.2)


def drip_headers(conn, head):
    """The status line, then header bytes one at a time."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(300):
        conn.sendall(b"X")
        time.sleep(0.2)


def big_bundle(size: int) -> bytes:
    """A searchset of about `size` bytes of Observations no rule reads (heart rates)."""
    entry = {
        "resource": {
            "resourceType": "Observation",
            "id": "hr",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": "Patient/r1-fires-no-ferritin"},
            "effectiveDateTime": "2026-01-01",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        }
    }
    template = json.dumps(entry)
    count = size // (len(template) + 8)
    entries = ",".join(template.replace('"id": "hr"', f'"id": "hr-{i}"') for i in range(count))
    return ('{"resourceType": "Bundle", "type": "searchset", "entry": [' + entries + "]}").encode()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    server = Service(
        tmp_path_factory.mktemp("hostile-fhir"),
        workers=1,
        LEGMOVE_FHIR_DEADLINE=str(DEADLINE),
        LEGMOVE_FHIR_READ_TIMEOUT="1.0",
        LEGMOVE_FHIR_CONNECT_TIMEOUT="1.0",
    )
    yield server
    server.stop()


def post(service, body, timeout=30):
    started = time.monotonic()
    response = requests.post(f"{service.base}/cds-services/legmove-patient-view", json=body, timeout=timeout)
    return response, time.monotonic() - started


@pytest.mark.parametrize("handler", [drip_body, drip_headers], ids=["content-length-body", "headers"])
def test_a_drip_feeding_fhir_server_cannot_hold_a_call_past_its_deadline(service, handler):
    """Two drip-fed calls at once (one per sync worker was enough to take the service down) and a
    normal call beside them: the drip-fed ones answer 412 within deadline + 1 s, the normal one at once."""
    dripper = RawServer(handler)
    try:
        with ThreadPoolExecutor(3) as pool:
            drips = [pool.submit(post, service, hook_call(f"{dripper.base}/fhir")) for _ in range(2)]
            time.sleep(0.3)
            normal, normal_s = post(service, R1["request"])
            results = [job.result() for job in drips]
        assert normal.status_code == 200 and fired_rules(normal.json()) == {"R1"} and normal_s < 2.0, normal_s
        for response, elapsed in results:
            assert response.status_code == 412, response.text
            assert "did not provide them" in response.json()["issue"][0]["diagnostics"]
            assert elapsed < DEADLINE + 1.0, f"drip-fed call took {elapsed:.2f} s"
    finally:
        dripper.close()


@pytest.mark.slow
@pytest.mark.parametrize("size", [20_000_000, 7_500_000], ids=["20MB-over-the-cap", "7.5MB-under-the-cap"])
def test_huge_bundles_keep_worker_memory_bounded_and_the_deadline(service, size):
    """Every query answers a huge bundle (8 keys per call), 20 calls, 4 at a time: worker RSS stays
    under 250 MB (20 MB bundles grew it to 846 MB before) and no call outlives its deadline by more
    than the JSON parses under way when it passed. 20 MB is over the per-response cap (refused
    unread); 7.5 MB is under it, so the process-wide memory budget does the bounding."""
    payload = big_bundle(size)
    bulky = RawServer(lambda conn, head: send_json(conn, payload))
    (worker,) = service.worker_pids()
    before = rss_mb(worker)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(worker))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: post(service, hook_call(f"{bulky.base}/fhir"), timeout=60), range(20)))
    finally:
        done.set()
        sampler.join()
        bulky.close()
    after = rss_mb(worker)
    slowest = max(elapsed for _, elapsed in results)
    print(
        f"worker RSS before {before:.0f} MB, peak {peak[0]:.0f} MB, after {after:.0f} MB; slowest call {slowest:.2f} s"
    )
    assert all(response.status_code in (200, 412) for response, _ in results), [r.status_code for r, _ in results]
    assert peak[0] < 250 and after < 250, (before, peak[0], after)
    assert slowest < DEADLINE + 4.0, slowest  # the parses under way when the deadline passed (CPU-bound)
    normal, elapsed = post(service, R1["request"])
    assert normal.status_code == 200 and elapsed < 2.0


# ---- redirects -----------------------------------------------------------------------------


@pytest.fixture()
def app_client():
    return create_app("test", LOG_LEVEL="WARNING", FHIR_DEADLINE=DEADLINE, FHIR_READ_TIMEOUT=1.0).test_client()


def test_redirects_are_never_followed(app_client):
    """A 302 to a path outside the base, to another origin, and to itself: one request reaches the
    redirecting server per query, none reaches the other origin, and the call is a 412."""
    other = RawServer(lambda conn, head: send_json(conn, empty_bundle()))
    targets = {"outside": "/admin/Condition", "origin": f"{other.base}/fhir/Condition", "self": "/fhir/Condition"}
    try:
        for name, location in targets.items():
            redirector = RawServer(
                lambda conn, head, where=location: send_json(conn, b"", "302 Found", f"Location: {where}\r\n")
            )
            try:
                body = hook_call(
                    f"{redirector.base}/fhir",
                    prefetch={k: v for k, v in R1["request"]["prefetch"].items() if k != "conditions"},
                )
                response = app_client.post("/cds-services/legmove-patient-view", json=body)
                assert response.status_code == 412, (name, response.get_data(as_text=True))
                assert len(redirector.heads) == 1, (name, len(redirector.heads))  # 30 hops x 8 keys before
            finally:
                redirector.close()
        assert other.heads == [], "the token went to another origin"
    finally:
        other.close()


# ---- userinfo and the allowlists ------------------------------------------------------------


@pytest.mark.parametrize(
    "url, base, allowed",
    [
        ("https://ehr.example.org/fhir", "https://ehr.example.org", True),
        ("https://ehr.example.org:443/fhir/Patient/1", "https://ehr.example.org/fhir", True),
        ("https://EHR.example.org/fhir?_count=2", "https://ehr.example.org/fhir/", True),
        ("https://ehr.example.org:443@attacker.example/fhir", "https://ehr.example.org", False),
        ("https://user:pw@ehr.example.org/fhir", "https://ehr.example.org", False),
        ("http://localhost:1@other-host/fhir", "http://localhost:*", False),
        ("http://localhost:4711/fhir", "http://localhost:*", True),
        ("https://ehr.example.org.attacker.example/fhir", "https://ehr.example.org", False),
        ("https://ehr.example.org:8443/fhir", "https://ehr.example.org", False),
        ("http://ehr.example.org/fhir", "https://ehr.example.org", False),
        ("https://ehr.example.org/fhirx", "https://ehr.example.org/fhir", False),
        ("https://ehr.example.org/fhir/../admin", "https://ehr.example.org/fhir", False),
        ("https://ehr.example.org/fhir/%2e%2e/admin", "https://ehr.example.org/fhir", False),
        ("https://ehr.example.org\\@attacker.example/fhir", "https://ehr.example.org", False),
        ("https://ehr.example.org:99999/fhir", "https://ehr.example.org", False),
        ("https://ehr.example.org/fhir", "*", True),
        ("https://a@ehr.example.org/fhir", "*", False),
        ("ftp://ehr.example.org/fhir", "*", False),
    ],
)
def test_url_policy_compares_parsed_parts(url, base, allowed):
    assert url_policy.is_under(url, base) is allowed


def test_userinfo_cannot_walk_around_the_allowlist():
    """`http://<allowed host:port>@<attacker>/fhir` passed the string-prefix check and the service
    built cards from the attacker's data. Now: 412, and the attacker sees no request."""
    attacker = RawServer(lambda conn, head: send_json(conn, empty_bundle()), host="127.0.0.2")
    honest = RawServer(lambda conn, head: send_json(conn, empty_bundle()))
    try:
        guarded = create_app("test", LOG_LEVEL="WARNING", FHIR_SERVER_ALLOWLIST=[honest.base]).test_client()
        open_dev = create_app("development", LOG_LEVEL="WARNING", FEEDBACK_STORE=None).test_client()
        for client, server in (
            (guarded, f"http://127.0.0.1:{honest.port}@127.0.0.2:{attacker.port}/fhir"),
            (open_dev, f"http://localhost:1@127.0.0.2:{attacker.port}/fhir"),
        ):
            response = client.post("/cds-services/legmove-patient-view", json=hook_call(server))
            assert response.status_code == 412, response.get_data(as_text=True)
        assert attacker.heads == []
        response = guarded.post("/cds-services/legmove-patient-view", json=hook_call(f"{honest.base}/fhir"))
        assert response.status_code == 200 and len(honest.heads) > 0
    finally:
        attacker.close()
        honest.close()


def test_a_next_link_with_userinfo_is_not_followed(app_client):
    """The same trick in a `next` link: not followed, the key is incomplete, R1 stays silent."""
    attacker = RawServer(lambda conn, head: send_json(conn, empty_bundle()), host="127.0.0.2")
    honest = RawServer(lambda conn, head: send_json(conn, empty_bundle()))
    try:
        prefetch = copy.deepcopy(R1["request"]["prefetch"])
        prefetch["labs"]["link"] = [
            {
                "relation": "next",
                "url": f"http://127.0.0.1:{honest.port}@127.0.0.2:{attacker.port}/fhir/Observation?p=2",
            }
        ]
        response = app_client.post(
            "/cds-services/legmove-patient-view", json=hook_call(f"http://127.0.0.1:{honest.port}/fhir", prefetch)
        )
        assert response.status_code == 200 and "R1" not in fired_rules(response.get_json())
        assert attacker.heads == []
    finally:
        attacker.close()
        honest.close()
