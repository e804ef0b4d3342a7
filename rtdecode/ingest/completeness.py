"""Is a DICOM file all there? Judged from its bytes alone, before any value in it is read.

A file being written grows from its first byte, so a cut can fall anywhere: inside the preamble, the
file meta group, a UID, a sequence or the pixel data. Values read from such a file are wrong (a cut
SOP Class UID names a class that does not exist), so no value is trusted until the element structure
runs whole to the end of the file: every element's header and declared length fit in the bytes, every
undefined-length sequence and encapsulated pixel data reaches its delimiter. Only then does anything
look at what the file is.
"""

from __future__ import annotations

import struct
import zlib

IMPLICIT_LE, EXPLICIT_BE, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
WHOLE, SHORT, NOT_PART10, UNKNOWN = "whole", "short", "not_part10", "unknown"


class _Short(Exception):
    """The bytes end before the structure does."""


class _Odd(Exception):
    """The structure is not one this walker knows (it then leaves the judgement to pydicom)."""


def judge(raw: bytes) -> tuple[str, str]:
    """(verdict, reason): :data:`WHOLE` when every element runs whole to the end of the bytes;
    :data:`SHORT` with one line saying where they stop (still being written); :data:`NOT_PART10` without
    the 128-byte preamble and ``DICM``; :data:`UNKNOWN` when the structure is one this walker does not
    know (pydicom then judges the file)."""
    if len(raw) < 132:
        return SHORT, f"only {len(raw)} bytes so far; not yet a DICOM file"
    if raw[128:132] != b"DICM":
        return NOT_PART10, "no 'DICM' at byte 128"
    try:
        start, syntax = _meta(raw)
        if start >= len(raw):
            return SHORT, "the file ends after its file meta header; no data set yet"
        body, explicit, little = _body(raw, start, syntax)
        _walk(body, 0, explicit, little, nested=False)
    except _Short as exc:
        return SHORT, str(exc)
    except (_Odd, struct.error):
        return UNKNOWN, ""
    return WHOLE, ""


def _meta(raw: bytes) -> tuple[int, str | None]:
    """Where the data set starts, and the transfer syntax the meta group names (explicit VR little endian)."""
    pos, syntax = 132, None
    while True:
        if pos + 4 > len(raw):
            raise _Short("the file ends inside its file meta header")
        group, elem = struct.unpack_from("<HH", raw, pos)
        if group != 0x0002:
            return pos, syntax
        pos, value = _explicit_element(raw, pos, little=True)
        if elem == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")


def _explicit_element(raw: bytes | memoryview, pos: int, little: bool) -> tuple[int, bytes]:
    """One explicit-VR element of defined length at ``pos``: where the next starts, and its value."""
    fmt = "<" if little else ">"
    if pos + 8 > len(raw):
        raise _Short("the file ends inside a data element's header")
    vr = bytes(raw[pos + 4:pos + 6])
    if vr in LONG_VRS:
        if pos + 12 > len(raw):
            raise _Short("the file ends inside a data element's header")
        (length,) = struct.unpack_from(fmt + "I", raw, pos + 8)
        head = 12
    else:
        (length,) = struct.unpack_from(fmt + "H", raw, pos + 6)
        head = 8
    if length == UNDEFINED:
        raise _Odd()
    end = pos + head + length
    if end > len(raw):
        raise _Short(f"a data element declares {length} bytes; {len(raw) - pos - head} are in the file so far")
    return end, bytes(raw[pos + head:end])


def _body(raw: bytes, start: int, syntax: str | None) -> tuple[bytes | memoryview, bool, bool]:
    """The data set's bytes and how they are encoded (a missing syntax is guessed as pydicom does)."""
    if syntax == DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw[start:])
        except zlib.error:
            raise _Odd() from None
        if not inflater.eof:
            raise _Short("the deflated data set has no end yet")
        return body, True, True
    view = memoryview(raw)[start:]
    if syntax is None:
        explicit = len(view) >= 6 and bytes(view[4:6]).isalpha() and bytes(view[4:6]).isupper()
        return view, explicit, True
    return view, syntax != IMPLICIT_LE, syntax != EXPLICIT_BE


def _walk(buf: bytes | memoryview, pos: int, explicit: bool, little: bool, nested: bool) -> int:
    """Elements from ``pos`` to the end of ``buf`` (or to an item delimiter when ``nested``)."""
    fmt = "<" if little else ">"
    end = len(buf)
    while pos < end:
        if pos + 8 > end:
            raise _Short("the file ends inside a data element's header")
        group, elem = struct.unpack_from(fmt + "HH", buf, pos)
        tag = (group << 16) | elem
        if tag in (ITEM, ITEM_END, SEQUENCE_END):
            (length,) = struct.unpack_from(fmt + "I", buf, pos + 4)
            if tag == ITEM_END and nested:
                return pos + 8
            raise _Odd()
        vr = bytes(buf[pos + 4:pos + 6]) if explicit else b""
        if explicit and vr in LONG_VRS:
            if pos + 12 > end:
                raise _Short("the file ends inside a data element's header")
            (length,) = struct.unpack_from(fmt + "I", buf, pos + 8)
            head = 12
        elif explicit:
            if not vr.isalpha():
                raise _Odd()
            (length,) = struct.unpack_from(fmt + "H", buf, pos + 6)
            head = 8
        else:
            (length,) = struct.unpack_from(fmt + "I", buf, pos + 4)
            head = 8
        pos += head
        if length == UNDEFINED:
            if tag in PIXEL_TAGS:
                pos = _items(buf, pos, fmt, encapsulated=True)
            else:  # a sequence (SQ, or UN holding one in implicit VR)
                pos = _items(buf, pos, fmt, encapsulated=False, explicit=explicit and vr != b"UN", little=little)
        else:
            pos += length
            if pos > end:
                what = "pixel data" if tag in PIXEL_TAGS else f"element ({group:04X},{elem:04X})"
                raise _Short(f"{what} holds {length - (pos - end)} of its {length} bytes")
    if nested:
        raise _Short("the file ends inside a sequence item")
    return pos


def _items(buf: bytes | memoryview, pos: int, fmt: str, encapsulated: bool, explicit: bool = True,
           little: bool = True) -> int:
    """Items of an undefined-length sequence or encapsulated pixel data, up to the sequence delimiter."""
    if encapsulated:
        fmt = "<"  # fragments are little endian whatever the syntax
    end = len(buf)
    while True:
        if pos + 8 > end:
            what = "compressed pixel data" if encapsulated else "a sequence"
            raise _Short(f"{what} has no end yet (no sequence delimiter)")
        group, elem, length = struct.unpack_from(fmt + "HHI", buf, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise _Odd()
        if length == UNDEFINED and not encapsulated:
            pos = _walk(buf, pos, explicit, little, nested=True)
        elif length == UNDEFINED:
            raise _Odd()
        else:
            pos += length
