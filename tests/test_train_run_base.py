"""A run folder's record of its base weights: written whole, and a damaged one named with the next step."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("content", ["", '{"base_weights_di', "[]"], ids=["empty", "cut-short", "not-an-object"])
def test_an_unreadable_run_base_record_is_named_with_the_next_step(content, tiny_model_dir, tmp_path):
    """The record was written in place: a full disk or a kill mid-write left it empty or cut short, and every
    re-run of the command then stopped at json's 'Expecting value: line 1 column 1 (char 0)', naming no file
    (the CLI added 'Check --data / --base / --out'). Now the error names the record and what to delete."""
    from dermground.platform.model.base_weights import base_weights_digest
    from dermground.platform.model.loading import BackboneError
    from dermground.train.run_base import RUN_BASE_FILE, require_same_base

    run = tmp_path / "checkpoints" / "run-0123456789ab"
    run.mkdir(parents=True)
    record = run / RUN_BASE_FILE
    record.write_text(content)
    with pytest.raises(BackboneError) as refused:
        require_same_base(run, tiny_model_dir)
    message = str(refused.value)
    assert message.startswith(f"{record}: the record of the base weights this run started on cannot be read")
    assert f"delete {record}" in message and f"delete {run} to start this run over" in message
    record.unlink()  # the next step it names
    require_same_base(run, tiny_model_dir)
    assert json.loads(record.read_text())["base_weights_digest"] == base_weights_digest(tiny_model_dir)
    assert sorted(p.name for p in run.iterdir()) == [RUN_BASE_FILE]  # written through a temporary file, renamed
