"""The engine pool on Ray Serve against the local engine, on this machine's local Ray cluster.

1. Time to first audio of a short sentence, one request at a time: the embedded voice in this
   process, then through a one-replica pool (the same engine behind a streaming handle); p50 added.
2. Aggregate real-time streams: ``--streams`` concurrent requests of a long text, through a pool of
   one replica and of two; audio seconds made per wall second (each replica runs one Piper worker).

    .venv/bin/python bench/fleet.py [--rounds 20] [--streams 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from ray import serve  # noqa: E402

from cosyvoice import Engine, SynthesisRequest  # noqa: E402
from gateway.engines import build_engine  # noqa: E402
from gateway.pool import pool_application, pool_engine  # noqa: E402
from gateway.settings import Settings  # noqa: E402

SHORT = "Hello there, how are you today?"
LONG = (
    "The gateway splits long text into clauses, so the first words can be heard while the rest of the "
    "paragraph is still being synthesized. Every caller gets a fair share of the workers, and nobody waits."
)


def settings(replicas: int) -> Settings:
    return Settings.model_validate({
        "engine": {"backend": "ray", "ray_app": "bench"},
        "embedded": {"workers": 1},
        "pool": {"min_replicas": replicas, "max_replicas": replicas},
    })  # fmt: skip


async def first_audio(engine: Engine, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        async with engine.synthesize(SynthesisRequest(text=SHORT)) as stream:
            async for _ in stream:
                times.append(time.perf_counter() - started)
                break
        await asyncio.sleep(0.3)  # let the cancelled clause finish on its worker
    return times


async def throughput(engine: Engine, streams: int) -> float:
    """Seconds of audio made per wall second, ``streams`` long texts at once."""

    async def one() -> float:
        samples = 0
        async for chunk in engine.synthesize(SynthesisRequest(text=LONG)):
            samples += len(chunk)
        return samples / engine.capabilities.sample_rate

    started = time.perf_counter()
    audio = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return audio / (time.perf_counter() - started)


def p50_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 1)


async def run_local(rounds: int) -> list[float]:
    local = settings(1).model_copy(update={"engine": settings(1).engine.model_copy(update={"backend": "local"})})
    engine = build_engine(local)
    await engine.start()
    try:
        await first_audio(engine, 3)  # warm-up
        return await first_audio(engine, rounds)
    finally:
        await engine.close()


async def run_pool(replicas: int, rounds: int, streams: int) -> tuple[list[float], float]:
    serve.run(pool_application(settings(replicas)), name="bench", route_prefix=None)
    engine = pool_engine(settings(replicas))
    await engine.start()
    await first_audio(engine, 3)
    times = await first_audio(engine, rounds) if rounds else []
    await throughput(engine, streams)  # warm-up: every replica has served
    return times, await throughput(engine, streams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    try:
        local = asyncio.run(run_local(args.rounds))
        pooled, one = asyncio.run(run_pool(1, args.rounds, args.streams))
        _, two = asyncio.run(run_pool(2, 0, args.streams))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"first audio, short sentence, p50: local {p50_ms(local)} ms, pool {p50_ms(pooled)} ms, "
          f"added {round(p50_ms(pooled) - p50_ms(local), 1)} ms")
    print(f"aggregate real-time streams ({args.streams} long texts at once): one replica {one:.1f}, "
          f"two replicas {two:.1f} ({two / one:.2f}x)")


if __name__ == "__main__":
    main()
