"""Odd inputs found in the hunt of round 16: each one quarantined with a reason naming the record
and the field (or refused with a 4xx), while everything else goes on."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dermground.ingest.synth import generate_dataset
from dermground.platform import isic_format as fmt
from dermground.platform.records import LesionRecord, RejectedRecord, assign_split, read_records
from tests.store_copies import copy_store


def _ids(folder: Path) -> list[str]:
    with open(folder / fmt.METADATA_FILE, newline="") as handle:
        return [row["isic_id"] for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def hdf5_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("odd") / "hdf5"
    generate_dataset(out, patients=6, images=8, seed=13, layout="hdf5", progress=False, workers=1)
    return out


def test_hdf5_entries_that_hold_no_bytes_are_quarantined_naming_the_entry(hdf5_data: Path, tmp_path: Path,
                                                                           tiny_model_dir) -> None:
    """A group or an empty dataset where an image should be: quarantined by the reader and by
    ingest's CPU stage, the other images prepared (h5py's TypeError/AttributeError stopped both)."""
    import shutil

    import h5py

    from dermground.ingest.image_prep import prepare_images

    data = tmp_path / "data"
    shutil.copytree(hdf5_data, data)
    ids = _ids(data)
    with h5py.File(data / fmt.HDF5_FILE, "a") as h5:
        del h5[ids[0]]
        h5.create_group(ids[0])
        del h5[ids[1]]
        h5.create_dataset(ids[1], data=h5py.Empty("f"))
    records = list(read_records(data, check_images=True))
    rejected = {r.isic_id: r for r in records if isinstance(r, RejectedRecord)}
    assert set(rejected) == {ids[0], ids[1]}
    assert rejected[ids[0]].field == "image" and "is a group" in rejected[ids[0]].reason
    assert "is empty" in rejected[ids[1]].reason and ids[1] in rejected[ids[1]].reason
    assert sorted(r.isic_id for r in records if isinstance(r, LesionRecord)) == sorted(ids[2:])

    listed = [r for r in read_records(data) if isinstance(r, LesionRecord)]
    batch = {"isic_id": np.array([r.isic_id for r in listed], dtype=object),
             "image_ref": np.array([r.image_ref for r in listed], dtype=object),
             "part": np.zeros(len(listed), dtype=np.int64)}
    errors = dict(zip(batch["isic_id"], prepare_images(batch, str(tiny_model_dir))["error"]))
    assert "is a group" in errors[ids[0]] and "is empty" in errors[ids[1]]
    assert errors[ids[2]] == "" and errors[ids[3]] == ""


def test_eval_predict_skips_what_ingest_quarantines_and_counts_it(hdf5_data: Path, tmp_path: Path, tiny_model_dir,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A test image that is not image bytes (a ValueError, which ingest quarantines): the
    evaluation scores the rest, names the record and counts it (it stopped the whole run)."""
    import json
    import shutil

    import h5py

    from dermground.eval.predictions import PREDICTION_FILE, evaluate_predictions

    data = tmp_path / "data"
    shutil.copytree(hdf5_data, data)
    with open(data / fmt.METADATA_FILE, newline="") as handle:  # not read_records: it would hold the file open
        test_ids = [row["isic_id"] for row in csv.DictReader(handle) if assign_split(row["patient_id"]) == "test"]
    assert len(test_ids) >= 2
    with h5py.File(data / fmt.HDF5_FILE, "a") as h5:
        del h5[test_ids[0]]
        h5.create_group(test_ids[0])
    report = evaluate_predictions(data, tiny_model_dir, None, tmp_path / "out", attributes=["areaMM2"],
                                  samples=0, views=1, progress=False)
    assert report["areaMM2"]["n"] == len(test_ids) - 1 and report["areaMM2"]["skipped"] == 1
    assert json.loads((tmp_path / "out" / PREDICTION_FILE).read_text())["areaMM2"]["skipped"] == 1
    assert any(test_ids[0] in m and "field image" in m and "is a group" in m for m in caplog.messages), caplog.messages


@pytest.fixture()
def eval_home_with_lost_images(tmp_path: Path, search_collection) -> tuple[Path, str, str]:
    """The search collection copied into a HOME, one train and one test point's image gone (a
    collection restored from a backup without its data folder, or a file since overwritten)."""

    from dermground.platform.settings import load_settings
    from dermground.platform.store import open_store, point_id

    home = tmp_path / "home"
    copy_store(search_collection["store_root"], home / "qdrant" / "lesions")
    records = search_collection["records"]
    train = next(r.isic_id for r in records if r.split == "train")
    test = next(r.isic_id for r in records if r.split == "test")
    truncated = tmp_path / "not-a-jpeg.jpg"
    truncated.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    with open_store(load_settings(home=home), "lesions") as store:
        store.set_payload([point_id(train)], {"image_ref": str(tmp_path / "gone.jpg")})
        store.set_payload([point_id(test)], {"image_ref": str(truncated)})
    return home, train, test


def test_eval_retrieval_baseline_leaves_out_images_it_cannot_read(eval_home_with_lost_images,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The baseline reads every image: a missing train image is left out of its candidates, a test
    query whose image is refused is dropped from every method (so all compare the same queries);
    both named with the reason, the rest evaluated (a FileNotFoundError traceback stopped the run)."""
    from dermground.eval.retrieval import TABLE_FILE, evaluate_retrieval
    from dermground.platform.settings import load_settings

    home, train, test = eval_home_with_lost_images
    settings = load_settings(home=home)
    out = home / "eval"
    summary = evaluate_retrieval(settings, "lesions", out, methods=["image", "baseline"], attributes=["areaMM2"],
                                 k=3, catalog_dir=settings.catalog_dir, progress=False)
    n_test = summary["image"]["areaMM2"]["n"]
    assert summary["baseline"]["areaMM2"]["n"] == n_test
    assert any(train in m and "image_ref" in m and "FileNotFoundError" in m for m in caplog.messages), caplog.messages
    assert any(test in m and "image_ref" in m and "format: " in m for m in caplog.messages), caplog.messages
    from dermground.platform.catalog import Catalog

    hits = Catalog(settings.catalog_dir).query("SELECT query_isic_id, hit_isic_id, method FROM retrieval_hits")
    assert hits and test not in {h["query_isic_id"] for h in hits}
    assert train not in {h["hit_isic_id"] for h in hits if h["method"] == "baseline"}
    assert "1 train image(s) left out" in (out / TABLE_FILE).read_text()
    assert "1 test query(ies) dropped" in (out / TABLE_FILE).read_text()


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("odd") / "folder"
    generate_dataset(out, patients=3, images=4, seed=12, layout="folder", progress=False, workers=1)
    return out


def _copy_with_csv(source: Path, target: Path, content: bytes) -> Path:
    import shutil

    shutil.copytree(source, target)
    (target / fmt.METADATA_FILE).write_bytes(content)
    return target


def test_a_csv_saved_by_excel_with_a_byte_order_mark_is_read(folder_data: Path, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: every row is read (it said "lacks required column(s): isic_id")."""
    from dermground.platform.records import count_records

    text = (folder_data / fmt.METADATA_FILE).read_bytes()
    data = _copy_with_csv(folder_data, tmp_path / "bom", b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
    records = list(read_records(data))
    assert [r.isic_id for r in records if isinstance(r, LesionRecord)] == _ids(folder_data)
    assert count_records(data) == len(records)


def test_bytes_that_are_not_utf8_reject_their_row_by_name_and_the_rest_is_read(folder_data: Path,
                                                                                tmp_path: Path) -> None:
    """A CSV saved as Latin-1: the rows with a non-UTF-8 byte are rejected naming the column, the
    other rows are read (a UnicodeDecodeError stopped the whole file at the first such row)."""
    from dermground.platform.records import count_records

    ids = _ids(folder_data)
    with open(folder_data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["anatom_site_general"] = "épaule"
    rows[1]["isic_id"] = ids[1] + "é"
    buffer = __import__("io").StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = _copy_with_csv(folder_data, tmp_path / "latin1", buffer.getvalue().encode("latin-1"))
    records = list(read_records(data))
    rejected = {r.isic_id: r for r in records if isinstance(r, RejectedRecord)}
    assert set(rejected) == {ids[0], ids[1] + "\\xe9"}
    assert rejected[ids[0]].field == "anatom_site_general" and "not UTF-8" in rejected[ids[0]].reason
    assert rejected[ids[1] + "\\xe9"].field == "isic_id"
    assert [r.isic_id for r in records if isinstance(r, LesionRecord)] == ids[2:]
    assert count_records(data) == len(ids)


def test_a_search_candidate_whose_stored_entry_holds_no_bytes_is_skipped(tiny_backbone, search_collection,
                                                                         tmp_path: Path) -> None:
    """A hierarchical search re-embeds its candidates from their stored images: one whose HDF5
    entry is a group is skipped like a missing file (its ValueError failed the whole query, a 500)."""
    import h5py

    from dermground.platform.candidate_embedding import UnreadableCandidate, embed_candidates, read_point_image
    from dermground.platform.embed import Embedder
    from dermground.platform.embedder_provider import EmbedderProvider
    from dermground.platform.image_sources import hdf5_image_ref
    from dermground.platform.images import DEFAULT_MAX_PIXELS

    odd = tmp_path / "odd.hdf5"
    with h5py.File(odd, "w") as h5:
        h5.create_group("ISIC_GROUP")
    payloads = [{"isic_id": r.isic_id, "image_ref": r.image_ref} for r in search_collection["records"][:3]]
    payloads[1] = {"isic_id": "ISIC_GROUP", "image_ref": hdf5_image_ref(odd, "ISIC_GROUP")}
    with pytest.raises(UnreadableCandidate, match="'ISIC_GROUP'.*is a group"):
        read_point_image(payloads[1], DEFAULT_MAX_PIXELS)
    found = embed_candidates(EmbedderProvider.of(Embedder(tiny_backbone)), payloads, ["areaMM2"],
                             max_pixels=DEFAULT_MAX_PIXELS, workers=1)
    assert found.skipped == [1] and sorted(found.vectors) == [0, 2]


def test_an_hdf5_id_holding_a_hash_sign_is_read(hdf5_data: Path, tmp_path: Path) -> None:
    """An image reference is `hdf5:<path>#<id>`: an id with a '#' (a plain file name may hold one),
    in a folder whose name holds one too, is read (it was split at the id's '#' and quarantined as
    "FileNotFoundError: .../train-image.hdf5#ISIC")."""
    import shutil

    import h5py

    data = tmp_path / "copy#2" / "data"
    shutil.copytree(hdf5_data, data)
    with open(data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    old, rows[0]["isic_id"] = rows[0]["isic_id"], "ISIC#0000001"
    with h5py.File(data / fmt.HDF5_FILE, "a") as h5:
        h5.move(old, "ISIC#0000001")
    with open(data / fmt.METADATA_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    records = list(read_records(data, check_images=True))
    assert [r.isic_id for r in records if isinstance(r, RejectedRecord)] == []
    hashed = next(r for r in records if r.isic_id == "ISIC#0000001")
    assert hashed.load_image().size[0] > 0


def test_the_api_addresses_every_id_the_reader_ingests(search_collection, tiny_backbone, tmp_path: Path) -> None:
    """An id the reader takes (any plain file name: a dot, a space, a '#', non-ASCII letters) can be
    searched by and its image fetched through the API, as with `dermground search --id` (the API
    allowed only [A-Za-z0-9_-]{1,64}: a 422 for a lesion it had just listed as a hit)."""
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    from dermground.platform.api import create_app
    from dermground.platform.settings import Settings, load_settings
    from dermground.platform.store import StorePoint, open_store, point_id

    home = tmp_path / "home"
    copy_store(search_collection["store_root"], home / "qdrant" / "lesions")
    twin_of = search_collection["records"][0].isic_id
    odd_ids = ["ISIC_0000001.v2", "Läsion #7 (rechts)", "x" * 200]
    with open_store(load_settings(home=home), "lesions") as store:
        source = store.retrieve([point_id(twin_of)], with_payload=True, with_vectors=True)[0]
        store.upsert([StorePoint(point_id(odd), source.vectors, {**source.payload, "isic_id": odd}) for odd in odd_ids])
    settings = Settings(home=home, api_read_key="odd-read", api_admin_key="odd-admin")
    with TestClient(create_app(settings, backbone=tiny_backbone), raise_server_exceptions=False) as client:
        read = {"X-API-Key": "odd-read"}
        found = client.post("/search", headers=read, json={"isic_id": twin_of, "k": 4})
        assert found.status_code == 200, found.text
        assert set(odd_ids) <= {hit["isic_id"] for hit in found.json()["hits"]}
        for odd in odd_ids:
            by_id = client.post("/search", headers=read, json={"isic_id": odd, "k": 2})
            assert by_id.status_code == 200 and by_id.json()["query_isic_id"] == odd, by_id.text
            image = client.get(f"/images/{quote(odd, safe='')}", headers=read)
            assert image.status_code == 200 and image.content[:2] == b"\xff\xd8", image.text
        assert client.get(f"/images/{'y' * 201}", headers=read).status_code == 422  # longer than any id read
        assert client.get("/images/.hidden", headers=read).status_code == 422


@pytest.mark.parametrize(("separator", "called"), [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_separated_by_semicolons_says_so(folder_data: Path, tmp_path: Path, separator: str,
                                                called: str) -> None:
    """Excel in many locales saves ';': the error says the file is separated by them (it listed all
    20 required columns as missing, with no hint why)."""
    from dermground.platform.records import MissingColumnsError

    text = (folder_data / fmt.METADATA_FILE).read_text().replace(",", separator)
    data = _copy_with_csv(folder_data, tmp_path / "semicolons", text.encode())
    with pytest.raises(MissingColumnsError, match=f"separated by {called}, not commas; save it as comma-separated"):
        list(read_records(data))


def test_ages_no_patient_can_have_are_quarantined_and_missing_ones_kept(folder_data: Path, tmp_path: Path) -> None:
    """A negative or thousand-year age is a data error: quarantined naming age_approx and the range
    (it was stored and answered age filters); NaN and empty stay an absent age, 0 and 85 are kept."""
    with open(folder_data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    ages = ["-5", "1000", "nan", ""]
    for row, age in zip(rows, ages, strict=False):
        row["age_approx"] = age
    buffer = __import__("io").StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = _copy_with_csv(folder_data, tmp_path / "ages", buffer.getvalue().encode())
    records = list(read_records(data))
    rejected = {r.isic_id: r for r in records if isinstance(r, RejectedRecord)}
    assert set(rejected) == {rows[0]["isic_id"], rows[1]["isic_id"]}
    assert all(r.field == "age_approx" and "[0, 120]" in r.reason for r in rejected.values())
    assert "-5 is outside" in rejected[rows[0]["isic_id"]].reason
    kept = {r.isic_id: r.metadata["age_approx"] for r in records if isinstance(r, LesionRecord)}
    assert kept[rows[3]["isic_id"]] is None and kept[rows[2]["isic_id"]] is None


def test_eval_predict_scores_a_repeated_test_row_once(hdf5_data: Path, tmp_path: Path, tiny_model_dir,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A test row repeated in the CSV is scored once and named, like ingest stores it once (it was
    scored twice: double weight in R² and two predictions rows per attribute for one isic_id)."""
    import shutil

    from dermground.eval.predictions import evaluate_predictions
    from dermground.platform.catalog import run_readonly_sql

    data = tmp_path / "data"
    shutil.copytree(hdf5_data, data)
    with open(data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    test_rows = [row for row in rows if assign_split(row["patient_id"]) == "test"]
    with open(data / fmt.METADATA_FILE, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerow(test_rows[0])
    report = evaluate_predictions(data, tiny_model_dir, None, tmp_path / "out", catalog_dir=tmp_path / "catalog",
                                  collection="c1", attributes=["areaMM2"], samples=0, views=1, progress=False)
    assert report["areaMM2"]["n"] == len(test_rows) and report["areaMM2"]["skipped"] == 1
    counts = run_readonly_sql(tmp_path / "catalog", "SELECT isic_id, count(*) FROM predictions GROUP BY isic_id").rows
    assert sorted(counts) == sorted((row["isic_id"], 1) for row in test_rows)
    assert any(test_rows[0]["isic_id"] in m and "field isic_id: duplicate" in m for m in caplog.messages)


@pytest.mark.parametrize("spelling", ["NA", "N/A", "#N/A", "null", "None", "<NA>"])
def test_a_missing_age_written_by_r_or_a_spreadsheet_is_an_absent_age(folder_data: Path, tmp_path: Path,
                                                                       spelling: str) -> None:
    """R's write.csv writes a missing age as NA: the record keeps an absent age and gets a payload
    (ingest quarantined it: "age_approx: not a number: 'NA'")."""
    from dermground.ingest.writer import record_payload

    with open(folder_data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["age_approx"] = spelling
    buffer = __import__("io").StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = _copy_with_csv(folder_data, tmp_path / "na", buffer.getvalue().encode())
    record = next(r for r in read_records(data) if r.isic_id == rows[0]["isic_id"])
    assert isinstance(record, LesionRecord) and record.metadata["age_approx"] is None
    assert record_payload(record, "fp")["age_approx"] is None


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_search_by_an_image_file_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    """A query image that exists but cannot be read (here an I/O error; no permission is the same
    OSError): an error naming the file, not a traceback."""
    from click.testing import CliRunner

    from dermground.platform.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "search", "--mode", "image",
                                      "--image", "/proc/self/mem"])
    assert result.exit_code == 1 and not isinstance(result.exception, OSError), result.output
    assert "/proc/self/mem cannot be read: Input/output error" in result.output


def test_a_truncated_hdf5_file_is_an_error_naming_it_not_a_traceback(hdf5_data: Path, tmp_path: Path) -> None:
    """A train-image.hdf5 cut short (a copy that did not finish): `dermground ingest` names the
    file and what to do (h5py's OSError ended in a traceback from the checkpoint check's sample)."""
    import shutil

    from click.testing import CliRunner

    from dermground.platform.cli import cli
    from dermground.platform.records import UnreadableImageFileError

    data = tmp_path / "data"
    shutil.copytree(hdf5_data, data)
    whole = (data / fmt.HDF5_FILE).read_bytes()
    (data / fmt.HDF5_FILE).write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UnreadableImageFileError, match="train-image.hdf5 cannot be opened as HDF5"):
        list(read_records(data))
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "ingest", "--data", str(data)])
    assert result.exit_code == 1 and not isinstance(result.exception, OSError), result.output
    assert "cannot be opened as HDF5" in result.output and "copy it again" in result.output


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = __import__("io").StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def test_a_quote_never_closed_is_named_with_the_lines_it_swallowed(folder_data: Path, tmp_path: Path) -> None:
    """One stray quote made the rows after it part of one field: they vanished without a word (a
    small file) or the reader died with csv's "field larger than field limit" (a large one). Now
    the row is rejected naming the column and the lines, and a large file is a clear error; a
    legitimately quoted field over two lines is still read."""
    from dermground.platform.records import MalformedCsvError, count_records

    with open(folder_data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["anatom_site_general"] = "head/neck\n(left)"  # a quoted newline: fine
    lines = _csv_text(rows).splitlines()
    stray = lines[3].replace(",IP_", ',"IP_', 1)  # row 2 (CSV line 4) opens a quote in patient_id, never closed
    data = _copy_with_csv(folder_data, tmp_path / "stray", "\n".join([*lines[:3], stray, *lines[4:]]).encode() + b"\n")
    records = list(read_records(data))
    assert isinstance(records[0], LesionRecord) and records[0].metadata["anatom_site_general"] == "head/neck\n(left)"
    assert len(records) == 2 and isinstance(records[1], RejectedRecord)
    assert records[1].isic_id == rows[1]["isic_id"] and records[1].field == "patient_id"
    assert f"CSV lines 4-{len(lines)}" in records[1].reason and "never closed" in records[1].reason

    many = [dict(rows[2], isic_id=f"ISIC_9{i:06d}") for i in range(600)]
    big = _csv_text(rows + many).splitlines()
    big[3] = big[3].replace(",IP_", ',"IP_', 1)
    data = _copy_with_csv(folder_data, tmp_path / "stray-big", ("\n".join(big) + "\n").encode())
    with pytest.raises(MalformedCsvError, match="from line 4: field larger than field limit.*never closed"):
        list(read_records(data))
    with pytest.raises(MalformedCsvError, match="from line 4"):  # ingest's progress total reads it first
        count_records(data)


def test_an_id_too_long_for_the_file_system_is_quarantined_not_fatal(folder_data: Path, tmp_path: Path) -> None:
    """130 non-ASCII letters are a plain file name of 200 characters or less but 260 bytes, over
    the file system's 255: that record is quarantined naming isic_id, the rest read (the reader
    died with "OSError: File name too long", and ingest with it)."""
    with open(folder_data / fmt.METADATA_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["isic_id"] = "ä" * 130
    data = _copy_with_csv(folder_data, tmp_path / "long", _csv_text(rows).encode())
    records = list(read_records(data, check_images=True))
    assert isinstance(records[0], RejectedRecord) and records[0].field == "isic_id"
    assert "File name too long" in records[0].reason
    assert [r.isic_id for r in records[1:] if isinstance(r, LesionRecord)] == [row["isic_id"] for row in rows[1:]]


def test_eval_retrieval_refuses_a_k_above_the_train_split(search_collection, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--k above the number of train images: a message saying so (random ended in numpy's "Cannot
    take a larger sample than population", the other methods scored the whole split as top-k)."""

    from click.testing import CliRunner

    from dermground.platform.cli import cli
    from dermground.platform.commands import context

    home = tmp_path / "home"
    copy_store(search_collection["store_root"], home / "qdrant" / "lesions")
    monkeypatch.setattr(context, "_current", None)
    n_train = sum(r.split == "train" for r in search_collection["records"])
    result = CliRunner().invoke(cli, ["--home", str(home), "eval", "retrieval", "--collection", "lesions",
                                      "--out", str(tmp_path / "out"), "--methods", "image,random",
                                      "--k", str(n_train + 1)])
    assert result.exit_code == 1, result.output
    assert f"k={n_train + 1} is more than the {n_train} train images" in result.output
    assert not (tmp_path / "out").exists()
