"""Command-line client for the seed-B routes (upstream runtime server style); writes a WAV.

    python -m gateway.seed_client --host 127.0.0.1 --port 8000 --mode sft \\
        --tts_text "Hello there." --spk_id joe --tts_wav out.wav
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from media.containers import wav_bytes
from media.pcm import from_s16le

MODES = {
    "sft": ("tts_text", "spk_id"),
    "zero_shot": ("tts_text", "prompt_text", "prompt_wav"),
    "cross_lingual": ("tts_text", "prompt_wav"),
    "instruct": ("tts_text", "spk_id", "instruct_text"),
    "instruct2": ("tts_text", "instruct_text", "prompt_wav"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=50000)
    parser.add_argument("--mode", default="sft", choices=sorted(MODES))
    parser.add_argument("--tts_text", default="你好，我是通义千问语音合成大模型，请问有什么可以帮您的吗？")
    parser.add_argument("--spk_id", default="中文女")
    parser.add_argument("--prompt_text", default="")
    parser.add_argument("--prompt_wav", default="")
    parser.add_argument("--instruct_text", default="")
    parser.add_argument("--tts_wav", default="demo.wav")
    args = parser.parse_args(argv)

    fields = {name: getattr(args, name) for name in MODES[args.mode] if name != "prompt_wav"}
    files = {}
    if "prompt_wav" in MODES[args.mode]:
        if not args.prompt_wav:
            parser.error(f"--mode {args.mode} needs --prompt_wav")
        files["prompt_wav"] = (Path(args.prompt_wav).name, Path(args.prompt_wav).read_bytes(), "application/octet-stream")
    url = f"http://{args.host}:{args.port}/inference_{args.mode}"
    pcm = bytearray()
    with httpx.Client(timeout=None) as client:
        with client.stream("POST", url, data=fields, files=files or None) as response:
            if response.status_code != 200:
                response.read()
                print(f"error {response.status_code}: {response.text}", file=sys.stderr)
                return 1
            rate = int(response.headers.get("x-sample-rate", 22050))
            for chunk in response.iter_raw():
                pcm.extend(chunk)
    Path(args.tts_wav).write_bytes(wav_bytes(from_s16le(bytes(pcm[: len(pcm) // 2 * 2])), rate))
    print(f"wrote {args.tts_wav}: {len(pcm) // 2 / rate:.2f} s at {rate} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
