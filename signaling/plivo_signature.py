"""Plivo's request signatures (V3), accepted as Plivo's own SDK accepts them.

``X-Plivo-Signature-V3`` is base64 HMAC-SHA256, keyed with the account's auth
token, of ``"{signed URL}.{X-Plivo-Signature-V3-Nonce}"``. For a POST with form
fields the signed URL is the URL without its query, then ``?``, the query's
pairs sorted as ``name=value`` joined by ``&`` (a ``.`` after them when there
are any), then every form field sorted as ``namevalue``; with no form fields
it is the URL with its query sorted the same way. Repeated names contribute
each value, sorted. The header may hold several signatures, comma-separated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

SIGNATURE_HEADER = "x-plivo-signature-v3"
NONCE_HEADER = "x-plivo-signature-v3-nonce"


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for name, value in pairs:
        grouped[name].append(value)
    return {name: sorted(values) for name, values in grouped.items()}


def signed_url(url: str, form: Iterable[tuple[str, str]] = ()) -> str:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = _grouped(parse_qsl(parts.query, keep_blank_values=True))
    query_text = "&".join(f"{name}={value}" for name in sorted(query) for value in query[name])
    fields = _grouped(form)
    if fields:
        tail = "".join(f"{name}{value}" for name in sorted(fields) for value in fields[name])
        return f"{base}?{query_text}{'.' if query_text else ''}{tail}"
    return f"{base}?{query_text}" if query_text else base


def plivo_signature(auth_token: str, url: str, nonce: str, form: Iterable[tuple[str, str]] = ()) -> str:
    payload = f"{signed_url(url, form)}.{nonce}".encode()
    return base64.b64encode(hmac.new(auth_token.encode(), payload, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class PlivoSigning:
    auth_token: str  # the (sub)account's auth token; empty: requests go unchecked

    @property
    def enabled(self) -> bool:
        return bool(self.auth_token)

    def verify(self, request) -> bool:
        """Whether ``request`` (a gateway.carriers.SignedRequest) carries one valid V3 signature."""
        presented, nonce = request.headers.get(SIGNATURE_HEADER), request.headers.get(NONCE_HEADER)
        if not presented or not nonce or not self.auth_token:
            return False
        expected = plivo_signature(self.auth_token, request.url, nonce, request.form or ()).encode()
        return any(hmac.compare_digest(expected, candidate.strip().encode()) for candidate in presented.split(","))
