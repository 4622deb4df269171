"""Ogg page writing: lacing, page limits, flags and the CRC."""

from __future__ import annotations

import os
import struct

import pytest

from media.ogg import OggStream, ogg_crc


def _bitwise_crc(data: bytes) -> int:
    """The Ogg CRC the slow, obvious way: MSB first, polynomial 0x04C11DB7, zero start."""
    register = 0
    for byte in data:
        register ^= byte << 24
        for _ in range(8):
            register = ((register << 1) ^ 0x04C11DB7) if register & 0x80000000 else register << 1
            register &= 0xFFFFFFFF
    return register


@pytest.mark.parametrize("size", [0, 1, 27, 255, 1000])
def test_crc_matches_the_definition(size: int) -> None:
    data = os.urandom(size)
    assert ogg_crc(data) == _bitwise_crc(data)


def _parse(data: bytes) -> list[dict]:
    pages, offset = [], 0
    while offset < len(data):
        _, _, flags, granule, serial, sequence, _, count = struct.unpack_from("<4sBBqIIIB", data, offset)
        table = data[offset + 27 : offset + 27 + count]
        pages.append({"flags": flags, "granule": granule, "serial": serial, "sequence": sequence, "table": table})
        offset += 27 + count + sum(table)
    assert offset == len(data)
    return pages


def test_lacing_marks_packet_ends_even_at_multiples_of_255() -> None:
    pages = _parse(OggStream(7).pages([(b"a" * 255, 10), (b"b" * 3, 20)], first=True, last=True))
    assert len(pages) == 1
    assert list(pages[0]["table"]) == [255, 0, 3]
    assert pages[0]["flags"] == 0x02 | 0x04 and pages[0]["granule"] == 20 and pages[0]["serial"] == 7


def test_pages_split_at_the_packet_cap_and_count_on() -> None:
    stream = OggStream(1, page_packets=10)
    pages = _parse(stream.pages([(b"x" * 80, (i + 1) * 960) for i in range(25)], first=True))
    assert [len(p["table"]) for p in pages] == [10, 10, 5]
    assert [p["granule"] for p in pages] == [9600, 19200, 24000]
    assert [p["flags"] for p in pages] == [0x02, 0, 0]  # only the stream's first page is marked first
    assert [p["sequence"] for p in pages] == [0, 1, 2]
    assert _parse(stream.pages([(b"y", 25000)], last=True))[0]["sequence"] == 3


def test_pages_never_exceed_255_segments() -> None:
    pages = _parse(OggStream(1).pages([(b"z" * 600, i) for i in range(100)]))  # 3 segments each
    assert all(len(p["table"]) <= 255 for p in pages) and sum(len(p["table"]) for p in pages) == 300


def test_a_packet_larger_than_a_page_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        OggStream(1).pages([(bytes(255 * 255), 0)])
