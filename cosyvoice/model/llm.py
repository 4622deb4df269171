"""The text-to-speech-token language models of the three generations.

Each model builds its prefill input (``prompt``), runs it (``start``, or a
chunk at a time with :class:`Prefill`) and then extends a caller-owned cache
one speech token at a time (``advance``). The cache and everything else a
request accumulates live in that request's :class:`Decoding`, never on the
model, so requests can run side by side; a :meth:`SpeechLM.batch` advances
many of them by one token in one pass (Qwen2: a shared slot cache). ``score``
(teacher forcing) and ``greedy`` are the testability hooks the parity tests use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cosyvoice.model.conformer import Encoder
from cosyvoice.model.qwen2 import Qwen2Config, Qwen2Encoder, SlotCache, StaticSlotCache
from cosyvoice.model.sampling import SamplingOptions, ras


@dataclass
class Prompt:
    """A prefill input: embeddings ``[1, T, H]`` and where the task token sits."""

    embeds: Tensor
    task_index: int


@dataclass(eq=False)
class Decoding:
    """One request's decoding state (compared by identity)."""

    cache: Any
    logp: Tensor
    min_len: int
    max_len: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    done: bool = False


class SpeechLM(nn.Module):
    """What the three generations share: the decode loop and the hooks."""

    speech_token_size: int
    sampling: SamplingOptions

    @property
    def stop_tokens(self) -> range:
        """Every output id at or past the speech vocabulary ends the utterance."""
        return range(self.speech_token_size, self.llm_decoder.out_features)

    # -- per model -------------------------------------------------------
    def prompt(
        self, text: Tensor, prompt_text: Tensor, prompt_speech: Tensor, embedding: Tensor | None
    ) -> Prompt:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, embeds: Tensor, cache: Any) -> tuple[Tensor, Any]:  # pragma: no cover - abstract
        """Hidden states ``[B, T, H]`` of ``embeds`` after ``cache`` (None: from the start), and the new cache."""
        raise NotImplementedError

    def embed_speech(self, tokens: Tensor) -> Tensor:
        return self.speech_embedding(tokens)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.llm_decoder(hidden).float().log_softmax(dim=-1)

    def batch(self, *, static: bool = False) -> DecodeBatch:
        """An empty batch for advancing many decodings together (this model: one after another, each
        step in its own exact shapes, so ``static`` changes nothing)."""
        del static
        return DecodeBatch(self)

    # -- shared ----------------------------------------------------------
    def start(self, prompt: Prompt, *, text_len: int, seed: int | None, ratios: tuple[float, float] = (2, 20)) -> Decoding:
        """Prefill: a new request's decoding state, ready for its first sample."""
        prefill = Prefill(self, prompt)
        while not prefill.step(prompt.embeds.size(1)):
            pass
        return prefill.finish(int(text_len * ratios[0]), int(text_len * ratios[1]), seed)

    @torch.inference_mode()
    def advance(self, state: Decoding, token: int) -> None:
        """Feed the sampled ``token`` and compute the next distribution (the incremental KV-cache path)."""
        state.tokens.append(token)
        embeds = self.embed_speech(torch.tensor([[token]], device=state.logp.device))
        hidden, state.cache = self.run(embeds, state.cache)
        state.logp = self.logits(hidden[:, -1])[0]

    def choose(self, state: Decoding, *, greedy: bool = False) -> int:
        """The next token of ``state``: sampled (RAS) or argmax; stop tokens are barred before ``min_len``."""
        logp = state.logp
        if len(state.tokens) < state.min_len:
            logp = logp.clone()
            logp[self.speech_token_size :] = float("-inf")
        if greedy:
            return int(logp.argmax())
        return ras(logp.cpu(), state.tokens, self.sampling, state.generator)

    def step(self, state: Decoding, *, greedy: bool = False) -> int | None:
        """One decoding step: the new speech token, or None when the utterance has ended."""
        if state.done:
            return None
        token = self.choose(state, greedy=greedy)
        if token in self.stop_tokens or len(state.tokens) >= state.max_len:
            state.done = True
            return None
        self.advance(state, token)
        return token

    def generate(self, prompt: Prompt, *, text_len: int, seed: int | None = None, greedy: bool = False) -> Iterator[int]:
        state = self.start(prompt, text_len=text_len, seed=seed)
        while (token := self.step(state, greedy=greedy)) is not None:
            yield token

    def greedy(self, prompt: Prompt, *, text_len: int) -> list[int]:
        """Hook: argmax decoding on the incremental KV-cache path."""
        return list(self.generate(prompt, text_len=text_len, greedy=True))

    @torch.inference_mode()
    def score(self, prompt: Prompt, forced: Tensor) -> Tensor:
        """Hook: teacher-forced log-probabilities ``[T - task_index, V]`` for every position from the task token on.

        The input is the prompt followed by the speech tokens ``forced`` ``[N]``,
        run in one causal pass (not the incremental path), so comparing the two
        checks the cache handling too.
        """
        embeds = torch.cat([prompt.embeds, self.embed_speech(forced.view(1, -1))], dim=1)
        hidden, _ = self.run(embeds, None)
        return self.logits(hidden[0, prompt.task_index :])


class Prefill:
    """A prompt's prefill, run a chunk of positions at a time so other requests' decode steps can
    interleave with a long prompt's."""

    def __init__(self, lm: SpeechLM, prompt: Prompt) -> None:
        self.lm = lm
        self.prompt = prompt
        self.done = 0
        self.cache: Any = None
        self.hidden: Tensor | None = None

    @torch.inference_mode()
    def step(self, positions: int) -> bool:
        """Run up to ``positions`` more prompt positions; True when the whole prompt is in the cache."""
        end = min(self.prompt.embeds.size(1), self.done + positions)
        self.hidden, self.cache = self.lm.run(self.prompt.embeds[:, self.done : end], self.cache)
        self.done = end
        return end == self.prompt.embeds.size(1)

    @torch.inference_mode()
    def finish(self, min_len: int, max_len: int, seed: int | None) -> Decoding:
        """The decoding state, ready for its first sample (stop tokens barred before ``min_len`` tokens)."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
        logp = self.lm.logits(self.hidden[:, -1])[0]
        return Decoding(cache=self.cache, logp=logp, min_len=min_len, max_len=max_len, generator=generator)


class DecodeBatch:
    """Decodings advanced together, one new token each per :meth:`advance`. This base steps them one
    after another; models with a batched cache override it."""

    def __init__(self, lm: SpeechLM) -> None:
        self.lm = lm
        self.states: list[Decoding] = []

    def add(self, state: Decoding) -> None:
        self.states.append(state)

    def remove(self, state: Decoding) -> None:
        self.states.remove(state)

    def advance(self, tokens: dict[int, int]) -> None:
        """Feed each member ``states[i]`` its sampled token ``tokens[id(state)]``; all members take part."""
        for state in self.states:
            self.lm.advance(state, tokens[id(state)])


class SlotBatch(DecodeBatch):
    """Qwen2 decodings whose caches live in the rows of one :class:`SlotCache`: one forward pass
    advances them all (``static``: in the fixed shapes of a :class:`StaticSlotCache`)."""

    def __init__(self, lm: Qwen2LM, *, static: bool = False) -> None:
        super().__init__(lm)
        weight = lm.speech_embedding.weight
        kind = StaticSlotCache if static else SlotCache
        self.cache = kind(lm.llm.decoder.config, weight.device, weight.dtype)

    def add(self, state: Decoding) -> None:
        room = state.max_len - len(state.tokens)  # positions it may still add
        state.cache = self.cache.add(state.cache, room)  # the row index: rows follow ``states``
        self.states.append(state)

    def remove(self, state: Decoding) -> None:
        row = self.states.index(state)
        moved = self.cache.remove(row)
        last = self.states.pop()
        if moved is not None:
            self.states[row] = last
            last.cache = row

    @torch.inference_mode()
    def advance(self, tokens: dict[int, int]) -> None:
        if not self.states:
            return
        ids = [tokens[id(state)] for state in self.states]
        embeds = self.lm.embed_speech(self.cache.stage(ids).view(-1, 1))
        hidden = self.lm.llm.decoder.decode(embeds, self.cache)
        # sampling runs on the CPU: one transfer for the batch (padding rows, if any, left behind)
        logp = self.lm.logits(hidden[: len(ids), -1]).cpu()
        for row, (state, token) in enumerate(zip(self.states, ids)):
            state.tokens.append(token)
            state.logp = logp[row]


def _speaker(embedding: Tensor | None, affine: nn.Linear, like: Tensor) -> Tensor:
    if embedding is None or embedding.numel() == 0:
        return like.new_zeros(1, 0, affine.out_features)
    return affine(F.normalize(embedding.to(like.dtype), dim=1)).unsqueeze(1)


class TransformerLM(SpeechLM):
    """v1: a causal conformer over text, then a causal relative-position transformer over speech tokens."""

    def __init__(
        self,
        *,
        text_encoder_input_size: int,
        llm_input_size: int,
        llm_output_size: int,
        text_token_size: int,
        speech_token_size: int,
        spk_embed_dim: int,
        text_encoder: Encoder,
        llm: Encoder,
        sampling: SamplingOptions,
    ) -> None:
        super().__init__()
        self.speech_token_size = speech_token_size
        self.sampling = sampling
        self.text_embedding = nn.Embedding(text_token_size, text_encoder_input_size)
        self.text_encoder = text_encoder
        self.text_encoder_affine_layer = nn.Linear(llm_input_size, llm_input_size)
        self.llm_embedding = nn.Embedding(2, llm_input_size)  # 0: sos/eos, 1: task
        self.llm = llm
        self.llm_decoder = nn.Linear(llm_output_size, speech_token_size + 1)
        self.speech_embedding = nn.Embedding(speech_token_size, llm_input_size)
        self.spk_embed_affine_layer = nn.Linear(spk_embed_dim, llm_input_size)

    def prompt(self, text, prompt_text, prompt_speech, embedding):
        tokens = torch.cat([prompt_text, text]).view(1, -1)
        encoded = self.text_encoder(self.text_embedding(tokens), torch.tensor([tokens.size(1)], device=tokens.device))
        encoded = self.text_encoder_affine_layer(encoded)
        table = self.llm_embedding.weight
        speaker = _speaker(embedding, self.spk_embed_affine_layer, encoded)
        parts = [table[0].view(1, 1, -1), speaker, encoded, table[1].view(1, 1, -1)]
        task_index = sum(p.size(1) for p in parts) - 1
        parts.append(self.speech_embedding(prompt_speech.view(1, -1)))
        return Prompt(torch.cat(parts, dim=1), task_index)

    def run(self, embeds, cache):
        past = 0 if cache is None else cache[0][0].size(2)
        t = embeds.size(1)
        query = torch.arange(past, past + t, device=embeds.device).unsqueeze(1)
        mask = (torch.arange(past + t, device=embeds.device).unsqueeze(0) <= query).unsqueeze(0)
        return self.llm.forward_cached(embeds, mask, cache)


class Qwen2LM(SpeechLM):
    """v2: a Qwen2 backbone over [sos, text, task, speech]; sos/task come from ``llm_embedding``."""

    decoder_bias = True
    extra_speech_rows = 3  # eos 6561, unused 6562, fill 6563

    def __init__(
        self, *, llm_input_size: int, llm_output_size: int, speech_token_size: int, config: Qwen2Config,
        sampling: SamplingOptions,
    ) -> None:
        super().__init__()
        self.speech_token_size = speech_token_size
        self.sampling = sampling
        if self.decoder_bias:
            self.llm_embedding = nn.Embedding(2, llm_input_size)
        self.llm = Qwen2Encoder(config)
        rows = speech_token_size + self.extra_speech_rows
        self.llm_decoder = nn.Linear(llm_output_size, rows, bias=self.decoder_bias)
        self.speech_embedding = nn.Embedding(rows, llm_input_size)

    def specials(self) -> tuple[Tensor, Tensor]:
        table = self.llm_embedding.weight
        return table[0], table[1]

    def batch(self, *, static: bool = False) -> DecodeBatch:
        return SlotBatch(self, static=static)

    def prompt(self, text, prompt_text, prompt_speech, embedding):
        del embedding  # the Qwen2 models take the speaker from the flow only
        sos, task = self.specials()
        words = self.llm.decoder.embed_tokens(torch.cat([prompt_text, text]).view(1, -1))
        parts = [sos.view(1, 1, -1), words, task.view(1, 1, -1)]
        task_index = sum(p.size(1) for p in parts) - 1
        parts.append(self.speech_embedding(prompt_speech.view(1, -1)))
        return Prompt(torch.cat(parts, dim=1), task_index)

    def run(self, embeds, cache):
        return self.llm.decoder(embeds, cache)


class CosyVoice3LM(Qwen2LM):
    """v3: as v2, but sos/eos/task/fill and 196 more stop ids live in the speech table; no decoder bias."""

    decoder_bias = False
    extra_speech_rows = 200
    SOS, EOS, TASK, FILL = 0, 1, 2, 3  # offsets past speech_token_size

    def specials(self) -> tuple[Tensor, Tensor]:
        table = self.speech_embedding.weight
        return table[self.speech_token_size + self.SOS], table[self.speech_token_size + self.TASK]
