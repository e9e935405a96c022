"""Odd requests at the API and the CLI: each one a 4xx (or a CLI error) naming the field, never a
500 or a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dermground.platform.api import create_app
from dermground.platform.cli import cli
from dermground.platform.settings import Settings

READ_JSON = {"X-API-Key": "read-requests", "Content-Type": "application/json"}


@pytest.mark.parametrize(("field", "filters"), [("sex", '"sex": ["\\ud800"]'),
                                                ("patient_id", '"patient_id": ["IP_1", "x\\udfff"]')])
def test_a_filter_value_that_is_not_unicode_text_is_a_422_naming_the_filter(
        search_collection, tiny_backbone, field: str, filters: str) -> None:
    """JSON may escape a lone surrogate (`"\\ud800"`), which no UTF-8 text holds: pydantic let it
    through in a filter's list, and the store's filter raised TypeError (UnicodeEncodeError), a 500."""
    settings = Settings(home=search_collection["home"], api_read_key="read-requests", api_admin_key="admin-requests")
    query = search_collection["records"][0].isic_id
    with TestClient(create_app(settings, backbone=tiny_backbone), raise_server_exceptions=False) as client:
        response = client.post("/search", headers=READ_JSON,
                               content=f'{{"isic_id": "{query}", "filters": {{{filters}}}}}'.encode())
        assert response.status_code == 422, response.text
        assert field in response.json()["detail"] and "Unicode" in response.json()["detail"]
        assert client.post("/search", headers=READ_JSON, json={"isic_id": query, "k": 2}).status_code == 200


@pytest.mark.parametrize(("args", "named"), [(["--filter", "sex=\udcff"], "sex"), ([], "isic_id")])
def test_a_cli_search_argument_that_is_not_utf8_is_an_error_naming_it(
        search_collection, fresh_cli_settings, args: list[str], named: str) -> None:
    """A shell argument holding bytes that are not UTF-8 reaches Python as a surrogate escape
    (`\\udcff`): `dermground search` ended in a UnicodeEncodeError/TypeError traceback."""
    query = search_collection["records"][0].isic_id if args else "ISIC_\udcff"
    result = CliRunner().invoke(cli, ["--home", str(search_collection["home"]), "search", "--id", query,
                                      "--mode", "image", "--exclude-patient", *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert named in result.output and "UTF-8" in result.output
