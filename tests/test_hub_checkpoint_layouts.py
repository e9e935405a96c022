"""Checkpoint folders as users have them beside the hub fixture's clean layout: templates kept where newer
transformers keep them, stale files beside the weights, and other leftovers of downloads and re-saves.

The folders are the session's hub-like checkpoint (`hub_checkpoints`) with every file linked, not copied,
except the one a test changes.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.model.hub_layout import QWEN_VL_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def hub_dir(hub_checkpoints):
    return hub_checkpoints("qwen2_vl")


def linked_copy(source, out, *changed):
    """`out` with a link to every file of `source`, except `changed` (copied, for the test to edit)."""
    import shutil

    out.mkdir()
    for item in source.iterdir():
        if item.name in changed:
            shutil.copy(item, out / item.name)
        else:
            (out / item.name).symlink_to(item)
    return out


def test_a_chat_template_kept_only_in_chat_template_json_stays_with_the_processor(hub_dir, tmp_path):
    # Before: the tokenizer does not read chat_template.json, so the processor had no template and a
    # processor saved from it (pretrain's new model folder) had none either; model check said nothing.
    from dermground.platform.model.loading import load_processor

    folder = linked_copy(hub_dir, tmp_path / "newer-layout", "tokenizer_config.json")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    processor = load_processor(folder)
    assert processor.chat_template == QWEN_VL_CHAT_TEMPLATE
    processor.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "chat_template.jinja").read_text() == QWEN_VL_CHAT_TEMPLATE
    check = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "model", "check", str(folder)])
    assert check.exit_code == 0, check.output
    assert "template     chat_template.json, the same prompt dermground writes" in check.output
