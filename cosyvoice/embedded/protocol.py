"""The framing between the gateway and a Piper worker process.

Requests go to the worker's stdin as JSON lines. Replies come back on its
stdout as frames: a 9-byte header (kind, job id, payload length) and a
payload. Audio payloads are float32 little-endian mono samples; a job's word
timings come in one WORDS frame after its audio, in the clause's text and samples.
"""

import struct

HEADER = struct.Struct("<BII")

READY = 1  # payload: JSON {"sample_rate", "voice"}
AUDIO = 2  # payload: float32 samples
END = 3  # payload: empty; the job is finished
ERROR = 4  # payload: UTF-8 message; the job is finished
WORDS = 5  # payload: JSON {"aligned": bool, "words": [[char_start, char_end, start_sample, end_sample], ...]}; before END


def frame(kind: int, job: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, job, len(payload)) + payload
