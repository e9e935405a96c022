"""Where a lesion's image bytes come from: image references and the per-process HDF5 handle cache.

A reference is `"hdf5:<abs path>#<isic_id>"` (one dataset of the ISIC `train-image.hdf5` holding
the JPEG bytes) or an absolute image file path. Ingest stores it in the payload (`image_ref`);
search, the API's thumbnails, training and evaluation read images back through it. Decoding is the
image gate's work (dermground.platform.images).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

HDF5_PREFIX = "hdf5:"

# Open HDF5 files are cached per process: opening one per image costs far more than reading it.
# The pid check drops handles inherited through fork, which HDF5 does not support sharing.
_open_files: dict[str, Any] = {}
_open_pid: int | None = None
# Threads share the cache (the API's worker threads, search's candidate readers): one opens a file at a time.
# A child made by fork gets a fresh lock (the parent's might have been held by another thread).
_open_lock = threading.Lock()


def _new_lock_in_child() -> None:
    global _open_lock
    _open_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def hdf5_image_ref(path: Path, isic_id: str) -> str:
    """The reference of the dataset `isic_id` in the HDF5 file at `path` (an absolute path)."""
    return f"{HDF5_PREFIX}{path}#{isic_id}"


def open_hdf5(path: Path) -> Any:
    """The process's open read-only handle (an h5py.File) of the HDF5 file at `path`."""
    global _open_pid
    import h5py

    with _open_lock:
        if _open_pid != os.getpid():
            _open_files.clear()
            _open_pid = os.getpid()
        # Keyed by inode and mtime too: a data set regenerated at the same path must not be served
        # from the stale handle of the old file.
        stat = path.stat()
        key = f"{path}|{stat.st_ino}|{stat.st_mtime_ns}"
        if key not in _open_files:
            for stale in [k for k in _open_files if k.startswith(f"{path}|")]:
                _open_files.pop(stale).close()
            _open_files[key] = h5py.File(path, "r")
        return _open_files[key]


# The largest HDF5 image entry read: above an uncompressed 16-bit RGBA image of the default 40 MP
# pixel limit (320 MB); ISIC's encoded crops are tens of KB.
MAX_IMAGE_ENTRY_BYTES = 512 * 2**20
# HDF5's own limit on soft links followed in one lookup (H5L's default nlinks).
_MAX_LINK_HOPS = 16


class OutsideImageLinkError(ValueError):
    """An HDF5 image entry that is a link leading out of the file's root group of images (another
    file, a group inside), or a dataset whose bytes live in other files."""


def image_entry_name(h5: Any, name: str, path: Path | str) -> str | None:
    """The root-group dataset name holding the image `name` of the open HDF5 file `h5` (at `path`):
    `name` itself, or the root entry a soft link in the root leads to; None when there is no such link.

    Checked link by link without following one: `name in h5` already opens the file an external
    link names. OutsideImageLinkError for an external link (anywhere on the way), a soft link out of
    the root group or in a chain of more than 16, and a dataset whose bytes live elsewhere."""
    from h5py import h5l

    links, current = h5.id.links, name
    for _ in range(_MAX_LINK_HOPS):
        key = current.encode("utf-8", "surrogateescape")
        if not links.exists(key):
            return None
        kind = links.get_info(key).type
        if kind == h5l.TYPE_HARD:
            _check_stored_inside(h5[current], name, path)
            return current
        if kind == h5l.TYPE_EXTERNAL:
            file_name, target = (part.decode("utf-8", "replace") for part in links.get_val(key))
            raise OutsideImageLinkError(f"{name!r} in {path} is an external link to {target!r} in {file_name}: an image "
                                        "file's entries must hold their own image bytes; copy the image into it")
        if kind != h5l.TYPE_SOFT:
            raise OutsideImageLinkError(f"{name!r} in {path} is a user-defined HDF5 link (type {kind}), not a dataset "
                                        "of image bytes")
        target = links.get_val(key).decode("utf-8", "replace")
        inside = target[1:] if target.startswith("/") else target
        if not inside or "/" in inside or inside in (".", ".."):
            raise OutsideImageLinkError(f"{name!r} in {path} is a soft link to {target!r}, outside the file's root group "
                                        "of images: store the image under its own name at the root")
        current = inside
    raise OutsideImageLinkError(f"{name!r} in {path} starts a chain of more than {_MAX_LINK_HOPS} soft links")


def _check_stored_inside(entry: Any, name: str, path: Path | str) -> None:
    """OutsideImageLinkError when a dataset's bytes are read from other files (external storage, a
    virtual dataset): reading it would open whatever files it names."""
    if not hasattr(entry, "id") or not hasattr(entry, "is_virtual"):
        return  # a group: refused by its reader as holding no bytes
    if entry.is_virtual or entry.id.get_create_plist().get_external_count() > 0:
        kind = "a virtual dataset" if entry.is_virtual else "a dataset with external storage"
        raise OutsideImageLinkError(f"{name!r} in {path} is {kind}: its bytes are read from other files; an image "
                                    "file's entries must hold their own image bytes")


def _split_hdf5_ref(location: str) -> tuple[str, str]:
    """(file path, dataset name) of `<path>#<isic_id>`. Either side may hold a '#' itself (an id is
    any plain file name): the split is at the '#' whose left side is an existing file, else at the
    last one (then the missing file is what the error names)."""
    path, _, name = location.rpartition("#")
    if location.count("#") > 1 and not Path(path).is_file():
        for i in (i for i, char in enumerate(location) if char == "#"):
            if Path(location[:i]).is_file():
                return location[:i], location[i + 1:]
    return path, name


def load_image_bytes(image_ref: str) -> bytes:
    """The encoded bytes an image reference points at (HDF5 dataset or image file)."""
    if image_ref.startswith(HDF5_PREFIX):
        path, isic_id = _split_hdf5_ref(image_ref[len(HDF5_PREFIX):])
        h5 = open_hdf5(Path(path))
        stored = image_entry_name(h5, isic_id, path)
        if stored is None:
            raise KeyError(f"no image {isic_id!r} in {path}")
        entry = h5[stored]
        # A group or an empty (null-shaped) dataset holds no bytes: refused like a bad image, naming
        # the entry, instead of h5py's TypeError/AttributeError, which no caller quarantines.
        if not isinstance(getattr(entry, "shape", None), tuple):
            raise ValueError(f"{isic_id!r} in {path} is {'a group' if hasattr(entry, 'keys') else 'empty'}, "
                             "not a dataset of encoded image bytes")
        # The dataset's declared size is read in one piece: a file of a few KB can declare a chunked,
        # never-written dataset of a terabyte (MemoryError, which stopped the whole read) or of gigabytes
        # (allocated and inflated from fill values). Refused before a byte is read.
        declared = entry.size * entry.dtype.itemsize
        if declared > MAX_IMAGE_ENTRY_BYTES:
            raise ValueError(f"{isic_id!r} in {path} declares {declared} bytes, more than any image file the gate takes "
                             f"({MAX_IMAGE_ENTRY_BYTES}): not a dataset of encoded image bytes")
        value = entry[()]
        # Real files store scalar bytes strings; ours store opaque (np.void); some use uint8 arrays.
        if isinstance(value, bytes):
            return value
        if isinstance(value, np.generic | np.ndarray) and value.dtype.kind != "O":
            return value.tobytes()
        # An object reference, a variable-length array: their tobytes() is missing or a pointer's bytes.
        raise ValueError(f"{isic_id!r} in {path} holds {_held(entry)}, not a dataset of encoded image bytes")
    return Path(image_ref).read_bytes()


def _held(entry: Any) -> str:
    """What an HDF5 dataset holds, in words, for a refusal."""
    import h5py

    dtype = entry.dtype
    if h5py.check_dtype(ref=dtype) is not None:
        return "object references"
    if h5py.check_dtype(vlen=dtype) is not None:
        return f"variable-length values (dtype {h5py.check_dtype(vlen=dtype)})"
    return f"values of dtype {dtype}"
