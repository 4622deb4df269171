"""Twilio request signatures, made by Twilio's own ``twilio`` library and checked by our routes."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
import pytest
import websockets.sync.client
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from gateway.settings import Settings
from signaling.twilio_signature import Algorithm, signature_valid, url_variants
from support.servers import ServerThread

TOKEN = "account-auth-token-0123456789"
SHARED = "shared-key-secret-9876543210"
PUBLIC = "https://voice.example.com"
WEBHOOK = "/v1/telephony/twilio/voice?voice=joe&text=Hi%20there"
# A repeated name, values out of order, and non-ASCII: all signed as Twilio signs them.
FORM = [("CallSid", "CA123"), ("From", "+15550001111"), ("StirVerstat", "TN-Validation-Passed-B"),
        ("StirVerstat", "TN-Validation-Passed-A"), ("CallerName", "Zoë Ågren")]  # fmt: skip
SHA256_SETTINGS = {"X-Twilio-Webhooks-Signature-Settings": "key=KS0123,algorithm=HMAC_SHA256"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerThread:
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path_factory.mktemp("signed"))},
            "embedded": {"workers": 1},
            "telephony": {"twilio_auth_token": TOKEN, "twilio_shared_key_secret": SHARED, "public_url": PUBLIC},
        }
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def post(server: ServerThread, signature: str | bytes, *, form=FORM, path: str = WEBHOOK, headers: dict | None = None) -> int:
    body = urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature, **(headers or {})}
    return httpx.post(server.url + path, content=body, headers=headers).status_code


def test_the_libraries_signature_with_and_without_the_default_port(server: ServerThread) -> None:
    validator = RequestValidator(TOKEN)
    for base in (PUBLIC, PUBLIC + ":443"):
        assert post(server, validator.compute_signature(base + WEBHOOK, FormData(FORM))) == 200, base
    assert post(server, validator.compute_signature(PUBLIC + ":8443" + WEBHOOK, FormData(FORM))) == 403


def test_repeated_parameters_count_each_value(server: ServerThread) -> None:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + WEBHOOK, FormData(FORM))
    assert post(server, signature) == 200
    assert post(server, signature, form=FORM[:3] + FORM[4:]) == 403, "one of a repeated name's values dropped"
    last_only = RequestValidator(TOKEN).compute_signature(PUBLIC + WEBHOOK, dict(FORM))
    assert post(server, last_only) == 403, "a signature over one value per name"


@pytest.mark.parametrize(
    "tamper",
    [
        {"form": [*FORM[:1], ("From", "+15559999999"), *FORM[2:]]},
        {"form": [*FORM, ("Extra", "1")]},
        {"path": WEBHOOK.replace("joe", "eve")},
    ],
    ids=["value", "added", "url"],
)
def test_tampering_is_refused(server: ServerThread, tamper: dict) -> None:
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + WEBHOOK, FormData(FORM))
    assert post(server, signature, **tamper) == 403


def test_hmac_sha256_with_a_shared_key(server: ServerThread) -> None:
    shared = RequestValidator(SHARED).compute_signature(PUBLIC + WEBHOOK, FormData(FORM), algorithm="HMAC_SHA256")
    assert post(server, shared, headers=SHA256_SETTINGS) == 200
    assert post(server, shared) == 403, "without the settings header the auth token and SHA-1 apply"
    by_token = RequestValidator(TOKEN).compute_signature(PUBLIC + WEBHOOK, FormData(FORM), algorithm="HMAC_SHA256")
    assert post(server, by_token, headers=SHA256_SETTINGS) == 403, "the settings header means the shared key"
    unknown = {"X-Twilio-Webhooks-Signature-Settings": "key=KS0123,algorithm=HMAC_SHA512"}
    assert post(server, shared, headers=unknown) == 403


def test_a_json_body_is_signed_through_its_hash(server: ServerThread) -> None:
    validator = RequestValidator(TOKEN)
    body = json.dumps({"CallSid": "CA123", "From": "+15550001111"})
    path = WEBHOOK + "&bodySHA256=" + validator.compute_hash(body)
    signature = validator.compute_signature(PUBLIC + path, {})
    assert validator.validate(PUBLIC + path, body, signature), "the library's own view of this request"
    headers = {"Content-Type": "application/json", "X-Twilio-Signature": signature}
    assert httpx.post(server.url + path, content=body, headers=headers).status_code == 200
    tampered = body.replace("CA123", "CA999")
    assert httpx.post(server.url + path, content=tampered, headers=headers).status_code == 403


@pytest.mark.parametrize("signature", ["é".encode("latin-1"), "签名".encode(), b"", b"not base64 at all"])
def test_odd_signature_headers_are_403(server: ServerThread, signature: bytes) -> None:
    assert post(server, signature) == 403


def test_the_media_stream_upgrade_accepts_the_libraries_signature(server: ServerThread) -> None:
    path = "/v1/telephony/twilio/stream"
    signed = RequestValidator(TOKEN).compute_signature(PUBLIC.replace("https", "wss") + path, {})
    url = server.url.replace("http", "ws") + path
    with websockets.sync.client.connect(url, additional_headers={"X-Twilio-Signature": signed}) as socket:
        socket.close()
    with pytest.raises(websockets.InvalidStatus) as refused:
        websockets.sync.client.connect(url, additional_headers={"X-Twilio-Signature": signed[:-2] + "A="})
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook?a=1", "https://voice.example.com/hook", "http://example.com:80/x"])
def test_ports_are_tried_as_the_library_tries_them(url: str) -> None:
    """The library accepts the URL signed with its port removed, and with it (or the default) added: so do we."""
    validator = RequestValidator(TOKEN)
    for variant in url_variants(url):
        signature = validator.compute_signature(variant, FormData(FORM))
        assert validator.validate(url, FormData(FORM), signature)
        assert signature_valid(TOKEN, signature, url, FORM), variant
    for algorithm in Algorithm:
        signature = validator.compute_signature(url, FormData(FORM), algorithm=algorithm.value)
        assert signature_valid(TOKEN, signature, url, FORM, algorithm=algorithm)


def test_url_variants_keep_credentials_and_ipv6_hosts() -> None:
    assert url_variants("wss://user:pw@voice.example.com/s") == ("wss://user:pw@voice.example.com/s", "wss://user:pw@voice.example.com:443/s")
    assert url_variants("http://[::1]:8080/x?y=1") == ("http://[::1]/x?y=1", "http://[::1]:8080/x?y=1")
