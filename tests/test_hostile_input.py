"""Hostile and odd input (issue #24): shapes the model cannot take, path-like names and ids,
DuckDB's temporary folder, out-of-range attributes; each refused with its rule, nothing else lost,
no 5xx, nothing read or written outside HOME or the data folder."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from dermground.ingest.synth import generate_dataset
from dermground.platform import isic_format as fmt
from dermground.platform.api import create_app
from dermground.platform.api.errors import ErrorBody, operation_statuses
from dermground.platform.catalog import SqlRejected, run_readonly_sql
from dermground.platform.cli import cli
from dermground.platform.names import InvalidNameError, check_collection_name, check_plain_file_name
from dermground.platform.records import LesionRecord, RejectedRecord, read_records
from dermground.platform.settings import Settings
from dermground.platform.store import open_store

READ = {"X-API-Key": "read-key-24"}
ODD_SHAPES = [(201, 1), (402, 2), (1, 300), (3000, 10)]


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


# --- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", "", "a" * 65, "x\x00y", "a b", "a\\b"])
def test_bad_collection_names_are_refused_everywhere(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError, match="collection name"):
        check_collection_name(name)
    with pytest.raises(InvalidNameError):
        open_store(Settings(home=tmp_path / "home"), name)
    settings = Settings(home=tmp_path / "home").model_copy(update={"collection": name})
    with pytest.raises(InvalidNameError):
        create_app(settings)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", [["ingest", "--data", "{data}"], ["search", "--id", "ISIC_0000001"],
                                     ["snapshot", "list"], ["snapshot", "create"], ["check"],
                                     ["serve", "--port", "1"], ["eval", "retrieval"]])
def test_cli_collection_flags_are_validated_before_anything_is_written(command: list[str], tmp_path: Path) -> None:
    home, data = tmp_path / "deep" / "home", tmp_path / "data"
    data.mkdir()
    args = [a.replace("{data}", str(data)) for a in command]
    result = CliRunner().invoke(cli, ["--home", str(home), *args, "--collection", "../../escaped"])
    assert result.exit_code == 2, result.output
    assert "invalid collection name" in result.output
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert not home.exists()


def test_the_collection_environment_variable_is_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DERMGROUND_COLLECTION", "../x")
    monkeypatch.setenv("DERMGROUND_HOME", str(tmp_path / "home"))
    from dermground.platform.commands import context

    monkeypatch.setattr(context, "_current", None)
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code != 0 and "DERMGROUND_COLLECTION" in result.output


@pytest.mark.parametrize("name", ["../../outside/evil", "/etc/passwd", "a/b", ".hidden", "x\x00", " x", "a\\b"])
def test_plain_file_names(name: str) -> None:
    with pytest.raises(InvalidNameError, match="not a plain file name"):
        check_plain_file_name(name, "isic_id")
    assert check_plain_file_name("ISIC_0000001", "isic_id") == "ISIC_0000001"


# --- the reader: ids that are paths, links out, out-of-range values, odd images -------------------
@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "clean"
    generate_dataset(out, patients=4, images=8, seed=11, layout="folder", progress=False, workers=1)
    return out


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / fmt.METADATA_FILE, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(folder: Path, rows: list[dict[str, str]]) -> None:
    with open(folder / fmt.METADATA_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fmt.METADATA_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_folder_layout_ids_that_are_paths_or_link_out_are_quarantined_and_nothing_outside_is_read(
        clean: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = clean / fmt.IMAGE_FOLDER / f"{_rows(clean)[0]['isic_id']}.jpg"
    (outside / "evil.jpg").write_bytes(planted.read_bytes())
    rows = _rows(data)
    rows[0]["isic_id"] = "../../../outside/evil"
    rows[1]["isic_id"] = str(outside / "evil")
    rows[2]["isic_id"] = "linked"
    (data / fmt.IMAGE_FOLDER / "linked.jpg").symlink_to(outside / "evil.jpg")
    _write_rows(data, rows)
    records = list(read_records(data, check_images=True))
    rejected = {r.isic_id: r for r in records if isinstance(r, RejectedRecord)}
    assert {rows[0]["isic_id"], rows[1]["isic_id"], "linked"} <= set(rejected)
    assert rejected[rows[0]["isic_id"]].field == "isic_id" and "plain file name" in rejected[rows[0]["isic_id"]].reason
    assert rejected[rows[1]["isic_id"]].field == "isic_id"
    assert rejected["linked"].field == "isic_id" and "outside the image folder" in rejected["linked"].reason
    kept = [r for r in records if isinstance(r, LesionRecord)]
    assert len(kept) == len(rows) - 3
    assert all(Path(r.image_ref).resolve().is_relative_to((data / fmt.IMAGE_FOLDER).resolve()) for r in kept)


def test_values_outside_the_plausible_range_are_quarantined_with_field_and_range(clean: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    rows = _rows(data)
    rows[0]["tbp_lv_areaMM2"] = "-5"
    rows[1]["tbp_lv_norm_border"] = "11"
    rows[2]["tbp_lv_deltaB"] = "-40"  # the edge of the range is still plausible
    _write_rows(data, rows)
    records = list(read_records(data))
    rejected = {r.isic_id: r for r in records if isinstance(r, RejectedRecord)}
    assert set(rejected) == {rows[0]["isic_id"], rows[1]["isic_id"]}
    area = rejected[rows[0]["isic_id"]]
    assert area.field == "tbp_lv_areaMM2" and "out of range" in area.reason and "[0, 400]" in area.reason
    assert rejected[rows[1]["isic_id"]].field == "tbp_lv_norm_border"
    kept = {r.isic_id: r for r in records if isinstance(r, LesionRecord)}
    assert kept[rows[2]["isic_id"]].attributes["deltaB"] == -40.0


def test_images_of_shapes_the_model_cannot_take_are_quarantined_naming_the_rule(clean: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    rows = _rows(data)
    for row, size in zip(rows, ODD_SHAPES, strict=False):
        (data / fmt.IMAGE_FOLDER / f"{row['isic_id']}.jpg").write_bytes(_png(size))
    (data / fmt.IMAGE_FOLDER / f"{rows[4]['isic_id']}.jpg").write_bytes(_png((90, 70), "LA"))  # made valid
    records = list(read_records(data, check_images=True))
    rejected = [r for r in records if isinstance(r, RejectedRecord)]
    assert sorted(r.isic_id for r in rejected) == sorted(row["isic_id"] for row in rows[:4])
    assert all(r.field == "image" and r.reason.startswith("aspect_ratio: ") for r in rejected)
    assert sum(isinstance(r, LesionRecord) for r in records) == len(rows) - 4


def test_the_ingest_stages_quarantine_odd_images_and_embed_the_rest(tiny_model_dir, tiny_backbone,
                                                                     tmp_path: Path) -> None:
    from dermground.ingest.embedding_actor import EmbeddingActor
    from dermground.ingest.image_prep import prepare_images

    refs = []
    for i, (size, mode) in enumerate([((201, 1), "RGB"), ((60, 50), "I;16"), ((3000, 10), "RGB"), ((40, 40), "P")]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(_png(size, mode))
        refs.append(str(path))
    refs.append(str(tmp_path / "missing.png"))
    batch = {"isic_id": np.array(["a", "b", "c", "d", "e"], dtype=object),
             "image_ref": np.array(refs, dtype=object), "part": np.zeros(5, dtype=np.int64)}
    prepared = prepare_images(batch, str(tiny_model_dir))
    errors = list(prepared["error"])
    assert errors[0].startswith("aspect_ratio: ") and errors[2].startswith("aspect_ratio: ")
    assert errors[4].startswith("FileNotFoundError: ")
    assert errors[1] == "" and errors[3] == ""
    assert prepared["grid_thw"][1].prod() > 0 and prepared["grid_thw"][0].prod() == 0
    assert prepared["pixel_values"][0].shape[0] == 0  # a rejected row carries no patches

    actor = EmbeddingActor(str(tiny_model_dir), None, tiny_backbone.fingerprint, device="cpu", dtype="float32")
    out = actor(prepared)
    assert list(out["error"]) == errors  # the actor keeps the stage's verdicts
    assert np.abs(out["vectors"][1]).sum() > 0 and np.abs(out["vectors"][3]).sum() > 0
    assert np.abs(out["vectors"][0]).sum() == 0 and np.abs(out["vectors"][4]).sum() == 0
    assert len(set(out["actor"])) == 1 and out["model_seconds"].sum() > 0  # for the driver's model-busy figure
    assert len(set(out["batch_finished"])) == 1 and out["batch_finished"][0] > 0



def _jpeg_with_corrupt_exif() -> bytes:
    """A photo turned by EXIF (orientation 6) whose EXIF holds RowsPerStrip as text (Pillow reads it
    but cannot write it back)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0131] = "sw"
    raw = exif.tobytes().replace(b"\x01\x31\x00\x02", b"\x01\x16\x00\x02")  # Software renamed RowsPerStrip
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), (120, 80, 60)).save(buffer, format="JPEG", exif=raw)
    return buffer.getvalue()


def test_a_photo_with_a_corrupt_exif_is_read_by_ingest_and_search(tiny_model_dir, tmp_path: Path) -> None:
    """Nothing is lost to a broken EXIF block: the reader keeps the record, the ingest stage
    prepares the image (it raised struct.error, which failed the whole task)."""
    from dermground.ingest.image_prep import prepare_images

    path = tmp_path / "exif.jpg"
    path.write_bytes(_jpeg_with_corrupt_exif())
    batch = {"isic_id": np.array(["a"], dtype=object), "image_ref": np.array([str(path)], dtype=object),
             "part": np.zeros(1, dtype=np.int64)}
    prepared = prepare_images(batch, str(tiny_model_dir))
    assert list(prepared["error"]) == [""] and prepared["grid_thw"][0].prod() > 0



def test_eval_predict_skips_a_poison_test_image_naming_it_and_scores_the_rest(
        tiny_model_dir, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One truncated test image: the run scores the other one and names the skipped record, field
    and rule (it stopped with "decode: ..." naming no record, and nothing was evaluated)."""
    from dermground.eval.predictions import evaluate_predictions

    data = tmp_path / "data"
    generate_dataset(data, patients=6, images=8, seed=13, layout="folder", progress=False, workers=1)
    test_ids = [r.isic_id for r in read_records(data, split="test")]
    assert len(test_ids) == 2
    poison = data / fmt.IMAGE_FOLDER / f"{test_ids[0]}.jpg"
    poison.write_bytes(poison.read_bytes()[:300])
    report = evaluate_predictions(data, tiny_model_dir, None, tmp_path / "out", catalog_dir=tmp_path / "catalog",
                                  collection="c1", attributes=["areaMM2"], samples=0, views=1, progress=False)
    assert report["areaMM2"]["n"] == 1
    rows = run_readonly_sql(tmp_path / "catalog", "SELECT isic_id FROM predictions").rows
    assert rows == [(test_ids[1],)]
    assert any(test_ids[0] in m and "image" in m and "decode: " in m for m in caplog.messages), caplog.messages


# --- SQL ----------------------------------------------------------------------------------------
def test_sql_cannot_read_duckdbs_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("secret\n42\n")
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for path in (".tmp/secret.csv", str(tmp_path / ".tmp" / "secret.csv")):
        with pytest.raises(SqlRejected, match="outside the catalog folder"):
            run_readonly_sql(catalog, f"SELECT * FROM read_csv('{path}')")
    assert run_readonly_sql(catalog, "SELECT count(*) FROM lesions").rows == [(0,)]


# --- HTTP ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(search_collection, tiny_backbone):
    settings = Settings(home=search_collection["home"], api_read_key=READ["X-API-Key"], api_admin_key="admin-24",
                        max_upload_bytes=300_000, max_image_pixels=40_000_000)
    with TestClient(create_app(settings, backbone=tiny_backbone), raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_runtime_error_other_than_a_full_gpu_is_a_500_naming_an_error_id(client, tiny_backbone) -> None:
    def broken(_module, _args) -> None:
        raise RuntimeError("a bug, not a full card")

    hook = tiny_backbone.core.model.visual.register_forward_pre_hook(broken)
    try:
        response = client.post("/predict", headers=READ, files={"file": ("q.png", _png((64, 64), "RGB"), "image/png")})
    finally:
        hook.remove()
    assert response.status_code == 500 and "internal error (id " in response.json()["detail"]
    assert "a bug" not in response.text  # the cause stays in the server log


def _assert_error_body(response, status: int, rule: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = ErrorBody.model_validate(response.json())
    assert set(response.json()) <= {"detail", "rule", "field"}
    if rule is not None:
        assert body.rule == rule and str(body.detail).startswith(f"{rule}: ")


@pytest.mark.parametrize("size", ODD_SHAPES)
def test_odd_shapes_are_422_naming_the_rule_on_every_image_endpoint(client, size: tuple[int, int]) -> None:
    data = _png(size)
    _assert_error_body(client.post("/search", headers=READ, json={"image_base64": base64.b64encode(data).decode()}),
                       422, "aspect_ratio")
    _assert_error_body(client.post("/search/upload", headers=READ, files={"file": ("q.png", data, "image/png")}),
                       422, "aspect_ratio")
    _assert_error_body(client.post("/predict", headers=READ, files={"file": ("q.png", data, "image/png")}),
                       422, "aspect_ratio")
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("mode", ["LA", "P", "I;16", "RGBA", "1"])
def test_odd_modes_are_made_valid_and_searched(client, mode: str) -> None:
    response = client.post("/search/upload", headers=READ, files={"file": ("q.png", _png((80, 64), mode), "image/png")},
                           data={"request": json.dumps({"k": 3})})
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 3


def test_an_upload_with_a_corrupt_exif_is_searched_not_a_500(client) -> None:
    response = client.post("/search/upload", headers=READ,
                           files={"file": ("q.jpg", _jpeg_with_corrupt_exif(), "image/jpeg")},
                           data={"request": json.dumps({"k": 3})})
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 3


def test_not_images_and_too_many_pixels_name_their_rule(client) -> None:
    _assert_error_body(client.post("/search/upload", headers=READ, files={"file": ("q.png", b"GIF89a" + b"\0" * 30)}),
                       422, "format")
    huge = Image.new("L", (8000, 6000))  # 48 MP: over the cap, refused from the header
    buffer = io.BytesIO()
    huge.save(buffer, format="PNG")
    _assert_error_body(client.post("/predict", headers=READ, files={"file": ("q.png", buffer.getvalue())}),
                       413, "pixel_limit")


def test_every_operation_documents_its_error_statuses_with_one_body(client) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "ErrorBody" in components and "HTTPValidationError" not in components
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = {int(c) for c in operation["responses"] if c != "200"}
            assert codes == set(operation_statuses(method, path, "security" in operation)), (method, path)
            assert {400, 413, 422, 500} <= codes
            for code in codes:
                ref = operation["responses"][str(code)]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody"
    search = schema["paths"]["/search"]["post"]["responses"]
    assert {"401", "404", "429", "503"} <= set(search)


def test_the_servers_own_error_bodies_match_the_documented_shape(client) -> None:
    _assert_error_body(client.post("/search", headers=READ, json={"k": 0}), 422)  # validation list
    _assert_error_body(client.post("/search/upload", headers=READ, files={"file": ("q.png", _png((40, 40)))},
                                   data={"request": json.dumps({"isic_id": "ISIC_0000001"})}), 422)  # a sentence
    _assert_error_body(client.get("/examples"), 401)
    _assert_error_body(client.post("/search", headers=READ, json={"isic_id": "ISIC_9999999"}), 404)
    _assert_error_body(client.post("/search", headers={**READ, "Content-Length": "nope"}, content=b"{}"), 400)
    too_big = client.post("/search", headers=READ, content=b"x" * 600_000)
    _assert_error_body(too_big, 413)
    assert too_big.json()["rule"] == "body_limit"
    _assert_error_body(client.post("/sql", headers={"X-API-Key": "admin-24"}, json={"query": "DROP TABLE x"}), 400)


def test_hdf5_layout_ids_that_walk_groups_are_quarantined(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, patients=3, images=4, seed=12, layout="hdf5", progress=False, workers=1)
    rows = _rows(data)
    rows[0]["isic_id"], rows[1]["isic_id"] = "/", "../x"
    _write_rows(data, rows)
    records = list(read_records(data, check_images=True))
    rejected = {r.isic_id: r.field for r in records if isinstance(r, RejectedRecord)}
    assert rejected == {"/": "isic_id", "../x": "isic_id"}
    assert sum(isinstance(r, LesionRecord) for r in records) == 2


def test_every_422_names_its_rule_and_field(client) -> None:
    # A request that does not fit its schema: the rule `validation`, the (first) field, dotted when nested.
    out_of_range = client.post("/search", headers=READ, json={"isic_id": "ISIC_0000001", "k": 0})
    _assert_error_body(out_of_range, 422)
    assert (out_of_range.json()["rule"], out_of_range.json()["field"]) == ("validation", "k")
    assert out_of_range.json()["detail"][0]["field"] == "k"
    nested = client.post("/search", headers=READ, json={"isic_id": "ISIC_0000001", "mode": "image_text",
                                                        "attributes": ["areaMM2"],
                                                        "filters": {"ranges": {"areaMM2": {"gte": "big"}}}})
    assert (nested.status_code, nested.json()["rule"]) == (422, "validation")
    assert nested.json()["field"] == "filters.ranges.areaMM2.gte"
    not_json = client.post("/search", headers={**READ, "Content-Type": "application/json"}, content=b"{nope")
    assert (not_json.status_code, not_json.json()["rule"], not_json.json()["field"]) == (422, "validation", "body")
    form = client.post("/search/upload", headers=READ, files={"file": ("q.png", _png((40, 40)))},
                       data={"request": json.dumps({"k": 0})})
    assert (form.status_code, form.json()["rule"], form.json()["field"]) == (422, "validation", "request.k")
    # A request that fits the schema but not the search, and the image gate: the same two keys.
    below_k = client.post("/search", headers=READ, json={"isic_id": "ISIC_0000001", "mode": "hierarchical",
                                                         "attributes": ["areaMM2"], "k": 5, "b": 2})
    _assert_error_body(below_k, 422)
    assert (below_k.json()["rule"], below_k.json()["field"]) == ("search_request", "b")
    both = client.post("/search/upload", headers=READ, files={"file": ("q.png", _png((40, 40)))},
                       data={"request": json.dumps({"isic_id": "ISIC_0000001"})})
    assert (both.status_code, both.json()["rule"], both.json()["field"]) == (422, "one_query", "request.isic_id")
    gated = client.post("/search", headers=READ, json={"image_base64": base64.b64encode(_png((1000, 4))).decode()})
    assert (gated.status_code, gated.json()["rule"], gated.json()["field"]) == (422, "aspect_ratio", "image_base64")


def test_the_api_description_names_every_key(tmp_path) -> None:
    """/docs said "admin key: sql": the analyst key (DERMGROUND_API_ANALYST_KEY) opens /sql too."""
    description = create_app(Settings(home=tmp_path)).openapi()["info"]["description"]
    assert all(f"{key} key" in description for key in ("read", "analyst", "admin")), description
