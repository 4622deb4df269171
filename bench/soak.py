"""Soak and overload: 1,000 abrupt hang-ups leave nothing behind; twice the capacity is refused cleanly.

Starts ``python -m gateway`` twice on free loopback ports and prints figures.

1. Hang-ups: callers hang up mid-stream, spread evenly over HTTP streaming,
   ``/ws/v1/tts``, ``/ws/v1/session``, WebRTC (peer closed without the WHIP
   DELETE) and Twilio Media Streams. Every ``--checkpoint`` hang-ups, once the
   gateway is idle again, it prints the event loop's tasks, the process's
   threads, open file descriptors and resident memory, and at the end their
   growth against the bound below. A leak grows with the count; slack does not.
2. Overload, with ``max_websocket_sessions=N`` (``--sessions``, 10) and 4
   synthesis slots plus 4 queue places: 2N WebSocket sessions start speaking
   at once (N must be refused with close code 1013 and the other N must play
   without an underrun, per ``GET /v1/sessions/{id}`` before they hang up),
   then 16 HTTP syntheses at once (8 must get 503 with ``Retry-After``, 8
   complete audio). N is only clean up to what the machine serves.

    .venv/bin/python bench/soak.py [--hang-ups 1000] [--concurrency 4] [--checkpoint 250] [--sessions 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.disconnects import DROPS, TEXT, Figures, drop_many, metric, settle  # noqa: E402
from support.servers import ServerProcess, http_status  # noqa: E402
from support.waiting import wait_until  # noqa: E402

# Growth allowed after warm-up, whatever the number of hang-ups.
BOUND = Figures(tasks=3, threads=2, fds=8, rss_mb=50.0)
SLOTS, QUEUE, OFFERED_HTTP = 4, 4, 16


def start(data_dir: str, **env: str) -> ServerProcess:
    server = ServerProcess("--data-dir", data_dir, "--log-level", "warning", env={"GATEWAY_WEBRTC_HOST_ADDRESSES": '["127.0.0.1"]', **env})
    wait_until(lambda: http_status(server.url + "/v1/health") == 200, 120, "gateway ready")
    return server


def soak(server: ServerProcess, hang_ups: int, concurrency: int, checkpoint: int) -> bool:
    url, pid = server.url, server.process.pid
    asyncio.run(drop_many(url, 2 * len(DROPS), concurrency=concurrency))  # warm-up: pools, imports, caches
    settle(url)
    before = Figures.read(url, pid)
    print(f"\nhang-ups over {', '.join(DROPS)}; {concurrency} at a time")
    print(f"{'after':>8} {'seconds':>8} {'failed':>7} {'tasks':>6} {'threads':>8} {'fds':>5} {'rss MB':>8}")
    print(f"{0:>8} {0:>8.1f} {0:>7} {before.tasks:>6} {before.threads:>8} {before.fds:>5} {before.rss_mb:>8.1f}")
    done, failed, started = 0, dict.fromkeys(DROPS, 0), time.monotonic()
    while done < hang_ups:
        batch = min(checkpoint, hang_ups - done)
        for kind, count in asyncio.run(drop_many(url, batch, concurrency=concurrency)).items():
            failed[kind] += count
        done += batch
        elapsed = time.monotonic() - started
        settle(url)
        now = Figures.read(url, pid)
        print(f"{done:>8} {elapsed:>8.1f} {sum(failed.values()):>7} {now.tasks:>6} {now.threads:>8} {now.fds:>5} {now.rss_mb:>8.1f}")
    growth = now.growth(before)
    print(f"failed hang-ups by transport: {failed}")
    print(f"growth after {hang_ups}: tasks {growth.tasks:+d}, threads {growth.threads:+d}, fds {growth.fds:+d}, RSS {growth.rss_mb:+.1f} MB")
    print(f"bound: tasks +{BOUND.tasks}, threads +{BOUND.threads}, fds +{BOUND.fds}, RSS +{BOUND.rss_mb:g} MB (independent of the count)")
    within = all(getattr(growth, name) <= getattr(BOUND, name) for name in ("tasks", "threads", "fds", "rss_mb"))
    return within and not any(failed.values())


async def speak_in_session(url: str) -> dict:
    """One session speaking ``TEXT``: its stats just before hanging up, or how it was refused."""
    ws_url = url.replace("http", "ws", 1) + "/ws/v1/session?" + urllib.parse.urlencode({"text": TEXT})
    async with websockets.connect(ws_url, max_size=None) as socket:
        first = json.loads(await socket.recv())
        if first["type"] == "error":
            return {"refused": await _close_code(socket), "message": first["message"]}
        session_id = first["session"]["session_id"]
        async for message in socket:
            if isinstance(message, str) and json.loads(message)["type"] == "utterance.done":
                break
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(f"{url}/v1/sessions/{session_id}")).json()


async def _close_code(socket) -> int | None:
    try:
        await socket.recv()
    except websockets.ConnectionClosed:
        pass
    return socket.close_code


async def synthesize(client: httpx.AsyncClient, url: str) -> tuple[int, str | None, int]:
    """One HTTP synthesis: status, Retry-After, bytes of audio."""
    async with client.stream("POST", url + "/v1/tts/stream", json={"text": TEXT}) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        return response.status_code, response.headers.get("retry-after"), len(body)


def overload(server: ServerProcess, limit: int) -> bool:
    url = server.url

    async def sessions() -> list[dict]:
        return await asyncio.gather(*(speak_in_session(url) for _ in range(2 * limit)))

    async def syntheses() -> list[tuple[int, str | None, int]]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(synthesize(client, url) for _ in range(OFFERED_HTTP)))

    results = asyncio.run(sessions())
    admitted = [r for r in results if "session_id" in r]
    refused = [r for r in results if "refused" in r]
    underruns = [r["underrun_ms"] for r in admitted]
    first_audio = [r["first_audio_ms_p50"] for r in admitted if r["first_audio_ms_p50"] is not None]
    print(f"\noverload, sessions: {2 * limit} offered, limit {limit}")
    reasons = sorted({f"{r['refused']} {r['message']!r}" for r in refused})
    print(f"  admitted {len(admitted)}, refused {len(refused)} (close code and message: {', '.join(reasons)})")
    print(f"  admitted sessions' underrun: total {sum(underruns)} ms, worst {max(underruns, default=0)} ms")
    if first_audio:
        print(f"  first audio p50 over sessions: {statistics.median(first_audio):.0f} ms, worst {max(first_audio):.0f} ms")
    calls = asyncio.run(syntheses())
    ok = [c for c in calls if c[0] == 200]
    busy = [c for c in calls if c[0] == 503]
    print(f"overload, HTTP: {OFFERED_HTTP} offered, {SLOTS} slots + {QUEUE} queue places")
    print(f"  200: {len(ok)} (audio {min((c[2] for c in ok), default=0)}-{max((c[2] for c in ok), default=0)} bytes), "
          f"503: {len(busy)} (Retry-After {sorted({c[1] for c in busy})}), other: {len(calls) - len(ok) - len(busy)}")  # fmt: skip
    print(f"  gateway_underrun_seconds_total: {metric(url, 'gateway_underrun_seconds_total'):.3f}")
    print(f"  gateway_rejects_total: {metric(url, 'gateway_rejects_total'):.0f}")
    return (
        len(admitted) == limit
        and all(r["refused"] == 1013 for r in refused)
        and len(refused) == limit
        and sum(underruns) == 0
        and len(ok) == SLOTS + QUEUE
        and len(busy) == OFFERED_HTTP - SLOTS - QUEUE
        and all(c[1] for c in busy)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hang-ups", type=int, default=1000, help="0: only the overload run")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--checkpoint", type=int, default=250, help="print the figures every this many hang-ups")
    parser.add_argument("--sessions", type=int, default=10, help="max_websocket_sessions for the overload run")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; embedded voice, 2 workers")
    soaked = True
    with tempfile.TemporaryDirectory() as data_dir:
        if args.hang_ups:
            server = start(data_dir)
            try:
                soaked = soak(server, args.hang_ups, args.concurrency, args.checkpoint)
            finally:
                server.stop()
        server = start(
            data_dir,
            GATEWAY_LIMITS_MAX_WEBSOCKET_SESSIONS=str(args.sessions),
            GATEWAY_LIMITS_MAX_SYNTHESES=str(SLOTS),
            GATEWAY_LIMITS_QUEUE_SIZE=str(QUEUE),
        )
        try:
            overloaded = overload(server, args.sessions)
        finally:
            server.stop()
    print(f"\nload average now {os.getloadavg()[0]:.1f}")
    print(f"soak {'within' if soaked else 'OUTSIDE'} its bound; overload {'clean' if overloaded else 'NOT clean'}")
    return 0 if soaked and overloaded else 1


if __name__ == "__main__":
    sys.exit(main())
