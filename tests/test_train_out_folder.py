"""Where a training run writes (`--out`): refused early when it cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli

# Read-only for root too (chmod does not bite as root): /sys refuses mkdir, /proc has no such folder.
UNWRITABLE = [p for p in (Path("/sys/dermground-adapter"), Path("/proc/dermground/adapter")) if p.parent.parent.is_dir()]


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("out", UNWRITABLE, ids=str)
def test_an_unwritable_out_is_refused_before_the_image_checks_naming_the_folder(command, out, tiny_model_dir,
                                                                               tmp_path):
    """`--out` on a read-only file system failed with a PermissionError/OSError traceback after the image
    checks (minutes on real data), or with 'No such file' and a hint to check --data. It is refused first,
    naming the folder and what to do."""
    data = tmp_path / "data"
    data.mkdir()  # never read: the folder check comes first
    result = CliRunner().invoke(cli, [command, "--data", str(data), "--base", str(tiny_model_dir), "--out", str(out),
                                      "--max-steps", "1"])
    assert result.exit_code == 1, result.output
    assert f"--out {out}: cannot write there" in result.output and "writable disk" in result.output
    assert "Traceback" not in result.output and "Check --data" not in result.output
    assert "check images" not in result.output  # no image was read


def test_the_check_leaves_no_folder_behind_and_refuses_a_file(tmp_path):
    from dermground.platform.out_folder import OutFolderError, require_writable_folder

    require_writable_folder(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []  # the folders it made to probe are gone again
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutFolderError, match="is a file"):
        require_writable_folder(tmp_path / "file")
