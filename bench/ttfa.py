"""Time to first audio and real-time factor over HTTP streaming (``POST /v1/tts/stream``).

Starts a gateway on a free loopback port (or measures ``--url``), then for a
short and a long text at each concurrency sends requests and prints p50/p95
of the time to the first audio byte, and the real-time factor (wall time
of the whole response / seconds of audio it carried).

    .venv/bin/python bench/ttfa.py [--url http://127.0.0.1:8000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.servers import ServerProcess, http_status  # noqa: E402
from support.waiting import wait_until  # noqa: E402

TEXTS = {
    "short": "Hello there, how are you today?",
    "long": (
        "The gateway splits long text into clauses, so the first words can be heard while the rest "
        "of the paragraph is still being synthesized, and every caller gets a fair share of the workers."
    ),
}


async def one_request(client: httpx.AsyncClient, url: str, text: str) -> tuple[float, float]:
    started = time.perf_counter()
    first = None
    audio_bytes = 0
    async with client.stream("POST", url + "/v1/tts/stream", json={"text": text}) as response:
        response.raise_for_status()
        rate = int(response.headers["x-sample-rate"])
        async for chunk in response.aiter_raw():
            if first is None:
                first = time.perf_counter() - started
            audio_bytes += len(chunk)
    total = time.perf_counter() - started
    return first, total / (audio_bytes / 2 / rate)


async def run_case(url: str, text: str, concurrency: int, rounds: int) -> tuple[list[float], list[float]]:
    firsts: list[float] = []
    rtfs: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        await one_request(client, url, text)  # warm-up
        for _ in range(rounds):
            results = await asyncio.gather(*(one_request(client, url, text) for _ in range(concurrency)))
            for first, rtf in results:
                firsts.append(first)
                rtfs.append(rtf)
    return firsts, rtfs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway; default: start one")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        server = ServerProcess()
        url = server.url
        wait_until(lambda: http_status(url + "/v1/health") == 200, 120, "gateway ready")
    try:
        print(f"{'text':6} {'conc':>4} {'n':>4} {'ttfa p50':>9} {'ttfa p95':>9} {'rtf p50':>8} {'rtf p95':>8}")
        for name, text in TEXTS.items():
            for concurrency in args.concurrency:
                firsts, rtfs = asyncio.run(run_case(url, text, concurrency, args.rounds))
                print(
                    f"{name:6} {concurrency:4d} {len(firsts):4d} "
                    f"{percentile(firsts, 0.5) * 1000:7.0f}ms {percentile(firsts, 0.95) * 1000:7.0f}ms "
                    f"{percentile(rtfs, 0.5):8.3f} {percentile(rtfs, 0.95):8.3f}"
                )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
