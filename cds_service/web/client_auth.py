"""Trusting CDS clients (CDS Hooks 2.0 section "Trusting CDS Clients").

Every call carries `Authorization: Bearer <JWT>` signed by the EHR. We accept only asymmetric
ES384/RS384 signatures from configured issuers, with keys we were told about (inline JWKS, a
file, or an allowlisted URL; a token's own `jku` only when it is on that issuer's allowlist),
an `aud` equal to the public URL of the endpoint called (with or without a trailing slash),
numeric `exp`/`iat`/`nbf` checked with leeway, a lifetime `exp - iat` of at most
`JWT_MAX_LIFETIME` (CDS Hooks advises 5 minutes), and every `jti` used once across all workers.
Failure reasons are logged; the client only ever sees a bare 401 (or a 503 when the replay store
cannot be reached).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import requests

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ("ES384", "RS384")
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]  # no `sub`: 2.0 does not define it


class Unauthorized(Exception):
    """The reason is for the log only; the response says nothing that helps an attacker."""


class ReplayStoreUnavailable(Exception):
    """503: the jti store cannot be reached, so no token can be checked for replay."""


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    jwks: dict | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    jku_allowlist: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, iss: str, entry: dict) -> TrustedIssuer:
        issuer = cls(iss, entry.get("jwks"), entry.get("jwks_file"), entry.get("jwks_url"), tuple(entry.get("jku", ())))
        if not (issuer.jwks or issuer.jwks_file or issuer.jwks_url or issuer.jku_allowlist):
            raise ValueError(f"trusted issuer {iss} has no key source (jwks, jwks_file, jwks_url or jku)")
        return issuer


@dataclass
class _CachedKeys:
    keys: jwt.PyJWKSet
    fetched_at: float


@dataclass
class KeyResolver:
    """Finds the verification key for a token; JWKS documents from URLs are cached per process."""

    url_ttl: float = 300.0
    allow_http: bool = False
    _cache: dict[str, _CachedKeys] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key_for(self, issuer: TrustedIssuer, header: dict):
        kid = header.get("kid")
        for key_set in self._key_sets(issuer, header):
            matches = [k for k in key_set.keys if (k.key_id == kid if kid else True)]
            if len(matches) == 1 or (kid and matches):
                return matches[0].key
        raise Unauthorized(f"no key for kid {kid!r} of issuer {issuer.iss}")

    def _key_sets(self, issuer: TrustedIssuer, header: dict):
        if issuer.jwks:
            yield jwt.PyJWKSet.from_dict(issuer.jwks)
        if issuer.jwks_file:
            yield jwt.PyJWKSet.from_dict(json.loads(Path(issuer.jwks_file).read_text(encoding="utf-8")))
        if issuer.jwks_url:
            yield self._fetch(issuer.jwks_url)
        jku = header.get("jku")
        if jku is not None:
            if jku not in issuer.jku_allowlist:
                raise Unauthorized(f"jku {jku!r} is not allowlisted for issuer {issuer.iss}")
            yield self._fetch(jku)

    def _fetch(self, url: str) -> jwt.PyJWKSet:
        if not (url.startswith("https://") or (self.allow_http and url.startswith("http://"))):
            raise Unauthorized("JWKS URL is not https")
        with self._lock:
            cached = self._cache.get(url)
            if cached and time.monotonic() - cached.fetched_at < self.url_ttl:
                return cached.keys
        try:
            response = requests.get(url, timeout=(1.0, 2.0), headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json())
        except (requests.RequestException, ValueError, jwt.PyJWKSetError) as exc:
            raise Unauthorized(f"could not load JWKS from an allowlisted URL: {type(exc).__name__}") from exc
        with self._lock:
            self._cache[url] = _CachedKeys(keys, time.monotonic())
        return keys


class SqliteReplayStore:
    """`jti` seen-set shared by every worker on the host (one SQLite file, a primary key)."""

    def __init__(self, path: str):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS seen_jti (iss TEXT, jti TEXT, expires REAL, PRIMARY KEY (iss, jti))")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def first_use(self, iss: str, jti: str, expires: float) -> bool:
        try:
            db = self._connect()
        except sqlite3.Error as exc:
            raise ReplayStoreUnavailable(f"SQLite replay store: {type(exc).__name__}") from exc
        try:
            db.execute("DELETE FROM seen_jti WHERE expires < ?", (time.time(),))
            db.execute("INSERT INTO seen_jti VALUES (?, ?, ?)", (iss, jti, expires))
            return True
        except sqlite3.IntegrityError:
            return False
        except sqlite3.Error as exc:
            raise ReplayStoreUnavailable(f"SQLite replay store: {type(exc).__name__}") from exc
        finally:
            db.close()

    def ping(self) -> None:
        """Readiness (health.py): the file opens and the table is there; raises otherwise."""
        db = self._connect()
        try:
            db.execute("SELECT count(*) FROM seen_jti WHERE 0")
        finally:
            db.close()


class RedisReplayStore:
    """`jti` seen-set shared by every worker and host that uses the same Redis."""

    def __init__(self, url: str):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)

    def first_use(self, iss: str, jti: str, expires: float) -> bool:
        import redis

        ttl = max(1, int(expires - time.time()) + 1)
        try:
            return bool(self.redis.set(f"legmove:jti:{iss}:{jti}", 1, nx=True, ex=ttl))
        except redis.RedisError as exc:
            raise ReplayStoreUnavailable(f"Redis replay store: {type(exc).__name__}") from exc

    def ping(self) -> None:
        """Readiness (health.py): Redis answers; raises redis.RedisError otherwise."""
        self.redis.ping()


def replay_store(url: str):
    if url.startswith("redis://") or url.startswith("rediss://"):
        return RedisReplayStore(url)
    if url.startswith("sqlite:///"):
        return SqliteReplayStore(url[len("sqlite:///") :])
    raise ValueError(f"unsupported REPLAY_STORE {url!r} (sqlite:///path or redis://host:port/db)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _key_fits(algorithm: str, key) -> bool:
    """RS384 needs an RSA key and ES384 a P-384 key. A token that names one algorithm and the
    other key's kid otherwise fails deep inside the signature check with a TypeError."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm == "RS384":
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)


class ClientVerifier:
    def __init__(
        self,
        issuers: dict[str, dict],
        public_base_url: str,
        leeway: float,
        store,
        resolver: KeyResolver,
        max_lifetime: float = 300,
    ):
        self.issuers = {iss: TrustedIssuer.from_config(iss, entry) for iss, entry in issuers.items()}
        self.public_base_url = public_base_url.rstrip("/")
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.store = store
        self.resolver = resolver

    def verify(self, authorization: str | None, path: str) -> dict:
        """The token's claims, or Unauthorized with the reason (for the log). Every failure of
        verification ends here as Unauthorized, whatever raised it; only an unreachable replay
        store is different (ReplayStoreUnavailable, a 503: the token may be fine)."""
        try:
            return self._verify(authorization, path)
        except (Unauthorized, ReplayStoreUnavailable):
            raise
        except Exception as exc:  # a malformed key or token shape the library did not expect
            raise Unauthorized(f"verification failed: {type(exc).__name__}") from exc

    def _verify(self, authorization: str | None, path: str) -> dict:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # the scheme is case-insensitive (RFC 6750, RFC 9110)
            raise Unauthorized("no bearer token")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {type(exc).__name__}") from exc
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise Unauthorized(f"algorithm {algorithm!r} not allowed")
        claimed = unverified.get("iss")
        issuer = self.issuers.get(claimed) if isinstance(claimed, str) else None
        if issuer is None:
            raise Unauthorized("issuer not trusted")
        for claim in ("exp", "iat", "nbf"):
            if claim in unverified and not _is_number(unverified[claim]):
                raise Unauthorized(f"{claim} is not a number")
        key = self.resolver.key_for(issuer, header)
        if not _key_fits(algorithm, key):
            raise Unauthorized(f"the key named by kid {header.get('kid')!r} does not fit algorithm {algorithm}")
        audience = self.public_base_url + path
        audiences = [audience.rstrip("/"), audience.rstrip("/") + "/"]  # with or without a trailing slash
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audiences,
                issuer=issuer.iss,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"token rejected: {type(exc).__name__}: {exc}") from exc
        if claims["exp"] - claims["iat"] > self.max_lifetime:
            raise Unauthorized(
                f"token lifetime {claims['exp'] - claims['iat']:.0f} s exceeds {self.max_lifetime:.0f} s"
            )
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise Unauthorized("jti is not a non-empty string")
        if not self.store.first_use(issuer.iss, claims["jti"], float(claims["exp"]) + self.leeway):
            raise Unauthorized("jti replayed")
        return claims


def verifier_from_config(config) -> ClientVerifier | None:
    """None in open mode. Enforcing without a public URL or issuers is a start-up error."""
    if not config["CLIENT_AUTH"]:
        return None
    if not config["PUBLIC_BASE_URL"] or not config["TRUSTED_ISSUERS"]:
        raise ValueError("CLIENT_AUTH needs PUBLIC_BASE_URL and at least one TRUSTED_ISSUERS entry")
    resolver = KeyResolver(url_ttl=float(config["JWKS_URL_TTL"]), allow_http=bool(config["JWKS_ALLOW_HTTP"]))
    return ClientVerifier(
        config["TRUSTED_ISSUERS"],
        config["PUBLIC_BASE_URL"],
        float(config["JWT_LEEWAY"]),
        replay_store(config["REPLAY_STORE"]),
        resolver,
        float(config["JWT_MAX_LIFETIME"]),
    )
