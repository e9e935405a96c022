"""The image gate: one decode-and-check for ingest, search and predict; JPEG and thumbnail encoding.

    image = decode_checked(data, max_bytes=10_000_000, max_pixels=40_000_000)

Every image the model sees passes here. The gate refuses what the Qwen2-VL processor cannot take
(`ImageRejected`, whose `rule` names the check that failed, so the API answers a 4xx and ingest
quarantines with that reason) and makes the rest valid: any colour mode (palette, alpha, CMYK,
16-bit, float) becomes 8-bit RGB, EXIF orientation is applied, and no metadata (EXIF, ICC,
comments) of the file travels further.

Memory: the header is checked before a pixel is decoded, and a large image is decoded at a reduced
size (JPEG: by the decoder itself, `Image.draft`; other formats: one box `reduce` right after
decoding), so what is held stays near `KEEP_PIXELS`, far above what the model reads (224-448 px
sides) and never bigger than the file's own pixel buffer once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import struct
import threading
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from dermground.platform.png_chunks import check_png_checksums, without_text_chunks

# Formats decoded at all. EPS (Ghostscript), PDF, PSD and friends are never opened. The JPEG opener
# also opens MPO, the JPEG many phone cameras write (the image then says format "MPO").
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
_JPEG_FAMILY = ("JPEG", "MPO")
# The Qwen2-VL processor (transformers' smart_resize): sides become multiples of FACTOR and it
# raises on an aspect ratio of more than MAX_ASPECT_RATIO; its default pixel range.
FACTOR = 28
MAX_ASPECT_RATIO = 200.0
PROCESSOR_MIN_PIXELS = 56 * 56
PROCESSOR_MAX_PIXELS = 14 * 14 * 4 * 1280
# A decoded image bigger than this is reduced by an integer factor while staying at least this big
# (1024 x 1024): the model's grid is 224-448 px, and ISIC crops are ~130-300 px, so real lesion
# images are never touched.
KEEP_PIXELS = 1024 * 1024
# Reduction never takes the smallest side under this, so the aspect ratio survives it.
MIN_REDUCED_SIDE = 64
# Modes Pillow's Image.reduce works on; anything else is converted before reducing.
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"}
_ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels show as on a white page
# Full-size decodes (large non-JPEG images) running at once in this process: each holds up to
# max_pixels x 4 bytes (160 MB at 40 MP) for about a second.
FULL_SIZE_DECODES = 2
_full_size_decodes = threading.BoundedSemaphore(FULL_SIZE_DECODES)

# The settings' max_image_pixels default: the pixel limit where no settings are at hand.
DEFAULT_MAX_PIXELS = 40_000_000
# Longest side of a thumbnail (the API's `size=thumb` images).
THUMB_PX = 160

# Rule names: what a refusal says it broke (the API's `rule`, ingest's quarantine reason prefix).
RULE_EMPTY = "empty"
RULE_BYTES = "byte_limit"
RULE_FORMAT = "format"
RULE_PIXELS = "pixel_limit"
RULE_DECODE = "decode"
RULE_ASPECT = "aspect_ratio"
RULE_MIN_SIDE = "min_side"
RULES: tuple[str, ...] = (RULE_EMPTY, RULE_BYTES, RULE_FORMAT, RULE_PIXELS, RULE_DECODE, RULE_ASPECT,
                          RULE_MIN_SIDE)
_TOO_LARGE = {RULE_BYTES, RULE_PIXELS}


class ImageRejected(ValueError):
    """An image the gate refuses; `rule` names the check (one of RULES), str() says what to do."""

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        self.detail = detail
        super().__init__(f"{rule}: {detail}")

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:
        # Rebuilt from both fields when it crosses a process (a Ray task): the default passes only str(self).
        return type(self), (self.rule, self.detail)

    @property
    def too_large(self) -> bool:
        """Whether the refusal is about size (HTTP 413) rather than content (HTTP 422)."""
        return self.rule in _TOO_LARGE


# What one bad input can raise on its way in: the gate's refusals and a patch recipe's size checks
# (ValueError), an unreadable file (OSError), a missing HDF5 dataset (KeyError). Ingest quarantines
# such a record and training leaves it out; the rest goes on.
INPUT_ERRORS = (ImageRejected, ValueError, OSError, KeyError)


def rejection_reason(exc: BaseException) -> str:
    """Why an input was refused, in a record's words: the gate's own (`rule: detail`), else the error's type and text."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ImageRejected) else f"{type(exc).__name__}: {text}"


def processor_size(width: int, height: int, factor: int = FACTOR, min_pixels: int = PROCESSOR_MIN_PIXELS,
                   max_pixels: int = PROCESSOR_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) the Qwen2-VL processor resizes an image to; ImageRejected where it would raise.

    The same arithmetic as transformers' `smart_resize` (tests compare the two), so the gate can
    refuse an image from its header, before decoding it.
    """
    if width < 1 or height < 1:
        raise ImageRejected(RULE_MIN_SIDE, f"the image is {width}x{height} pixels: it has no pixels")
    ratio = max(width, height) / min(width, height)
    if ratio >= MAX_ASPECT_RATIO:
        raise ImageRejected(RULE_ASPECT, f"the image is {width}x{height} pixels, an aspect ratio of {ratio:.1f}; "
                                         f"the model takes less than {MAX_ASPECT_RATIO:g}: crop it to the lesion")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if min(h_bar, w_bar) < factor:
        raise ImageRejected(RULE_MIN_SIDE, f"the image is {width}x{height} pixels; resized for the model its smallest "
                                           f"side would be {min(h_bar, w_bar)} px, under one patch of {factor}")
    return w_bar, h_bar


def reduction_factor(width: int, height: int, keep_pixels: int = KEEP_PIXELS) -> int:
    """The integer factor a width x height image is reduced by (1: kept as it is)."""
    by_pixels = math.floor(math.sqrt(width * height / keep_pixels))
    by_side = min(width, height) // MIN_REDUCED_SIDE
    return max(1, min(by_pixels, by_side))


def decode_checked(data: bytes, *, max_pixels: int, max_bytes: int | None = None,
                   keep_pixels: int = KEEP_PIXELS) -> Image.Image:
    """A clean 8-bit RGB image from encoded bytes, or ImageRejected naming the rule it broke."""
    if not data:
        raise ImageRejected(RULE_EMPTY, "the image has no bytes")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageRejected(RULE_BYTES, f"the image has {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard as an error: our max_pixels is the real limit, checked first.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _oriented(_decode_reduced(data, max_pixels, keep_pixels))
            rgb = to_rgb(image)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(RULE_FORMAT, f"not an image in an accepted format ({', '.join(ALLOWED_FORMATS)}); "
                                         f"{len(data)} bytes") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses while opening, before our own check: it says how many pixels were declared.
        raise ImageRejected(RULE_PIXELS, f"the image declares far more pixels than allowed ({exc})") from None
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, MemoryError,
            struct.error) as exc:
        # Truncated or corrupt data surfaces as any of these, depending on the format plugin.
        raise ImageRejected(RULE_DECODE, f"the image cannot be decoded ({type(exc).__name__}: {exc})") from None
    processor_size(*rgb.size)  # a reduced image keeps the ratio only to within a pixel: check again
    # Rebuilt from raw pixels: no EXIF, ICC profile or other chunk of the file survives.
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The gate for images of the server's own data (read through an image reference): no byte
    limit, the default pixel limit unless the caller has the settings' own."""
    return decode_checked(data, max_pixels=max_pixels)


# EXIF orientation -> the transpose that shows the image upright (ImageOps.exif_transpose's table).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _oriented(image: Image.Image) -> Image.Image:
    """The image turned upright by its EXIF orientation. Only the pixels are turned: the EXIF is
    dropped anyway, and Pillow's exif_transpose writes it back, which raises on a corrupt block
    (a tag whose value does not fit its type) that reads fine."""
    method = _ORIENTATION.get(_orientation(image))
    return image if method is None else image.transpose(method)


def _orientation(image: Image.Image) -> object:
    """The EXIF orientation tag (1, upright, when there is none). An EXIF block that does not parse
    at all (PNG's eXIf or WebP's EXIF chunk holding no TIFF structure, which Pillow raises on, where
    its JPEG reader only warns) says nothing about orientation: the pixels are still good."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1)
    except (SyntaxError, ValueError, struct.error, EOFError, OSError):
        return 1


def _decode_reduced(data: bytes, max_pixels: int, keep_pixels: int) -> Image.Image:
    """The decoded image (reduced when large). A PNG whose text Pillow refuses (a chunk that unpacks
    to over 1 MB, such as a photo's grown XMP: ValueError) is decoded again without its text chunks,
    which the gate drops anyway."""
    try:
        return _decode_file(data, max_pixels, keep_pixels)
    except ImageRejected:
        raise
    except ValueError:
        textless = without_text_chunks(data)
        if textless is None:
            raise
        return _decode_file(textless, max_pixels, keep_pixels)


def _decode_file(data: bytes, max_pixels: int, keep_pixels: int) -> Image.Image:
    """Open, check the header, decode (reduced when large) and let go of the full-size pixels."""
    opened = _open(data)
    width, height = opened.size  # from the header: nothing decoded yet
    if width * height > max_pixels:
        raise ImageRejected(RULE_PIXELS, f"the image has {width}x{height} pixels, over the limit of "
                                         f"{max_pixels}; send a smaller image")
    processor_size(width, height)
    factor = reduction_factor(width, height, keep_pixels)
    if factor == 1:
        opened.load()
        return opened
    if opened.format in _JPEG_FAMILY:
        # The JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding: the full size is never held.
        opened.draft(opened.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        opened.load()
        return _reduce_and_release(opened, reduction_factor(*opened.size, keep_pixels))
    # Other formats decode at full size: a bounded number at a time, so that many concurrent large
    # uploads hold at most FULL_SIZE_DECODES full-size images, and the memory goes back afterwards.
    with _full_size_decodes:
        try:
            opened.load()
            return _reduce_and_release(opened, factor)
        finally:
            _return_freed_memory()


def _open(data: bytes) -> Image.Image:
    """The opened (not yet decoded) image. A PNG Pillow refuses is opened as libpng reads it: without
    its ancillary chunks (comments, profiles) whose checksum is wrong; one whose IHDR, PLTE or IDAT
    chunk fails its checksum is refused as corrupt, naming the chunk, not as an unknown format."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        checked = check_png_checksums(data)
        if checked is None:
            raise
        if checked.broken_critical is not None:
            raise ImageRejected(RULE_DECODE, f"the PNG file is corrupt: its {checked.broken_critical} chunk fails its "
                                             "checksum (CRC); export or copy the image again") from None
        if not checked.dropped:
            raise
        return Image.open(io.BytesIO(checked.repaired), formats=ALLOWED_FORMATS)


def _reduce_and_release(image: Image.Image, factor: int) -> Image.Image:
    reduced = _reduce(image, factor)
    if reduced is not image:
        image.close()  # destroys the full-size pixels now, not when the caller's frame ends
    return reduced


def check_decoded(image: Image.Image, *, max_pixels: int) -> Image.Image:
    """The gate for an image already in memory (a caller's PIL image): the same checks, EXIF
    orientation (a photo from Image.open is turned like its file; the gate's own images carry no
    EXIF) and RGB."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(RULE_PIXELS, f"the image has {width}x{height} pixels, over the limit of {max_pixels}")
    processor_size(width, height)
    return to_rgb(_oriented(image))


def _load_malloc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _load_malloc_trim()


def _return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps large freed blocks in its arenas, so the
    server's memory would stay at its peak after a burst of large uploads)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    if factor <= 1:
        return image
    if image.mode in _REDUCIBLE:
        return image.reduce(factor)
    # Palette, 1-bit and 16-bit pixels cannot be averaged as they are: convert strip by strip, so the
    # full-size image is never held twice (a 6000 x 6000 palette PNG is 36 MB, in RGB 144 MB).
    width, height = image.size
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    step = factor * max(1, 256 // factor)  # rows per strip: a multiple of factor
    for top in range(0, height, step):
        strip = to_rgb(image.crop((0, top, width, min(height, top + step))))
        out.paste(strip.reduce(factor), (0, top // factor))
    out.info = image.info.copy()  # the EXIF orientation still applies (Image.reduce keeps it too)
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode: alpha over white, 16-bit and float grey levels scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(np.asarray(image), sixteen_bit=mode.startswith("I;16")),
                               mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Grey levels as 0-255: 16-bit ones by the 16-bit range, float ones in [0, 1] by that range,
    any other integer or float image by its own range (never clipped to a white or black block)."""
    array = values.astype(np.float32)
    array[~np.isfinite(array)] = 0.0
    low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
    if sixteen_bit or (values.dtype.kind in "iu" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif values.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    span = max(high - low, 1e-12)
    return np.clip((array - low) * (255.0 / span) + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an image (as RGB)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_thumbnail(image: Image.Image, side: int = THUMB_PX) -> bytes:
    """JPEG bytes of the image shrunk, aspect kept, to fit `side` x `side` (the image is not changed)."""
    small = image.copy()
    small.thumbnail((side, side))
    return encode_jpeg(small)
