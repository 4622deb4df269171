"""A quick leak check: 100 callers hang up mid-stream over every transport; nothing stays behind.

``bench/soak.py`` runs the same with 1,000 hang-ups and an overload run; this
is its short form, with generous bounds, against ``python -m gateway``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import httpx
import pytest

from support.disconnects import DROPS, TEXT, Figures, drop_many, metric, settle
from support.servers import ServerProcess, http_status
from support.waiting import wait_until
from tests.audio_checks import decode_wav

HANG_UPS = 100
# After warm-up, 100 hang-ups may leave the loop's, the thread pool's and the allocator's slack, no more.
MAX_GROWTH = Figures(tasks=3, threads=2, fds=8, rss_mb=40.0)


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("soak")
    server = ServerProcess("--data-dir", str(data_dir), "--log-level", "warning", env={"GATEWAY_WEBRTC_HOST_ADDRESSES": '["127.0.0.1"]'})
    try:
        wait_until(lambda: http_status(server.url + "/v1/health") == 200, 60, "gateway ready")
        yield server
    finally:
        server.stop()


def test_hang_ups_leave_no_tasks_threads_fds_or_memory_behind(soak_server: ServerProcess) -> None:
    url, pid = soak_server.url, soak_server.process.pid
    assert asyncio.run(drop_many(url, len(DROPS))) == dict.fromkeys(DROPS, 0), "warm-up"
    settle(url)
    before = Figures.read(url, pid)

    failures = asyncio.run(drop_many(url, HANG_UPS))
    settle(url)
    growth = Figures.read(url, pid).growth(before)

    assert failures == dict.fromkeys(DROPS, 0), failures
    for name in ("tasks", "threads", "fds", "rss_mb"):
        assert getattr(growth, name) <= getattr(MAX_GROWTH, name), f"{name} grew by {getattr(growth, name)}: {growth}"
    still = httpx.post(url + "/v1/tts", json={"text": "Still speaking after all that."}, timeout=30)
    samples, rate = decode_wav(base64.b64decode(still.json()["audio"]))
    assert len(samples) > rate


def test_the_task_gauge_counts_live_tasks(soak_server: ServerProcess) -> None:
    """The gauge the leak check stands on moves with the work: a live stream holds tasks."""
    idle = metric(soak_server.url, "gateway_asyncio_tasks")
    long = " ".join([TEXT] * 10)  # a minute of audio: more than socket buffers hold, so the response stays open
    with httpx.stream("POST", soak_server.url + "/v1/tts/stream", json={"text": long}, timeout=30) as held:
        chunks = held.iter_raw()
        next(chunks)
        assert metric(soak_server.url, "gateway_asyncio_tasks") > idle
