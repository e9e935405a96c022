"""`dermground snapshot create|list|restore` on the embedded store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.cli import cli
from dermground.platform.settings import load_settings
from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, open_store, point_id


# The CLI keeps the settings it loaded for the process: each test's --home must be read afresh.
pytestmark = pytest.mark.usefixtures("fresh_cli_settings")


def _fill(home: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    ids = []
    with open_store(load_settings(home=home), "snap") as store:
        store.ensure_collection(CollectionSpec(dim=8, fingerprint="fp-snap"))
        points = []
        for i in range(n):
            record = {"isic_id": f"ISIC_{i:07d}", "patient_id": f"IP_{i % 3}", "split": "train",
                      "image_ref": f"/nowhere/{i}.jpg", **{a.name: float(a.low + 1) for a in ATTRIBUTES}}
            vectors = {name: rng.normal(size=8).astype(np.float32) for name in DEFAULT_VECTOR_NAMES}
            points.append(StorePoint(point_id(record["isic_id"]), vectors, build_payload(record, "fp-snap")))
            ids.append(point_id(record["isic_id"]))
        store.upsert(points)
    return ids


def test_create_list_restore_roundtrip(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = _fill(home, 12)
    runner = CliRunner()
    assert "no snapshots" in runner.invoke(cli, ["--home", str(home), "snapshot", "list", "--collection", "snap"]).output
    created = runner.invoke(cli, ["--home", str(home), "snapshot", "create", "--collection", "snap"])
    assert created.exit_code == 0, created.output
    listed = runner.invoke(cli, ["--home", str(home), "snapshot", "list", "--collection", "snap"])
    (tar,) = [line for line in listed.output.splitlines() if line.endswith(".tar")]

    with open_store(load_settings(home=home), "snap") as store:
        store.delete(ids[:5])
        assert store.count() == 7

    restored = runner.invoke(cli, ["--home", str(home), "snapshot", "restore", tar, "--collection", "snap", "--yes"])
    assert restored.exit_code == 0, restored.output
    assert "12 points" in restored.output
    with open_store(load_settings(home=home), "snap") as store:
        assert sorted(store.all_ids()) == sorted(ids)


def test_restore_of_a_missing_file_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "snapshot", "restore", str(tmp_path / "x.tar"), "--yes"])
    assert result.exit_code != 0 and "snapshot list" in result.output


def test_create_of_a_malformed_version_says_what_a_version_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _fill(home, 2)
    result = CliRunner().invoke(cli, ["--home", str(home), "snapshot", "create", "--collection", "snap",
                                      "--version", "latest"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "a version is v<number>" in result.output
    assert not (home / "snapshots" / "snap").exists() or not any((home / "snapshots" / "snap").iterdir())


def test_a_restore_left_at_its_prompt_leaves_no_unpacked_copy(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _fill(home, 3)
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "snapshot", "create", "--collection", "snap"]).exit_code == 0
    (tar,) = (home / "snapshots" / "snap").glob("*.tar")
    for answer in ("n\n", None):  # "no", and no answer at all (end of input, as Ctrl-C): both abort
        result = runner.invoke(cli, ["--home", str(home), "snapshot", "restore", str(tar), "--collection", "snap"],
                               input=answer)
        assert result.exit_code == 1 and "Aborted" in result.output, result.output
        assert list((home / "snapshots" / ".staging").iterdir()) == []  # the unpacked snapshot is gone


def test_a_restored_version_is_indexed_like_an_ingested_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dermground.platform.store.indexing import build_index_if_large

    monkeypatch.setenv("DERMGROUND_STORE_INDEX_MIN_POINTS", "40")
    home = tmp_path / "home"
    _fill(home, 64)
    with open_store(load_settings(home=home), "snap") as store:
        assert build_index_if_large(store, 40).built and store.indexed_points() == 64  # as ingest leaves it
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "snapshot", "create", "--collection", "snap"]).exit_code == 0
    (tar,) = (home / "snapshots" / "snap").glob("*.tar")
    restored = runner.invoke(cli, ["--home", str(home), "snapshot", "restore", str(tar), "--collection", "snap",
                                   "--yes"])
    assert restored.exit_code == 0, restored.output
    with open_store(load_settings(home=home), "snap") as store:
        assert store.collection == "snap__v1" and store.indexed_points() == 64  # not left to brute force


def test_an_unfinished_version_is_not_snapshotted_into_one_that_restores_as_finished(tmp_path: Path) -> None:
    from dermground.platform.store import VersionMeta, open_collections
    from dermground.platform.store.versions import BUILDING

    home = tmp_path / "home"
    _fill(home, 3)
    with open_collections(load_settings(home=home)) as cols:  # an ingest --new-version that never finished
        version = cols.create_version("snap", VersionMeta(source="ingest /data", state=BUILDING))
        with cols.open_version("snap", version) as store:
            store.ensure_collection(CollectionSpec(dim=8, fingerprint="fp-snap"))
    result = CliRunner().invoke(cli, ["--home", str(home), "snapshot", "create", "--collection", "snap",
                                      "--version", version])
    assert result.exit_code == 1 and "still 'building'" in result.output, result.output
    assert not list((home / "snapshots" / "snap").glob("*.tar"))  # `collections switch` refuses it; so does this


def test_a_snapshot_of_another_collection_needs_collection_named_even_with_yes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _fill(home, 4)
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "snapshot", "create", "--collection", "snap"]).exit_code == 0
    (tar,) = (home / "snapshots" / "snap").glob("*.tar")

    # The default collection is "lesions": without --collection the backup of "snap" must not land there.
    refused = runner.invoke(cli, ["--home", str(home), "snapshot", "restore", str(tar), "--yes"])
    assert refused.exit_code == 1, refused.output
    assert "--collection snap" in refused.output and "--collection lesions" in refused.output
    with open_store(load_settings(home=home), "lesions") as store:
        assert store.describe() is None  # nothing was created
    assert not any((home / "snapshots" / ".staging").glob("*/points"))  # the unpacked copy went too

    chosen = runner.invoke(cli, ["--home", str(home), "snapshot", "restore", str(tar), "--collection", "lesions",
                                 "--yes"])
    assert chosen.exit_code == 0, chosen.output
    with open_store(load_settings(home=home), "lesions") as store:
        assert store.count() == 4
