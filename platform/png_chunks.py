"""PNG chunks Pillow refuses and libpng forgives.

libpng, and with it every browser, skips an ancillary chunk (a text comment, a colour profile, a
time stamp: a chunk whose type starts with a lower-case letter) whose CRC does not match, and
shows the image; Pillow refuses the whole file, so an editor's sloppy comment cost a record. Pillow
also refuses a text chunk that decompresses to more than 1 MB (its guard against zip bombs), such
as the XMP of a photo edited in Photoshop whose history has grown to megabytes. The image gate
(platform/images.py) asks here only after Pillow has refused a file: for the file without those
chunks, or for the name of the chunk the pixels need that is broken. The gate drops every text of
a file anyway.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ANCILLARY_BIT = 0x20  # bit 5 of a chunk type's first byte (PNG spec, section 5.4)
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


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


def without_text_chunks(data: bytes) -> bytes | None:
    """The PNG file without its text chunks (tEXt, zTXt, iTXt), or None when `data` is not a PNG
    file or holds none."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kept, found = [data[:len(PNG_SIGNATURE)]], False
    end = len(PNG_SIGNATURE)
    for kind, start, end, _ in _chunks(data):
        if kind in _TEXT_CHUNKS:
            found = True
        else:
            kept.append(data[start:end])
    kept.append(data[end:])
    return b"".join(kept) if found else None


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
