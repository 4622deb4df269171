"""The phone carriers whose media streams the gateway serves, by the name in their routes.

``POST /v1/telephony/{name}/voice`` answers a carrier's voice webhook with its
markup, ``WS /v1/telephony/{name}/stream`` serves its media stream; both look
the carrier up here, so a dialect is an entry in :data:`CARRIERS`, not a route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.settings import TelephonySettings
from signaling import markup
from signaling.jambonz_signature import HEADER as JAMBONZ_HEADER
from signaling.jambonz_signature import JambonzSigning
from signaling.markup import MarkupBuilder
from signaling.plivo_signature import PlivoSigning
from signaling.serializers import jambonz
from signaling.serializers.asterisk import AsteriskSerializer
from signaling.serializers.base import CarrierSerializer
from signaling.serializers.exotel import ExotelSerializer
from signaling.serializers.freeswitch import FreeSwitchSerializer
from signaling.serializers.jambonz import JambonzSerializer
from signaling.serializers.plivo import PlivoSerializer
from signaling.serializers.telnyx import TelnyxSerializer
from signaling.serializers.twilio import TwilioSerializer
from signaling.serializers.vonage import VonageSerializer
from signaling.session import Transport
from signaling.telnyx_signature import TelnyxSigning
from signaling.twilio_signature import SIGNATURE_HEADER, TwilioSigning
from signaling.vonage_signature import VonageSigning

PREFIX = "/v1/telephony/"
SIGNALWIRE_HEADER = "x-signalwire-signature"  # SignalWire also sends X-Twilio-Signature, the same value


@dataclass(frozen=True)
class SignedRequest:
    """What a carrier signs: the URL it addressed, its headers, and the body as form fields and raw bytes."""

    headers: Mapping[str, str]
    url: str  # the public URL the carrier used (settings' public_url, else the request's own)
    form: list[tuple[str, str]] | None = None  # the fields of a form body, repeats kept; None for another body
    body: bytes = b""  # the raw body; empty for a socket's upgrade


class Signing(Protocol):
    """How a carrier signs its requests, with a deployment's secrets; not ``enabled`` when none are set."""

    @property
    def enabled(self) -> bool: ...

    def verify(self, request: SignedRequest) -> bool:
        """Whether the request carries the carrier's valid signature."""


@dataclass(frozen=True)
class Carrier:
    name: str  # in the routes, as ``/v1/telephony/{name}/...``
    transport: Transport
    serializer: Callable[[], CarrierSerializer]  # a fresh one per call: serializers learn the stream's ids
    markup: MarkupBuilder | None = None  # the voice webhook's answer; None: the carrier has no markup webhook
    signing: Callable[[TelephonySettings], Signing] | None = None  # None: the carrier does not sign
    signs_stream: bool = False  # the stream socket's upgrade is signed too, not only the webhook
    subprotocol: str | None = None  # a WebSocket subprotocol the carrier offers and needs answered

    def signing_for(self, settings: TelephonySettings) -> Signing | None:
        """The signature check to apply, or None when this carrier's requests go unchecked."""
        signing = self.signing(settings) if self.signing is not None else None
        return signing if signing is not None and signing.enabled else None


@dataclass(frozen=True)
class _TwilioScheme:
    """Twilio's scheme (SignalWire's too, with its signing key) as a :class:`Signing`."""

    signing: TwilioSigning
    header: str = SIGNATURE_HEADER  # where the carrier sends the signature (SignalWire: X-SignalWire-Signature)

    @property
    def enabled(self) -> bool:
        return self.signing.enabled

    def verify(self, request: SignedRequest) -> bool:
        body = None if request.form is not None else request.body  # a raw body is signed by its hash in the URL
        headers = request.headers
        if self.header != SIGNATURE_HEADER:
            headers = {SIGNATURE_HEADER: headers.get(self.header) or headers.get(SIGNATURE_HEADER) or ""}
        return self.signing.verify(headers, request.url, request.form or (), body)


def _twilio_signing(settings: TelephonySettings) -> Signing:
    return _TwilioScheme(TwilioSigning(settings.twilio_auth_token, settings.twilio_shared_key_secret))


def _signalwire_signing(settings: TelephonySettings) -> Signing:
    return _TwilioScheme(TwilioSigning(settings.signalwire_signing_key), SIGNALWIRE_HEADER)


def _telnyx_signing(settings: TelephonySettings) -> Signing:
    return TelnyxSigning(settings.telnyx_public_key)


def _plivo_signing(settings: TelephonySettings) -> Signing:
    return PlivoSigning(settings.plivo_auth_token)


@dataclass(frozen=True)
class _VonageScheme:
    """Vonage's signed webhooks (a JWT vouching for the body) as a :class:`Signing`."""

    signing: VonageSigning

    @property
    def enabled(self) -> bool:
        return self.signing.enabled

    def verify(self, request: SignedRequest) -> bool:
        return self.signing.verify(request.headers.get("authorization", ""), request.body)


def _vonage_signing(settings: TelephonySettings) -> Signing:
    return _VonageScheme(VonageSigning(settings.vonage_signature_secret))


@dataclass(frozen=True)
class _JambonzScheme:
    """jambonz's signed webhooks (an HMAC of the time and the body) as a :class:`Signing`."""

    signing: JambonzSigning

    @property
    def enabled(self) -> bool:
        return self.signing.enabled

    def verify(self, request: SignedRequest) -> bool:
        return self.signing.verify(request.headers.get(JAMBONZ_HEADER, ""), request.body)


def _jambonz_signing(settings: TelephonySettings) -> Signing:
    return _JambonzScheme(JambonzSigning(settings.jambonz_webhook_secret))


CARRIERS: dict[str, Carrier] = {
    carrier.name: carrier
    for carrier in (
        Carrier("twilio", Transport.TWILIO, TwilioSerializer, markup.twiml, _twilio_signing, signs_stream=True),
        # SignalWire's LaML and media streams are Twilio's; whether it signs the stream's upgrade is undocumented.
        Carrier("signalwire", Transport.SIGNALWIRE, TwilioSerializer, markup.twiml, _signalwire_signing),
        Carrier("telnyx", Transport.TELNYX, TelnyxSerializer, markup.texml, _telnyx_signing),
        Carrier("plivo", Transport.PLIVO, PlivoSerializer, markup.plivo_xml, _plivo_signing),
        Carrier("exotel", Transport.EXOTEL, ExotelSerializer),  # no markup: the Voicebot applet names the URL
        Carrier("vonage", Transport.VONAGE, VonageSerializer, markup.ncco, _vonage_signing),
        Carrier("jambonz", Transport.JAMBONZ, JambonzSerializer, markup.jambonz_listen, _jambonz_signing,
                subprotocol=jambonz.SUBPROTOCOL),
        Carrier("freeswitch", Transport.FREESWITCH, FreeSwitchSerializer),
        Carrier("asterisk", Transport.ASTERISK, AsteriskSerializer),
    )
}


def carrier_of(path: str) -> Carrier | None:
    """The carrier a ``/v1/telephony/{name}/...`` path belongs to."""
    if not path.startswith(PREFIX):
        return None
    return CARRIERS.get(path[len(PREFIX) :].partition("/")[0])
