"""Choose and build the engine the settings ask for."""

from __future__ import annotations

from cosyvoice import Engine
from cosyvoice.embedded import EmbeddedEngine, EmbeddedOptions
from cosyvoice.replay import ReplayEngine
from gateway.settings import Settings


def build_engine(settings: Settings) -> Engine:
    """The CosyVoice engine when a model directory is set, else the embedded CPU voice
    (or, for load tests, the replay engine when ``engine.replay_audio`` is set); with ``backend = "ray"``,
    the edge's client of the engine pool (gateway/pool.py)."""
    if settings.engine.backend == "ray":
        from gateway.pool import pool_engine  # imported here: Ray is an optional extra

        return pool_engine(settings)
    clause_options = {
        "first_clause_chars": settings.engine.first_clause_chars,
        "clause_chars": settings.engine.clause_chars,
        "max_chars": settings.engine.max_clause_chars,
    }
    if settings.engine.replay_audio:
        return ReplayEngine(settings.engine.replay_audio, max_text_chars=settings.limits.max_text_chars)
    if settings.engine.model_dir:
        # Imported here: torch is an optional extra, and the embedded voice needs none of it.
        from cosyvoice.model.engine import CosyVoiceEngine, CosyVoiceOptions

        cosyvoice = settings.cosyvoice
        return CosyVoiceEngine(
            CosyVoiceOptions(
                model_dir=settings.engine.model_dir,
                device=settings.engine.device,
                normalize_text=cosyvoice.normalize_text,
                onnx_threads=cosyvoice.onnx_threads,
                first_hop=cosyvoice.first_hop,
                max_hop=cosyvoice.max_hop,
                threads=cosyvoice.threads,
                llm_backend=cosyvoice.llm_backend,
                max_batch=cosyvoice.max_batch,
                prefill_chunk=cosyvoice.prefill_chunk,
                vllm_memory=cosyvoice.vllm_memory,
                prompt_cache_mb=cosyvoice.prompt_cache_mb,
                dtype=cosyvoice.dtype,
                kv_cache=cosyvoice.kv_cache,
            ),
            max_text_chars=settings.limits.max_text_chars,
            clause_options=clause_options,
        )
    embedded = settings.embedded
    return EmbeddedEngine(
        EmbeddedOptions(
            workers=embedded.workers,
            threads_per_worker=embedded.threads_per_worker,
            voice_model=embedded.voice_model,
            start_timeout=embedded.start_timeout,
        ),
        max_text_chars=settings.limits.max_text_chars,
        clause_options=clause_options,
    )
