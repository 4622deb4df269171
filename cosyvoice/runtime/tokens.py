"""The language-model stage on torch: continuous batching of decode steps.

Each :meth:`TorchTokens.step` samples one token for every running session
and then advances all of them in one batched forward pass; sessions join as
soon as their prompt is prefilled (a chunk of positions per step, so a long
prompt does not stall everyone else's tokens) and leave the batch the step
after they end or are cancelled. Sampling stays per session: repetition-aware
sampling over its own history, from its own seeded generator. Text-fed
sessions (:class:`~cosyvoice.model.bistream.TextFedDecoding`) step one at a
time beside the batch, and only while they have text to go on.
"""

from __future__ import annotations

from collections import deque

from cosyvoice.model.bistream import TextFedDecoding
from cosyvoice.model.llm import Decoding, Prefill, SpeechLM
from cosyvoice.runtime.session import Session


def token_limits(text_len: int) -> tuple[int, int]:
    """The least and the most speech tokens for ``text_len`` text tokens (upstream's 2x and 20x).
    Benchmarks replace it to force a token count: a random-weight model never chooses to stop."""
    return 2 * text_len, 20 * text_len


class TorchTokens:
    def __init__(self, llm: SpeechLM, *, prefill_chunk: int = 64, static: bool = False) -> None:
        self.llm = llm
        self.prefill_chunk = prefill_chunk
        self.batch = llm.batch(static=static)  # static: decode steps in fixed shapes (see StaticSlotCache)
        self.waiting: deque[Session] = deque()
        self.prefill: Prefill | None = None
        self.running: dict[Session, Decoding] = {}
        self.fed: dict[Session, TextFedDecoding] = {}

    @property
    def active(self) -> int:
        """Sessions a step would serve (a text-fed one waiting for text does not count)."""
        fed = sum(1 for s, d in self.fed.items() if s.feed.pending or not d.waiting)
        return len(self.waiting) + len(self.running) + fed

    def add(self, session: Session) -> None:
        if session.feed is None:
            self.waiting.append(session)
            return
        p = session.prompt
        self.fed[session] = TextFedDecoding(self.llm, p.prompt_text, p.llm_speech, head=session.feed.head,
                                            seed=session.seed)

    def remove(self, session: Session) -> None:
        """Stop decoding ``session`` and free what it holds (at once: between steps)."""
        if session in self.waiting:
            if self.waiting[0] is session:
                self.prefill = None
            self.waiting.remove(session)
        state = self.running.pop(session, None)
        if state is not None:
            self.batch.remove(state)
        self.fed.pop(session, None)

    def step(self) -> list[tuple[Session, int | None]]:
        """One prefill chunk for the oldest waiting session, then one token for every running one
        (None: its utterance has ended)."""
        self._prefill()
        out: list[tuple[Session, int | None]] = []
        fed: dict[int, int] = {}
        for session, state in list(self.running.items()):
            token = self.llm.choose(state)
            if token in self.llm.stop_tokens or len(state.tokens) >= state.max_len:
                out.append((session, None))
                self.remove(session)
            else:
                out.append((session, token))
                fed[id(state)] = token
        self.batch.advance(fed)
        for session, decoding in list(self.fed.items()):
            out.extend(self._step_fed(session, decoding))
        return out

    def _step_fed(self, session: Session, decoding: TextFedDecoding) -> list[tuple[Session, int | None]]:
        feed = session.feed
        closed = feed.closed  # read first: a close comes after the last piece
        while feed.pieces:
            decoding.feed(feed.pieces.popleft())
        if closed and not decoding.closed:
            decoding.close()
        token = decoding.step()
        if token is not None:
            return [(session, token)]
        if decoding.done:
            self.fed.pop(session)
            return [(session, None)]
        return []

    def _prefill(self) -> None:
        if not self.waiting:
            return
        session = self.waiting[0]
        if self.prefill is None:
            p = session.prompt
            self.prefill = Prefill(self.llm, self.llm.prompt(session.text, p.prompt_text, p.llm_speech, p.llm_embedding))
        if self.prefill.step(self.prefill_chunk):
            least, most = token_limits(session.text.numel())
            state = self.prefill.finish(least, most, session.seed)
            self.prefill = None
            self.waiting.popleft()
            self.running[session] = state
            self.batch.add(state)
