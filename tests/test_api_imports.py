"""The API's modules form no import cycle with the app: only the package's __init__ imports app.py."""

from __future__ import annotations

import ast
from pathlib import Path

API = Path(__file__).resolve().parents[1] / "platform" / "api"
APP = "dermground.platform.api.app"


def _imports_app(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(alias.name == APP for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module == APP or (
                node.module == "dermground.platform.api" and any(alias.name == "app" for alias in node.names))):
            return True
    return False


def test_no_api_module_imports_the_app() -> None:
    modules = sorted(p for p in API.glob("*.py") if p.name not in {"__init__.py", "app.py"})
    assert any(p.name == "routes.py" for p in modules), f"routes.py not found under {API}"
    offending = [p.name for p in modules if _imports_app(p)]
    assert offending == [], f"these API modules import app.py (an import cycle with its routes): {offending}"
