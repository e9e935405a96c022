"""The image gate (platform/images.py): what the Qwen2-VL processor cannot take is refused with the
rule named, every colour mode becomes 8-bit RGB, large images are decoded reduced."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from dermground.platform.images import (
    KEEP_PIXELS,
    RULES,
    ImageRejected,
    check_decoded,
    decode_checked,
    processor_size,
    reduction_factor,
)

MAX_PIXELS = 40_000_000


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rule(data: bytes, **limits: int) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_checked(data, max_pixels=limits.get("max_pixels", MAX_PIXELS), max_bytes=limits.get("max_bytes"))
    assert caught.value.rule in RULES
    assert str(caught.value).startswith(f"{caught.value.rule}: ")
    return caught.value.rule


@pytest.mark.parametrize("size", [(201, 1), (402, 2), (1, 300), (3000, 10), (200, 1), (10, 2000)])
def test_shapes_the_processor_refuses_are_refused_by_aspect_ratio(size: tuple[int, int]) -> None:
    assert _rule(_encode(Image.new("RGB", size, (90, 60, 40)))) == "aspect_ratio"


@pytest.mark.parametrize("size", [(199, 1), (1, 1), (28, 5000), (3, 500)])
def test_odd_but_acceptable_shapes_pass_and_the_processor_takes_them(size: tuple[int, int], tiny_backbone) -> None:
    image = decode_checked(_encode(Image.new("RGB", size, (90, 60, 40))), max_pixels=MAX_PIXELS)
    assert image.mode == "RGB"
    inputs = tiny_backbone.processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image],
                                     return_tensors="pt")
    assert inputs["pixel_values"].shape[0] > 0


def test_processor_size_is_transformers_smart_resize() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = random.Random(5)
    sizes = [(rng.randint(1, 6000), rng.randint(1, 6000)) for _ in range(400)]
    sizes += [(w, max(1, w // rng.randint(1, 260))) for w in (rng.randint(1, 9000) for _ in range(400))]
    for width, height in sizes:
        try:
            expected = smart_resize(height, width)
        except ValueError:
            with pytest.raises(ImageRejected):
                processor_size(width, height)
            continue
        try:
            assert processor_size(width, height) == (expected[1], expected[0]), (width, height)
        except ImageRejected as exc:  # stricter only at exactly 200 (the processor says "smaller than 200")
            assert exc.rule == "aspect_ratio" and max(width, height) / min(width, height) == 200, (width, height)


@pytest.mark.parametrize(("mode", "fmt"), [("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"),
                                           ("I;16", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("F", "TIFF"),
                                           ("RGB", "WEBP"), ("RGB", "BMP"), ("P", "GIF")])
def test_every_mode_becomes_8_bit_rgb(mode: str, fmt: str) -> None:
    image = Image.new(mode, (60, 40))
    data = _encode(image, fmt)
    out = decode_checked(data, max_pixels=MAX_PIXELS)
    assert out.mode == "RGB" and out.size == (60, 40)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    levels = np.linspace(0, 65535, 64 * 32).astype(np.uint16).reshape(32, 64)
    out = np.asarray(decode_checked(_encode(Image.fromarray(levels)), max_pixels=MAX_PIXELS))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 100 < out[16, 0, 0] < 160  # mid-grey stays mid-grey (Pillow's own convert clips it to white)


def test_alpha_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (20, 20), (200, 0, 0, 0))
    rgba.paste((0, 0, 200, 255), (0, 0, 10, 20))
    out = decode_checked(_encode(rgba), max_pixels=MAX_PIXELS)
    assert out.getpixel((15, 5)) == (255, 255, 255) and out.getpixel((2, 5)) == (0, 0, 200)


@pytest.mark.parametrize("data, rule", [
    (b"", "empty"),
    (b"\x00" * 64, "format"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "format"),  # EPS would run Ghostscript
    (b"GIF89a" + b"\x01" * 20, "format"),  # a header Pillow cannot parse
])
def test_not_images_are_refused_by_rule(data: bytes, rule: str) -> None:
    assert _rule(data) == rule


def test_truncated_and_too_large_are_refused_by_rule() -> None:
    data = _encode(Image.effect_noise((300, 200), 40).convert("RGB"))
    assert _rule(data[: len(data) // 2]) == "decode"
    assert _rule(data, max_pixels=300 * 200 - 1) == "pixel_limit"
    assert _rule(data, max_bytes=len(data) - 1) == "byte_limit"
    rejected = ImageRejected("pixel_limit", "x")
    assert rejected.too_large and not ImageRejected("aspect_ratio", "x").too_large


def test_metadata_and_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    exif[0x010F] = "SecretCamera"
    out = decode_checked(_encode(Image.new("RGB", (40, 20), (10, 20, 30)), "JPEG", exif=exif), max_pixels=MAX_PIXELS)
    assert out.size == (20, 40)
    assert not out.info and not out.getexif()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_images_are_decoded_reduced_with_their_shape(fmt: str) -> None:
    big = Image.new("RGB", (4100, 2100), (120, 80, 60))
    big.paste((10, 200, 10), (0, 0, 2050, 2100))  # left half green: the content survives reduction
    out = decode_checked(_encode(big, fmt), max_pixels=MAX_PIXELS)
    width, height = out.size
    assert width * height <= 4 * KEEP_PIXELS and width * height >= KEEP_PIXELS // 4
    assert abs(width / height - 4100 / 2100) < 0.01
    left, right = out.getpixel((width // 4, height // 2)), out.getpixel((3 * width // 4, height // 2))
    assert left[1] > 150 and right[0] > 90


def test_palette_images_reduce_strip_by_strip() -> None:
    image = Image.new("P", (3000, 1500))
    image.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    image.paste(1, (1500, 0, 3000, 1500))
    out = decode_checked(_encode(image), max_pixels=MAX_PIXELS)
    assert out.size == (1500, 750)
    assert out.getpixel((100, 700)) == (0, 0, 0) and out.getpixel((1400, 740)) == (250, 10, 10)


def test_reduction_keeps_small_images_and_narrow_sides() -> None:
    assert reduction_factor(300, 200) == 1
    assert reduction_factor(1024, 1024) == 1
    assert reduction_factor(6000, 6000) == 5
    assert reduction_factor(20000, 120) == 1  # the smallest side stays >= 64 px


def test_check_decoded_gates_an_image_in_memory() -> None:
    with pytest.raises(ImageRejected, match="^aspect_ratio"):
        check_decoded(Image.new("RGB", (500, 2)), max_pixels=MAX_PIXELS)
    out = check_decoded(Image.new("LA", (30, 30)), max_pixels=MAX_PIXELS)
    assert out.mode == "RGB"


def test_a_search_by_pixels_passes_the_gate_too(search_collection, tiny_backbone) -> None:
    from dermground.platform.embedder_provider import EmbedderProvider
    from dermground.platform.search import search
    from dermground.platform.search_request import SearchError, SearchRequest
    from dermground.platform.settings import Settings
    from dermground.platform.store.edge import EdgeStore
    from dermground.platform.embed import Embedder

    provider = EmbedderProvider.of(Embedder(tiny_backbone))
    settings = Settings(home=search_collection["home"])
    with EdgeStore(search_collection["store_root"], "lesions") as store:
        with pytest.raises(SearchError, match="aspect_ratio"):
            search(SearchRequest(image=Image.new("RGB", (600, 2)), k=3), store=store, embedder=provider,
                   settings=settings)
        found = search(SearchRequest(image=Image.new("LA", (90, 90)), k=3), store=store, embedder=provider,
                       settings=settings)
        assert len(found.hits) == 3


def test_phone_camera_jpegs_are_accepted() -> None:
    image = Image.new("RGB", (64, 48), (120, 90, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="MPO", save_all=True, append_images=[image.copy()])  # two pictures, as cameras write
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    assert decode_checked(buffer.getvalue(), max_pixels=MAX_PIXELS).size == (64, 48)


def _jpeg_with_corrupt_exif(size: tuple[int, int] = (40, 20), fmt: str = "JPEG") -> bytes:
    """A photo turned by EXIF (orientation 6) whose EXIF also holds RowsPerStrip as text: Pillow reads
    it, but cannot write it back (a flipped byte in a camera's EXIF does this)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0131] = "sw"  # Software, ASCII ...
    raw = exif.tobytes().replace(b"\x01\x31\x00\x02", b"\x01\x16\x00\x02")  # ... renamed RowsPerStrip (a number)
    return _encode(Image.new("RGB", size, (10, 20, 30)), fmt, exif=raw)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_corrupt_exif_block_is_no_reason_to_fail(fmt: str) -> None:
    """The gate turns the pixels by the orientation and drops the EXIF: it never writes the EXIF back
    (Pillow's exif_transpose did, and raised struct.error: a 500 in the API, a failed ingest task)."""
    out = decode_checked(_jpeg_with_corrupt_exif(fmt=fmt), max_pixels=MAX_PIXELS)
    assert out.size == (20, 40) and out.mode == "RGB"
    assert not out.info and not out.getexif()


@pytest.mark.parametrize("mode", ["P", "I;16", "1", "RGB"])
def test_orientation_survives_the_reduction_of_a_large_image_in_any_mode(mode: str) -> None:
    """A large image is turned like its small copy: the strip-by-strip reduction of palette, 16-bit
    and 1-bit images kept the pixels but dropped the EXIF, so only they came out lying on their side."""
    exif = Image.Exif()
    exif[0x0112] = 6
    small = decode_checked(_encode(Image.new(mode, (400, 200)), "PNG", exif=exif), max_pixels=MAX_PIXELS)
    large = decode_checked(_encode(Image.new(mode, (4000, 2000)), "PNG", exif=exif), max_pixels=MAX_PIXELS)
    assert small.size == (200, 400)
    assert large.size[0] < large.size[1] and large.size == (1000, 2000)


def test_a_photo_handed_in_as_pixels_is_turned_like_the_same_file() -> None:
    """search() takes a caller's PIL image through check_decoded: a photo opened with Image.open
    (EXIF orientation 6) becomes the same upright pixels as its file through the gate (ingest, the
    API), so the same photo embeds the same; before, only the file was turned."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = Image.new("RGB", (40, 20), (200, 30, 30))
    photo.paste((30, 30, 200), (0, 0, 10, 20))  # a blue left edge shows which way it was turned
    data = _encode(photo, "PNG", exif=exif)
    from_file = decode_checked(data, max_pixels=MAX_PIXELS)
    handed_in = check_decoded(Image.open(io.BytesIO(data)), max_pixels=MAX_PIXELS)
    assert handed_in.size == from_file.size == (20, 40)
    assert np.array_equal(np.asarray(handed_in), np.asarray(from_file))
    assert check_decoded(from_file, max_pixels=MAX_PIXELS).size == (20, 40)  # a gated image is not turned again


def test_a_refusal_keeps_its_rule_and_detail_across_processes() -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(ImageRejected("decode", "the file ends early")))
    assert (type(copy), copy.rule, copy.detail, str(copy)) == (ImageRejected, "decode", "the file ends early",
                                                                 "decode: the file ends early")
