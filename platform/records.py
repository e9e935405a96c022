"""Lesion records: the patient split and the streaming reader of the ISIC 2024 / SLICE-3D format.

`read_records` walks `train-metadata.csv` row by row and yields a `LesionRecord` per good row and
a `RejectedRecord` (id, field, reason) per bad one; it never holds more than one image in memory.
Images are referenced, not loaded: `record.image_ref` is read through
dermground.platform.image_sources and decoded by the image gate (dermground.platform.images). In
the folder layout an isic_id must be a plain file name whose image lies inside the image folder:
nothing outside the data folder is read. Which metadata a record keeps is the metadata-field
registry's (dermground.platform.metadata_fields).

The split is by patient and deterministic: a patient's side comes from sha256 of its id (never
Python's salted `hash`), so every process, machine and run agrees, and all lesions of one patient
land on the same side.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from dermground.platform import isic_format as fmt
from dermground.platform.attributes import get_attribute
from dermground.platform.image_sources import (
    OutsideImageLinkError,
    hdf5_image_ref,
    image_entry_name,
    load_image_bytes,
    open_hdf5,
)
from dermground.platform.images import DEFAULT_MAX_PIXELS, INPUT_ERRORS, decode_image, rejection_reason
from dermground.platform.metadata_fields import METADATA_FIELDS, MetadataField
from dermground.platform.names import InvalidNameError, check_plain_file_name, unicode_spellings
from dermground.platform.next_step import next_command

Split = Literal["train", "test"]
DEFAULT_TEST_FRACTION = 0.3  # the paper's split is about 70/30 by images
_SPLIT_SALT = "dermground-split-v1"
# UTF-8 with or without the byte-order mark Excel's "CSV UTF-8" writes (plain utf-8 would read it
# as part of the first column's name, "\ufeffisic_id", and report isic_id missing).
CSV_ENCODING = "utf-8-sig"
DUPLICATE_REASON = "duplicate isic_id: an earlier row has the same id"


def patient_unit_interval(patient_id: str) -> float:
    """A stable pseudo-random number in [0, 1) for a patient id."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{patient_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(patient_id: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> Split:
    """`"test"` for about `test_fraction` of patients, `"train"` for the rest."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction}")
    return "test" if patient_unit_interval(patient_id) < test_fraction else "train"


class MissingColumnsError(ValueError):
    """The metadata CSV lacks columns the reader needs."""

    def __init__(self, path: Path, missing: list[str], hint: str = "") -> None:
        self.missing = missing
        super().__init__(f"{path} lacks required column(s): {', '.join(missing)}; "
                         f"it must follow the ISIC 2024 train-metadata.csv format{hint}")


@dataclass(frozen=True)
class LesionRecord:
    """One lesion: ids, split, the 16 attributes (registry names), metadata, image reference."""

    isic_id: str
    patient_id: str
    split: Split
    attributes: dict[str, float]
    metadata: dict[str, str | int | float | None]
    image_ref: str  # "hdf5:<abs path>#<isic_id>" or an absolute .jpg path

    def image_bytes(self) -> bytes:
        """The encoded image (JPEG) bytes."""
        return load_image_bytes(self.image_ref)

    def load_image(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The decoded RGB image (the image gate; ImageRejected names the rule it broke)."""
        return decode_image(self.image_bytes(), max_pixels=max_pixels)


@dataclass(frozen=True)
class RejectedRecord:
    """A row that cannot be used, with the field at fault and why."""

    isic_id: str
    field: str
    reason: str


class UnreadableImageFileError(ValueError):
    """The data folder's HDF5 image file cannot be opened at all (truncated, not HDF5)."""


def _open_image_file(path: Path):  # noqa: ANN202 - an h5py.File
    try:
        return open_hdf5(path)
    except OSError as exc:  # h5py's "truncated file", "file signature not found", ...
        raise UnreadableImageFileError(f"{path} cannot be opened as HDF5 ({exc}); it may be truncated or still being "
                                       "copied: copy it again "
                                       f"(or regenerate it with `{next_command('synth --out DIR')}`)") from None


def detect_layout(data_dir: Path) -> str:
    """"hdf5" when `train-image.hdf5` exists, else "folder" when `train-image/image/` does."""
    data_dir = Path(data_dir)
    if (data_dir / fmt.HDF5_FILE).is_file():
        return "hdf5"
    if (data_dir / fmt.IMAGE_FOLDER).is_dir():
        return "folder"
    raise FileNotFoundError(f"{data_dir} has neither {fmt.HDF5_FILE} nor {fmt.IMAGE_FOLDER}/; "
                            f"point at an ISIC 2024 data folder or run `{next_command('synth --out DIR')}`")


def _csv_path(data_dir: Path) -> Path:
    path = Path(data_dir) / fmt.METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; point at an ISIC 2024 data folder or run `{next_command('synth --out DIR')}`")
    return path


def check_columns(header: Iterable[str], path: Path = Path(fmt.METADATA_FILE)) -> None:
    """Raise MissingColumnsError naming every required column absent from `header`."""
    names = list(header)
    missing = [c for c in fmt.REQUIRED_COLUMNS if c not in set(names)]
    if missing:
        raise MissingColumnsError(path, missing, _separator_hint(names))


def _separator_hint(names: list[str]) -> str:
    """Why every column is missing when the file is separated by something else than commas (Excel
    in many locales saves ';'), else ""."""
    if len(names) == 1:
        for separator, called in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if names[0].count(separator) >= 2:
                return (f" (its header is one column holding {called}: the file is separated by {called}, "
                        "not commas; save it as comma-separated CSV)")
    return ""


# How spreadsheets, R and pandas write a missing number ("NA" is R's write.csv): an absent value.
_MISSING_NUMBER_SPELLINGS = frozenset({"na", "n/a", "#n/a", "<na>", "null", "none", "nan", "-nan"})


def _metadata_value(field: MetadataField, text: str | None) -> str | int | float | None:
    if text is None or text.strip() == "":
        return None
    if field.numeric and text.strip().lower() in _MISSING_NUMBER_SPELLINGS:
        return None
    if field.numeric:
        try:
            number = csv_number(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else number
    return text


def csv_number(text: str) -> float:
    """The number a CSV cell holds, as spreadsheets, pandas and DuckDB read it: Python's float() also
    reads '1_5' as 15 (digit grouping in source code), where they see text; ValueError for that."""
    if "_" in text:
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def _parse_attributes(row: dict[str, str]) -> tuple[dict[str, float], RejectedRecord | None]:
    values: dict[str, float] = {}
    for column, name in fmt.ATTRIBUTE_COLUMNS.items():
        text = (row.get(column) or "").strip()
        try:
            value = csv_number(text)
        except ValueError:
            reason = "missing value" if not text else f"not a number: {text[:40]!r}"
            return values, RejectedRecord(row.get("isic_id", ""), column, reason)
        if not math.isfinite(value):
            return values, RejectedRecord(row.get("isic_id", ""), column, f"not finite: {text!r}")
        attribute = get_attribute(name)
        if not attribute.low <= value <= attribute.high:
            # A value no lesion can have (a negative area) is an error in the data, not a truth to learn.
            return values, RejectedRecord(row.get("isic_id", ""), column,
                                          f"out of range: {value:g} is outside the plausible range "
                                          f"[{attribute.low:g}, {attribute.high:g}] of {name}")
        values[name] = value
    return values, None


def _implausible_metadata(isic_id: str, metadata: dict[str, str | int | float | None]) -> RejectedRecord | None:
    """The rejection of a metadata number no patient can have (a negative age), else None; an
    absent value (empty, NaN) is fine."""
    for field in METADATA_FIELDS:
        value = metadata[field.name]
        if field.plausible is None or not isinstance(value, (int, float)) or math.isnan(value):
            continue
        low, high = field.plausible
        if not low <= value <= high:
            return RejectedRecord(isic_id, field.name, f"out of range: {value:g} is outside the plausible range "
                                                       f"[{low:g}, {high:g}] of {field.name}")
    return None


def read_records(data_dir: Path, split: str | None = None,
                 test_fraction: float = DEFAULT_TEST_FRACTION, check_images: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[LesionRecord | RejectedRecord]:
    """Stream the data set's rows as records or rejections, optionally of one split only.

    Image presence is always checked; `check_images=True` also decodes each image (slower).
    Rejected rows are yielded whatever `split` is when their split cannot be known.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir).resolve()
    csv_path = _csv_path(data_dir)
    layout = detect_layout(data_dir)
    h5 = _open_image_file(data_dir / fmt.HDF5_FILE) if layout == "hdf5" else None
    image_dir = data_dir / fmt.IMAGE_FOLDER
    # Bytes that are not UTF-8 (a CSV saved as Latin-1) come through as escapes and reject their row
    # by name, instead of a UnicodeDecodeError that would stop the whole file at that row.
    with open(csv_path, newline="", encoding=CSV_ENCODING, errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        check_columns(reader.fieldnames or [], csv_path)
        for line, last_line, row in _csv_rows(reader, csv_path):
            isic_id = (row.get("isic_id") or "").strip()
            undecodable = _undecodable_column(row)
            if undecodable is not None:
                yield RejectedRecord(_escaped(isic_id), undecodable,
                                     f"not UTF-8 text ({_escaped(row[undecodable])[:60]!r}); save the CSV as UTF-8")
                continue
            if last_line > line and (None in row or None in row.values()):
                # A quoted field over several lines is fine; one that leaves the row with the wrong
                # number of columns is a quote never closed, which swallowed the rows after it.
                column = next((c for c, v in row.items() if c is not None and isinstance(v, str) and "\n" in v), "row")
                yield RejectedRecord(_escaped(isic_id), _escaped(column),
                                     f"CSV lines {line}-{last_line} were read as this one row: a quote in {column} "
                                     f"is never closed, so the {last_line - line} line(s) after it became part of "
                                     "it; close the quote and rerun")
                continue
            if not isic_id:
                yield RejectedRecord("", "isic_id", f"missing isic_id on CSV line {line}")
                continue
            try:  # an id names a file (folder layout) or a dataset (HDF5, where "/" would walk groups)
                check_plain_file_name(isic_id, "isic_id")
            except InvalidNameError as exc:
                yield RejectedRecord(isic_id, "isic_id", str(exc))
                continue
            patient_id = (row.get("patient_id") or "").strip()
            if not patient_id:
                yield RejectedRecord(isic_id, "patient_id", "missing patient_id")
                continue
            side = assign_split(patient_id, test_fraction)
            if split is not None and side != split:
                continue
            attributes, rejected = _parse_attributes(row)
            if rejected is not None:
                yield rejected
                continue
            metadata = {f.name: _metadata_value(f, row.get(f.name)) for f in METADATA_FIELDS}
            rejected = _implausible_metadata(isic_id, metadata)
            if rejected is not None:
                yield rejected
                continue
            if h5 is not None:
                try:  # `name in h5` would already open the file an external link names
                    entry = next((name for name in unicode_spellings(isic_id)
                                  if image_entry_name(h5, name, fmt.HDF5_FILE) is not None), None)
                except OutsideImageLinkError as exc:
                    yield RejectedRecord(isic_id, "image", str(exc))
                    continue
                if entry is None:
                    yield RejectedRecord(isic_id, "image", f"no image {isic_id!r} in {fmt.HDF5_FILE}")
                    continue
                image_ref = hdf5_image_ref(data_dir / fmt.HDF5_FILE, entry)
            else:
                try:
                    path = _folder_image(image_dir, isic_id)
                    present = path.is_file()
                except InvalidNameError as exc:
                    yield RejectedRecord(isic_id, "isic_id", str(exc))
                    continue
                except OSError as exc:  # a name the file system cannot hold (over 255 bytes), a link loop
                    yield RejectedRecord(isic_id, "isic_id", f"its image file {isic_id}.jpg cannot be looked up in "
                                                             f"{image_dir}: {exc.strerror or exc}")
                    continue
                if not present:
                    yield RejectedRecord(isic_id, "image", f"no image file {path}")
                    continue
                image_ref = str(path)
            if check_images:
                try:
                    decode_image(load_image_bytes(image_ref), max_pixels=max_pixels)
                except INPUT_ERRORS as exc:  # the same refusals as ingest's CPU stage
                    yield RejectedRecord(isic_id, "image", rejection_reason(exc))
                    continue
            yield LesionRecord(isic_id, patient_id, side, attributes, metadata, image_ref)


class MalformedCsvError(ValueError):
    """The metadata CSV cannot be parsed on from some line (the csv module gave up)."""


def _csv_rows(reader: csv.DictReader, path: Path) -> Iterator[tuple[int, int, dict[str | None, object]]]:
    """(first line, last line, row) of each data row; MalformedCsvError naming the line where the
    csv module gives up (a field over its size limit: a quote never closed swallowed the rest)."""
    last = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedCsvError(_malformed_message(path, last + 1, exc)) from None
        yield last + 1, reader.line_num, row
        last = reader.line_num


def _malformed_message(path: Path, line: int, exc: csv.Error) -> str:
    return (f"{path}: from line {line}: {exc}; a quote that is never closed makes the rest of the file one field: "
            f"close it (the rows before line {line} were read)")


def _undecodable_column(row: dict[str | None, object]) -> str | None:
    """The first column whose value holds bytes that were not UTF-8 (surrogate escapes), else None."""
    for column, value in row.items():
        if column is not None and isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return _escaped(column)
    return None


def _escaped(text: str) -> str:
    """`text` with undecodable bytes as \\xNN, so that it can be printed and stored (a catalog row)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unique_records(stream: Iterable[LesionRecord | RejectedRecord]) -> Iterator[LesionRecord | RejectedRecord]:
    """Turn a repeated isic_id into a rejection (field isic_id): one id, one point, one catalog row,
    one evaluated image."""
    seen: set[str] = set()
    for item in stream:
        if isinstance(item, LesionRecord):
            if item.isic_id in seen:
                yield RejectedRecord(item.isic_id, "isic_id", DUPLICATE_REASON)
                continue
            seen.add(item.isic_id)
        yield item


def _folder_image(image_dir: Path, isic_id: str) -> Path:
    """The image file of a plain-file-name id in the folder layout (under the id's other Unicode
    normal form when only that exists); InvalidNameError when that file (through a link) lies
    outside the image folder."""
    candidates = [image_dir / f"{name}.jpg" for name in unicode_spellings(isic_id)]
    path = next((c for c in candidates if c.exists()), candidates[0])
    if path.exists() and not path.resolve().is_relative_to(image_dir.resolve()):
        raise InvalidNameError(f"isic_id {isic_id!r}: its image {path} links outside the image folder {image_dir}")
    return path


def count_records(data_dir: Path) -> int:
    """Number of data rows in the metadata CSV (cheap: no parsing of values, no images)."""
    path = _csv_path(data_dir)
    rows, last = 0, 0
    with open(path, newline="", encoding=CSV_ENCODING, errors="surrogateescape") as handle:
        reader = csv.reader(handle)  # not DictReader: 40% faster on the 400k ISIC rows
        try:
            for _ in reader:
                rows, last = rows + 1, reader.line_num
        except csv.Error as exc:
            raise MalformedCsvError(_malformed_message(path, last + 1, exc)) from None
    return max(0, rows - 1)
