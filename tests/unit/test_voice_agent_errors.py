"""One refusal table for both voice-agent dialects: each error's code and HTTP status in ElevenLabs' and Cartesia's words."""

from __future__ import annotations

import pytest

from cosyvoice import EngineFailure, EngineUnavailable, InvalidRequest, UnknownVoice
from gateway.admission import Overloaded, RateLimited
from gateway.metrics import RejectReason
from gateway.routes import cartesia, elevenlabs
from gateway.voice_agents import REFUSALS, BadFormat, ErrorCodes, Malformed, Refusal, TooManyContexts
from signaling.session import TextTooLong

# The wire as the dialects' clients read it (tests/test_elevenlabs_api.py and test_cartesia_api.py pin some of it end to end).
WIRE = [
    (UnknownVoice("no"), ("voice_not_found", 404), ("voice_not_found", 404)),
    (BadFormat("no"), ("invalid_output_format", 400), ("invalid_output_format", 400)),
    (TextTooLong("no"), ("text_too_long", 413), ("transcript_too_long", 413)),
    (TooManyContexts("no"), ("max_active_conversations", 400), ("too_many_requests", 429)),
    (EngineUnavailable("no"), ("service_unavailable", 503), ("service_unavailable", 503)),
    (Overloaded("no", reason=RejectReason.QUEUE_FULL), ("too_many_concurrent_requests", 429), ("too_many_requests", 429)),
    (RateLimited("no", retry_after=1), ("too_many_concurrent_requests", 429), ("too_many_requests", 429)),
    # Anything else is the client's request: an engine failure too, as these dialects have always answered.
    (InvalidRequest("no"), ("invalid_request", 400), ("invalid_request", 400)),
    (Malformed("no"), ("invalid_request", 400), ("invalid_request", 400)),
    (EngineFailure("no"), ("invalid_request", 400), ("invalid_request", 400)),
]


@pytest.mark.parametrize(("error", "eleven", "cartesia_answer"), WIRE, ids=lambda value: type(value).__name__)
def test_each_dialect_answers_each_error_with_its_code_and_status(
    error: Exception, eleven: tuple[str, int], cartesia_answer: tuple[str, int]
) -> None:
    assert elevenlabs.ERROR_CODES.of(error) == eleven
    assert cartesia.ERROR_CODES.of(error) == cartesia_answer


def test_the_table_puts_each_subclass_before_its_base() -> None:
    kinds = [kind for kind, _ in REFUSALS]
    for index, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:index]), f"{kind.__name__} is unreachable"


def test_a_dialect_names_every_refusal() -> None:
    with pytest.raises(ValueError, match="BUSY"):
        ErrorCodes({refusal: "x" for refusal in Refusal if refusal is not Refusal.BUSY})
