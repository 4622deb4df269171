"""A Piper worker process: one clause per request, framed PCM on stdout.

Run as ``python -m cosyvoice.embedded.worker``. piper-tts is GPL-3.0, so it
is imported only here, in a process of its own that the gateway talks to over
pipes; the gateway process never imports it. One worker runs one ONNX thread,
so a pool of workers scales across cores without oversubscribing them.

Word timings: where the onnx package is installed, the voice is loaded with its
phoneme durations exposed as a second output (Piper's own in-memory patch), so
each word's span comes from the model (aligned); otherwise every phoneme of a
sentence gets an equal share of its audio (estimated).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime

from cosyvoice.embedded import protocol
from cosyvoice.embedded.alignment import Sound, words_in_audio

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
    voice.session = onnxruntime.InferenceSession(
        _with_durations(args.model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    inference = voice.config

    @functools.lru_cache(maxsize=8192)
    def lexicon(word: str) -> tuple[str, ...]:
        return tuple(phoneme for sentence in voice.phonemize(word) for phoneme in sentence)

    def speak(text: str, speed: float = 1.0, deterministic: bool = False, sounds: list | None = None):
        """Yield one float32 array per sentence Piper finds in ``text``, and whether the model timed its phonemes.

        The phonemes, with their spans in the text's audio, are appended to ``sounds``.
        """
        config = SynthesisConfig(
            length_scale=inference.length_scale / speed,
            noise_scale=0.0 if deterministic else inference.noise_scale,
            noise_w_scale=0.0 if deterministic else inference.noise_w_scale,
            normalize_audio=False,
        )
        offset = 0
        for chunk in voice.synthesize(text, config, include_alignments=True):
            samples = np.asarray(chunk.audio_float_array, dtype="<f4")
            aligned = sounds is not None and _add_sounds(sounds, chunk, offset, len(samples))
            offset += len(samples)
            yield samples, aligned

    for _ in speak(WARM_UP_TEXT):
        pass
    info = {"sample_rate": inference.sample_rate, "voice": os.path.basename(args.model).removesuffix(".onnx")}
    channel.write(protocol.frame(protocol.READY, 0, json.dumps(info).encode()))

    for line in sys.stdin.buffer:
        request = json.loads(line)
        job = int(request["job"])
        try:
            if request.get("op") == "synthesize":
                text, sounds, aligned = request["text"], [], True
                for samples, timed in speak(text, float(request["speed"]), bool(request["deterministic"]), sounds):
                    channel.write(protocol.frame(protocol.AUDIO, job, samples.tobytes()))
                    aligned &= timed
                words = [[w.char_start, w.char_end, w.start, w.end] for w in words_in_audio(text, sounds, lexicon)]
                payload = json.dumps({"aligned": aligned, "words": words}).encode()
                channel.write(protocol.frame(protocol.WORDS, job, payload))
            channel.write(protocol.frame(protocol.END, job))
        except Exception as error:  # reported to the gateway; the worker keeps serving
            channel.write(protocol.frame(protocol.ERROR, job, f"{type(error).__name__}: {error}".encode()))


def _with_durations(model: str) -> str | bytes:
    """The voice model with each phoneme's duration as an output, where the onnx package can add it.

    Patching takes seconds (onnx import, parse, serialize), so the result is kept in the temp
    directory, keyed by the model file's size and time: later workers load it directly.
    """
    stat = os.stat(model)
    name = f"{os.path.basename(model).removesuffix('.onnx')}.{stat.st_size}.{stat.st_mtime_ns}.durations.onnx"
    cached = os.path.join(tempfile.gettempdir(), "cosyvoice-piper", name)
    if os.path.isfile(cached):
        return cached
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError:
        return model
    proto = onnx.load(model)
    try:
        add_alignment_output(proto)
    except ValueError:  # already exposed, or no duration tensor to expose
        return model
    data = proto.SerializeToString()
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        partial = f"{cached}.{os.getpid()}.partial"
        with open(partial, "wb") as file:
            file.write(data)
        os.replace(partial, cached)  # atomic: a worker starting alongside sees all of it or none
    except OSError:
        pass  # no cache: the next worker patches again
    return data


def _add_sounds(sounds: list[Sound], chunk, offset: int, length: int) -> bool:
    """Append a sentence's phonemes with their sample spans; True if the model gave the spans."""
    phonemes = ["^", *chunk.phonemes, "$"]  # Piper's sentence start and end carry durations too
    alignments = chunk.phoneme_alignments
    if alignments is not None and len(alignments) == len(phonemes):
        durations = [int(a.num_samples) for a in alignments]
    else:  # no durations from the model: an equal share each
        durations = [length // len(phonemes)] * len(phonemes)
        alignments = None
    position = offset
    for phoneme, duration in zip(phonemes, durations):
        sounds.append(Sound(phoneme, position, min(position + duration, offset + length)))
        position += duration
    return alignments is not None


if __name__ == "__main__":
    main()
