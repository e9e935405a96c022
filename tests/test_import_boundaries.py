"""Only the CLI layer calls pipelines: search, the API, the model, train and eval import nothing from
dermground.ingest (lesion records, images and measurement live in platform/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The CLI layer: commands run ingest, check and synth; the demo runs the whole way.
MAY_IMPORT_INGEST = ("platform/commands/", "platform/cli.py", "platform/demo.py")
CHECKED = ("platform", "train", "eval")


def _imports_ingest(path: Path) -> list[str]:
    """Every import of dermground.ingest in a module (lazy ones inside functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(name == "dermground.ingest" or name.startswith("dermground.ingest.") for name in names):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_cli_layer_imports_ingest() -> None:
    files = [path for package in CHECKED for path in sorted((ROOT / package).rglob("*.py"))
             if not path.relative_to(ROOT).as_posix().startswith(MAY_IMPORT_INGEST)]
    assert len(files) > 50, f"too few modules found under {ROOT}: {len(files)}"
    offending = {f"{path.relative_to(ROOT)} {hit}" for path in files for hit in _imports_ingest(path)}
    assert offending == set(), f"modules below the CLI layer import dermground.ingest: {sorted(offending)}"


def test_the_check_sees_lazy_and_package_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from dermground import ingest\n\ndef f():\n    import dermground.ingest.synth\n")
    assert [hit.split(":")[0] for hit in _imports_ingest(module)] == ["line 1", "line 4"]
