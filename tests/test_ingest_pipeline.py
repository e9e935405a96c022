"""The ingest pipeline end to end: tiny model, embedded store, catalog, the shared local Ray."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from dermground.ingest.consistency import check_collection
from dermground.ingest.pipeline import ingest_dataset
from dermground.ingest.synth import generate_dataset
from dermground.platform.catalog import Catalog
from dermground.platform.records import LesionRecord, read_records
from dermground.platform.settings import load_settings
from dermground.platform.store import DEFAULT_VECTOR_NAMES, SchemaMismatchError, open_store, point_id
from tests.store_copies import copy_store

N_IMAGES = 32
PARTITION = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ingest_data") / "data"
    generate_dataset(out, patients=8, images=N_IMAGES, seed=3, size=112, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def ingested_home(dataset, tiny_model_dir, ray_session, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A home folder after one full ingest of `dataset` (tests copy it before changing anything)."""
    home = tmp_path_factory.mktemp("ingested") / "home"
    return home, _ingest(dataset, home, tiny_model_dir)


def _copy_of(ingested_home, tmp_path: Path) -> Path:
    return copy_store(ingested_home[0], tmp_path / "home")


def _settings(home: Path):
    return load_settings(home=home)


def _ingest(data: Path, home: Path, model_dir: Path, collection: str = "lesions", partition_size: int = PARTITION):
    return ingest_dataset(data, collection, _settings(home), model_dir=model_dir, split="all",
                          partition_size=partition_size, batch_size=4, progress=False)


def test_full_ingest_stores_every_image_with_all_vectors_then_a_rerun_skips_everything(
        dataset, ingested_home, tiny_model_dir, tiny_backbone, tmp_path):
    summary = ingested_home[1]
    tmp_path = _copy_of(ingested_home, tmp_path)
    assert (summary.ingested, summary.skipped, summary.quarantined) == (N_IMAGES, 0, 0)
    assert summary.partitions == N_IMAGES // PARTITION
    busy = summary.model_busy  # the actors report the seconds they spent in the model
    assert busy.actors >= 1 and busy.model_seconds > 0
    assert 0 < busy.fraction <= 1, busy
    # a batch's model time lies between the end of the actor's batch before and its own end
    assert busy.steady_fraction is None or 0 < busy.steady_fraction <= 1.001, busy
    assert "model busy" in busy.describe()
    report = check_collection(_settings(tmp_path), "lesions")
    assert report.ok, report.findings
    assert report.store_points == report.catalog_rows == report.ledger_points == N_IMAGES

    # The stored vectors are the model's embeddings, each under its own name.
    from dermground.platform.embed import Embedder

    record = next(r for r in read_records(dataset) if isinstance(r, LesionRecord))
    direct = Embedder(tiny_backbone).embed([record.load_image()])
    with open_store(_settings(tmp_path), "lesions") as store:
        assert store.count() == N_IMAGES
        (point,) = store.retrieve([point_id(record.isic_id)], with_vectors=True)
        assert set(point.vectors) == set(DEFAULT_VECTOR_NAMES)
        assert point.payload["image_ref"] == record.image_ref
        for name, expected in [("image", direct.h_im[0]), ("q_areaMM2", direct.h_im_a["areaMM2"][0]),
                               ("q_Bext", direct.h_im_a["Bext"][0])]:
            cosine = float(point.vectors[name] @ expected / np.linalg.norm(expected))
            assert cosine > 0.9999, name
        assert float(point.vectors["q_areaMM2"] @ point.vectors["q_Bext"]) < 0.9999

    ledger_files = sorted((tmp_path / "catalog" / "ingest_partitions").glob("*.parquet"))
    lesion_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "catalog" / "lesions").glob("*.parquet")}
    again = _ingest(dataset, tmp_path, tiny_model_dir)
    assert (again.ingested, again.skipped, again.quarantined, again.partitions) == (0, N_IMAGES, 0, 0)
    assert sorted((tmp_path / "catalog" / "ingest_partitions").glob("*.parquet")) == ledger_files
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "catalog" / "lesions").glob("*.parquet")} == lesion_files
    assert check_collection(_settings(tmp_path), "lesions").ok
    runs = Catalog(tmp_path / "catalog").query("SELECT status, n_ingested, n_skipped FROM ingest_runs ORDER BY started_at")
    assert [(r["status"], r["n_ingested"], r["n_skipped"]) for r in runs] == [("done", N_IMAGES, 0), ("done", 0, N_IMAGES)]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 16)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat)))


def test_poison_images_and_bad_rows_are_quarantined_with_a_reason_and_the_rest_ingests(
        tiny_model_dir, ray_session, tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, patients=6, images=24, seed=5, size=112, layout="folder", progress=False, workers=1)
    images = data / "train-image" / "image"
    with open(data / "train-metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [r["isic_id"] for r in rows]
    poison = {ids[1]: "truncated", ids[4]: "empty", ids[7]: "random", ids[10]: "huge",
              ids[13]: "nan_attribute", ids[16]: "bad_target", ids[19]: "no_file", ids[22]: "odd_shape",
              ids[2]: "out_of_range"}
    good_jpeg = (images / f"{ids[1]}.jpg").read_bytes()
    (images / f"{ids[1]}.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (images / f"{ids[4]}.jpg").write_bytes(b"")
    (images / f"{ids[7]}.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (images / f"{ids[10]}.jpg").write_bytes(_png_header_only(60_000, 60_000))
    (images / f"{ids[19]}.jpg").unlink()
    odd = io.BytesIO()
    Image.new("RGB", (201, 1)).save(odd, format="PNG")  # the processor refuses an aspect ratio over 200
    (images / f"{ids[22]}.jpg").write_bytes(odd.getvalue())
    rows[2]["tbp_lv_areaMM2"] = "-5"
    rows[13]["tbp_lv_areaMM2"] = "nan"
    rows[16]["target"] = "7"
    with open(data / "train-metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    # One row per partition: a partition whose only row is rejected before embedding commits too.
    summary = _ingest(data, tmp_path / "home", tiny_model_dir, partition_size=1)
    assert (summary.ingested, summary.quarantined, summary.partitions) == (24 - len(poison), len(poison), 24)
    quarantine = Catalog(tmp_path / "home" / "catalog").query("SELECT isic_id, field, reason FROM quarantine")
    by_id = {r["isic_id"]: (r["field"], r["reason"]) for r in quarantine}
    assert set(by_id) == set(poison)
    assert by_id[ids[1]][0] == "image" and by_id[ids[1]][1].startswith("decode: ")
    assert by_id[ids[4]] == ("image", "empty: the image has no bytes")
    assert by_id[ids[7]][1].startswith("format: ")
    assert by_id[ids[10]][1].startswith("pixel_limit: ") and "3600000000 pixels" in by_id[ids[10]][1]
    assert by_id[ids[22]][0] == "image" and by_id[ids[22]][1].startswith("aspect_ratio: ")
    assert by_id[ids[2]][0] == "tbp_lv_areaMM2" and "out of range" in by_id[ids[2]][1]
    assert by_id[ids[13]][0] == "tbp_lv_areaMM2" and "not finite" in by_id[ids[13]][1]
    assert by_id[ids[16]][0] == "target" and "must be 0 or 1" in by_id[ids[16]][1]
    assert by_id[ids[19]][0] == "image" and "no image file" in by_id[ids[19]][1]
    report = check_collection(_settings(tmp_path / "home"), "lesions")
    assert report.ok, report.findings
    assert report.store_points == 24 - len(poison)
    # A rerun neither re-embeds nor quarantines twice.
    again = _ingest(data, tmp_path / "home", tiny_model_dir, partition_size=1)
    assert (again.ingested, again.skipped, again.quarantined) == (0, 24 - len(poison), 0)
    assert len(Catalog(tmp_path / "home" / "catalog").query("SELECT * FROM quarantine")) == len(poison)


def test_a_quarantined_image_fixed_since_is_ingested_by_the_next_run(tiny_model_dir, ray_session, tmp_path):
    """The quarantine reason says what to fix; after the fix, a rerun ingests the record. Its
    partition's id did not change (the image gate refuses after the reader), and the rerun skipped
    the partition as committed, so the fixed image never came in. `check` counts the partition's
    latest commit, also when the first one was compacted into a merged file."""
    from dermground.platform.catalog_compact import compact

    data = tmp_path / "data"
    generate_dataset(data, patients=3, images=6, seed=5, size=112, layout="folder", progress=False, workers=1)
    ids = [r.isic_id for r in read_records(data) if isinstance(r, LesionRecord)]
    photo = data / "train-image" / "image" / f"{ids[2]}.jpg"
    good = photo.read_bytes()
    photo.write_bytes(good[: len(good) // 2])
    first = _ingest(data, tmp_path / "home", tiny_model_dir, partition_size=2)
    assert (first.ingested, first.quarantined) == (len(ids) - 1, 1)
    compact(tmp_path / "home" / "catalog")  # the first commit's ledger row now lives in a merged file
    photo.write_bytes(good)
    fixed = _ingest(data, tmp_path / "home", tiny_model_dir, partition_size=2)
    assert (fixed.ingested, fixed.skipped, fixed.quarantined) == (2, len(ids) - 2, 0)
    with open_store(_settings(tmp_path / "home"), "lesions") as store:
        assert store.retrieve([point_id(ids[2])], with_payload=False)
    report = check_collection(_settings(tmp_path / "home"), "lesions")
    assert report.ok, report.findings
    assert report.store_points == report.ledger_points == len(ids)


def test_a_collection_refuses_another_models_vectors_with_a_clear_cli_error(
        dataset, tiny_model_dir, ray_session, tmp_path):
    from dermground.platform.cli import cli
    from dermground.platform.store import CollectionSpec

    with open_store(_settings(tmp_path), "lesions") as store:  # a collection made for another model
        store.ensure_collection(CollectionSpec(dim=64, fingerprint="0123456789abcdef"))
    with pytest.raises(SchemaMismatchError, match="model fingerprint"):
        _ingest(dataset, tmp_path, tiny_model_dir)
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "ingest", "--data", str(dataset),
                                      "--collection", "lesions", "--model", str(tiny_model_dir), "--split", "all"])
    assert result.exit_code == 1
    assert "was created for other vectors" in result.output and "--collection" in result.output
    assert "Traceback" not in result.output


def test_a_recreated_collection_for_another_model_ignores_the_old_ledger(
        dataset, ingested_home, tiny_model_dir, make_tiny_adapter, tmp_path):
    import shutil

    home = _copy_of(ingested_home, tmp_path)
    shutil.rmtree(_settings(home).store_dir / "lesions")  # dropped; the catalog keeps its history
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    summary = ingest_dataset(dataset, "lesions", _settings(home), model_dir=tiny_model_dir, adapter_dir=adapter,
                             split="all", partition_size=PARTITION, batch_size=4, progress=False)
    assert (summary.ingested, summary.skipped) == (N_IMAGES, 0), "the old model's ledger must not count"
    report = check_collection(_settings(home), "lesions")
    assert report.ok, report.findings
    assert report.store_points == N_IMAGES


def test_a_collection_deleted_behind_the_catalog_is_ingested_again_not_skipped(
        dataset, ingested_home, tiny_model_dir, tmp_path):
    import shutil

    home = _copy_of(ingested_home, tmp_path)
    shutil.rmtree(_settings(home).store_dir / "lesions")  # same model; the ledger still says "committed"
    summary = ingest_dataset(dataset, "lesions", _settings(home), model_dir=tiny_model_dir, split="all",
                             partition_size=PARTITION, batch_size=4, progress=False)
    assert (summary.ingested, summary.skipped) == (N_IMAGES, 0), "a ledger without its points must not count"
    assert check_collection(_settings(home), "lesions").ok
    again = ingest_dataset(dataset, "lesions", _settings(home), model_dir=tiny_model_dir, split="all",
                           partition_size=PARTITION, batch_size=4, progress=False)
    assert (again.ingested, again.skipped) == (0, N_IMAGES), "an intact collection is still skipped"


def test_check_finds_a_deleted_point_and_a_point_missing_a_vector(dataset, ingested_home, tmp_path):
    from dermground.platform.cli import cli

    tmp_path = _copy_of(ingested_home, tmp_path)
    records = [r for r in read_records(dataset) if isinstance(r, LesionRecord)]
    with open_store(_settings(tmp_path), "lesions") as store:
        store.delete([point_id(records[0].isic_id)])
        (point,) = store.retrieve([point_id(records[1].isic_id)], with_vectors=True)
        del point.vectors["q_deltaB"]
        store.upsert([point])  # a whole-point upsert without one vector drops it
    report = check_collection(_settings(tmp_path), "lesions")
    text = "\n".join(report.findings)
    assert f"in the catalog but missing from the store: 1: {records[0].isic_id}" in text
    assert f"points missing the named vector 'q_deltaB': 1: {records[1].isic_id}" in text
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "check", "--collection", "lesions"])
    assert result.exit_code == 1 and "FINDING" in result.output


def test_a_busy_embedded_store_gives_a_clear_error_naming_its_holder(dataset, tiny_model_dir, tmp_path):
    import os

    from dermground.platform.cli import cli
    from dermground.platform.store import CollectionSpec

    with open_store(_settings(tmp_path), "lesions") as holder:  # e.g. `dermground serve` on the same store
        holder.ensure_collection(CollectionSpec(dim=64, fingerprint="0123456789abcdef"))
        # A held store no longer stops an ingest (it writes a new version seeded with the live one),
        # but a held store of another model is refused before anything is copied or embedded.
        ingest = CliRunner().invoke(cli, ["--home", str(tmp_path), "ingest", "--data", str(dataset), "--model",
                                          str(tiny_model_dir), "--collection", "lesions"])
        assert ingest.exit_code == 1, ingest.output
        assert f"is in use by pid {os.getpid()}" in ingest.output and "--new-version" in ingest.output
        check = CliRunner().invoke(cli, ["--home", str(tmp_path), "check", "--collection", "lesions"])
        # `check` of a held store checks a copy of it (as `snapshot create` does) and drops the copy.
        assert check.exit_code == 0, check.output
        assert "ok: store and catalog agree" in check.output
        assert "Traceback" not in ingest.output + check.output
    assert not (tmp_path / "catalog" / "ingest_runs").exists()  # nothing was started
    from dermground.platform.store.edge_versions import EdgeCollections

    assert EdgeCollections(tmp_path / "qdrant").versions("lesions") == ["v0"]  # nothing was copied


def test_an_ingest_while_the_store_is_served_writes_a_new_version_and_switches(
        dataset, ingested_home, tiny_model_dir, tmp_path):
    from dermground.platform.store.edge_versions import EdgeCollections
    from tests.store_holder import held_by_another_process

    home = _copy_of(ingested_home, tmp_path)
    records = [r for r in read_records(dataset) if isinstance(r, LesionRecord)]
    with open_store(_settings(home), "lesions") as store:  # one partition's images are "new"
        store.delete([point_id(r.isic_id) for r in records[:PARTITION]])
    notes: list[str] = []
    with held_by_another_process(home / "qdrant" / "lesions", "lesions") as holder:  # `serve`
        summary = ingest_dataset(dataset, "lesions", _settings(home), model_dir=tiny_model_dir, split="all",
                                 partition_size=PARTITION, batch_size=4, progress=False, notify=notes.append)
        assert (summary.version, summary.switched_from) == ("v1", "v0")
        assert (summary.ingested, summary.skipped) == (PARTITION, N_IMAGES - PARTITION)  # only the new are embedded
        assert any(f"in use by pid {holder.pid}" in n for n in notes)
        assert holder.poll() is None  # the server was never stopped
    report = check_collection(_settings(home), "lesions")  # the live version v1 and its own catalog rows
    assert report.ok and report.store_points == N_IMAGES, report.findings
    assert EdgeCollections(home / "qdrant").live_version("lesions") == "v1"


@pytest.mark.parametrize("cpus_per_actor", [None, 1])
def test_the_cpu_stage_runs_apart_from_the_actors_only_on_spare_cpus(tiny_model_dir, ray_session, tmp_path, capsys,
                                                                     cpus_per_actor):
    # On the shared 2-CPU session: one actor with the default CPUs holds both, so the stage is fused
    # into it; with one CPU per actor the other CPU runs the stage as separate tasks. Ray Data fuses
    # a task stage into the next actor stage whenever their remote arguments agree.
    from dermground.ingest.job import IngestJob
    from dermground.ingest.pipeline import embedding_dataset

    job = IngestJob.build(tmp_path / "data", "lesions", _settings(tmp_path / "home"), model_dir=tiny_model_dir,
                          cpus_per_actor=cpus_per_actor)
    items = [{"isic_id": f"ISIC_{i}", "image_ref": "x.png", "part": 0} for i in range(4)]
    embedding_dataset(job, "fp", items, 1).explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
    if cpus_per_actor is None:
        assert "ActorPoolMapOperator[MapBatches(prepare_images)->MapBatches(EmbeddingActor)]" in optimized
    else:
        assert "TaskPoolMapOperator[MapBatches(prepare_images)]" in optimized
        assert "ActorPoolMapOperator[MapBatches(EmbeddingActor)]" in optimized


def test_an_ingest_compacts_the_catalog_tables_it_fragmented(dataset, tiny_model_dir, ray_session, tmp_path):
    from dermground.platform.catalog_files import live_parts

    home = tmp_path / "home"
    settings = _settings(home).model_copy(update={"catalog_auto_compact_files": 3})
    summary = ingest_dataset(dataset, "lesions", settings, model_dir=tiny_model_dir, split="all",
                             partition_size=PARTITION, batch_size=4, progress=False)
    assert summary.partitions == N_IMAGES // PARTITION  # 4 lesions files and 4 ledger files written
    assert summary.catalog_compaction is not None and "lesions: " in summary.catalog_compaction
    catalog_dir = settings.catalog_dir
    assert live_parts(catalog_dir / "lesions").recent == [] and live_parts(catalog_dir / "ingest_partitions").recent == []
    assert Catalog(catalog_dir).query("SELECT count(*) AS n FROM lesions")[0]["n"] == N_IMAGES
    assert check_collection(settings, "lesions").ok  # the ledger still agrees with the store


def test_check_of_a_collection_nobody_knows_says_so_and_one_the_store_lost_is_a_finding(ingested_home, tmp_path):
    # Before: a misspelt name was reported as "FINDING collection 'lesons' does not exist in the store"
    # with "If an ingest was interrupted, rerun it to resume".
    import shutil

    from dermground.platform.cli import cli

    home = _copy_of(ingested_home, tmp_path)
    result = CliRunner().invoke(cli, ["--home", str(home), "check", "--collection", "lesons"])
    assert result.exit_code == 1 and "FINDING" not in result.output
    assert (f"no collection 'lesons' in the store or the catalog: check the name (`dermground --home {home} "
            "collections list` shows the collections)") in result.output
    shutil.rmtree(_settings(home).store_dir / "lesions")  # the catalog still has its rows: a real disagreement
    result = CliRunner().invoke(cli, ["--home", str(home), "check", "--collection", "lesions"])
    assert result.exit_code == 1 and "FINDING collection 'lesions' does not exist in the store" in result.output
