"""The demo's stage runner: resumes finished stages, reruns everything after a changed one."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermground.platform.demo import SMALL, Stage, plan_stages, run_stages


def test_plan_covers_the_whole_pipeline(tmp_path: Path) -> None:
    names = [s.name for s in plan_stages(tmp_path, SMALL)]
    assert names == ["init-model", "synth", "pretrain", "train", "eval-predict", "ingest-tuned",
                     "ingest-untuned", "check", "eval-retrieval"]


def test_second_run_reuses_and_upstream_change_reruns_downstream(tmp_path: Path) -> None:
    stale = tmp_path / "stale-folder"
    stages = [Stage("attributes", ["attributes", "--json"], []),
              Stage("again", ["attributes"], [], stale_when_upstream_changes=[stale])]
    logs: list[str] = []
    assert run_stages(tmp_path, stages, echo=logs.append) == ["attributes", "again"]
    assert run_stages(tmp_path, stages, echo=logs.append) == []
    assert sum("done earlier" in line for line in logs) == 2
    stale.mkdir()
    (tmp_path / "demo" / "stages" / "attributes.json").unlink()  # as if the first stage never finished
    assert run_stages(tmp_path, stages, echo=logs.append) == ["attributes", "again"]
    assert not stale.exists(), "a stage rerun after an upstream change starts from scratch"


def test_a_failing_stage_says_how_to_resume(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="run `make demo` again"):
        run_stages(tmp_path, [Stage("bad", ["synth", "--out", str(tmp_path / "d"), "--images", "0"])],
                   echo=lambda _: None)
