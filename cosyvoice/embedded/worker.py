"""A Piper worker process: one clause per request, framed PCM on stdout.

Run as ``python -m cosyvoice.embedded.worker``. piper-tts is GPL-3.0, so it
is imported only here, in a process of its own that the gateway talks to over
pipes; the gateway process never imports it. One worker runs one ONNX thread,
so a pool of workers scales across cores without oversubscribing them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime

from cosyvoice.embedded import protocol

WARM_UP_TEXT = "Ready."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="Piper ONNX voice file")
    parser.add_argument("--config", required=True, help="the voice's JSON config")
    parser.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads")
    args = parser.parse_args()

    # Keep the protocol channel private: anything a library prints goes to stderr.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)

    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(args.model, args.config)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(args.model, sess_options=options, providers=["CPUExecutionProvider"])
    inference = voice.config

    def speak(text: str, speed: float = 1.0, deterministic: bool = False):
        """Yield one float32 array per sentence Piper finds in ``text``."""
        config = SynthesisConfig(
            length_scale=inference.length_scale / speed,
            noise_scale=0.0 if deterministic else inference.noise_scale,
            noise_w_scale=0.0 if deterministic else inference.noise_w_scale,
            normalize_audio=False,
        )
        for chunk in voice.synthesize(text, config):
            yield np.asarray(chunk.audio_float_array, dtype="<f4")

    for _ in speak(WARM_UP_TEXT):
        pass
    info = {"sample_rate": inference.sample_rate, "voice": os.path.basename(args.model).removesuffix(".onnx")}
    channel.write(protocol.frame(protocol.READY, 0, json.dumps(info).encode()))

    for line in sys.stdin.buffer:
        request = json.loads(line)
        job = int(request["job"])
        try:
            if request.get("op") == "synthesize":
                for samples in speak(request["text"], float(request["speed"]), bool(request["deterministic"])):
                    channel.write(protocol.frame(protocol.AUDIO, job, samples.tobytes()))
            channel.write(protocol.frame(protocol.END, job))
        except Exception as error:  # reported to the gateway; the worker keeps serving
            channel.write(protocol.frame(protocol.ERROR, job, f"{type(error).__name__}: {error}".encode()))


if __name__ == "__main__":
    main()
