"""Telnyx's webhook signatures: Ed25519 over ``"{telnyx-timestamp}|{raw body}"``, checked with the account's public key.

The key is the base64 public key from the Telnyx portal; the signature is the
base64 ``telnyx-signature-ed25519`` header. A timestamp further than
:data:`TOLERANCE` from now is refused, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
TOLERANCE = 300.0  # seconds either way: Telnyx's own libraries allow five minutes of clock skew and delivery


@dataclass(frozen=True)
class TelnyxSigning:
    public_key: str  # base64, as the portal shows it; empty: requests go unchecked
    clock: Callable[[], float] = time.time

    @property
    def enabled(self) -> bool:
        return bool(self.public_key)

    def verify(self, request) -> bool:
        """Whether ``request`` (a gateway.carriers.SignedRequest) carries a fresh, valid Telnyx signature."""
        signature, stamp = request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
        if not signature or not stamp or not self.public_key:
            return False
        try:
            if abs(self.clock() - int(stamp)) > TOLERANCE:
                return False
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public_key, validate=True))
            key.verify(base64.b64decode(signature, validate=True), stamp.encode() + b"|" + request.body)
        except (ValueError, binascii.Error, InvalidSignature):
            return False
        return True
