"""Vonage's signed webhooks: an HS256 JWT in ``Authorization: Bearer``, keyed with the account's signature secret.

The token's claims carry ``iat`` (when Vonage signed) and ``payload_hash``
(the SHA-256 hex digest of the request body), so a valid token also vouches
for the body. Checked here with the standard library: HS256 is one HMAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

MAX_AGE = 300.0  # seconds a token stays good after its iat: Vonage signs each request as it sends it; clocks drift


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def vonage_token(secret: str, body: bytes, issued_at: float) -> str:
    """A token as Vonage signs one (for simulators and tests)."""
    header = _b64url_text(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"iat": int(issued_at), "jti": "t", "iss": "Vonage", "payload_hash": hashlib.sha256(body).hexdigest()}
    payload = _b64url_text(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url_text(signature)}"


@dataclass(frozen=True)
class VonageSigning:
    secret: str

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def verify(self, authorization: str, body: bytes, now: float | None = None) -> bool:
        """Whether ``authorization`` is ``Bearer <token>`` signed with our secret, recent, and for this body."""
        scheme, _, token = authorization.partition(" ")
        parts = token.strip().split(".")
        if scheme.lower() != "bearer" or len(parts) != 3:
            return False
        try:
            header, claims, signature = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1])), _b64url(parts[2])
        except (ValueError, binascii.Error, RecursionError):
            return False
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return False  # never another algorithm (or "none") than the one we can check
        expected = hmac.new(self.secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            return False
        issued_at = claims.get("iat")
        now = time.time() if now is None else now
        if not isinstance(issued_at, int | float) or abs(now - issued_at) > MAX_AGE:
            return False
        digest = claims.get("payload_hash")
        return isinstance(digest, str) and hmac.compare_digest(digest, hashlib.sha256(body).hexdigest())
