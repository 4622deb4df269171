"""Twilio's request signatures, accepted as Twilio's own ``RequestValidator`` accepts them.

The signed string is the URL followed by every form parameter as name + value,
sorted by name and then by value (a repeated name contributes each distinct
value). Twilio's back end signs the URL with or without its port, so both
are tried. A JSON body is not signed as parameters: the URL carries its
``bodySHA256`` instead. By default the key is the account's auth token and
the hash SHA-1; a Webhook Rule may sign with a SharedKey secret and the
algorithm it names in ``X-Twilio-Webhooks-Signature-Settings``.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
BODY_HASH_PARAMETER = "bodySHA256"
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class Algorithm(enum.Enum):
    HMAC_SHA1 = "HMAC_SHA1"
    HMAC_SHA256 = "HMAC_SHA256"

    @property
    def hash(self):
        return hashlib.sha1 if self is Algorithm.HMAC_SHA1 else hashlib.sha256

    @classmethod
    def named_in(cls, settings_header: str | None) -> Algorithm | None:
        """The ``algorithm=`` of a signature-settings header; SHA-1 without one; None for one we do not know."""
        for part in (settings_header or "").split(","):
            name, equals, value = part.partition("=")
            if equals and name.strip() == "algorithm" and value.strip():
                try:
                    return cls(value.strip().upper())
                except ValueError:
                    return None
        return cls.HMAC_SHA1


def twilio_signature(
    secret: str, url: str, params: Iterable[tuple[str, str]] = (), algorithm: Algorithm = Algorithm.HMAC_SHA1
) -> str:
    """The base64 HMAC Twilio sends for ``url`` and the form's (name, value) pairs."""
    payload = url + "".join(name + value for name, value in sorted(set(params)))
    return base64.b64encode(hmac.new(secret.encode(), payload.encode(), algorithm.hash).digest()).decode()


def url_variants(url: str) -> tuple[str, str]:
    """``url`` without its port, and with it (the scheme's default when it names none)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = hostport if parts.port is None else hostport.rsplit(":", 1)[0]
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    bare = parts._replace(netloc=userinfo + at + host).geturl()
    return bare, parts._replace(netloc=f"{userinfo}{at}{host}:{port}").geturl() if port else bare


def signature_valid(
    secret: str,
    signature: str | None,
    url: str,
    params: Iterable[tuple[str, str]] = (),
    *,
    body: bytes | None = None,
    algorithm: Algorithm = Algorithm.HMAC_SHA1,
) -> bool:
    """Whether ``signature`` signs this request; ``body`` is a raw non-form body (checked against ``bodySHA256``)."""
    if not signature or not secret:
        return False
    if body is not None:
        claimed = parse_qs(urlsplit(url).query).get(BODY_HASH_PARAMETER)
        if claimed and not hmac.compare_digest(hashlib.sha256(body).hexdigest().encode(), claimed[0].encode()):
            return False
        params = ()
    params = list(params)
    presented = signature.encode()  # bytes: a non-ASCII header compares unequal instead of raising
    return any(
        hmac.compare_digest(twilio_signature(secret, variant, params, algorithm).encode(), presented)
        for variant in url_variants(url)
    )


@dataclass(frozen=True)
class TwilioSigning:
    """The secrets a deployment's Twilio requests may be signed with."""

    auth_token: str
    shared_key_secret: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.auth_token or self.shared_key_secret)

    def verify(
        self, headers: Mapping[str, str], url: str, params: Iterable[tuple[str, str]] = (), body: bytes | None = None
    ) -> bool:
        """Check a request's signature with the secret and algorithm its headers say Twilio used."""
        settings = headers.get(SETTINGS_HEADER)
        algorithm = Algorithm.named_in(settings)
        secret = self.shared_key_secret if settings is not None else self.auth_token
        if algorithm is None:
            return False
        return signature_valid(secret, headers.get(SIGNATURE_HEADER), url, params, body=body, algorithm=algorithm)
