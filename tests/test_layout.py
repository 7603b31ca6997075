"""Rules of the test tree's layout (issue 16): shared test helpers live in tests/support (or the
tiny-model modules beside the tests), and no test file imports another, so that running, moving
or deleting one test file never changes another."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):  # function-local imports too
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_test_file_imports_another():
    offenders = {
        str(path.relative_to(TESTS)): sorted(
            name for name in imported_modules(path) if name.split(".")[-1].startswith("test_")
        )
        for path in TESTS.rglob("*.py")
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, (
        f"test files imported by other files (move the helpers to support/): {offenders}"
    )


def test_the_rule_sees_function_local_imports(tmp_path):
    module = tmp_path / "test_example.py"
    module.write_text("def test_a():\n    from test_other import helper\n")
    assert "test_other" in imported_modules(module)
