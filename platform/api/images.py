"""Uploaded and stored images: checked decoding of uploads, a cache of stored lesions' thumbnails.

An upload goes through the image gate (dermground.platform.images): size in bytes, then pixels and
shape from the header before any pixel is decoded, decoding at a reduced size when large, EXIF
orientation, any colour mode to RGB, rebuilt from raw pixels so nothing of the uploaded file
(EXIF, ICC, comments) travels further. A refusal carries the gate's `rule`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Mapping
from threading import Lock
from typing import BinaryIO

from PIL import Image

from dermground.platform.image_sources import load_image_bytes
from dermground.platform.images import (
    RULE_BYTES,
    ImageRejected,
    decode_checked,
    decode_image,
    encode_jpeg,
    encode_thumbnail,
)


_ASCII_WHITESPACE = re.compile(r"[\t\n\f\r ]+")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


class UploadError(ValueError):
    """An upload that is not a usable image (422); `rule` names the check it failed."""

    def __init__(self, detail: str, rule: str = "upload") -> None:
        self.rule = rule
        super().__init__(detail)


class UploadTooLargeError(UploadError):
    """An upload over the byte or pixel limit (413)."""


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Strict base64 (a data: URL prefix is accepted, line breaks are skipped); UploadError when
    malformed or too large."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    # MIME base64 (the `base64` tool, Python's encodebytes) wraps its lines; browsers' atob() skips
    # ASCII whitespace too. Skipped before the size check, so that a wrapped image is not counted longer.
    text = _ASCII_WHITESPACE.sub("", text)
    # 4 base64 characters carry 3 bytes: refuse before decoding anything bigger than the cap.
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise UploadTooLargeError(f"the image is larger than the limit of {max_bytes} bytes", "byte_limit")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(f"image_base64 is not valid base64: {_base64_fault(text)}", "base64") from None
    if not data:
        raise UploadError("image_base64 is empty", "empty")
    return data


def _base64_fault(text: str) -> str:
    """What is wrong with text that base64 refused, with what to do."""
    stray = _NOT_BASE64.search(text)
    if stray is not None:
        hint = " (URL-safe base64: use the standard alphabet, '+' and '/')" if stray.group() in "-_" else ""
        return (f"the character {stray.group()!r} at position {stray.start()} is not in the base64 alphabet "
                f"(A-Z, a-z, 0-9, '+', '/', '=' padding){hint}")
    return f"{len(text)} characters where whole groups of 4 (with '=' padding) were expected; the text may be cut short"


def read_upload_bytes(stream: BinaryIO, max_bytes: int, size: int | None = None) -> bytes:
    """An uploaded file's bytes, reading at most one byte past `max_bytes`; UploadTooLargeError over
    the limit, naming `size` (the form part's size, when known) or else "more than" the limit."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        # The read stopped at the limit plus one: that count is not the file's size.
        held = f"{size} bytes" if size is not None and size > max_bytes else f"more than {max_bytes} bytes"
        raise UploadTooLargeError(f"the image has {held}, over the limit of {max_bytes}", RULE_BYTES)
    return data


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """A clean RGB image from uploaded bytes (the image gate); UploadTooLargeError / UploadError
    carrying the gate's rule otherwise."""
    try:
        return decode_checked(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageRejected as exc:
        error = UploadTooLargeError if exc.too_large else UploadError
        raise error(str(exc), exc.rule) from None


class ThumbnailCache:
    """A small LRU of encoded thumbnails/full images of stored lesions (they never change)."""

    def __init__(self, capacity: int = 512) -> None:
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._capacity = capacity
        self._lock = Lock()

    def get(self, isic_id: str, size: str, payload: Mapping[str, object], max_pixels: int) -> bytes:
        key = (isic_id, size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = render_stored_image(payload, size, max_pixels)
        if size == "thumb":  # full images are not cached: they are large and rarely repeated
            with self._lock:
                self._items[key] = data
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
        return data


def render_stored_image(payload: Mapping[str, object], size: str, max_pixels: int) -> bytes:
    """JPEG bytes of a stored lesion's image (thumbnail or full), read through its image_ref."""
    image = decode_image(load_image_bytes(str(payload["image_ref"])), max_pixels=max_pixels)
    return encode_thumbnail(image) if size == "thumb" else encode_jpeg(image)
