"""Sample-rate conversion with soxr, for whole signals and for streams of chunks.

A stream keeps the filter state across chunks, so a signal cut into chunks of
any length comes out the same as the signal resampled whole: no seams.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import soxr

QUALITY = "HQ"  # soxr's 20-bit "high quality": transparent for speech at a modest cost


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """A whole float32 mono signal at ``out_rate``."""
    samples = np.asarray(samples, dtype=np.float32)
    if in_rate == out_rate:
        return samples
    return soxr.resample(samples, in_rate, out_rate, quality=QUALITY).astype(np.float32, copy=False)


class StreamResampler:
    """Resamples float32 mono chunks of any length, carrying the filter state between them.

    The filter delays its output a little, so the last samples come from
    ``flush()``; the total length is ``round(n * out_rate / in_rate)``.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} and {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "float32", QUALITY)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """The output ready after ``samples`` (often shorter than the ideal ratio at first)."""
        samples = np.asarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """The output still held in the filter; the stream ends here."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def supported_rate(rate: int, supported: Collection[int]) -> int:
    """The rate a codec should run at for ``rate`` input: itself if supported, else the next higher one.

    Going up never loses bandwidth; only above the codec's highest rate do we go down.
    """
    if rate in supported:
        return rate
    higher = [r for r in supported if r > rate]
    return min(higher) if higher else max(supported)
