"""The curl examples of the seed documents, as written there, against the gateway on a tiny v2 model.

Only host, port and file names change. They succeed where the model can do
the mode; ``/inference_instruct`` and ``/tts/instruct`` with an instruction
need a v1 Instruct model and are refused with a 400 naming the mode.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from gateway.settings import Settings
from media.containers import wav_bytes
from support.servers import ServerThread
from tests.audio_checks import decode_container, decode_wav

SEED_B = [  # ../shared/seeds/001: runtime server (form fields, raw PCM out)
    ('curl -X POST "{url}/inference_sft" -F "tts_text=你好，我是通义千问语音合成大模型，请问有什么可以帮您的吗？" '
     '-F "spk_id=中文女" --output {out}', 200),
    ('curl -X POST "{url}/inference_zero_shot" -F "tts_text=希望你以后能够做的比我还好呦" '
     '-F "prompt_text=希望你以后能够做的比我还好呦" -F "prompt_wav=@{prompt}" --output {out}', 200),
    ('curl -X POST "{url}/inference_cross_lingual" -F "tts_text=Hello, this is a cross-lingual text-to-speech test" '
     '-F "prompt_wav=@{prompt}" --output {out}', 200),
    ('curl -X POST "{url}/inference_instruct" -F "tts_text=Hello, I am a test" -F "spk_id=中文女" '
     '-F "instruct_text=Speak with a cheerful and energetic tone" --output {out}', 400),
    ('curl -X POST "{url}/inference_instruct2" -F "tts_text=Hello, I am a test" '
     '-F "instruct_text=Speak with a cheerful and energetic tone" -F "prompt_wav=@{prompt}" --output {out}', 200),
]  # fmt: skip
SEED_A = [  # ../shared/seeds/000: api.py (JSON in, MP3 or PCM out)
    ('curl -X GET {url}/available_spks', 200),
    ("""curl -X POST {url}/tts -H "Content-Type: application/json" -d '{{"tts_text":"你好","spk_id":"中文女","stream":false,"speed":1.0,"seed":0}}' --output {out}""", 200),
    ("""curl -X POST {url}/tts/pcm -H "Content-Type: application/json" -d '{{"tts_text":"你好","spk_id":"中文女","stream":false,"speed":1.0,"seed":0}}' --output {out}""", 200),
    ("""curl -X POST {url}/tts/zero_shot -H "Content-Type: application/json" -d '{{"tts_text":"你好","prompt_text":"你好","prompt_audio_base64":"{b64}"}}' --output {out}""", 200),
    ("""curl -X POST {url}/tts/cross_lingual -H "Content-Type: application/json" -d '{{"tts_text":"Hello","prompt_audio_base64":"{b64}"}}' --output {out}""", 200),
    ("""curl -X POST {url}/tts/instruct -H "Content-Type: application/json" -d '{{"tts_text":"你好","spk_id":"中文女","instruct_text":"用更温柔的语气"}}' --output {out}""", 400),
    ('curl -X POST {url}/clone -F "prompt_text=你好" -F "spk_id=my_spk" -F "prompt_audio=@{prompt}"', 200),
    ('curl -X POST {url}/upload_audio -F "file=@{prompt}"', 200),
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_v2(model_dirs, tmp_path_factory) -> ServerThread:
    settings = Settings.model_validate(
        {"engine": {"model_dir": str(model_dirs[2]), "device": "cpu"},
         "paths": {"data_dir": str(tmp_path_factory.mktemp("curl-data"))}}
    )  # fmt: skip
    server = ServerThread(settings).start(ready_timeout=120)
    yield server
    server.stop()


def run_curl(command: str) -> tuple[int, bytes]:
    """Run a seed's curl line; return the HTTP status and the body."""
    argv = shlex.split(command)
    output = None
    if "--output" in argv:
        output = Path(argv[argv.index("--output") + 1])
        argv[argv.index("--output") + 1] = str(output)
    result = subprocess.run([*argv, "-s", "-w", "%{http_code}"], capture_output=True, timeout=180)
    status = int(result.stdout[-3:])
    body = output.read_bytes() if output is not None else result.stdout[:-3]
    return status, body


@pytest.mark.parametrize("command,status", SEED_B + SEED_A, ids=lambda value: str(value)[:60])
def test_seed_curl_example(tiny_v2: ServerThread, speech_wav: bytes, tmp_path: Path, command: str, status: int) -> None:
    samples, rate = decode_wav(speech_wav)
    short = wav_bytes(samples[: int(rate * 1.5)], rate)  # a shell argument holds at most 128 KiB
    prompt = tmp_path / "prompt_audio.wav"
    prompt.write_bytes(short)
    out = tmp_path / "output.wav"
    line = command.format(url=tiny_v2.url, out=out, prompt=prompt, b64=base64.b64encode(short).decode())
    code, body = run_curl(line)
    assert code == status, body[:300]
    if status == 400:
        assert b"not supported" in body and b"instruct" in body
    elif "--output" in line and "/tts" in line and "/tts/pcm" not in line:
        samples, rate = decode_container(body, "mp3")
        assert rate == 24000 and len(samples) > 0
    elif "--output" in line:
        assert len(body) > 0 and len(body) % 2 == 0  # raw s16le
    elif "available_spks" in line:
        assert "中文女" in json.loads(body)["speakers"]
    elif "/clone" in line:
        assert json.loads(body)["spk_id"] == "my_spk"
