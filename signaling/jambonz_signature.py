"""jambonz's signed webhooks: ``Jambonz-Signature: t=<unix time>,v1=<hex>``.

``v1`` is the HMAC-SHA256, keyed with the account's webhook secret, of the
time, a dot and the raw body; a header may carry several ``v1`` values
(while a secret is being rotated). The time bounds a replay.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

HEADER = "jambonz-signature"
MAX_AGE = 300.0  # seconds between jambonz signing and our check: it signs as it sends; clocks drift


def jambonz_signature(secret: str, body: bytes, timestamp: int) -> str:
    """The header's value as jambonz makes it (for simulators and tests)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class JambonzSigning:
    secret: str

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    def verify(self, header: str, body: bytes, now: float | None = None) -> bool:
        fields = [part.strip().partition("=") for part in header.split(",")]
        stamps = [value for name, _, value in fields if name == "t"]
        signatures = [value for name, _, value in fields if name == "v1"]
        if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
            return False
        now = time.time() if now is None else now
        if abs(now - int(stamps[0])) > MAX_AGE:
            return False
        expected = jambonz_signature(self.secret, body, int(stamps[0])).rpartition("v1=")[2]
        return any(hmac.compare_digest(expected, signature) for signature in signatures)
