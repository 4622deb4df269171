"""The CosyVoice engine: an official model directory behind the engine contract.

Prompt work (text normalization, tokenization, the ONNX frontends) runs on a
frontend thread; every clause then becomes a session of the runtime's
scheduler (:mod:`cosyvoice.runtime`), whose two worker threads batch all
sessions' LLM steps and flow/vocoder chunks. torch releases the GIL, so the
event loop stays responsive. A request's next clause starts its LLM as soon as
the previous clause's last token is known. Cancelling a stream cancels its
sessions, which leave the batches before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cosyvoice.engine import Audio, AudioStream, Capabilities, Emit, Engine, Mode, SynthesisRequest
from cosyvoice.errors import EngineFailure, EngineUnavailable, InvalidRequest, UnsupportedMode
from cosyvoice.model.features import resample
from cosyvoice.model.frontend import MAX_PROMPT_SECONDS, TextNormalizer
from cosyvoice.model.loader import Components, load_model
from cosyvoice.model.pipeline import ModeInputs, fixed_draws, prompt_features
from cosyvoice.model.tokenizer import END_OF_PROMPT
from cosyvoice.runtime.prompt_cache import PromptCache
from cosyvoice.runtime.render import FlowRenderer, Renderer, WindowRenderer
from cosyvoice.runtime.schedule import HopSchedule
from cosyvoice.runtime.scheduler import Scheduler, TokenStage
from cosyvoice.runtime.session import END, LLM_DONE, Session, TextFeed
from cosyvoice.runtime.tokens import TorchTokens
from cosyvoice.text import ClauseOptions, split_clauses
from cosyvoice.text_stream import TextStream
from cosyvoice.timing import WordTiming, spread, word_spans

log = logging.getLogger(__name__)

V3_SYSTEM = "You are a helpful assistant."
Piece = Tensor | list[int]  # a clause's text token ids, or (voice conversion) the source's speech tokens
V1_END_OF_PROMPT = "<endofprompt>"
CLONING = (Mode.ZERO_SHOT, Mode.CROSS_LINGUAL, Mode.INSTRUCT2, Mode.VC)
TOKEN_RATES = {1: 50, 2: 25, 3: 25}  # speech tokens per second of audio, by model generation


@dataclass(frozen=True)
class _Words:
    """Words of a stretch of text: their spans in the whole text and their text tokens, to share its audio out by."""

    spans: tuple[tuple[int, int], ...] = ()
    weights: tuple[int, ...] = ()

    def timed(self, text: str, start_s: float, seconds: float) -> list[WordTiming]:
        """The words' estimated timings in ``seconds`` of audio from ``start_s`` (``text``: the whole text)."""
        return spread(text, self.spans, self.weights, start_s, start_s + seconds)


@dataclass(frozen=True)
class CosyVoiceOptions:
    """Settings of the CosyVoice engine."""

    model_dir: str
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    normalize_text: bool = True  # wetext when installed
    onnx_threads: int = 1
    first_hop: int = 15  # the least tokens in the first streamed chunk (it grows to a 25-token boundary)
    max_hop: int = 100  # the most tokens in a later chunk (hops double from 25 up to this)
    threads: int = 0  # torch CPU threads; 0: half the cores (small ops stall when threads outnumber idle cores)
    llm_backend: str = "torch"  # torch, or vllm (CUDA only; needs the vllm extra)
    max_batch: int = 16  # the most sessions in one flow/vocoder batch
    prefill_chunk: int = 64  # prompt positions prefilled per LLM step while other sessions decode
    vllm_memory: float = 0.5  # the GPU memory fraction vLLM may take (llm_backend = vllm)
    prompt_cache_mb: int = 1024  # flow state after saved voices' prompts, kept for their next sessions (0: off)
    # float32, bfloat16 (the LLM's weights and the flow's compute: about twice as fast where native), or
    # auto: bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX), float32 elsewhere
    dtype: str = "auto"
    kv_cache: str = "dynamic"  # dynamic (exact shapes), or static (fixed shapes: padded batch, preallocated)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' was asked for, but CUDA is not available")
    return device


class CosyVoiceEngine(Engine):
    """CosyVoice v1/v2/v3 from a model directory; modes reported per loaded model."""

    def __init__(
        self, options: CosyVoiceOptions, *, max_text_chars: int = 4096, clause_options: ClauseOptions = ClauseOptions()
    ) -> None:
        super().__init__(max_text_chars=max_text_chars)
        self.options = options
        self.clause_options = clause_options
        self.components: Components | None = None
        self.precision = torch.float32  # what ``dtype`` resolved to, once loaded
        self.scheduler: Scheduler | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cosyvoice-frontend")
        self._capabilities = Capabilities(
            engine="cosyvoice", model=Path(options.model_dir).name, modes=frozenset(), sample_rate=24000,
            voices=(), default_voice=None,
        )
        self._normalizer = None
        self._feature_key = ""

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)
        self._ready = True

    def _load(self) -> None:
        device = resolve_device(self.options.device)
        if device == "cpu":
            torch.set_num_threads(self.options.threads or max(1, (os.cpu_count() or 2) // 2))
        c = load_model(self.options.model_dir, device, onnx_threads=self.options.onnx_threads)
        precision = self.precision = resolve_dtype(self.options.dtype, device)
        if precision != torch.float32:  # decoding reads every weight per step: store them narrower
            c.llm.to(precision)
            flags = _cpu_flags() if device == "cpu" else set()
            if flags and not flags & NATIVE_BF16:
                log.warning("dtype %s on a CPU without AVX512-BF16 or AMX is emulated: expect it slower than float32",
                            self.options.dtype)
        self.components = c
        self._normalizer = TextNormalizer(self.options.normalize_text)
        voices = tuple(sorted(k for k, v in c.spk2info.items() if "embedding" in v))
        modes = {Mode.ZERO_SHOT, Mode.CROSS_LINGUAL, Mode.VC}
        if c.generation > 1:
            modes.add(Mode.INSTRUCT2)
        if voices:
            modes.add(Mode.SFT)
            if c.generation == 1 and "instruct" in c.name.lower():
                modes.add(Mode.INSTRUCT)
        self._capabilities = Capabilities(
            engine="cosyvoice",
            model=c.name,
            modes=frozenset(modes),
            sample_rate=c.sample_rate,
            voices=voices,
            default_voice=voices[0] if voices else None,
            gpu=device.startswith("cuda"),
            text_streaming=c.generation > 1 and self.options.llm_backend == "torch",  # vLLM: no text-fed decoding
            languages=("zh", "en", "ja", "ko", "yue"),
        )
        sizes = [(c.directory / f).stat().st_size for f in ("llm.pt", "flow.pt", "campplus.onnx")]
        digest = zlib.crc32(repr((c.generation, sizes)).encode()) & 0xFFFFFFFF
        safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in c.name)[:40]
        self._feature_key = f"cosyvoice-v{c.generation}.{safe_name}.{digest:08x}"
        renderer = self._renderer(c, precision)
        _warm_up(c, renderer)
        # a CPU renders sessions side by side, one per core; a GPU does better with one worker's batches
        workers = 1 if device.startswith("cuda") else max(1, (os.cpu_count() or 1) // torch.get_num_threads())
        self.scheduler = Scheduler(
            self._token_stage(c), renderer, sample_rate=c.sample_rate, max_batch=self.options.max_batch,
            render_workers=workers,
        )
        self.scheduler.start()
        log.info("CosyVoice v%d ready on %s: modes %s", c.generation, device, sorted(m.value for m in modes))

    def _renderer(self, c: Components, precision: torch.dtype) -> Renderer:
        if c.generation == 1:
            return WindowRenderer(c, precision)
        schedule = HopSchedule(c.flow.chunk_tokens, self.options.first_hop, self.options.max_hop)
        cache = PromptCache(self.options.prompt_cache_mb << 20) if self.options.prompt_cache_mb > 0 else None
        return FlowRenderer(c, schedule, fixed_draws(c.hift) if c.generation == 3 else None, cache, precision)

    def _token_stage(self, c: Components) -> TokenStage:
        if self.options.llm_backend == "vllm":
            from cosyvoice.runtime.vllm import VllmTokens

            llm_file = c.directory / "llm.pt"
            signature = zlib.crc32(repr((str(c.directory), llm_file.stat().st_size, llm_file.stat().st_mtime_ns)).encode())
            export = Path(tempfile.gettempdir()) / "cosyvoice-vllm" / f"{self._feature_key}.{signature:08x}"
            return VllmTokens(c.llm, export, gpu_memory_utilization=self.options.vllm_memory)
        if self.options.llm_backend != "torch":
            raise ValueError(f"llm_backend must be 'torch' or 'vllm', not {self.options.llm_backend!r}")
        if self.options.kv_cache not in ("dynamic", "static"):
            raise ValueError(f"kv_cache must be 'dynamic' or 'static', not {self.options.kv_cache!r}")
        return TorchTokens(c.llm, prefill_chunk=self.options.prefill_chunk, static=self.options.kv_cache == "static")

    async def close(self) -> None:
        self._ready = False
        if self.scheduler is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.scheduler.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def busy(self) -> int:
        """Sessions (clauses) in flight in the scheduler's batches."""
        return 0 if self.scheduler is None else self.scheduler.busy

    @property
    def feature_key(self) -> str:
        """The key this model's prompt features are cached under in a saved voice."""
        return self._feature_key

    # -- requests ---------------------------------------------------------------
    def validate(self, request: SynthesisRequest) -> None:
        super().validate(request)
        for name, audio in (("prompt", request.prompt_audio), ("source", request.source_audio)):
            if audio is not None and audio.duration > MAX_PROMPT_SECONDS:
                raise InvalidRequest(
                    f"{name} audio is {audio.duration:.1f} s long; the speech tokenizer takes at most "
                    f"{MAX_PROMPT_SECONDS:.0f} s"
                )

    async def _produce(self, request: SynthesisRequest, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        started: list[tuple[Session, asyncio.Queue]] = []
        try:
            prompt, texts, words = await loop.run_in_executor(self._executor, self._prepare_timed, request)
            emitted, timed_until = 0, 0.0  # samples so far: where the next clause's audio begins; the last word's end
            rate = self._capabilities.sample_rate

            def begin(piece: Piece) -> None:
                queue: asyncio.Queue = asyncio.Queue()
                session = self._session(request, prompt, piece, partial(loop.call_soon_threadsafe, queue.put_nowait))
                started.append((session, queue))
                self.scheduler.submit(session)

            begin(texts[0])
            for index in range(len(texts)):
                session, queue = started[index]
                # an estimate a few ms past its clause's real end must not overlap the next clause's words
                clause_start = max(emitted / rate, timed_until)
                while (item := await queue.get()) is not END:
                    if item is LLM_DONE:  # the next clause's LLM can start while this one renders
                        if len(started) == index + 1 < len(texts):
                            begin(texts[index + 1])
                        # every speech token is known, so the clause's length is: its words share it
                        timed = words[index].timed(request.text, clause_start, self._seconds(session, request))
                        if timed:
                            timed_until = timed[-1].end_s
                            await emit(np.zeros(0, np.float32), timed)
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        emitted += len(item)
                        await emit(item)
        except (asyncio.CancelledError, InvalidRequest):
            raise
        except Exception as error:
            log.exception("CosyVoice synthesis failed")
            raise EngineFailure(f"synthesis failed: {error}") from error
        finally:
            for session, _ in started:
                self.scheduler.cancel(session)

    # -- text as it arrives (v2/v3) ----------------------------------------------
    def synthesize_text_stream(self, request: SynthesisRequest, text: TextStream) -> AudioStream:
        """Speak ``request.text`` and then every piece of ``text`` as one utterance (one decoding), the
        model taking text as it asks for it. Pieces are tokenized as they come and not normalized (a
        number split across pieces would be read wrong), as upstream does. Word timings (estimated, the
        whole audio shared by all the words) come once the last speech token is known; they index
        ``request.text`` and the pieces joined."""
        if not self._ready:
            raise EngineUnavailable("engine 'cosyvoice' is not ready")
        if not self._capabilities.text_streaming:
            raise UnsupportedMode("text streaming needs a CosyVoice v2/v3 model on llm_backend = 'torch'")
        if request.mode is Mode.VC:
            raise UnsupportedMode("voice conversion has no text to stream")
        self.validate(request)
        return AudioStream(self._capabilities.sample_rate, lambda emit: self._produce_text_stream(request, text, emit))

    async def _produce_text_stream(self, request: SynthesisRequest, text: TextStream, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        session: Session | None = None
        fed = [request.text]  # all text fed, in order: the word timings index it joined

        async def pump(feed: TextFeed, device: torch.device) -> None:
            feed.pieces.append(self._text_ids(request.text, device))
            self.scheduler.wake()
            async for piece in text.pieces():
                fed.append(piece)
                feed.pieces.append(self._text_ids(piece, device))
                self.scheduler.wake()
            feed.closed = True
            self.scheduler.wake()

        pumping = None
        try:
            prompt, head = await loop.run_in_executor(self._executor, self._text_fed_prompt, request)
            feed = TextFeed(head=head)
            session = Session(
                prompt, None, partial(loop.call_soon_threadsafe, queue.put_nowait), stream=True, speed=request.speed,
                seed=request.seed if request.seed > 0 else None, generation=self.components.generation, feed=feed,
            )
            pumping = asyncio.create_task(pump(feed, prompt.flow_feat.device))
            self.scheduler.submit(session)
            while (item := await queue.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                if item is LLM_DONE:  # every speech token is known, and (closed before the last) all the text
                    whole = "".join(fed)
                    words = await loop.run_in_executor(self._executor, self._words, whole)
                    if timed := words.timed(whole, 0.0, self._seconds(session, request)):
                        await emit(np.zeros(0, np.float32), timed)
                else:
                    await emit(item)
        except (asyncio.CancelledError, InvalidRequest):
            raise
        except Exception as error:
            log.exception("CosyVoice text-stream synthesis failed")
            raise EngineFailure(f"synthesis failed: {error}") from error
        finally:
            if pumping is not None:
                pumping.cancel()
            if session is not None:
                self.scheduler.cancel(session)

    def _text_fed_prompt(self, request: SynthesisRequest) -> tuple[ModeInputs, int]:
        """The mode inputs, and how many prompt-text tokens precede the text blocks: v3's system prompt
        through ``<|endofprompt|>`` (added when the prompt has none), none for v2."""
        prompt = self._prompt(request)
        if self.components.generation < 3:
            return prompt, 0
        marker = self.components.tokenizer.encode(END_OF_PROMPT)[-1]
        ids = prompt.prompt_text.tolist()
        if marker in ids:
            return prompt, ids.index(marker) + 1
        system = self._text_ids(f"{V3_SYSTEM}{END_OF_PROMPT}", prompt.prompt_text.device)
        return replace(prompt, prompt_text=torch.cat([system, prompt.prompt_text])), system.numel()

    def _session(self, request: SynthesisRequest, prompt: ModeInputs, piece: Piece, deliver) -> Session:
        text = piece if isinstance(piece, Tensor) else None
        session = Session(
            prompt, text, deliver, stream=request.stream, speed=request.speed,
            seed=request.seed if request.seed > 0 else None, generation=self.components.generation,
        )
        if text is None:  # voice conversion: the source's speech tokens, no LLM
            session.tokens, session.llm_done = piece, True
        return session

    def _prepare_timed(self, request: SynthesisRequest) -> tuple[ModeInputs, list[Piece], list[_Words]]:
        """:meth:`_prepare`, and each clause's words (none for voice conversion, which has no text)."""
        if request.mode is Mode.VC:
            prompt, texts = self._prepare(request)
            return prompt, texts, [_Words()]
        clauses = self._pieces(request)
        prompt, texts = self._prepare(request, clauses)
        words, cursor = [], 0
        for clause in clauses:
            at = request.text.find(clause, cursor)  # a clause the normalizer rewrote has no place in the text
            if at < 0:
                words.append(_Words())
                continue
            cursor = at + len(clause)
            words.append(self._words(request.text, at, cursor))
        return prompt, texts, words

    def _words(self, text: str, start: int = 0, end: int | None = None) -> _Words:
        """The words of ``text[start:end]``, with their spans in ``text``, weighed by their text tokens."""
        spans = tuple((start + first, start + last) for first, last in word_spans(text[start:end]))
        weights = tuple(max(1, len(self.components.tokenizer.encode(text[a:b]))) for a, b in spans)
        return _Words(spans, weights)

    def _seconds(self, session: Session, request: SynthesisRequest) -> float:
        """The audio a session's speech tokens make, known once its LLM is done."""
        return len(session.tokens) / TOKEN_RATES[self.components.generation] / request.speed

    def _prepare(self, request: SynthesisRequest, pieces: list[str] | None = None) -> tuple[ModeInputs, list[Piece]]:
        """The mode inputs and the pieces to speak (runs on the frontend thread)."""
        prompt = self._prompt(request)
        if request.mode is Mode.VC:
            return prompt, [self._speech_tokens(request.source_audio).tolist()]
        texts = []
        for piece in self._pieces(request) if pieces is None else pieces:
            if self.components.generation == 3 and request.mode is Mode.CROSS_LINGUAL and END_OF_PROMPT not in piece:
                piece = f"{V3_SYSTEM}{END_OF_PROMPT}{piece}"
            texts.append(self._text_ids(piece, prompt.flow_feat.device))
        return prompt, texts

    def _pieces(self, request: SynthesisRequest) -> list[str]:
        """Clauses to speak, each a separate model run."""
        text = request.text.strip()
        if "<|" in text and "|>" in text:  # model markup: keep it whole, as written
            return [text]
        return split_clauses(self._normalizer(text), self.clause_options) or [text]

    # -- prompts ----------------------------------------------------------------
    @torch.inference_mode()
    def _prompt(self, request: SynthesisRequest) -> ModeInputs:
        c = self.components
        device = c.noise.device if c.noise is not None else next(c.flow.parameters()).device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        no_feat = torch.zeros(1, 0, 80, device=device)
        mode = request.mode
        saved = request.saved_voice
        if mode is Mode.SFT and saved is not None:
            # a cloned voice speaks by zero-shot cloning from its prompt (cross-lingual without a transcript)
            mode = Mode.ZERO_SHOT if saved.prompt_text.strip() else Mode.CROSS_LINGUAL
        if mode in (Mode.SFT, Mode.INSTRUCT):
            if saved is not None:  # v1 instruct with a cloned voice: its x-vector stands in for a built-in one
                embedding = torch.from_numpy(self._voice_features(request)["embedding"]).float()
            else:
                embedding = c.spk2info[self.resolve_voice(request.voice)]["embedding"].float()
            embedding = embedding.view(1, -1).to(device)
            prompt_text = empty
            llm_embedding: torch.Tensor | None = embedding
            if mode is Mode.INSTRUCT:  # v1 writes the marker as plain text: Whisper's BPE has no such token
                prompt_text = self._text_ids(_with_end(request.instruct_text, V1_END_OF_PROMPT), device)
                llm_embedding = None  # upstream drops it: the instruction, not the voice, sets the style
            return ModeInputs(prompt_text, empty, llm_embedding, empty, no_feat, embedding)

        features = self._voice_features(request)
        tokens = torch.from_numpy(features["speech_token"]).long().to(device)
        feat = torch.from_numpy(features["speech_feat"]).float().to(device).unsqueeze(0)
        embedding = torch.from_numpy(features["embedding"]).float().view(1, -1).to(device)
        if mode is Mode.ZERO_SHOT:
            transcript = self._normalizer(request.prompt_text.strip() or (saved.prompt_text.strip() if saved else ""))
            if c.generation == 3 and END_OF_PROMPT not in transcript:
                transcript = f"{V3_SYSTEM}{END_OF_PROMPT}{transcript}"
            return ModeInputs(self._text_ids(transcript, device), tokens, embedding, tokens, feat, embedding)
        if mode is Mode.INSTRUCT2:
            instruct = request.instruct_text.strip()
            if c.generation == 3 and END_OF_PROMPT not in instruct:
                instruct = f"{V3_SYSTEM} {instruct}"
            return ModeInputs(self._text_ids(_with_end(instruct), device), empty, None, tokens, feat, embedding)
        # cross_lingual and vc: the prompt gives the voice, not the words
        return ModeInputs(empty, empty, embedding, tokens, feat, embedding)

    def _text_ids(self, text: str, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.components.tokenizer.encode(text), dtype=torch.long, device=device)

    def _voice_features(self, request: SynthesisRequest) -> dict[str, np.ndarray]:
        """Speech tokens, prompt mel and x-vector of the prompt; computed once per saved voice and model."""
        saved = request.saved_voice
        if saved is not None:
            cached = saved.features.get(self._feature_key)
            if cached is not None:
                return cached
            if saved.prompt_audio is None:
                raise InvalidRequest(f"saved voice '{saved.id}' has no prompt audio")
            features = self.prompt_features(saved.prompt_audio)
            saved.remember(self._feature_key, features)
            return features
        if request.prompt_audio is None:
            raise InvalidRequest(f"mode '{request.mode.value}' needs prompt audio")
        return self.prompt_features(request.prompt_audio)

    def prompt_features(self, audio: Audio) -> dict[str, np.ndarray]:
        """The frontend's work on a prompt recording (runs on the inference thread)."""
        return prompt_features(self.components, audio)

    def _speech_tokens(self, audio: Audio | None) -> torch.Tensor:
        if audio is None:
            raise InvalidRequest("mode 'vc' needs source audio")
        return self.components.speech_tokenizer(resample(audio.samples, audio.sample_rate, 16000))


NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of CPUs that compute bfloat16 natively


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The precision to compute in. ``auto`` is bfloat16 only where it was measured to pay: a CPU with
    AVX512-BF16 or AMX (about twice float32's throughput); float32 on other CPUs (which emulate
    bfloat16, slower than float32) and on GPUs (not measured yet)."""
    if dtype == "auto":
        return torch.bfloat16 if device == "cpu" and _cpu_flags() & NATIVE_BF16 else torch.float32
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', not {dtype!r}")
    return getattr(torch, dtype)


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux; empty where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


@torch.inference_mode()
def _warm_up(c: Components, renderer: Renderer) -> None:
    """A tiny pass through every stage, so the first request does not pay for lazy initialization."""
    device = next(c.flow.parameters()).device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    text = torch.tensor(c.tokenizer.encode("warm up"), dtype=torch.long, device=device)
    state = c.llm.start(c.llm.prompt(text, empty, empty, None), text_len=text.numel(), seed=1)
    batch = c.llm.batch()
    batch.add(state)
    batch.advance({id(state): 0})
    prompt = ModeInputs(empty, empty, None, empty, torch.zeros(1, 0, 80, device=device), torch.ones(1, 192, device=device))
    session = Session(prompt, text, lambda item: None, generation=c.generation, llm_done=True, tokens=[0] * 8)
    renderer.open(session)
    renderer.render([session])


def _with_end(text: str, marker: str = END_OF_PROMPT) -> str:
    text = text.strip()
    return text if text.endswith(marker) else text + marker
