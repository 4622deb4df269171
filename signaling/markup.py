"""The documents a carrier's voice webhook answers with: connect the call to our media stream.

Each builder takes the stream's ``wss://`` URL and the custom parameters the
call opens its session with (voice, first words, ...), and carries them the
way its carrier hands them back in the stream's start.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

from signaling.serializers import jambonz, vonage

XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'
JSON = "application/json"


@dataclass(frozen=True)
class Markup:
    body: str
    media_type: str = "application/xml"


MarkupBuilder = Callable[[str, Mapping[str, str]], Markup]


def twiml(stream_url: str, parameters: Mapping[str, str]) -> Markup:
    """TwiML (and SignalWire's LaML): ``<Connect><Stream>``, parameters as ``<Parameter>``s, back as ``customParameters``."""
    return Markup(f"{XML_HEAD}<Response><Connect>{_stream(stream_url, parameters)}</Connect></Response>")


def texml(stream_url: str, parameters: Mapping[str, str]) -> Markup:
    """Telnyx TeXML: ``<Connect><Stream>`` in RTP bidirectional mode (else Telnyx drops our audio), μ-law both
    ways at 8 kHz; parameters in the stream URL's query, which the stream route reads."""
    attributes = ' bidirectionalMode="rtp" codec="PCMU" bidirectionalCodec="PCMU" bidirectionalSamplingRate="8000"'
    url = _with_query(stream_url, parameters)
    return Markup(f"{XML_HEAD}<Response><Connect><Stream url={quoteattr(url)}{attributes}/></Connect></Response>")


def plivo_xml(stream_url: str, parameters: Mapping[str, str]) -> Markup:
    """Plivo XML (and Vobiz's): a bidirectional ``<Stream>`` kept alive with the call, μ-law 8 kHz, the URL as its
    text; parameters in the URL's query, which the stream route reads."""
    attributes = 'bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000"'
    url = escape(_with_query(stream_url, parameters))
    return Markup(f"{XML_HEAD}<Response><Stream {attributes}>{url}</Stream></Response>")


def _with_query(url: str, parameters: Mapping[str, str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(dict(parameters))}" if parameters else url


def _stream(stream_url: str, parameters: Mapping[str, str], attributes: str = "") -> str:
    tags = "".join(f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>" for name, value in parameters.items())
    return f"<Stream url={quoteattr(stream_url)}{attributes}>{tags}</Stream>"


def ncco(stream_url: str, parameters: Mapping[str, str]) -> Markup:
    """Vonage's NCCO: ``connect`` to a ``websocket`` endpoint in 16 kHz L16; parameters as ``headers``, back in
    ``websocket:connected``."""
    endpoint = {"type": "websocket", "uri": stream_url, "content-type": vonage.content_type(vonage.WIDEBAND)}
    return Markup(json.dumps([{"action": "connect", "endpoint": [endpoint | {"headers": dict(parameters)}]}]), JSON)


def jambonz_listen(stream_url: str, parameters: Mapping[str, str]) -> Markup:
    """A jambonz application: ``listen`` with streaming bidirectional audio and DTMF; parameters as ``metadata``."""
    rate = jambonz.PHONE_RATE
    listen = {
        "verb": "listen",
        "url": stream_url,
        "sampleRate": rate,
        "mixType": "mono",
        "passDtmf": True,
        "bidirectionalAudio": {"enabled": True, "streaming": True, "sampleRate": rate},
        "metadata": dict(parameters),
    }
    return Markup(json.dumps([listen]), JSON)
