"""The base weights digest is read once per unchanged file; older adapters are checked by their base_fingerprint."""

from __future__ import annotations

import json
import logging
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


def _old_adapter(make_tiny_adapter, model_dir, out, base_fingerprint: str) -> object:
    """An adapter as an older dermground saved it: base_fingerprint and prompt_version, no base_weights_digest."""
    from dermground.platform.model.prompts import PROMPT_VERSION

    adapter = make_tiny_adapter(model_dir, out)
    (adapter / "dermground_adapter.json").write_text(json.dumps(
        {"base_fingerprint": base_fingerprint, "prompt_version": PROMPT_VERSION, "base_model_dir": str(model_dir)}))
    return adapter


def test_an_old_adapter_is_checked_by_its_base_fingerprint(tiny_model_dir, make_tiny_adapter, tmp_path, caplog):
    """An adapter saved before base_weights_digest existed records base_fingerprint (a hash of the base's files).
    It was warned about as unchecked even on the very files it was trained on, and the warning was the same on
    another base. Now the same files check it (no warning); other files get a warning saying they differ."""
    from dermground.platform.model.base_weights import warn_if_unrecorded
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.model.tiny import save_tiny_model

    adapter = _old_adapter(make_tiny_adapter, tiny_model_dir, tmp_path / "adapter", fingerprint(tiny_model_dir))
    with caplog.at_level(logging.WARNING, logger="dermground.platform.model.base_weights"):
        assert warn_if_unrecorded(adapter, tiny_model_dir) is False
    assert caplog.records == []
    other = save_tiny_model(tmp_path / "other", seed=1, preset="tiny", image_size=112)  # same shapes, other weights
    with caplog.at_level(logging.WARNING, logger="dermground.platform.model.base_weights"):
        assert warn_if_unrecorded(adapter, other) is True
    (record,) = caplog.records
    assert "base_fingerprint" in record.getMessage() and "does not match the files of" in record.getMessage()
    assert f"names base_model_dir {tiny_model_dir}" in record.getMessage()
    assert "train the adapter again" in record.getMessage()


def test_model_check_says_an_old_adapter_was_checked_by_its_base_fingerprint(tiny_model_dir, make_tiny_adapter,
                                                                             tmp_path, fresh_cli_settings):
    from click.testing import CliRunner

    from dermground.platform.cli import cli
    from dermground.platform.model.fingerprint import fingerprint

    adapter = _old_adapter(make_tiny_adapter, tiny_model_dir, tmp_path / "adapter", fingerprint(tiny_model_dir))
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(tiny_model_dir),
                                      "--adapter", str(adapter)])
    assert result.exit_code == 0, result.output
    assert f"adapter      {adapter} fits (shapes, and the base" in result.output
    stale = _old_adapter(make_tiny_adapter, tiny_model_dir, tmp_path / "stale", "0" * 16)
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(tiny_model_dir),
                                      "--adapter", str(stale)])
    assert result.exit_code == 0, result.output
    assert f"{stale} fits by its shapes" in result.output and "does not match the files of" in result.output
