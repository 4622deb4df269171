"""Real-time load: N concurrent WebRTC calls or WebSocket sessions, each speaking a paragraph.

Starts the gateway as its own process (``python -m gateway``, as users run
it), ramps the number of concurrent calls (all connected first; they start
speaking spread evenly over ``--stagger`` seconds, as real calls do not all
start a sentence in the same millisecond; 0 for that worst case) and prints,
per run:

- time to first audio, p50/p95: server-reported (``utterance.first_audio``,
  from the text to the first audio in the playout buffer) and client-observed
  (from sending the text to the first audible frame received);
- underruns: server-side (silence played mid-utterance, from the session
  stats before hang-up) and client-side ("late": a listener that plays 20 ms a
  frame from the first audible frame on, ``--jitter-buffer-ms`` behind, has to
  wait for a frame that has not arrived; on WebSocket and telephony the
  sender's 100 ms lead is the listener's buffer). The replay engine renders a whole
  clause at once, so server underruns cannot happen with it; a stalled pacer
  shows as client-side lateness and as event-loop lag;
- received frame inter-arrival jitter (std, p50 over calls), the largest gap,
  and the pacing error: the earliest and the latest any frame arrived against
  a steady 20 ms schedule (after the sender's lead, which arrives as a burst);
- the gateway process's CPU per call (CPU seconds per wall second) and its
  event-loop lag (``gateway_event_loop_lag_seconds`` from ``/metrics``).

The bots run in ``--client-procs`` processes on the same machine and compete
with the gateway for its cores; their CPU is printed too, so a saturated
client side shows instead of passing for a slow gateway. The WebRTC bot's
jitter buffer (aiortc: 4 frames of prefetch) adds about 80 ms to its
client-observed first audio.

Before the ramp, the engine's own first-chunk time is measured over HTTP
streaming, so the time the session path adds can be read off. The replay
engine serves a recording of the embedded voice, rendered once into
``bench/results/replay.wav``.

    .venv/bin/python bench/sessions.py --transport webrtc --engine replay --ramp 1 10 20 30 40
    .venv/bin/python bench/sessions.py --transport ws --engine embedded --ramp 1 2 4 8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import multiprocessing as mp
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from support.servers import ServerProcess, http_status  # noqa: E402
from support.waiting import wait_until  # noqa: E402

PARAGRAPH = (
    "Thanks for calling the support line, I can help you with that right away. Your order left our "
    "warehouse this morning and it should arrive on Thursday before noon. If you are not at home, the "
    "courier will leave it with a neighbour or at the nearest pickup point. Is there anything else you "
    "would like to know about the delivery?"
)
REPLAY_WAV = ROOT / "bench" / "results" / "replay.wav"
FRAME = 0.02  # seconds of audio per frame on every transport
AUDIBLE = 1e-3  # a frame whose peak is above this carries speech
LAG_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
ETH_P_ALL, SO_TIMESTAMPNS, PACKET_OUTGOING = 0x0003, 35, 4  # Linux packet sockets


# The gateway under test.


class Gateway:
    """``python -m gateway`` on a free port, with its CPU time and metrics at hand."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self._data = tempfile.TemporaryDirectory(prefix="bench-gateway-")
        self.server = ServerProcess("--log-level", "warning", "--data-dir", self._data.name, *args, env=env)
        self.url = self.server.url
        self.pid = self.server.process.pid
        self.ports = [self.server.port]  # TCP ports it serves on (the AudioSocket one too, when on)
        self.log: deque[str] = deque(maxlen=50)
        # The server's output goes to a pipe; read it so a chatty server never blocks on a full one.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self.server.process.stdout:
                self.log.append(line.rstrip())

    def wait_ready(self, timeout: float = 120.0) -> Gateway:
        try:
            wait_until(lambda: http_status(self.url + "/v1/health") == 200, timeout, "gateway ready")
        except TimeoutError:
            raise SystemExit("the gateway did not start:\n" + "\n".join(self.log)) from None
        return self

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the gateway process and of its children (engine workers)."""
        return process_cpu(self.pid), sum(process_cpu(child) for child in child_pids(self.pid))

    def pin(self, cpus: set[int]) -> None:
        """Keep every thread of the gateway (and those it starts later) on ``cpus``."""
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), cpus)

    def udp_ports(self) -> set[int]:
        """The local ports of the gateway's UDP sockets (its WebRTC calls)."""
        inodes = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        ports = set()
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(self.url + "/metrics", timeout=10).text)

    def sessions(self) -> list[dict]:
        return httpx.get(self.url + "/v1/sessions", timeout=10).json()["sessions"]

    def wait_no_sessions(self, timeout: float = 20.0) -> None:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not self.sessions(), timeout, "sessions closed", interval=0.2)

    def stop(self) -> None:
        self.server.stop()
        self._data.cleanup()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition to ``{'name{labels}': value}``."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def loop_lag(before: dict[str, float], after: dict[str, float]) -> tuple[float, float, float]:
    """Event-loop lag between two scrapes: mean, p99 and max (as histogram bucket bounds), in ms."""
    name = "gateway_event_loop_lag_seconds"
    count = after.get(name + "_count", 0) - before.get(name + "_count", 0)
    if count <= 0:
        return 0.0, 0.0, 0.0
    total = after.get(name + "_sum", 0) - before.get(name + "_sum", 0)
    cumulative = []
    for bound in LAG_BUCKETS_MS:
        key = f'{name}_bucket{{le="{bound / 1000}"}}'
        cumulative.append((bound, after.get(key, 0) - before.get(key, 0)))

    def bound_for(share: float) -> float:
        return next((bound for bound, seen in cumulative if seen >= share * count), float("inf"))

    return total / count * 1000, bound_for(0.99), bound_for(1.0)


def http_first_chunk(before: dict[str, float], after: dict[str, float]) -> float:
    """Mean engine time to first chunk (ms) of the HTTP streams between two scrapes, as the gateway measured it."""
    name = 'gateway_time_to_first_audio_seconds_{}{{mode="sft",transport="http"}}'
    count = after.get(name.format("count"), 0) - before.get(name.format("count"), 0)
    total = after.get(name.format("sum"), 0) - before.get(name.format("sum"), 0)
    return total / count * 1000 if count else float("nan")


def engine_env(engine: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a gateway on ``engine`` (replay or embedded) with the real-time limits raised."""
    env = {
        "GATEWAY_WEBRTC_HOST_ADDRESSES": '["127.0.0.1"]',
        "GATEWAY_LIMITS_MAX_WEBRTC_SESSIONS": "1000",
        "GATEWAY_LIMITS_MAX_WEBSOCKET_SESSIONS": "1000",
        "GATEWAY_LIMITS_MAX_TELEPHONY_SESSIONS": "1000",
        "GATEWAY_SESSION_IDLE_TIMEOUT": "600",
    }
    if engine == "replay":
        env["GATEWAY_ENGINE_REPLAY_AUDIO"] = str(replay_wav())
    return {**env, **(extra or {})}


def replay_wav(path: Path = REPLAY_WAV) -> Path:
    """The replay engine's recording: the paragraph in the embedded voice, leading silence cut (rendered once)."""
    if path.exists():
        return path
    print(f"rendering {path} with the embedded voice ...", flush=True)
    gateway = Gateway({}).wait_ready()
    try:
        response = httpx.post(gateway.url + "/v1/tts", json={"text": PARAGRAPH}, timeout=120)
        response.raise_for_status()
    finally:
        gateway.stop()
    with wave.open(io.BytesIO(base64.b64decode(response.json()["audio"]))) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    start = int(np.argmax(np.abs(pcm) > AUDIBLE * 32768))
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm[start:].tobytes())
    return path


async def engine_first_chunk(url: str, rounds: int = 10) -> list[float]:
    """Time to the first byte of ``POST /v1/tts/stream`` for the paragraph: the engine's own first chunk."""
    firsts = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(rounds + 1):  # the first is a warm-up
            started = time.monotonic()
            async with client.stream("POST", url + "/v1/tts/stream", json={"text": PARAGRAPH}) as response:
                response.raise_for_status()
                async for _chunk in response.aiter_raw():
                    firsts.append(time.monotonic() - started)
                    break
    return firsts[1:]


class WireTap:
    """Kernel timestamps of the gateway's outgoing audio frames on loopback (needs root; else it stays off).

    The bots' arrival times include their own waits for a CPU, which on a
    small shared machine can dwarf the gateway's; the kernel stamps a packet
    when the gateway hands it to the socket, so these times show the
    gateway's pacing alone. ``frames`` says what an audio frame is: ``rtp``
    (every RTP packet from the gateway's UDP ports: the bots only receive),
    ``binary`` or ``text`` (WebSocket messages of that type from ``ports``)
    or ``audiosocket`` (its audio frames, from ``ports``).
    """

    def __init__(self, frames: str, ports: Sequence[int]) -> None:
        self.frames = frames
        self.ports = set(ports)
        self.flows: dict[tuple[int, int], list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> WireTap:
        try:
            self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            return self
        self._socket.bind(("lo", 0))
        self._socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self._socket.settimeout(0.2)
        self._thread = threading.Thread(target=self._capture, name="wire tap", daemon=True)
        self._thread.start()
        return self

    def stop(self, udp_ports: set[int]) -> list[list[float]]:
        """Each call's audio frame send times, in seconds; RTP counts only from ``udp_ports`` (the gateway's)."""
        if self._thread is None:
            return []
        self._stop.set()
        self._thread.join()
        self._socket.close()
        return [times for (source, _), times in self.flows.items() if self.frames != "rtp" or source in udp_ports]

    def _capture(self) -> None:
        while not self._stop.is_set():
            try:
                data, ancillary, _, address = self._socket.recvmsg(65535, 256)
            except TimeoutError:
                continue
            if address[2] != PACKET_OUTGOING or len(data) < 42 or data[12:14] != b"\x08\x00":
                continue  # each loopback packet shows twice: keep the sending side's copy, IPv4 only
            stamp = next(struct.unpack("qq", value) for _, kind, value in ancillary if kind == SO_TIMESTAMPNS)
            self._packet(data[14:], stamp[0] + stamp[1] / 1e9)

    def _packet(self, ip: bytes, at: float) -> None:
        header = (ip[0] & 0x0F) * 4
        protocol, flow = ip[9], struct.unpack("!HH", ip[header : header + 4])
        if protocol == 17 and self.frames == "rtp":  # RTP: version 2, a dynamic payload type (not RTCP, STUN, DTLS)
            rtp = ip[header + 8 :]
            count = int(len(rtp) >= 12 and rtp[0] >> 6 == 2 and 96 <= rtp[1] & 0x7F <= 127)
        elif protocol == 6 and flow[0] in self.ports:
            payload = ip[header + (ip[header + 12] >> 4) * 4 : struct.unpack("!H", ip[2:4])[0]]
            count = audiosocket_frames(payload) if self.frames == "audiosocket" else websocket_frames(payload, self.frames)
        else:
            return
        if count:
            self.flows.setdefault(flow, []).extend([at] * count)


def websocket_frames(data: bytes, kind: str) -> int:
    """How many server-to-client WebSocket messages of ``kind`` (binary or text) a TCP segment holds."""
    if data.startswith(b"HTTP/"):
        return 0  # the upgrade's response
    opcode, count, index = 2 if kind == "binary" else 1, 0, 0
    while index + 2 <= len(data):
        count += data[index] & 0x0F == opcode
        length, index = data[index + 1] & 0x7F, index + 2
        if length >= 126:
            width = 2 if length == 126 else 8
            length, index = int.from_bytes(data[index : index + width], "big"), index + width
        index += length
    return count


def audiosocket_frames(data: bytes) -> int:
    """How many AudioSocket audio frames (types 0x10-0x16) a TCP segment holds."""
    count, index = 0, 0
    while index + 3 <= len(data):
        count += 0x10 <= data[index] <= 0x16
        index += 3 + int.from_bytes(data[index + 1 : index + 3], "big")
    return count


# The calls, in client processes.


class Bot(Protocol):
    """One simulated caller: connect, speak on the signal, collect what it heard."""

    async def prepare(self) -> None: ...

    async def speak(self) -> None: ...

    async def finish(self, timeout: float) -> None: ...

    def result(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SessionBotSpec:
    """Picklable recipe for a WebRTC or WebSocket bot (client processes are spawned)."""

    transport: str  # webrtc or ws
    url: str
    text: str = PARAGRAPH
    ws_codec: str = "pcm"
    ws_rate: int = 24000

    def make(self) -> Bot:
        return SessionBot(self)


class SessionBot:
    """A call through the gateway's own bot client, timed by arrival of each frame."""

    def __init__(self, spec: SessionBotSpec) -> None:
        from gateway.client import WebRTCCall, WebSocketCall

        self.spec = spec
        if spec.transport == "webrtc":
            self.call = WebRTCCall(spec.url)
        else:
            self.call = WebSocketCall(spec.url, codec=spec.ws_codec, sample_rate=spec.ws_rate)
        self.sent: float | None = None
        self.error = ""

    async def prepare(self) -> None:
        await self.call.connect()

    async def speak(self) -> None:
        self.sent = time.monotonic()
        await self.call.say(self.spec.text, flush=True)

    async def finish(self, timeout: float) -> None:
        try:
            await self.call.wait_for("utterance.done", timeout=timeout)
        except TimeoutError:
            self.error = "no utterance.done"
        await asyncio.sleep(0.3)  # the last frames are on their way (and in the WebRTC jitter buffer)

    def result(self) -> dict[str, Any]:
        return heard(self.call.arrivals, self.call.chunks, self.sent, self.error)

    async def close(self) -> None:
        await self.call.close()


@dataclass(frozen=True)
class IdleSpec:
    """Bots from ``inner`` that connect and then stay silent for ``seconds``: what a call costs while nobody speaks."""

    inner: SessionBotSpec
    seconds: float

    def make(self) -> Bot:
        return IdleBot(self.inner.make(), self.seconds)


class IdleBot:
    def __init__(self, bot: Bot, seconds: float) -> None:
        self.bot = bot
        self.seconds = seconds

    async def prepare(self) -> None:
        await self.bot.prepare()

    async def speak(self) -> None:
        pass

    async def finish(self, timeout: float) -> None:
        await asyncio.sleep(self.seconds)

    def result(self) -> dict[str, Any]:
        return {"sent": None, "arrivals": [], "error": ""}

    async def close(self) -> None:
        await self.bot.close()


def heard(arrivals: Sequence[float], chunks: Sequence[np.ndarray], sent: float | None, error: str = "") -> dict[str, Any]:
    """The arrival times of the frames from the first audible one after ``sent`` to the last audible one."""
    audible = [
        i
        for i, (at, chunk) in enumerate(zip(arrivals, chunks))
        if sent is not None and at >= sent and len(chunk) and np.abs(chunk).max() > AUDIBLE
    ]
    if not audible:
        return {"sent": sent, "arrivals": [], "error": error or "heard nothing"}
    return {"sent": sent, "arrivals": list(arrivals[audible[0] : audible[-1] + 1]), "error": error}


def client_process(spec: Any, delays: list[float], cpus: frozenset[int] | None, commands: Any, results: Any) -> None:
    """A client process: one bot from ``spec`` per delay (when it speaks after the go), driven through two queues."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # before any thread starts, so they all inherit it
    asyncio.run(_drive(spec, delays, commands, results))


async def _drive(spec: Any, delays: list[float], commands: Any, results: Any) -> None:
    loop = asyncio.get_running_loop()
    bots = [spec.make() for _ in delays]
    gate = asyncio.Semaphore(4)  # connect a few at a time: a burst of handshakes is not what we measure

    async def prepare(bot: Bot) -> None:
        async with gate:
            await bot.prepare()

    async def speak(bot: Bot, delay: float) -> None:
        await asyncio.sleep(delay)
        await bot.speak()
        await bot.finish(spec_timeout(spec))

    try:
        failures = await asyncio.gather(*(prepare(bot) for bot in bots), return_exceptions=True)
        results.put(("ready", [repr(failure) for failure in failures if failure is not None]))
        await loop.run_in_executor(None, commands.get)  # go
        failures = await asyncio.gather(*(speak(bot, delay) for bot, delay in zip(bots, delays)), return_exceptions=True)
        errors = [repr(failure) for failure in failures if failure is not None]
        results.put(("done", [bot.result() for bot in bots], errors))
        await loop.run_in_executor(None, commands.get)  # hang up
    finally:
        await asyncio.gather(*(bot.close() for bot in bots), return_exceptions=True)


def spec_timeout(spec: Any) -> float:
    """How long a bot waits for its paragraph to end: twice its length at 14 characters a second, plus slack."""
    return 2 * len(getattr(spec, "text", PARAGRAPH)) / 14 + 30


@dataclass(frozen=True)
class Bots:
    """How the bots run: in how many processes, how spread their starts are, on which cores (None: any)."""

    procs: int | None = None  # default: one per 10 calls, at most 4
    stagger: float = 2.0
    cpus: frozenset[int] | None = None

    def processes(self, calls: int) -> int:
        return max(1, min(self.procs or min(4, -(-calls // 10)), calls))


def add_bot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-procs", type=int, help="bot processes (default: one per 10 calls, at most 4)")
    parser.add_argument("--stagger", type=float, default=2.0, help="seconds over which the calls start speaking")
    parser.add_argument("--no-pin", action="store_true", help="let the gateway and the bots share every core")


def bots_for(args: argparse.Namespace, gateway: Gateway) -> Bots:
    """The bots' settings from the flags; unless ``--no-pin``, the gateway gets all cores but the last and the
    bots the last one, so that neither side's threads wait for a CPU behind the other's (the bots' WebRTC
    stack alone runs a thread per call)."""
    cores = sorted(os.sched_getaffinity(0))
    cpus = None
    if not args.no_pin and len(cores) > 1:
        gateway.pin(set(cores[:-1]))
        cpus = frozenset(cores[-1:])
    return Bots(args.client_procs, args.stagger, cpus)


@dataclass
class Load:
    """What one run of N concurrent calls produced."""

    calls: int
    results: list[dict[str, Any]]
    sessions: list[dict]
    wall: float
    gateway_cpu: float
    engine_cpu: float
    client_cpu: float
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    load: tuple[float, float]
    errors: list[str] = field(default_factory=list)
    wire: list[list[float]] = field(default_factory=list)  # the gateway's send times per call, if tapped


def run_load(gateway: Gateway, spec: Any, calls: int, bots: Bots, wire: str = "") -> Load:
    """``calls`` bots from ``spec``, starting to speak evenly over ``bots.stagger`` seconds after the go;
    the figures cover the go to the last call's end. ``wire``: the frames to tap, if any (see WireTap)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    procs = bots.processes(calls)
    delays = [bots.stagger * index / calls for index in range(calls)]
    commands = [context.Queue() for _ in range(procs)]
    workers = [
        context.Process(target=client_process, args=(spec, delays[index::procs], bots.cpus, queue, results), daemon=True)
        for index, queue in enumerate(commands)
    ]
    for worker in workers:
        worker.start()
    errors: list[str] = []
    try:
        for _ in workers:
            _, failures = results.get(timeout=300)
            errors += failures
        load_before = os.getloadavg()[0]
        before = gateway.metrics()
        cpu_before, engine_before = gateway.cpu()
        clients_before = sum(process_cpu(worker.pid) for worker in workers)
        tap = WireTap(wire, gateway.ports)
        if wire:
            tap.start()
        started = time.monotonic()
        for queue in commands:
            queue.put("go")
        collected: list[dict[str, Any]] = []
        for _ in workers:
            _, heard_by_bots, failures = results.get(timeout=spec_timeout(spec) + bots.stagger + 60)
            collected += heard_by_bots
            errors += failures
        wall = time.monotonic() - started
        wire = tap.stop(gateway.udp_ports())
        cpu_after, engine_after = gateway.cpu()
        clients_after = sum(process_cpu(worker.pid) for worker in workers)
        after = gateway.metrics()
        sessions = gateway.sessions()
        load_after = os.getloadavg()[0]
    finally:
        for queue in commands:
            queue.put("hang up")
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    gateway.wait_no_sessions()
    return Load(
        calls, collected, sessions, wall, cpu_after - cpu_before, engine_after - engine_before,
        clients_after - clients_before, before, after, (load_before, load_after), errors, wire,
    )  # fmt: skip


# Figures.


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Listener:
    """How the far end hears: how far the sender runs ahead (``lead``) and how much it buffers itself."""

    lead: float = 0.0  # seconds the gateway's sender runs ahead: WebSocket and telephony 0.1 (lead_ms)
    jitter_buffer: float = 0.0
    wire: str = ""  # what its audio frames are on the wire, for the WireTap: rtp, binary, text or audiosocket

    @property
    def lead_frames(self) -> int:
        return round(self.lead / FRAME)


def late_ms(arrivals: Sequence[float], jitter_buffer: float) -> float:
    """Milliseconds a listener waits for audio: it plays each frame 20 ms after the one before
    (the first ``jitter_buffer`` seconds after it arrived) or, when a frame is late, as it arrives."""
    if not arrivals:
        return 0.0
    waited = 0.0
    playing = arrivals[0] + jitter_buffer
    for arrival in arrivals[1:]:
        playing += FRAME
        if arrival > playing:
            waited += arrival - playing
            playing = arrival
    return waited * 1000


def gaps(arrivals: Sequence[float], lead_frames: int) -> tuple[float, float]:
    """Inter-arrival jitter (std) and the largest gap, in ms, after the lead (which arrives as one burst)."""
    steps = np.diff(np.asarray(arrivals[lead_frames:])) * 1000
    if len(steps) < 2:
        return float("nan"), float("nan")
    return float(np.std(steps)), float(np.max(steps))


def pacing_error(arrivals: Sequence[float], lead_frames: int) -> tuple[float, float]:
    """The earliest and the latest any frame after the lead arrived (ms) against a steady 20 ms schedule.

    Frames 0..lead are due at once, frame k after that (k - lead) frames later;
    the schedule's start is the median offset, so one late first frame does not skew it.
    """
    if len(arrivals) <= lead_frames + 1:
        return float("nan"), float("nan")
    index = np.arange(len(arrivals))
    offsets = (np.asarray(arrivals) - np.maximum(0, index - lead_frames) * FRAME)[lead_frames:]
    error = (offsets - np.median(offsets)) * 1000
    return float(-error.min()), float(error.max())


@dataclass
class Row:
    """One printed line: a run's figures."""

    calls: int
    ok: int
    ttfa_server: tuple[float, float]
    ttfa_client: tuple[float, float]
    underrun_ms: float
    late_ms: float
    late_max_ms: float
    jitter_ms: float
    max_gap_ms: float
    pacing: tuple[float, float]  # worst early, worst late (ms)
    wire: tuple[float, float, float]  # the gateway's sends: late at the listener (sum), worst late, largest gap (ms)
    cpu_per_call: float  # % of one core
    gateway_cpu: float  # % of one core
    engine_cpu: float
    client_cpu: float
    lag: tuple[float, float, float]
    load: tuple[float, float]
    errors: list[str]

    @property
    def served(self) -> bool:
        """Every call heard, no underruns on the server, and (if tapped) the gateway never sent audio late."""
        return self.ok == self.calls and self.underrun_ms == 0 and not self.wire[0] > 0

    @property
    def clean(self) -> bool:
        """Served, and nothing late at the bots either."""
        return self.served and self.late_ms == 0

    HEADER = (
        f"{'N':>4} {'ok':>4} {'ttfa srv p50/p95':>17} {'ttfa cli p50/p95':>17} {'underrun':>9} {'late sum/max':>13} "
        f"{'jitter':>7} {'max gap':>8} {'pacing -/+':>11} {'wire late/+/gap':>16} {'cpu/call':>9} {'gw cpu':>7} "
        f"{'engine':>7} {'clients':>8} {'loop lag mean/p99/max':>22} {'load':>10}"
    )

    def line(self) -> str:
        lag = "/".join(f"{value:g}" for value in (round(self.lag[0], 1), self.lag[1], self.lag[2]))
        return (
            f"{self.calls:4d} {self.ok:4d} {self.ttfa_server[0]:7.1f}/{self.ttfa_server[1]:6.1f}ms "
            f"{self.ttfa_client[0]:7.1f}/{self.ttfa_client[1]:6.1f}ms {self.underrun_ms:7.0f}ms "
            f"{self.late_ms:6.0f}/{self.late_max_ms:4.0f}ms {self.jitter_ms:5.1f}ms {self.max_gap_ms:6.1f}ms "
            f"{self.pacing[0]:4.0f}/{self.pacing[1]:4.0f}ms {self.wire[0]:5.0f}/{self.wire[1]:3.0f}/{self.wire[2]:3.0f}ms "
            f"{self.cpu_per_call:8.2f}% {self.gateway_cpu:6.0f}% {self.engine_cpu:6.0f}% {self.client_cpu:7.0f}% "
            f"{lag + ' ms':>22} {self.load[0]:4.1f}/{self.load[1]:4.1f}"
        )


def summarize(load: Load, listener: Listener) -> Row:
    """A run's figures: the bots' results, the sessions' stats, the gateway's CPU and metrics."""
    heard_ok = [r for r in load.results if r["arrivals"] and not r["error"]]
    server_firsts = [ms for ms in (session_first_audio(s) for s in load.sessions) if ms is not None]
    client_firsts = [(r["arrivals"][0] - r["sent"]) * 1000 for r in heard_ok if r["sent"] is not None]
    lates = [late_ms(r["arrivals"], listener.jitter_buffer) for r in heard_ok]
    jitters = [gaps(r["arrivals"], listener.lead_frames) for r in heard_ok]
    pacing = [pacing_error(r["arrivals"], listener.lead_frames) for r in heard_ok]
    wire_pacing = [pacing_error(flow, listener.lead_frames)[1] for flow in load.wire if len(flow) > 10]
    wire_lates = [late_ms(flow, listener.jitter_buffer) for flow in load.wire if len(flow) > 10]
    wire_gaps = [gaps(flow, listener.lead_frames)[1] for flow in load.wire if len(flow) > 10]
    errors = load.errors + sorted({r["error"] for r in load.results if r["error"]})
    per_core = 100 / load.wall
    return Row(
        calls=load.calls,
        ok=len(heard_ok),
        ttfa_server=(percentile(server_firsts, 0.5), percentile(server_firsts, 0.95)),
        ttfa_client=(percentile(client_firsts, 0.5), percentile(client_firsts, 0.95)),
        underrun_ms=sum(s.get("underrun_ms") or 0 for s in load.sessions),
        late_ms=sum(lates),
        late_max_ms=max(lates, default=0.0),
        jitter_ms=percentile([j for j, _ in jitters], 0.5),
        max_gap_ms=max((g for _, g in jitters), default=float("nan")),
        pacing=(max((e for e, _ in pacing), default=float("nan")), max((l for _, l in pacing), default=float("nan"))),
        wire=(
            sum(wire_lates) if wire_lates else float("nan"),
            max(wire_pacing, default=float("nan")),
            max(wire_gaps, default=float("nan")),
        ),
        cpu_per_call=load.gateway_cpu * per_core / load.calls,
        gateway_cpu=load.gateway_cpu * per_core,
        engine_cpu=load.engine_cpu * per_core,
        client_cpu=load.client_cpu * per_core,
        lag=loop_lag(load.metrics_before, load.metrics_after),
        load=load.load,
        errors=errors,
    )


def session_first_audio(session: dict) -> float | None:
    utterances = session.get("utterances") or []
    return utterances[0].get("first_audio_ms") if utterances else None


def ramp(gateway: Gateway, spec: Any, counts: Sequence[int], listener: Listener, bots: Bots) -> list[Row]:
    """Run each N in turn, printing a row each."""
    rows: list[Row] = []
    cores = "any core" if bots.cpus is None else f"core {','.join(map(str, sorted(bots.cpus)))}, the gateway on the others"
    print(f"bots on {cores}; calls start over {bots.stagger:g} s", flush=True)
    print(Row.HEADER, flush=True)
    for calls in counts:
        row = summarize(run_load(gateway, spec, calls, bots, listener.wire), listener)
        rows.append(row)
        print(row.line(), flush=True)
        for error in row.errors[:3]:
            print(f"     ! {error}", flush=True)
    return rows


def report_capacity(rows: Sequence[Row], what: str) -> None:
    underruns = [row.calls for row in rows if row.ok == row.calls and row.underrun_ms == 0]
    served = [row.calls for row in rows if row.served]
    clean = [row.calls for row in rows if row.clean]
    print(f"largest N with zero server-side underruns: {max(underruns, default=0)} {what}")
    print(f"largest N with that and no audio sent late for the listener (kernel send times): {max(served, default=0)}")
    print(f"largest N with that and nothing late at the bots either: {max(clean, default=0)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=("webrtc", "ws"), default="webrtc")
    parser.add_argument("--engine", choices=("replay", "embedded"), default="replay")
    parser.add_argument("--ramp", type=int, nargs="+", default=[1, 5, 10, 20, 30, 40, 50])
    parser.add_argument("--idle", type=int, default=0, help="then measure this many connected calls not speaking")
    add_bot_arguments(parser)
    parser.add_argument("--ws-codec", choices=("pcm", "opus"), default="pcm")
    parser.add_argument("--ws-rate", type=int, default=24000)
    parser.add_argument("--jitter-buffer-ms", type=float, help="the simulated listener's buffer (default: 40 on WebRTC, "
                        "0 on WebSocket, where the sender's 100 ms lead is the buffer)")
    args = parser.parse_args()

    webrtc = args.transport == "webrtc"
    jitter_buffer = args.jitter_buffer_ms if args.jitter_buffer_ms is not None else (40.0 if webrtc else 0.0)
    listener = Listener(0.0 if webrtc else 0.1, jitter_buffer / 1000, "rtp" if webrtc else "binary")
    gateway = Gateway(engine_env(args.engine)).wait_ready()
    try:
        before = gateway.metrics()
        engine = asyncio.run(engine_first_chunk(gateway.url))
        inside = http_first_chunk(before, gateway.metrics())
        spec = SessionBotSpec(args.transport, gateway.url, ws_codec=args.ws_codec, ws_rate=args.ws_rate)
        where = "webrtc" if webrtc else f"ws ({args.ws_codec}, {args.ws_rate} Hz)"
        print(f"{where} on the {args.engine} engine; gateway pid {gateway.pid} at {gateway.url}; {os.cpu_count()} cores "
              f"shared by the gateway and the bots; listener jitter buffer {jitter_buffer:g} ms", flush=True)  # fmt: skip
        print(f"engine first chunk (HTTP /v1/tts/stream first byte, 1 at a time): p50 {percentile(engine, 0.5) * 1000:.1f} ms, "
              f"p95 {percentile(engine, 0.95) * 1000:.1f} ms; inside the gateway "
              f"(gateway_time_to_first_audio_seconds, transport http): mean {inside:.1f} ms")  # fmt: skip
        bots = bots_for(args, gateway)
        rows = ramp(gateway, spec, args.ramp, listener, bots)
        first = rows[0]
        print(f"session first audio at N={first.calls}: p50 {first.ttfa_server[0]:.1f} ms (server), "
              f"{first.ttfa_client[0]:.1f} ms (client); the session path adds {first.ttfa_server[0] - inside:.1f} ms "
              f"to the engine's first chunk inside the gateway ({first.ttfa_server[0] - percentile(engine, 0.5) * 1000:.1f} ms "
              f"to the HTTP first byte)")  # fmt: skip
        report_capacity(rows, f"{where} calls ({args.engine})")
        if args.idle:
            idle = run_load(gateway, IdleSpec(spec, 10.0), args.idle, bots)
            cpu = idle.gateway_cpu * 100 / idle.wall
            print(f"{args.idle} connected calls, nobody speaking, for {idle.wall:.0f} s: gateway CPU {cpu:.0f}% of a core, "
                  f"{cpu / args.idle:.2f}% per call; load {idle.load[0]:.1f}/{idle.load[1]:.1f}")  # fmt: skip
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
