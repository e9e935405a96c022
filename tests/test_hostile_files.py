"""Odd image files real tools write: metadata blocks that do not parse and
chunks with a wrong checksum in files whose pixels are fine. The gate reads the pixels, as
browsers and libpng do, and keeps its refusals for images that really cannot be read."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermground.platform.images import ImageRejected, check_decoded, decode_checked

MAX_PIXELS = 40_000_000


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


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


def test_a_png_whose_text_chunk_fails_its_checksum_is_read_and_a_broken_critical_chunk_named() -> None:
    """A tEXt chunk with a wrong CRC (an editor that rewrote the comment without the checksum):
    libpng and browsers skip the chunk and show the image; the gate refused it as `format: not an
    image in an accepted format`, which a PNG is. A bad checksum in a chunk the pixels need stays a
    refusal, named as a corrupt PNG (`decode`), not as an unknown format."""
    png = _encode(Image.new("RGB", (30, 30), (10, 200, 30)))
    after_header = 8 + 25  # signature, IHDR
    with_bad_text = png[:after_header] + _chunk(b"tEXt", b"Comment\x00edited", crc=1234) + png[after_header:]
    out = decode_checked(with_bad_text, max_pixels=MAX_PIXELS)
    assert out.size == (30, 30) and out.getpixel((5, 5)) == (10, 200, 30)

    bad_header = png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]  # the IHDR's checksum
    with pytest.raises(ImageRejected) as caught:
        decode_checked(bad_header, max_pixels=MAX_PIXELS)
    assert caught.value.rule == "decode" and "IHDR" in str(caught.value) and "PNG" in str(caught.value)


@pytest.mark.parametrize("where", ["before the pixels", "after the pixels"])
def test_a_png_whose_xmp_text_has_grown_to_megabytes_is_read(where: str) -> None:
    """A 7 kB PNG whose iTXt XMP unpacks to 2.4 MB (Photoshop's DocumentAncestors list grows with
    every paste): Pillow refuses text over 1 MB (ValueError, its zip-bomb guard) and the gate refused
    a good image as `decode`. The text is dropped anyway; the pixels are read without it."""
    png = _encode(Image.new("RGB", (30, 30), (1, 120, 3)))
    xmp = zlib.compress(b"<x:xmpmeta>" + b"<rdf:li>xmp.did:0123456789abcdef</rdf:li>" * 60_000 + b"</x:xmpmeta>")
    text = _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + xmp)
    data = png[:33] + text + png[33:] if where == "before the pixels" else png[:-12] + text + png[-12:]
    assert len(data) < 10_000
    out = decode_checked(data, max_pixels=MAX_PIXELS)
    assert out.size == (30, 30) and out.getpixel((3, 3)) == (1, 120, 3)


def test_hdf5_entries_holding_references_or_variable_length_arrays_are_quarantined_naming_the_entry(
        tmp_path: Path, tiny_model_dir) -> None:
    """An object reference or a variable-length array where the image's bytes should be: the reader
    and ingest's CPU stage quarantine it naming the entry and what it holds, the next image is
    prepared. A reference raised AttributeError (no `tobytes`), which no caller quarantines: the
    ingest task, training and `eval` stopped on it; a variable-length array was read as the 8 bytes
    of a pointer and refused as `format`."""
    import h5py

    from dermground.ingest.image_prep import prepare_images
    from dermground.platform.image_sources import hdf5_image_ref, load_image_bytes

    path = tmp_path / "train-image.hdf5"
    jpeg = _encode(Image.new("RGB", (50, 50), (200, 100, 50)), "JPEG")
    with h5py.File(path, "w") as h5:
        h5["good"] = np.void(jpeg)
        h5["reference"] = h5["good"].ref
        ragged = h5.create_dataset("ragged", shape=(1,), dtype=h5py.vlen_dtype(np.uint8))
        ragged[0] = np.frombuffer(jpeg, np.uint8)
    for name in ("reference", "ragged"):
        with pytest.raises(ValueError, match=rf"'{name}' in .*holds .*not .*encoded image bytes"):
            load_image_bytes(hdf5_image_ref(path, name))
    ids = ["reference", "ragged", "good"]
    batch = {"isic_id": np.array(ids, dtype=object),
             "image_ref": np.array([hdf5_image_ref(path, i) for i in ids], dtype=object),
             "part": np.zeros(3, dtype=np.int64)}
    errors = list(prepare_images(batch, str(tiny_model_dir))["error"])
    assert "'reference'" in errors[0] and "'ragged'" in errors[1] and errors[2] == ""


@pytest.mark.parametrize("layout", ["folder", "hdf5"])
def test_an_id_whose_image_is_named_in_the_other_unicode_normal_form_is_read(tmp_path: Path, layout: str) -> None:
    """The CSV spells an id composed (NFC, as typed), its image file or HDF5 entry is named decomposed
    (NFD, as macOS and zip archives from it write names), or the other way round: the same text on
    screen. The record was lost as 'no image file ...Läsion.jpg' next to a file shown with that name."""
    import csv
    import unicodedata

    import h5py

    from dermground.ingest.synth import generate_dataset
    from dermground.platform import isic_format as fmt
    from dermground.platform.records import LesionRecord, read_records

    data = tmp_path / "data"
    generate_dataset(data, patients=2, images=3, seed=5, size=64, layout=layout, progress=False, workers=1)
    with open(data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    renamed = {rows[0]["isic_id"]: "Läsion_1", rows[1]["isic_id"]: unicodedata.normalize("NFD", "Läsion_2")}
    for old, composed_or_not in renamed.items():
        on_disk = unicodedata.normalize("NFD" if composed_or_not == "Läsion_1" else "NFC", composed_or_not)
        if layout == "folder":
            (data / fmt.IMAGE_FOLDER / f"{old}.jpg").rename(data / fmt.IMAGE_FOLDER / f"{on_disk}.jpg")
        else:
            with h5py.File(data / fmt.HDF5_FILE, "a") as h5:
                h5.move(old, on_disk)
    for row in rows:
        row["isic_id"] = renamed.get(row["isic_id"], row["isic_id"])
    with open(data / fmt.METADATA_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    records = list(read_records(data, check_images=True))
    assert all(isinstance(r, LesionRecord) for r in records), records
    assert {r.isic_id for r in records} == {row["isic_id"] for row in rows}  # the ids as the CSV spells them
    assert all(r.load_image().size == (64, 64) for r in records)


def test_hdf5_entries_that_read_from_outside_the_image_group_are_quarantined_naming_the_key(tmp_path: Path) -> None:
    """An input train-image.hdf5 whose entries are an external link to another HDF5 file, a soft link
    to a dataset in a group of its own, a dataset stored in an outside raw file or a virtual dataset
    made the reader open whatever file they named (its bytes became the lesion's image). Each is now
    refused by its key and why, without the other file being read; a soft link to another image of
    the root group is still an image, and the other records are read."""
    import h5py

    from dermground.ingest.synth import generate_dataset
    from dermground.platform import isic_format as fmt
    from dermground.platform.image_sources import hdf5_image_ref, load_image_bytes
    from dermground.platform.records import LesionRecord, RejectedRecord, read_records

    data = tmp_path / "data"
    generate_dataset(data, patients=3, images=6, seed=12, size=64, layout="hdf5", progress=False, workers=1)
    outside_h5, outside_raw = tmp_path / "outside.hdf5", tmp_path / "outside.jpg"
    with h5py.File(data / fmt.HDF5_FILE, "a") as h5:
        ids = sorted(h5)
        jpeg = h5[ids[5]][()].tobytes()
        with h5py.File(outside_h5, "w") as other:
            other["secret"] = np.void(jpeg)
        outside_raw.write_bytes(jpeg)
        for name in ids[:5]:
            del h5[name]
        h5[ids[0]] = h5py.ExternalLink(str(outside_h5), "secret")
        h5.create_group("elsewhere")["image"] = np.void(jpeg)
        h5[ids[1]] = h5py.SoftLink("/elsewhere/image")
        h5.create_dataset(ids[2], shape=(len(jpeg),), dtype=np.uint8, external=[(str(outside_raw), 0, len(jpeg))])
        layout = h5py.VirtualLayout(shape=(len(jpeg),), dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(outside_h5), "raw", shape=(len(jpeg),))
        with h5py.File(outside_h5, "a") as other:
            other["raw"] = np.frombuffer(jpeg, np.uint8)
        h5.create_virtual_dataset(ids[3], layout)
        h5[ids[4]] = h5py.SoftLink(f"/{ids[5]}")  # the same image twice: inside the file, so read
    records = {r.isic_id: r for r in read_records(data, check_images=True)}
    refused = {key: (r.field, r.reason) for key, r in records.items() if isinstance(r, RejectedRecord)}
    assert set(refused) == set(ids[:4]), refused
    assert all(field == "image" and f"{key!r} in {fmt.HDF5_FILE}" in reason for key, (field, reason) in refused.items())
    assert "external link to 'secret' in" in refused[ids[0]][1] and "outside" in refused[ids[1]][1]
    assert "external storage" in refused[ids[2]][1] and "virtual dataset" in refused[ids[3]][1]
    assert isinstance(records[ids[4]], LesionRecord) and records[ids[4]].load_image().size == (64, 64)
    for name in ids[:4]:  # a stored reference to such an entry is refused alike (training, thumbnails)
        with pytest.raises(ValueError, match=f"'{name}' in "):
            load_image_bytes(hdf5_image_ref(data / fmt.HDF5_FILE, name))


def test_an_hdf5_entry_declaring_a_terabyte_is_quarantined_before_it_is_read(tmp_path: Path) -> None:
    """A chunked dataset that is declared 1 TiB and never written takes a few KB on disk: the reader
    allocated its declared size to read it, and the MemoryError stopped the whole read (ingest and
    `check_images`) at that record. It is refused by its key now, unread, and the rest is read."""
    import h5py

    from dermground.ingest.synth import generate_dataset
    from dermground.platform import isic_format as fmt
    from dermground.platform.records import LesionRecord, RejectedRecord, read_records

    data = tmp_path / "data"
    generate_dataset(data, patients=2, images=3, seed=12, size=64, layout="hdf5", progress=False, workers=1)
    with h5py.File(data / fmt.HDF5_FILE, "a") as h5:
        name = sorted(h5)[0]
        del h5[name]
        h5.create_dataset(name, shape=(2**40,), dtype=np.uint8, chunks=(2**20,), compression="gzip")
    assert (data / fmt.HDF5_FILE).stat().st_size < 100_000
    records = list(read_records(data, check_images=True))
    refused = [r for r in records if isinstance(r, RejectedRecord)]
    assert [(r.isic_id, r.field) for r in refused] == [(name, "image")]
    assert f"{name!r} in " in refused[0].reason and f"declares {2**40} bytes" in refused[0].reason
    assert sum(isinstance(r, LesionRecord) for r in records) == 2
