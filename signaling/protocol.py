"""The one message vocabulary of real-time sessions (WebSocket and WebRTC data channel).

Client messages are JSON objects with a ``type``; see ``docs/sessions.md``.
Audio never travels in these messages: it goes as binary WebSocket messages
or on the WebRTC audio track.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, NoReturn

from cosyvoice import SynthesisError
from signaling.messages import Error, Event, Flushed, Pong, SessionUpdated, TextAccepted
from signaling.session import LimitExceeded, Session, SessionClosed, VoiceSettings

log = logging.getLogger(__name__)

VoiceParser = Callable[[dict[str, Any], VoiceSettings], VoiceSettings]

MAX_MESSAGE_CHARS = 4 * 1024 * 1024  # room for a base64 prompt recording in session.update


class ProtocolError(ValueError):
    """A client message that cannot be understood."""


def parse(raw: str | bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message longer than {MAX_MESSAGE_CHARS} characters")
    try:
        message = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:
        raise ProtocolError(f"not JSON: {error}") from error
    except RecursionError as error:
        raise ProtocolError("not JSON this program reads: nested too deeply") from error
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message is a JSON object with a string "type"')
    return message


def apply(session: Session, message: dict[str, Any], parse_voice: VoiceParser) -> Event | None:
    """Carry out one client message; returns a direct reply (with the envelope of events), if the message has one.

    Problems become ``error`` events (with the offending message's type), so
    the session survives a bad message.
    """
    kind = message["type"]
    try:
        if kind in ("text", "say"):
            text = message.get("text")
            if not isinstance(text, str):
                raise ProtocolError('"text" must be a string')
            utterance = session.say(text, flush=bool(message.get("flush", False)))
            return session.events.stamped(TextAccepted(utterance_id=utterance.id))
        if kind == "flush":
            utterance = session.flush()
            return session.events.stamped(Flushed(utterance_id=utterance.id if utterance else None))
        if kind == "cancel":
            session.cancel(str(message.get("reason", "cancel")))
            return None
        if kind == "mark":
            name = message.get("name")
            if not isinstance(name, str) or not name:
                raise ProtocolError('"name" must be a non-empty string')
            session.mark(name)
            return None
        if kind == "session.update":
            session.configure(parse_voice(message, session.voice))
            return session.events.stamped(SessionUpdated(session=session.describe()))
        if kind == "ping":
            return session.events.stamped(Pong(id=message.get("id")))
        raise ProtocolError(f"unknown message type '{kind}'")
    except (ProtocolError, SynthesisError, SessionClosed, LimitExceeded) as error:
        session.events.emit(Error(message=str(error), request_type=kind))
        return None
    except Exception:  # a bug must cost the client one message, not the call; the log keeps the trace
        log.exception("session %s: a %r message failed", session.id, kind)
        session.events.emit(Error(message=f"internal error while handling '{kind}'", request_type=kind))
        return None


async def apply_off_loop(session: Session, message: dict[str, Any], parse_voice: VoiceParser) -> Event | None:
    """:func:`apply`, with a ``session.update``'s prompt recording decoded in a worker thread.

    Decoding a long recording takes the event loop ~150 ms (a 50 s WAV), which every other session
    would wait; the voice is parsed off the loop and handed to :func:`apply`, success or failure,
    so errors are reported as for any message.
    """
    if message.get("type") != "session.update" or not message.get("prompt_audio_base64"):
        return apply(session, message, parse_voice)
    try:
        voice = await asyncio.get_running_loop().run_in_executor(None, parse_voice, message, session.voice)
    except Exception as error:  # raised again inside apply, which reports it
        failure = error

        def parsed(fields: dict[str, Any], current: VoiceSettings) -> VoiceSettings:
            raise failure
    else:

        def parsed(fields: dict[str, Any], current: VoiceSettings) -> VoiceSettings:
            return voice

    return apply(session, message, parsed)


def _refuse_constant(name: str) -> NoReturn:
    raise ProtocolError(f"{name} is not a number JSON allows")
