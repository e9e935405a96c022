"""`dermground search` and `dermground serve` (their checks; the server itself is driven in test_viewer)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dermground.platform.cli import cli
from dermground.platform.commands.serve import is_loopback


@pytest.fixture(scope="module")
def run(search_collection, tiny_model_dir):
    home = search_collection["home"]

    def invoke(*args: str):
        env = {"DERMGROUND_MODEL_DIR": str(tiny_model_dir), "DERMGROUND_HOME": str(home)}
        return CliRunner().invoke(cli, ["--home", str(home), *args], env=env)

    return invoke


def test_search_by_id_as_json_respects_filters(run, search_collection) -> None:
    records = {r.isic_id: r for r in search_collection["records"]}
    query = search_collection["records"][4]
    result = run("search", "--id", query.isic_id, "--mode", "prefetch", "--attribute", "areaMM2",
                 "--attribute", "deltaL", "--k", "6", "--split", "train", "--range", "areaMM2=1:",
                 "--exclude-patient", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["query_isic_id"] == query.isic_id and len(body["hits"]) >= 1
    for hit in body["hits"]:
        record = records[hit["isic_id"]]
        assert record.split == "train" and record.patient_id != query.patient_id
        assert record.attributes["areaMM2"] >= 1


def test_search_by_image_file_prints_a_table(run, search_collection, tmp_path) -> None:
    image = tmp_path / "query.jpg"
    image.write_bytes(search_collection["records"][0].image_bytes())
    result = run("search", "--image", str(image), "--mode", "image_text", "--attribute", "areaMM2", "--k", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # stdout only: model loading writes progress bars to stderr
    header = 0
    assert lines[header].split()[:3] == ["rank", "isic_id", "score"]
    assert lines[header + 1].split()[1] == search_collection["records"][0].isic_id


@pytest.mark.parametrize("args, message", [
    (["--k", "3"], "exactly one of --image and --id"),
    (["--id", "ISIC_0000001", "--attribute", "nope"], "unknown attribute"),
    (["--id", "ISIC_0000001", "--mode", "image", "--k", "100000"], "k must be between"),
    (["--id", "ISIC_0000001", "--mode", "image", "--filter", "color=red"], "cannot filter"),
    (["--id", "ISIC_0000001", "--mode", "image", "--filter", "target=yes"], "target is one of 0, 1"),
    (["--id", "ISIC_0000001", "--mode", "image", "--range", "areaMM2=a:b"], "--range"),
    (["--id", "ISIC_0000001", "--mode", "image", "--range", "areaMM2=5:1"], "above its high bound"),
    (["--id", "ISIC_0000001", "--mode", "prefetch", "--attribute", "areaMM2", "--k", "5", "--b", "3"],
     "b must be at least k"),
])
def test_search_errors_are_messages_not_tracebacks(run, args, message) -> None:
    result = run("search", *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com"))


def test_a_model_or_adapter_problem_names_the_settings_search_reads(search_collection, tiny_model_dir,
                                                                   make_tiny_adapter, tmp_path) -> None:
    """`search` has no --model or --adapter flag (it reads DERMGROUND_MODEL_DIR / DERMGROUND_ADAPTER_DIR),
    yet a missing model said only "point --model at ...", an adapter that does not fit "pass --model ...
    or leave --adapter out": steps search cannot take. Both name the setting now."""
    import json as json_

    home = search_collection["home"]
    query = tmp_path / "q.png"
    query.write_bytes(search_collection["records"][0].image_bytes())
    adapter = make_tiny_adapter(tiny_model_dir, tmp_path / "adapter")
    config = json_.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json_.dumps(config | {"r": 8}))  # weights of rank 4
    for env, setting in (({"DERMGROUND_MODEL_DIR": str(tmp_path / "no-model")}, "DERMGROUND_MODEL_DIR"),
                         ({"DERMGROUND_MODEL_DIR": str(tiny_model_dir), "DERMGROUND_ADAPTER_DIR": str(adapter)},
                          "DERMGROUND_ADAPTER_DIR")):
        result = CliRunner().invoke(cli, ["--home", str(home), "search", "--image", str(query), "--mode", "image"],
                                    env=env)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert setting in result.output, result.output
