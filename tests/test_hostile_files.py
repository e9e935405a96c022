"""Odd image files real tools write: metadata blocks that do not parse and
chunks with a wrong checksum in files whose pixels are fine. The gate reads the pixels, as
browsers and libpng do, and keeps its refusals for images that really cannot be read."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermground.platform.images import check_decoded, decode_checked

MAX_PIXELS = 40_000_000


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_block_that_does_not_parse_is_no_reason_to_refuse_the_pixels(fmt: str) -> None:
    """PNG's eXIf and WebP's EXIF chunk holding no TIFF structure: the gate read the pixels fine and
    then refused the image (`decode: SyntaxError: not a TIFF file`), where the same block in a JPEG
    passed; a PIL image opened from such a file raised SyntaxError out of search()."""
    photo = Image.new("RGB", (40, 20), (150, 90, 60))
    data = _encode(photo, fmt, exif=b"Exif\x00\x00garbage from an editor")
    out = decode_checked(data, max_pixels=MAX_PIXELS)
    assert out.size == (40, 20) and out.mode == "RGB" and not out.info
    assert np.abs(np.asarray(out, dtype=np.int16) - (150, 90, 60)).max() <= 4
    handed_in = check_decoded(Image.open(io.BytesIO(data)), max_pixels=MAX_PIXELS)
    assert handed_in.size == (40, 20)

