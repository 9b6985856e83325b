"""The root list's served bodies as pieces: bytes, and byte ranges of files rendered once.

Each variant of ``/simple/`` (HTML or JSON, plain or gzip) is sent as a list of pieces
(``web.pieces.PiecesResponse``): rendered bytes for what changes with the private names, and
``(file, offset, length)`` ranges of the upstream names rendered once per upstream refresh
(``index.rootparts``). Nothing here reads those files.

The gzip variant is one valid gzip stream made of raw-deflate pieces, each produced by a
compressor of its own and ended with a sync flush (byte-aligned, no back-reference before
it), so they join into one stream; only the last piece is final. The gzip trailer's CRC-32
of the whole plain text is combined from the CRCs of the pieces (``crc32_combine``, which
Python's zlib does not expose), so no byte of a file range is read to send it.

Pure functions over bytes and numbers: no file is opened here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "GZIP_HEADER",
    "Piece",
    "RootBody",
    "Stretch",
    "crc32_combine",
    "crc32_of_suffix",
    "deflate_piece",
    "gzip_body",
    "piece_length",
    "plain_body",
]

# gzip member header: deflate, no flags, mtime 0, no extra flags, OS Unix (RFC 1952).
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
_LEVEL = 6  # gzip's default: 4x smaller than the plain list; level 9 saves ~3% for 2x the CPU

Piece = bytes | tuple[Path, int, int]  # bytes, or (file, offset, length)


def piece_length(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece[2]


def deflate_piece(data: bytes, *, last: bool = False) -> bytes:
    """Raw deflate of ``data`` by a compressor of its own: byte-aligned (sync flush) and free
    of back-references to anything before it, so such pieces concatenate into one stream;
    ``last`` ends the stream (the final block)."""
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


# --- CRC-32 of a concatenation (zlib's crc32_combine) -------------------------------------

_CRC_POLY = 0xEDB88320  # CRC-32's polynomial, reflected (bit order as zlib)


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected bit order, as zlib)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()  # x^(2^k) mod p, k = 0..31: constants, computed once at import


def _x8nmodp(n: int) -> int:
    """x^(8n) mod p: what appending n bytes does to a CRC."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B): ~0.1 ms, whatever the lengths."""
    return _multmodp(_x8nmodp(length2), crc1) ^ crc2


def crc32_of_suffix(crc_whole: int, crc_prefix: int, length_suffix: int) -> int:
    """CRC-32 of B from crc32(A+B), crc32(A) and len(B) (``crc32_combine`` solved for B)."""
    return crc_whole ^ _multmodp(_x8nmodp(length_suffix), crc_prefix)


# --- stretches and bodies -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stretch:
    """A run of the root's text in both encodings: ``plain`` pieces, ``packed`` pieces (raw
    deflate, sync-flushed, never final), and the CRC-32 and length of the plain text."""

    plain: tuple[Piece, ...] = ()
    packed: tuple[Piece, ...] = ()
    crc: int = 0
    size: int = 0

    @classmethod
    def of(cls, data: bytes) -> Stretch:
        """Rendered bytes, deflated by a compressor of their own."""
        if not data:
            return cls()
        return cls((data,), (deflate_piece(data),), zlib.crc32(data), len(data))

    def __add__(self, other: Stretch) -> Stretch:
        return Stretch(
            self.plain + other.plain,
            self.packed + other.packed,
            crc32_combine(self.crc, other.crc, other.size),
            self.size + other.size,
        )

    @staticmethod
    def join(stretches: Iterable[Stretch]) -> Stretch:
        """Their concatenation, in time linear in the number of pieces."""
        plain: list[Piece] = []
        packed: list[Piece] = []
        crc = size = 0
        for stretch in stretches:
            plain.extend(stretch.plain)
            packed.extend(stretch.packed)
            crc = crc32_combine(crc, stretch.crc, stretch.size)
            size += stretch.size
        return Stretch(tuple(plain), tuple(packed), crc, size)


@dataclass(frozen=True, slots=True)
class RootBody:
    """One served variant of the root (a format, plain or gzip): its pieces in order, the
    total length (Content-Length) and the ETag."""

    pieces: tuple[Piece, ...]
    length: int
    etag: str
    serial: int | None = None  # the highest serial listed (``X-PyPI-Last-Serial``)


def gzip_body(stretch: Stretch, footer: bytes, etag: str, serial: int | None = None) -> RootBody:
    """``stretch`` followed by ``footer`` (which ends the deflate stream) as one gzip member."""
    crc = crc32_combine(stretch.crc, zlib.crc32(footer), len(footer))
    size = stretch.size + len(footer)
    pieces = (
        GZIP_HEADER,
        *stretch.packed,
        deflate_piece(footer, last=True),
        struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF),
    )
    return RootBody(pieces, sum(map(piece_length, pieces)), etag, serial)


def plain_body(stretch: Stretch, footer: bytes, etag: str, serial: int | None = None) -> RootBody:
    """``stretch`` followed by ``footer``, uncompressed."""
    pieces = (*stretch.plain, footer)
    return RootBody(pieces, stretch.size + len(footer), etag, serial)
