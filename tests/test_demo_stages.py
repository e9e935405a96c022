"""The demo's stage runner: resumes finished stages, reruns everything after a changed one."""

from __future__ import annotations

from pathlib import Path

from dermground.platform.demo import SMALL, Stage, plan_stages, run_stages
from dermground.platform.store.versions import READY, VersionMeta


def test_plan_covers_the_whole_pipeline(tmp_path: Path) -> None:
    names = [s.name for s in plan_stages(tmp_path, SMALL)]
    assert names == ["init-model", "synth", "pretrain", "train", "eval-predict", "ingest-tuned",
                     "ingest-untuned", "check", "check-untuned", "eval-retrieval"]
    assert {s.name for s in plan_stages(tmp_path, SMALL) if s.idempotent} == {
        "ingest-tuned", "ingest-untuned", "check", "check-untuned"}


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


def test_a_changed_command_reruns_the_stage_and_everything_after(tmp_path: Path) -> None:
    stale = tmp_path / "stale-folder"
    first = Stage("first", ["attributes"], [])
    second = Stage("second", ["attributes", "--json"], [], stale_when_upstream_changes=[stale])
    assert run_stages(tmp_path, [first, second], echo=lambda _: None) == ["first", "second"]
    stale.mkdir()
    changed = Stage("first", ["attributes", "--json"], [])  # a new demo setting for the first stage
    assert run_stages(tmp_path, [changed, second], echo=lambda _: None) == ["first", "second"]
    assert not stale.exists()
    (tmp_path / "demo" / "stages" / "first.json").write_text("not json")  # a torn marker is not trusted
    assert run_stages(tmp_path, [changed, second], echo=lambda _: None) == ["first", "second"]


def test_a_failing_stage_says_how_to_resume(tmp_path: Path, fresh_cli_settings) -> None:
    """`dermground --home H demo --small` said "run `make demo` again" when a stage failed: that runs the
    full demo on the default home, not this one. It names the demo as it was run."""
    from click.testing import CliRunner

    from dermground.platform.cli import cli

    home = tmp_path / "demo home"
    home.mkdir()
    (home / "models").mkdir()
    (home / "models" / "tiny-random").write_text("a file where the model goes: the first stage fails at its flags")
    failed = CliRunner().invoke(cli, ["--home", str(home), "demo", "--small", "--no-serve"])
    assert failed.exit_code == 1 and "demo stage 'init-model' failed" in failed.output, failed.output
    assert f"run `dermground --home '{home}' demo --small` again to resume" in failed.output, failed.output


def test_an_idempotent_stage_runs_every_time_without_making_later_stages_stale(tmp_path: Path) -> None:
    stale = tmp_path / "stale-folder"
    stages = [Stage("first", ["attributes"], []),
              Stage("repairable", ["attributes", "--json"], [], idempotent=True),
              Stage("last", ["attributes"], [], stale_when_upstream_changes=[stale])]
    assert run_stages(tmp_path, stages, echo=lambda _: None) == ["first", "repairable", "last"]
    stale.mkdir()
    assert run_stages(tmp_path, stages, echo=lambda _: None) == ["repairable"]
    assert stale.exists()
    (tmp_path / "demo" / "stages" / "repairable.json").unlink()  # it failed half-way last time
    assert run_stages(tmp_path, stages, echo=lambda _: None) == ["repairable", "last"]
    assert not stale.exists(), "after a repairable stage that had not finished, later results are stale"


def test_a_stale_demo_collection_is_removed_with_every_version(tmp_path: Path) -> None:
    """The demo removed only HOME/qdrant/demo_tuned when an upstream stage changed: after a
    `snapshot restore` (or `ingest --new-version`) the collection lived on as its new version, and
    the rebuilt ingest met the old model's vectors there ("created for other vectors", exit 1)."""
    from dataclasses import replace

    from dermground.platform.demo import TUNED
    from dermground.platform.store import CollectionSpec
    from dermground.platform.store.edge_versions import EdgeCollections

    planned = next(stage for stage in plan_stages(tmp_path, SMALL) if stage.name == "ingest-tuned")
    rebuild = replace(planned, args=["attributes", "--json"], outputs=[])  # its clean-up, a quick command
    cols = EdgeCollections(tmp_path / "qdrant")
    cols.create_version("other", VersionMeta(state=READY))  # another collection: kept
    cols.create_version(TUNED, VersionMeta(state=READY))  # what the stage built, then a restore (v2, live)
    restored = cols.create_version(TUNED, VersionMeta(state=READY))
    with cols.open_version(TUNED, restored) as store:
        store.ensure_collection(CollectionSpec(dim=4, fingerprint="fp-old", vector_names=("image",)))
    cols.switch(TUNED, restored)
    assert cols.live_version(TUNED) == "v2"
    upstream = Stage("upstream", ["attributes"], [])  # ran: e.g. a new adapter, so the collection is stale
    assert run_stages(tmp_path, [upstream, rebuild], echo=lambda _: None) == ["upstream", "ingest-tuned"]
    assert cols.names() == ["other"] and cols.live_version(TUNED) is None
