"""Ogg pages (RFC 3533) for one logical stream, written as packets arrive.

FFmpeg's Ogg muxer holds packets until a page's worth of audio time has
passed; a streaming response wants every packet it has out now. Writing the
pages here lets the caller close a page whenever it has something to send.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

FIRST_PAGE, LAST_PAGE = 0x02, 0x04  # header-type flags
_MAX_SEGMENTS = 255

_REVERSE_BITS = bytes.maketrans(bytes(range(256)), bytes(int(f"{i:08b}"[::-1], 2) for i in range(256)))


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, MSB first, no pre- or post-inversion).

    zlib computes the bit-reflected form of the same polynomial in C, so
    feeding it bit-reversed bytes from a zero register and reversing the
    result gives Ogg's checksum without a Python loop over bytes.
    """
    register = zlib.crc32(data.translate(_REVERSE_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{register:032b}"[::-1], 2)


def _lacing(packet: bytes) -> bytes:
    """A packet's segment-table entries: 255 per full segment, then the remainder (maybe 0)."""
    return bytes([255] * (len(packet) // 255) + [len(packet) % 255])


class OggStream:
    """Pages of one logical bitstream: sequence numbers, lacing, granule positions and CRC."""

    def __init__(self, serial: int, *, page_packets: int = _MAX_SEGMENTS) -> None:
        """``page_packets`` caps the packets per page: a player decodes a page only once all of it arrived."""
        self.serial = serial
        self.page_packets = page_packets
        self._sequence = 0

    def pages(self, packets: Sequence[tuple[bytes, int]], *, first: bool = False, last: bool = False) -> bytes:
        """Whole packets, each with the granule position at its end, on as few pages as fit.

        ``first`` marks the stream's first page, ``last`` its final one.
        """
        out = bytearray()
        page: list[tuple[bytes, int]] = []
        segments = 0
        for packet in packets:
            needed = len(packet[0]) // 255 + 1
            if needed > _MAX_SEGMENTS:
                raise ValueError(f"an Ogg packet of {len(packet[0])} bytes does not fit on one page")
            if segments + needed > _MAX_SEGMENTS or len(page) == self.page_packets:
                out += self._page(page, first=first and not out, last=False)
                page, segments = [], 0
            page.append(packet)
            segments += needed
        if page:
            out += self._page(page, first=first and not out, last=last)
        return bytes(out)

    def _page(self, packets: list[tuple[bytes, int]], *, first: bool, last: bool) -> bytes:
        flags = (FIRST_PAGE if first else 0) | (LAST_PAGE if last else 0)
        table = b"".join(_lacing(data) for data, _ in packets)
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, packets[-1][1], self.serial, self._sequence, 0, len(table))
        page = bytearray(header + table + b"".join(data for data, _ in packets))
        struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
        self._sequence += 1
        return bytes(page)
