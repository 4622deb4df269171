"""Untrusted SDP offers, checked before a peer connection applies them.

aiortc's parser meets malformed input with whatever it trips on (an
AssertionError, a KeyError, an AttributeError on a missing value), and a
peer connection that applied half of a bad offer may fail even to close.
So an offer is bounded and parsed here first, and each way it can fail is an
``OfferError`` that says what is wrong and where, for a 400.
"""

from __future__ import annotations

from aiortc.sdp import SessionDescription

# A browser's offer with audio, video and a data channel is about 6 KB; ten times that
# still parses in milliseconds on the event loop, where a body of megabytes would stall it.
MAX_OFFER_CHARS = 64 * 1024
# Each section outside a BUNDLE group gathers ICE sockets of its own; a session uses one
# audio section and one data channel, and a browser that also offers video stays far below.
MAX_MEDIA_SECTIONS = 16
MEDIA_KINDS = ("audio", "video", "application")  # what a peer connection can answer
QUOTED_LINE_CHARS = 80  # enough of a bad line to recognise it in an error message


class OfferError(ValueError):
    """An SDP offer we cannot answer."""


class SendOnlyOffer(OfferError):
    """An offer whose audio never flows toward the client (a WHIP ingest offer): the session could not be heard."""


def check_offer(sdp: str, kind: str = "offer") -> None:
    """Raise ``OfferError`` unless a peer connection can apply the offer and the client would hear the session."""
    if kind != "offer":
        raise OfferError(f"expected an SDP offer, got type '{kind}'")
    if len(sdp) > MAX_OFFER_CHARS:
        raise OfferError(f"the offer has {len(sdp)} characters; at most {MAX_OFFER_CHARS} are accepted")
    offer = _parse(sdp)
    if len(offer.media) > MAX_MEDIA_SECTIONS:
        raise OfferError(f"the offer has {len(offer.media)} media sections; at most {MAX_MEDIA_SECTIONS} are accepted")
    audio = [media for media in offer.media if media.kind == "audio"]
    if not audio:
        raise OfferError("the offer has no audio section: add a receiving audio transceiver")
    for number, media in enumerate(offer.media, 1):
        # aiortc fails on each of these when it applies the offer (a missing direction means sendrecv in RFC 8866).
        where = f"the offer's media section {number} ({media.kind})"
        if media.kind not in MEDIA_KINDS:
            raise OfferError(f"{where} is not one of {', '.join(MEDIA_KINDS)}")
        if media.dtls is None:
            raise OfferError(f"{where} has no a=setup attribute (its DTLS role)")
        if media.kind in ("audio", "video") and media.direction is None:
            raise OfferError(f"{where} has no direction attribute (a=sendrecv, a=recvonly, a=sendonly or a=inactive)")
    mids = {media.rtp.muxId for media in offer.media}
    for group in offer.group:
        missing = [mid for mid in group.items if mid not in mids]
        if group.semantic == "BUNDLE" and missing:
            raise OfferError(f"the BUNDLE group names media sections the offer lacks (a=mid: {', '.join(missing)})")
    if not any(media.direction in ("sendrecv", "recvonly") for media in audio):
        raise SendOnlyOffer("the offer's audio is send-only or inactive, so nothing could hear the session")


def _parse(sdp: str) -> SessionDescription:
    try:
        return SessionDescription.parse(sdp)
    except Exception as error:  # aiortc's parser raises whatever a malformed line makes it trip on
        lines = sdp.splitlines()
        number = _first_unparsable_line(lines)
        reason = "" if isinstance(error, AssertionError) else f" ({error})"
        quoted = lines[number - 1][:QUOTED_LINE_CHARS]
        raise OfferError(f"cannot parse the SDP offer: line {number} is malformed{reason}: {quoted!r}") from error


def _first_unparsable_line(lines: list[str]) -> int:
    """The line (from 1) where the offer stops parsing: the shortest unparsable prefix, by bisection,
    so that a long offer costs a few parses rather than one per line."""
    parses, fails = 0, len(lines)  # the empty prefix parses; the whole offer does not
    while fails - parses > 1:
        middle = (parses + fails) // 2
        try:
            SessionDescription.parse("\r\n".join(lines[:middle]))
        except Exception:
            fails = middle
        else:
            parses = middle
    return fails
