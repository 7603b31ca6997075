"""Rules of the layout (issue 16).

- The test tree: shared test helpers live in tests/support, and no test file imports another,
  so that running, moving or deleting one test file never changes another.
- The package: the top level of vidllm_ext/ holds only the public entry points; reference/
  holds oracles that nothing in the package imports (only tests and the benchmark harness); the
  modules of every layer carry the name of their technique.
- The old import paths of moved modules keep working.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import vidllm_ext
from vidllm_ext import _moved

TESTS = Path(__file__).resolve().parent
PACKAGE = Path(vidllm_ext.__file__).resolve().parent
TECHNIQUES = ("frame_drop", "token_merge", "routing", "kv_quant", "kv_attention")


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


def test_top_level_holds_only_the_entry_points():
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert modules == [
        "__init__.py",
        "__main__.py",
        "_extension.py",
        "_moved.py",
        "_version.py",
        "build.py",
        "testing.py",
    ]


def reference_importers(root: Path, allowed: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(allowed):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            if any(
                n == "vidllm_ext.reference" or n.startswith("vidllm_ext.reference.") for n in names
            ):
                found.append(relative)
    return found


# vidllm_ext/__init__.py exposes the package as the attribute vidllm_ext.reference, on first use.
ORACLE_USERS = ("reference/", "bench/", "__init__.py")


def test_nothing_in_the_package_imports_the_reference():
    assert reference_importers(PACKAGE, ORACLE_USERS) == []


def test_the_reference_rule_sees_every_import_form(tmp_path):
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "a.py").write_text("from vidllm_ext import reference\n")
    (tmp_path / "ops" / "b.py").write_text("def f():\n    import vidllm_ext.reference.kv_quant\n")
    (tmp_path / "ops" / "c.py").write_text("from vidllm_ext.reference.routing import x\n")
    (tmp_path / "ops" / "d.py").write_text("from vidllm_ext import ops\n")
    assert reference_importers(tmp_path, ORACLE_USERS) == ["ops/a.py", "ops/b.py", "ops/c.py"]


# Shared modules that belong to no single technique.
SHARED = {"__init__", "_backend", "checks", "structure", "cosine"}


@pytest.mark.parametrize("layer", ["ops", "reference", "contracts"])
def test_every_module_carries_its_technique_name(layer):
    stems = [path.stem for path in (PACKAGE / layer).glob("*.py") if path.stem not in SHARED]
    unnamed = [s for s in stems if not s.lstrip("_").startswith(TECHNIQUES)]
    assert stems and not unnamed, unnamed


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_old_import_paths_keep_working(old):
    module = importlib.import_module(old)
    for home in _moved.MOVED[old]:
        new = importlib.import_module(home)
        public = [name for name in vars(new) if not name.startswith("_")]
        assert public
        for name in public:
            assert getattr(module, name) is getattr(new, name), (old, home, name)


def test_the_packed_attention_functions_are_not_shadowed():
    # Their former modules are deliberately not aliased (see vidllm_ext/_moved.py).
    import vidllm_ext.ops.kv_attention

    assert callable(vidllm_ext.ops.packed_attention)
    assert callable(vidllm_ext.reference.packed_attention)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vidllm_ext.ops.packed_attention")


def test_an_old_module_path_still_runs_with_python_m():
    result = subprocess.run(
        [sys.executable, "-m", "vidllm_ext.train_demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS,
    )
    assert result.returncode == 0, result.stderr
    assert "--steps" in result.stdout


def test_every_compiled_function_carries_its_technique_name():
    from vidllm_ext._extension import _C

    public = [name for name in dir(_C) if not name.startswith("_") and name != "build_info"]
    unnamed = [name for name in public if not name.startswith(TECHNIQUES)]
    assert public and not unnamed, unnamed


def test_every_kernel_file_carries_its_technique_name():
    root = PACKAGE.parent / "csrc"
    if not root.is_dir():
        pytest.skip("csrc/ is not beside the installed package (a wheel install)")
    for technique in TECHNIQUES:
        files = [path.name for path in (root / technique).iterdir()]
        assert files and all(name.startswith(technique) for name in files), (technique, files)
