"""PNG chunks whose checksum is wrong: what libpng forgives and Pillow does not.

libpng, and with it every browser, skips an ancillary chunk (a text comment, a colour profile, a
time stamp: a chunk whose type starts with a lower-case letter) whose CRC does not match, and
shows the image; Pillow refuses the whole file, so an editor's sloppy comment cost a record. The
image gate (platform/images.py) asks here only after Pillow has refused a file: for the file
without those chunks, or for the name of the chunk the pixels need that is broken.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ANCILLARY_BIT = 0x20  # bit 5 of a chunk type's first byte (PNG spec, section 5.4)


@dataclass(frozen=True)
class PngChecksums:
    """What the checksums of a PNG file's chunks say."""

    repaired: bytes  # the file without its ancillary chunks that fail their checksum
    dropped: tuple[str, ...]  # those chunks' types, in file order
    broken_critical: str | None  # the first chunk the image needs (IHDR, PLTE, IDAT) that fails its checksum


def check_png_checksums(data: bytes) -> PngChecksums | None:
    """The checksums of a PNG file's chunks, or None when `data` is not a PNG file."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kept, dropped, broken_critical = [data[:len(PNG_SIGNATURE)]], [], None
    end = len(PNG_SIGNATURE)
    for kind, start, end, intact in _chunks(data):
        name = kind.decode("latin-1")
        if intact:
            kept.append(data[start:end])
        elif kind[0] & _ANCILLARY_BIT:
            dropped.append(name)
        else:
            broken_critical = broken_critical or name
            kept.append(data[start:end])
    kept.append(data[end:])  # whatever follows the last whole chunk: Pillow's own error names it
    return PngChecksums(b"".join(kept), tuple(dropped), broken_critical)


def _chunks(data: bytes) -> Iterator[tuple[bytes, int, int, bool]]:
    """(type, start, end, checksum matches) of each whole chunk, up to IEND."""
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        end = position + 12 + length
        if end > len(data):
            return
        kind = data[position + 4:position + 8]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        yield kind, position, end, zlib.crc32(data[position + 4:end - 4]) == crc
        if kind == b"IEND":
            return
        position = end
