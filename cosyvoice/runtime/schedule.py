"""When a streamed clause renders its next chunk: the hop schedule.

The v2/v3 flow attends in 25-token chunks counted from the first prompt
token, so a streamed chunk may end only where [prompt | tokens] reaches a
multiple of 25: its frames are then final and never recomputed. The first hop
is the least number of tokens, at least ``first_hop``, that reaches such a
boundary (with a 140-token prompt and ``first_hop`` 5, 10 tokens: 0.4 s of
audio); later hops start at one chunk and double up to ``max_hop``. Every hop
also waits for the lookahead tokens after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HopSchedule:
    chunk: int = 25  # the flow's attention chunk, in tokens
    first_hop: int = 25  # the least number of tokens in the first chunk
    max_hop: int = 100  # the most in any chunk (rounded down to whole chunks)

    def first(self, prompt_tokens: int) -> int:
        """Tokens in the first chunk after a prompt of ``prompt_tokens``."""
        hop = max(1, self.first_hop)
        return hop + (-(prompt_tokens + hop)) % self.chunk

    def next(self, previous: int, first: bool) -> int:
        """The hop after one of ``previous`` tokens (``first``: the first chunk's)."""
        ceiling = max(self.chunk, self.max_hop - self.max_hop % self.chunk)
        return self.chunk if first else min(ceiling, 2 * previous)
