"""Reading a wheel's ``METADATA`` from pieces of the zip: the pure half of "lazy wheels".

A resolver needs a wheel's dependencies, not the wheel. With the end of the zip (the end of
central directory record and the central directory) we know where ``*.dist-info/METADATA``
lies; with one more range, its local header and compressed bytes. The I/O (HTTP Range
requests) lives in :mod:`proxyindex.upstream.wheelmeta`; everything here works on bytes, so
it is tested without a server. Anything unusual (ZIP64 central directory out of reach, a
member with ZIP64 sizes, an unknown compression) raises :class:`Unsupported`: the caller
then reads the whole wheel instead, never guesses.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MAX_METADATA",
    "TAIL_SIZE",
    "BrokenWheel",
    "Directory",
    "Member",
    "Unsupported",
    "find_metadata",
    "inflate",
    "member_data",
    "parse_directory",
    "parse_tail",
]

MAX_METADATA = 10 << 20  # a METADATA larger than this is not a real one (as for private wheels)
TAIL_SIZE = 64 * 1024  # the first suffix range: most wheels' whole central directory fits

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory record, 22 bytes
_EOCD_SIG = 0x06054B50
_Z64_LOCATOR = struct.Struct("<IIQI")  # 20 bytes
_Z64_LOCATOR_SIG = 0x07064B50
_Z64_EOCD = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_Z64_EOCD_SIG = 0x06064B50
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_CENTRAL_SIG = 0x02014B50
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_LOCAL_SIG = 0x04034B50
_U32_MAX = 0xFFFFFFFF


class Unsupported(ValueError):
    """The zip cannot be read in pieces this way: read the whole wheel instead."""


class BrokenWheel(ValueError):
    """The wheel is not a valid zip, or has no single ``.dist-info/METADATA``."""


@dataclass(frozen=True, slots=True)
class Directory:
    """Where the central directory lies in the file."""

    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Member:
    """One central directory entry: enough to read the member from its local header."""

    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


def parse_tail(tail: bytes, file_size: int) -> Directory:
    """The central directory's place, from the last ``len(tail)`` bytes of a
    ``file_size``-byte zip (ZIP64 aware when its record is within ``tail``)."""
    at = tail.rfind(struct.pack("<I", _EOCD_SIG), 0, max(0, len(tail) - _EOCD.size + 4))
    if at < 0:
        if len(tail) >= file_size or len(tail) >= _EOCD.size + 0xFFFF:
            raise BrokenWheel("no end of central directory record")
        raise Unsupported("end of central directory record not in the tail")
    (_sig, _disk, _cd_disk, _n_disk, _n, cd_size, cd_offset, _comment) = _EOCD.unpack_from(tail, at)
    if cd_offset == _U32_MAX or cd_size == _U32_MAX:
        locator = at - _Z64_LOCATOR.size
        if locator < 0:
            raise Unsupported("ZIP64 locator not in the tail")
        sig, _disk64, record_offset, _disks = _Z64_LOCATOR.unpack_from(tail, locator)
        if sig != _Z64_LOCATOR_SIG:
            raise BrokenWheel("ZIP64 sizes without a ZIP64 locator")
        record = record_offset - (file_size - len(tail))
        if record < 0 or record + _Z64_EOCD.size > len(tail):
            raise Unsupported("ZIP64 end of central directory record not in the tail")
        fields = _Z64_EOCD.unpack_from(tail, record)
        if fields[0] != _Z64_EOCD_SIG:
            raise BrokenWheel("bad ZIP64 end of central directory record")
        cd_size, cd_offset = fields[8], fields[9]
    if cd_offset + cd_size > file_size:
        raise BrokenWheel("central directory beyond the end of the file")
    return Directory(cd_offset, cd_size)


def parse_directory(data: bytes) -> list[Member]:
    """The entries of a central directory (exactly its bytes)."""
    members = []
    pos = 0
    while pos + _CENTRAL.size <= len(data):
        fields = _CENTRAL.unpack_from(data, pos)
        if fields[0] != _CENTRAL_SIG:
            raise BrokenWheel("bad central directory entry")
        method, crc, csize, size = fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, offset = fields[10], fields[11], fields[12], fields[16]
        start = pos + _CENTRAL.size
        raw_name = data[start : start + name_len]
        if len(raw_name) != name_len:
            raise BrokenWheel("truncated central directory")
        flags = fields[3]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        members.append(Member(name, method, crc, csize, size, offset))
        pos = start + name_len + extra_len + comment_len
    return members


def find_metadata(members: list[Member]) -> Member:
    """The one top-level ``*.dist-info/METADATA`` (the rule private wheels are held to)."""
    found = [
        m for m in members if m.name.count("/") == 1 and m.name.endswith(".dist-info/METADATA")
    ]
    if len(found) != 1:
        raise BrokenWheel("a wheel must hold exactly one .dist-info/METADATA")
    member = found[0]
    if _U32_MAX in (member.compressed_size, member.size, member.header_offset):
        raise Unsupported("METADATA has ZIP64 sizes")
    if member.size > MAX_METADATA or member.compressed_size > MAX_METADATA:
        raise BrokenWheel("METADATA is too large")
    return member


def member_data(member: Member, chunk: bytes) -> bytes:
    """The compressed bytes of ``member`` from ``chunk``, the file's bytes starting at its
    local header; Unsupported if ``chunk`` is too short (the local extra field was longer
    than guessed)."""
    if len(chunk) < _LOCAL.size:
        raise Unsupported("local header not in the range read")
    fields = _LOCAL.unpack_from(chunk, 0)
    if fields[0] != _LOCAL_SIG:
        raise BrokenWheel("bad local file header")
    start = _LOCAL.size + fields[9] + fields[10]
    data = chunk[start : start + member.compressed_size]
    if len(data) != member.compressed_size:
        raise Unsupported("member data not in the range read")
    return data


def inflate(member: Member, data: bytes) -> bytes:
    """The member's bytes, checked against its size and CRC-32 (bounded: a zip bomb stops at
    :data:`MAX_METADATA`)."""
    if member.method == 0:
        out = data
    elif member.method == 8:
        inflater = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(data, MAX_METADATA + 1)
        except zlib.error as exc:
            raise BrokenWheel(f"METADATA does not inflate: {exc}") from exc
    else:
        raise Unsupported(f"METADATA compressed with method {member.method}")
    if len(out) != member.size or zlib.crc32(out) != member.crc:
        raise BrokenWheel("METADATA does not match its size or CRC-32")
    return out
