"""Trusting CDS clients: real ES384/RS384 signatures, JWKS inline, from a file and over HTTP,
and a jti replay store shared across workers (SQLite file, and the local Redis)."""

import json
import threading
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask, jsonify
from werkzeug.serving import make_server

from cds_service.app import create_app
from cds_service.web.client_auth import RedisReplayStore, SqliteReplayStore
from conftest import ROOT, load_fixture

BASE = "https://cds.example.org"
FIXTURE = load_fixture(ROOT / "fhir_fixtures/R3/fires-sertraline-order-sign.json")
PATH = "/cds-services/legmove-order-sign"


def keypair(kind, kid):
    if kind == "EC":
        private = ec.generate_private_key(ec.SECP384R1())
        public = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    public.update(kid=kid, use="sig")
    return private, {"keys": [public]}


EHR_KEY, EHR_JWKS = keypair("EC", "ehr-1")
EPIC_KEY, EPIC_JWKS = keypair("RSA", "epic-1")
URL_KEY, URL_JWKS = keypair("EC", "url-1")
ATTACKER_KEY, ATTACKER_JWKS = keypair("EC", "ehr-1")
EVIL_KEY, EVIL_JWKS = keypair("EC", "evil-1")
JWKS_HITS = {"trusted": 0, "evil": 0}


def served(name, document):
    def view():
        JWKS_HITS[name] += 1
        return jsonify(document)

    return view


@pytest.fixture(scope="module")
def jwks_server():
    """A real HTTP server publishing JWK Sets: the trusted issuer's, and an attacker's."""
    site = Flask("jwks")
    site.add_url_rule("/trusted.json", "trusted", served("trusted", URL_JWKS))
    site.add_url_rule("/evil.json", "evil", served("evil", EVIL_JWKS))
    server = make_server("127.0.0.1", 0, site, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, jwks_server):
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "epic.json").write_text(json.dumps(EPIC_JWKS))
    app = create_app(
        "test",
        LOG_LEVEL="WARNING",
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL=BASE,
        JWKS_ALLOW_HTTP=True,
        REPLAY_STORE=f"sqlite:///{tmp / 'replay.sqlite3'}",
        TRUSTED_ISSUERS={
            "https://ehr.example.org": {"jwks": EHR_JWKS},
            "https://epic.example.org/fhir": {"jwks_file": str(tmp / "epic.json")},
            "https://url.example.org": {"jwks_url": f"{jwks_server}/trusted.json"},
        },
    )
    return app.test_client()


def token(key=EHR_KEY, alg="ES384", iss="https://ehr.example.org", aud=BASE + PATH, headers=None, **claims):
    now = int(time.time())
    body = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": "ehr-1", **(headers or {})})


def call(client, bearer, path=PATH):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer is not None else {}
    return client.post(path, json=FIXTURE["request"], headers=headers)


def assert_401(response):
    assert response.status_code == 401
    assert response.get_json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "security", "diagnostics": "unauthorized"}],
    }


def test_valid_es384_token_from_inline_jwks(secured):
    assert call(secured, token()).status_code == 200


def test_valid_rs384_token_from_a_jwks_file_with_epic_style_nbf_and_sub(secured):
    now = int(time.time())
    bearer = token(
        EPIC_KEY,
        "RS384",
        "https://epic.example.org/fhir",
        headers={"kid": "epic-1"},
        nbf=now - 300,
        sub="client-id-123",
    )
    assert call(secured, bearer).status_code == 200


def test_valid_token_with_keys_from_an_allowlisted_url(secured):
    assert call(secured, token(URL_KEY, iss="https://url.example.org", headers={"kid": "url-1"})).status_code == 200


def test_audience_may_be_an_array(secured):
    assert call(secured, token(aud=["https://other.example.org", BASE + PATH])).status_code == 200


@pytest.mark.parametrize("bearer", [None, "", "not-a-jwt", "a.b.c"])
def test_missing_or_garbage_tokens(secured, bearer):
    assert_401(call(secured, bearer))


def test_alg_none_is_refused(secured):
    now = int(time.time())
    unsigned = jwt.encode(
        {"iss": "https://ehr.example.org", "aud": BASE + PATH, "iat": now, "exp": now + 60, "jti": "x"},
        None,
        algorithm="none",
    )
    assert_401(call(secured, unsigned))


def test_hmac_with_the_public_key_as_secret_is_refused(secured):
    header = json.dumps({"alg": "HS384", "typ": "JWT", "kid": "ehr-1"})
    import base64
    import hashlib
    import hmac

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    payload = json.dumps(
        {"iss": "https://ehr.example.org", "aud": BASE + PATH, "iat": now, "exp": now + 60, "jti": "h"}
    )
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    secret = json.dumps(EHR_JWKS["keys"][0]).encode()
    forged = signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha384).digest())
    assert_401(call(secured, forged))


def test_es256_is_not_on_the_allowlist(secured):
    other = ec.generate_private_key(ec.SECP256R1())
    assert_401(call(secured, token(other, "ES256")))


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": BASE + "/cds-services/legmove-patient-view"},  # a token for another endpoint
        {"aud": "https://cds.example.org"},
        {"iss": "https://unknown.example.org"},
        {"exp": int(time.time()) - 120},  # expired beyond the 60 s leeway
        {"iat": int(time.time()) + 600},  # issued in the future
        {"nbf": int(time.time()) + 600},
        {"jti": None},
        {"exp": None},
        {"iat": None},
        {"aud": None},
    ],
)
def test_claims_are_checked(secured, claims):
    assert_401(call(secured, token(**claims)))


def test_expiry_within_leeway_is_accepted(secured):
    assert call(secured, token(exp=int(time.time()) - 20)).status_code == 200


def test_signature_by_another_key_is_refused(secured):
    assert_401(call(secured, token(ATTACKER_KEY)))


def test_a_jku_that_is_not_allowlisted_is_never_fetched(secured, jwks_server):
    forged = token(
        EVIL_KEY, iss="https://url.example.org", headers={"kid": "evil-1", "jku": f"{jwks_server}/evil.json"}
    )
    assert_401(call(secured, forged))
    assert JWKS_HITS["evil"] == 0


def test_replayed_jti_is_refused(secured):
    bearer = token()
    assert call(secured, bearer).status_code == 200
    assert_401(call(secured, bearer))


def test_preflight_and_discovery_stay_open(secured):
    preflight = secured.options(
        PATH,
        headers={
            "Origin": "https://ehr.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code in (200, 204)
    assert secured.get("/cds-services").status_code == 200


def test_discovery_can_require_a_token(tmp_path):
    app = create_app(
        "test",
        LOG_LEVEL="WARNING",
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL=BASE,
        DISCOVERY_REQUIRES_AUTH=True,
        REPLAY_STORE=f"sqlite:///{tmp_path / 'r.sqlite3'}",
        TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": EHR_JWKS}},
    )
    client = app.test_client()
    assert_401(client.get("/cds-services"))
    ok = client.get("/cds-services", headers={"Authorization": f"Bearer {token(aud=BASE + '/cds-services')}"})
    assert ok.status_code == 200


def test_enforcing_without_issuers_stops_start_up():
    with pytest.raises(ValueError, match="PUBLIC_BASE_URL"):
        create_app("test", CLIENT_AUTH=True, PUBLIC_BASE_URL=None)


def test_sqlite_replay_store_is_shared_between_workers(tmp_path):
    path = str(tmp_path / "replay.sqlite3")
    worker_a, worker_b = SqliteReplayStore(path), SqliteReplayStore(path)
    assert worker_a.first_use("iss", "j1", time.time() + 60)
    assert not worker_b.first_use("iss", "j1", time.time() + 60)
    assert worker_b.first_use("other-iss", "j1", time.time() + 60)


def test_redis_replay_store_against_the_local_redis():
    import redis

    try:
        redis.Redis(socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.fail("the development and CI machines run Redis on 127.0.0.1:6379")
    jti = str(uuid.uuid4())
    worker_a, worker_b = RedisReplayStore("redis://127.0.0.1:6379/0"), RedisReplayStore("redis://127.0.0.1:6379/0")
    assert worker_a.first_use("iss", jti, time.time() + 5)
    assert not worker_b.first_use("iss", jti, time.time() + 5)


def test_feedback_follows_the_same_policy_with_its_own_audience(secured):
    """Checklist 10: feedback carries a client JWT whose aud is the .../feedback URL."""
    feedback_path = "/cds-services/legmove-patient-view/feedback"
    body = {"feedback": [{"card": "unknown", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}]}

    def send(bearer):
        return secured.post(feedback_path, json=body, headers={"Authorization": f"Bearer {bearer}"})

    assert_401(secured.post(feedback_path, json=body))
    assert_401(send(token()))  # a token minted for the service endpoint is not valid here
    assert send(token(aud=BASE + feedback_path)).status_code == 200


# ---- hostile networks: key-type confusion and JWT details -----------------------------------


@pytest.mark.parametrize(
    "signer, alg, iss, kid",
    [
        (EPIC_KEY, "RS384", "https://ehr.example.org", "ehr-1"),  # RS384, but the kid names the EC key
        (EHR_KEY, "ES384", "https://epic.example.org/fhir", "epic-1"),  # ES384, but the kid names the RSA key
    ],
    ids=["rs384-with-ec-kid", "es384-with-rsa-kid"],
)
def test_key_type_confusion_is_a_bare_401_without_an_error(secured, caplog, signer, alg, iss, kid):
    """Was a TypeError outside the 401 path: 500 and an ERROR with stack frames."""
    assert_401(call(secured, token(signer, alg, iss, headers={"kid": kid})))
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "does not fit algorithm" in caplog.text


def test_token_lifetime_is_capped(secured, tmp_path):
    """A 10-year token was accepted; exp - iat may be at most JWT_MAX_LIFETIME (default 300 s)."""
    now = int(time.time())
    assert_401(call(secured, token(iat=now, exp=now + 10 * 365 * 86400)))
    assert_401(call(secured, token(iat=now, exp=now + 301)))
    assert call(secured, token(iat=now, exp=now + 300)).status_code == 200
    longer = create_app(
        "test",
        LOG_LEVEL="WARNING",
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL=BASE,
        JWT_MAX_LIFETIME=3600,
        REPLAY_STORE=f"sqlite:///{tmp_path / 'r.sqlite3'}",
        TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": EHR_JWKS}},
    ).test_client()
    assert call(longer, token(iat=now, exp=now + 3600)).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": str(int(time.time()) + 120)},
        {"iat": str(int(time.time()))},
        {"nbf": str(int(time.time()) - 10)},
        {"exp": True},
        {"exp": [int(time.time()) + 120]},
    ],
    ids=["exp-string", "iat-string", "nbf-string", "exp-boolean", "exp-list"],
)
def test_non_numeric_time_claims_are_refused(secured, claims):
    """A string `exp` was accepted (PyJWT converts it); RFC 7519 says NumericDate."""
    assert_401(call(secured, token(**claims)))


def test_audience_with_or_without_a_trailing_slash(secured):
    assert call(secured, token(aud=BASE + PATH + "/")).status_code == 200
    assert call(secured, token(aud=BASE + PATH)).status_code == 200
    assert_401(call(secured, token(aud=BASE + PATH + "//")))


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(secured, scheme):
    """RFC 6750 section 2.1 and RFC 9110 section 11.1: the scheme name is case-insensitive."""
    response = secured.post(PATH, json=FIXTURE["request"], headers={"Authorization": f"{scheme} {token()}"})
    assert response.status_code == 200


def test_unreachable_redis_replay_store_is_503_with_a_clear_log_line(caplog):
    """Was a 500 with a stack trace. Nothing listens on the port: the token may be fine, but its
    jti cannot be checked, so the call is refused as retryable, and the log says why."""
    from conftest import _free_port

    app = create_app(
        "test",
        LOG_LEVEL="WARNING",
        CLIENT_AUTH=True,
        PUBLIC_BASE_URL=BASE,
        REPLAY_STORE=f"redis://127.0.0.1:{_free_port()}/0",
        TRUSTED_ISSUERS={"https://ehr.example.org": {"jwks": EHR_JWKS}},
    )
    response = call(app.test_client(), token())
    assert response.status_code == 503 and response.get_json()["issue"][0]["code"] == "transient"
    assert "replay store (REPLAY_STORE) is unreachable" in caplog.text
    assert "Traceback" not in caplog.text and not any(getattr(r, "frames", None) for r in caplog.records)
