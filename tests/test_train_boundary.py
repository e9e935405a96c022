"""train/ trains: it reaches neither the vector store, the catalog nor search (evaluation lives in eval/)."""

from __future__ import annotations

import ast
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "train"
FORBIDDEN = ("dermground.platform.store", "dermground.platform.catalog", "dermground.platform.search",
             "dermground.platform.search_modes", "dermground.platform.search_query",
             "dermground.platform.search_request", "dermground.platform.search_results", "dermground.eval")


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_train_imports_neither_store_catalog_search_nor_eval() -> None:
    files = sorted(TRAIN.glob("*.py"))
    assert files, f"no modules under {TRAIN}"
    offending = {
        f"{path.name}: {module}"
        for path in files
        for module in _imported_modules(path)
        if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert offending == set(), f"train/ imports what it must not: {sorted(offending)}"
