"""Parallel gzip: each chunk becomes a complete gzip member, so the output is standard gzip (RFC 1952 allows
concatenated members; gunzip, zlib, Python's gzip and Java's GZIPInputStream all read it), made on all cores.

zlib releases the GIL while it compresses, so threads give real parallelism. A chunk that does not compress
(random or already-compressed data) is stored at level 0 instead of being searched for matches in vain: same
size, standard format, many times faster.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

GZIP_WBITS = 31  # zlib with a gzip header and trailer
_PROBE = 64 << 10


def compress_member(chunk: bytes | bytearray | memoryview, level: int = 6) -> bytes:
    """One gzip member holding `chunk`."""
    if level > 0 and len(chunk) > 4 * _PROBE:
        probe = zlib.compress(bytes(memoryview(chunk)[:_PROBE]), 1)
        if len(probe) > _PROBE * 0.98:  # incompressible even here: do not spend CPU searching for matches
            level = 0
    compressor = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS, 8)  # memLevel 8, as gzip
    return compressor.compress(chunk) + compressor.flush()


class MultiMemberInflater:
    """Streams the bytes of concatenated gzip members, with a bounded output per call."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(GZIP_WBITS)
        self._members = 0
        self._in_member = False

    def feed(self, data: bytes | memoryview, max_out: int = 8 << 20) -> Iterator[bytes]:
        """Yield decompressed pieces of at most `max_out` bytes for `data`; raise zlib.error on bad input."""
        full = False  # the last call filled max_out: zlib may hold more output for the same input
        while data or full:
            if not self._in_member:
                self._d = zlib.decompressobj(GZIP_WBITS)
                self._in_member = True
            out = self._d.decompress(data, max_out)
            full = len(out) == max_out
            if out:
                yield out
            if self._d.eof:
                self._members += 1
                self._in_member = False
                full = False
                data = self._d.unused_data
                if data and not b"\x1f\x8b".startswith(data[:2]):
                    raise zlib.error("trailing bytes after the last gzip member")
            else:
                data = self._d.unconsumed_tail

    def finish(self) -> None:
        if self._in_member or self._members == 0:
            raise zlib.error("compressed stream ends inside a gzip member")
