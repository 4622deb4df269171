"""Text-fed decoding for the Qwen2 models (v2/v3): speech tokens while the text is still arriving.

Upstream's "bidirectional streaming" layout: after ``sos``, text and prompt
speech go in interleaved, :data:`MIX_TEXT` text tokens then :data:`MIX_SPEECH`
prompt speech tokens; once the prompt speech is used up the model decodes
speech and emits the *fill* token when it wants more text, which is forced
every ``MIX_SPEECH + 1`` tokens after its first fill. Each fill lets in the next
:data:`MIX_TEXT` text tokens (the fill itself is never fed). When the text is
closed, what is left of it goes in with the task token and the model decodes to
its stop token, as in the one-shot layout. One reply is then one decoding, so
its prosody carries across clauses.

Two details follow upstream so that the tokens match its implementation:
the speech history used by repetition-aware sampling includes the fill tokens,
and the input that closes the text repeats the last input already fed (upstream
re-sends its stale step input ahead of the remaining text). Past upstream, the
tail is capped at :data:`MAX_RATIO` speech tokens per text token (upstream has
no cap there; while text is open the cap forces a fill instead, so a model
that never asks for text still takes it) and stop ids other than fill are
barred while text is open (upstream raises on them).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from cosyvoice.model.llm import CosyVoice3LM, Qwen2LM
from cosyvoice.model.sampling import ras

MIX_TEXT, MIX_SPEECH = 5, 15  # upstream's mix_ratio: text tokens per block, speech tokens per block
MAX_RATIO = 20  # speech tokens per text token at most, as the one-shot layout's max_len


class Phase(enum.Enum):
    """Which stop ids a choice may take: only fill while text is open, any once it is closed."""

    OPEN = "open"
    CLOSED = "closed"


Chooser = Callable[[Tensor, list[int], Phase], int]  # (log-probs, history with fills, phase) -> token


class TextFedDecoding:
    """One reply's decoding with its text fed in pieces (:meth:`feed`, then :meth:`close`).

    :meth:`step` runs at most one forward pass and returns a speech token, or
    None when it has none to give: :attr:`done` tells an ended reply from one
    waiting for text (:attr:`waiting`) or one that just took a fill.
    """

    def __init__(
        self, lm: Qwen2LM, prompt_text: Tensor, prompt_speech: Tensor, *, head: int = 0, seed: int | None = None,
        choose: Chooser | None = None,
    ) -> None:
        """``head``: how many leading prompt-text tokens go in right after sos rather than into the text
        blocks (v3: its system prompt through ``<|endofprompt|>``; v2: none)."""
        if not isinstance(lm, Qwen2LM):
            raise ValueError("text-fed decoding needs a Qwen2-based model (v2, v3)")
        self.lm = lm
        self.fill = lm.speech_token_size + (CosyVoice3LM.FILL if isinstance(lm, CosyVoice3LM) else 2)
        sos, self.task = (row.view(1, 1, -1) for row in lm.specials())
        prompt_text = prompt_text.view(-1)
        self.pending: Tensor | None = torch.cat([sos, self._embed_text(prompt_text[:head])], dim=1)  # not yet run
        self.last_fed: Tensor | None = None
        self.text = self._embed_text(prompt_text[head:])
        self.prompt_speech = lm.speech_embedding(prompt_speech.view(1, -1))
        self.wants_text = prompt_speech.numel() == 0  # nothing to continue from: start on a text block
        self.needs_piece = True  # ready to take the next piece of text
        self.pieces: deque[Tensor] = deque()
        self.tokens: list[int] = []  # speech tokens and fills, as sampling sees the history
        self.spoken = 0
        self.text_fed = 0
        self.next_fill: int | None = None
        self.closed = False
        self.tail_started = False
        self.done = False
        self.cache = None
        self.logp: Tensor | None = None
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
        self.choose = choose or (lambda logp, history, phase: ras(logp.cpu(), history, lm.sampling, generator))

    def _embed_text(self, tokens: Tensor) -> Tensor:
        return self.lm.llm.decoder.embed_tokens(tokens.view(1, -1))

    def _append(self, embeds: Tensor) -> None:
        self.pending = embeds if self.pending is None else torch.cat([self.pending, embeds], dim=1)

    def feed(self, tokens: Tensor) -> None:
        """Queue a piece of text (token ids). Pieces go in one at a time, when the model is ready for
        more (at the start and after each fill), as upstream pulls its text generator."""
        if self.closed:
            raise ValueError("the text is closed")
        self.pieces.append(tokens)

    def close(self) -> None:
        """No more text: once the queued pieces are in, the rest goes in with the task token."""
        self.closed = True

    @property
    def waiting(self) -> bool:
        """True when no step can run before more text (or the close) arrives."""
        return self.needs_piece and not self.pieces and not (self.closed or self.done or self.tail_started)

    def _absorb(self, tokens: Tensor) -> None:
        """One piece in: whole text blocks take turns with the prompt speech left, then (once that is
        used up) one block goes in if the model asked for text."""
        self.text = torch.cat([self.text, self._embed_text(tokens)], dim=1)
        self.text_fed += tokens.numel()
        while self.prompt_speech.size(1) and self.text.size(1) >= MIX_TEXT:
            self._append(torch.cat([self.text[:, :MIX_TEXT], self.prompt_speech[:, :MIX_SPEECH]], dim=1))
            self.text, self.prompt_speech = self.text[:, MIX_TEXT:], self.prompt_speech[:, MIX_SPEECH:]
        if self.prompt_speech.size(1):
            return
        if self.wants_text:
            if self.text.size(1) < MIX_TEXT:
                return  # too little text for a block: the next piece is needed
            self._append(self.text[:, :MIX_TEXT])
            self.text = self.text[:, MIX_TEXT:]
            self.wants_text = False
        self.needs_piece = False

    @torch.inference_mode()
    def step(self) -> int | None:
        """The next speech token; None when the reply has ended, waits for text, or just took a fill."""
        while self.needs_piece and self.pieces and not self.tail_started:
            self._absorb(self.pieces.popleft())
        if self.done or self.waiting:
            return None
        if self.needs_piece and not self.tail_started:  # closed, every piece in
            self.tail_started = True
            head = self.pending if self.pending is not None else self.last_fed
            self.pending = torch.cat([part for part in (head, self.text, self.task) if part is not None], dim=1)
            self.text = self.text[:, :0]
        hidden, self.cache = self.lm.run(self.pending, self.cache)
        self.logp = self.lm.logits(hidden[:, -1])[0]
        self.last_fed, self.pending = self.pending, None
        token = self._next_token()
        self.tokens.append(token)
        if token == self.fill and not self.tail_started:
            self.next_fill = len(self.tokens) + MIX_SPEECH
            self.needs_piece = self.wants_text = True
            return None
        if token in self.lm.stop_tokens or (self.tail_started and self.spoken >= self._most()):
            self.done = True
            return None
        self.spoken += 1
        self.pending = self.lm.speech_embedding.weight[token].view(1, 1, -1)
        return token

    def _most(self) -> int:
        return MAX_RATIO * max(self.text_fed, 1)

    def _next_token(self) -> int:
        if self.tail_started:
            return self.choose(self.logp, self.tokens, Phase.CLOSED)
        if (self.next_fill is not None and len(self.tokens) == self.next_fill) or self.spoken >= self._most():
            return self.fill
        logp = self.logp.clone()
        barred = torch.ones_like(logp, dtype=torch.bool)
        barred[: self.lm.speech_token_size] = False
        barred[self.fill] = False
        return self.choose(logp.masked_fill(barred, float("-inf")), self.tokens, Phase.OPEN)
