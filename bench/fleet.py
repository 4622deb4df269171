"""The engine pool on Ray Serve against the local engine, on this machine's local Ray cluster.

1. Time to first audio of a short sentence, one request at a time: the embedded voice in this
   process and through a one-replica pool (the same engine behind a streaming handle), in turn, so
   both see the same load from whatever else runs; the p50 of what each pair's pool request added.
2. Aggregate real-time streams: ``--streams`` concurrent requests of a long text, through a pool of
   one replica and of two; audio seconds made per wall second (each replica runs one Piper worker),
   the clauses each replica served, and how busy the machine's cores and this edge were: where two
   replicas give less than twice one, the busy cores say whether the machine was the limit.

    .venv/bin/python bench/fleet.py [--rounds 20] [--streams 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from ray import serve  # noqa: E402

from cosyvoice import Engine, SynthesisRequest  # noqa: E402
from gateway.engines import build_engine  # noqa: E402
from gateway.pool import pool_application, pool_engine  # noqa: E402
from gateway.settings import EngineSettings, Settings  # noqa: E402

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


async def run_first_audio(rounds: int) -> tuple[list[float], list[float]]:
    """First audio from the local engine and from a one-replica pool, request by request in turn,
    so both see the same load from whatever else this machine runs."""
    serve.run(pool_application(settings(1)), name="bench", route_prefix=None)
    local = build_engine(settings(1).model_copy(update={"engine": EngineSettings(backend="local")}))
    pool = pool_engine(settings(1))
    await local.start()
    await pool.start()
    try:
        await first_audio(local, 3)  # warm-up
        await first_audio(pool, 3)
        local_times, pool_times = [], []
        for _ in range(rounds):
            local_times += await first_audio(local, 1)
            pool_times += await first_audio(pool, 1)
        return local_times, pool_times
    finally:
        await local.close()


@dataclass(frozen=True)
class PoolRun:
    streams: float  # real-time streams made
    clauses: list[int]  # clauses each replica served
    busy_cores: float  # the whole machine's, on average
    edge_cores: float  # this process's (the edge: clause splitting, the handle, Ray's router)


async def run_pool(replicas: int, streams: int) -> PoolRun:
    serve.run(pool_application(settings(replicas)), name="bench", route_prefix=None)
    engine = pool_engine(settings(replicas))
    await engine.start()
    await throughput(engine, streams)  # warm-up: every replica has served
    before = {replica: load.served for replica, load in engine.load.items()}
    busy, edge, wall = busy_seconds(), time.process_time(), time.perf_counter()
    made = await throughput(engine, streams)
    wall = time.perf_counter() - wall
    clauses = sorted(load.served - before.get(replica, 0) for replica, load in engine.load.items())
    return PoolRun(made, clauses, (busy_seconds() - busy) / wall, (time.process_time() - edge) / wall)


def busy_seconds() -> float:
    """CPU seconds every core of this machine has spent busy (user, system, interrupts) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")

    async def measure():
        # One event loop for every handle: with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 the router runs on the caller's.
        try:
            return await run_first_audio(args.rounds), await run_pool(1, args.streams), await run_pool(2, args.streams)
        finally:
            await serve.shutdown_async()

    try:
        (local, pooled), one, two = asyncio.run(measure())
    finally:
        ray.shutdown()
    added = [p - q for p, q in zip(pooled, local)]
    print(f"first audio, short sentence, p50: local {p50_ms(local)} ms, pool {p50_ms(pooled)} ms, "
          f"added (pairwise) {p50_ms(added)} ms p50")
    print(f"aggregate real-time streams ({args.streams} long texts at once): one replica {one.streams:.1f}, "
          f"two replicas {two.streams:.1f} ({two.streams / one.streams:.2f}x; clauses per replica {two.clauses})")
    for name, run in (("one replica", one), ("two replicas", two)):
        print(f"  {name}: machine busy {run.busy_cores:.2f} of {os.cpu_count()} cores, this edge {run.edge_cores:.2f}")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
