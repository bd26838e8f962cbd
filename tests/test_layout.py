"""The library stays free of Dagster: only assets/ may import it."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "sae"


def dagster_imports(path: Path) -> list[int]:
    """The lines of `path` that import dagster or one of its submodules."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "dagster" or name.startswith(("dagster.", "dagster_")) for name in names):
            lines.append(node.lineno)
    return lines


def test_the_library_never_imports_dagster():
    files = sorted(LIBRARY.rglob("*.py"))
    assert files, f"no Python files under {LIBRARY}"
    offending = [f"{path.relative_to(LIBRARY.parent)}:{line}" for path in files for line in dagster_imports(path)]
    assert not offending, "sae/ must not import dagster (only assets/ may): " + ", ".join(offending)
