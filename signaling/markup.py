"""The documents a carrier's voice webhook answers with: connect the call to our media stream.

Each builder takes the stream's ``wss://`` URL and the custom parameters the
call opens its session with (voice, first words, ...), and carries them the
way its carrier hands them back in the stream's start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'


@dataclass(frozen=True)
class Markup:
    body: str
    media_type: str = "application/xml"


MarkupBuilder = Callable[[str, Mapping[str, str]], Markup]


def twiml(stream_url: str, parameters: Mapping[str, str]) -> Markup:
    """TwiML (and SignalWire's LaML): ``<Connect><Stream>``, parameters as ``<Parameter>``s, back as ``customParameters``."""
    return Markup(f"{XML_HEAD}<Response><Connect>{_stream(stream_url, parameters)}</Connect></Response>")


def _stream(stream_url: str, parameters: Mapping[str, str], attributes: str = "") -> str:
    tags = "".join(f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>" for name, value in parameters.items())
    return f"<Stream url={quoteattr(stream_url)}{attributes}>{tags}</Stream>"
