"""The base weights digest is read once per unchanged file; older adapters are checked by their base_fingerprint."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file


def _write_weights(path, value: float) -> None:
    save_file({"model.embed_tokens.weight": torch.full((4, 8), value), "model.norm.weight": torch.full((8,), value)},
              str(path))


def test_the_weights_digest_reads_a_file_once_while_its_size_mtime_and_inode_stay(tmp_path):
    """One training run computed its base's digest three times, reading the same files again each time
    (the run's record, the adapter's metadata, the new adapter's check). Files whose (path, size, mtime,
    inode) did not change are not read again; a rewritten or replaced file is."""
    from dermground.platform.model.base_weights import weights_digest

    file = tmp_path / "model.safetensors"
    _write_weights(file, 1.0)
    first = weights_digest([file])
    stat = file.stat()
    # Other values under the same size, mtime and inode: only a digest that reads the file again sees them.
    with open(file, "r+b") as handle:
        _write_weights(tmp_path / "other.safetensors", 2.0)
        handle.write((tmp_path / "other.safetensors").read_bytes())
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (file.stat().st_size, file.stat().st_ino) == (stat.st_size, stat.st_ino)
    assert weights_digest([file]) == first  # not read again
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten: a new mtime
    rewritten = weights_digest([file])
    assert rewritten != first
    os.replace(tmp_path / "other.safetensors", file)  # another file (inode) under the name, same size
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_digest([file]) == rewritten  # same values (2.0), read from the new file
    _write_weights(file, 1.0)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert weights_digest([file]) == first  # the first values again: the digest follows the values
