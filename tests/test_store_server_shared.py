"""A Qdrant server is often shared: other applications' collections and aliases live beside
dermground's, named as Qdrant allows (dots, spaces) rather than as dermground does. Listing the
versions skips what dermground could not have made, instead of failing on it (a CLI traceback,
an API 500). The server is tests/qdrant_front.py (it keeps such names as a Qdrant server does)."""

from __future__ import annotations

from click.testing import CliRunner
from fastapi.testclient import TestClient
from qdrant_client import models

from dermground.platform.api import create_app
from dermground.platform.cli import cli
from dermground.platform.settings import Settings
from tests.qdrant_front import qdrant_front
from tests.version_homes import home_with_versions

READ = "read-key-shared"


def test_collections_of_other_applications_are_left_out_of_the_versions(tmp_path, monkeypatch,
                                                                        fresh_cli_settings) -> None:
    with qdrant_front() as front:
        monkeypatch.setenv("DERMGROUND_QDRANT_URL", front.url)
        home_with_versions(tmp_path, 1)
        for foreign in ("rag.docs", "chat history"):
            front.engine.create_collection(foreign, vectors_config=models.VectorParams(
                size=4, distance=models.Distance.COSINE))
        front.engine.update_collection_aliases([models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name="rag.docs", alias_name="rag.docs@latest"))])

        listed = CliRunner().invoke(cli, ["--home", str(tmp_path), "collections", "list"])
        assert listed.exit_code == 0, listed.output
        assert "lesions v1" in listed.output and "rag" not in listed.output and "chat" not in listed.output

        settings = Settings(home=tmp_path, qdrant_url=front.url, api_read_key=READ)
        with TestClient(create_app(settings), headers={"X-API-Key": READ}, raise_server_exceptions=False) as api:
            response = api.get("/collections")
        assert response.status_code == 200, response.text
        assert [(c["name"], c["version"]) for c in response.json()] == [("lesions", "v1")]
