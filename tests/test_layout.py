"""Import boundaries of the package layout, read from the source (no imports executed): the
library never imports the application side; each side effect has one home."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "csetrain"
APP = "csetrain/app/"
STORE = "csetrain/app/store/"
ENTRY_POINT = "csetrain/__main__.py"  # `python -m csetrain`: runs the app's command


def sources() -> dict[str, ast.Module]:
    root = PACKAGE.parent
    return {
        path.relative_to(root).as_posix(): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def imported_modules(tree: ast.Module) -> set[str]:
    """Every module an `import` or `from ... import` names, anywhere in the file."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def uses_torch_cuda(tree: ast.Module) -> bool:
    """`torch.cuda...` as an attribute chain, or `torch.cuda` imported."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "cuda"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            return True
    return any(m == "torch.cuda" or m.startswith("torch.cuda.") for m in imported_modules(tree))


def importers(prefix: str) -> set[str]:
    """Files that import `prefix` or a submodule of it."""
    return {
        path
        for path, tree in sources().items()
        if any(m == prefix or m.startswith(prefix + ".") for m in imported_modules(tree))
    }


def test_the_scan_sees_the_known_homes():
    # guards the checks below against passing because the scan finds nothing
    assert "csetrain/eval/mteb.py" in importers("mteb")
    assert "csetrain/app/store/tracker.py" in importers("mlflow")
    assert "csetrain/runtime.py" in {p for p, t in sources().items() if uses_torch_cuda(t)}
    assert "csetrain/app/compose.py" in importers("hydra")


@pytest.mark.parametrize("library", ["hydra", "omegaconf"])
def test_hydra_and_omegaconf_only_on_the_app_side(library):
    assert {p for p in importers(library) if not p.startswith(APP)} == set()


def test_mlflow_only_in_the_run_store():
    assert {p for p in importers("mlflow") if not p.startswith(STORE)} == set()


def test_mteb_only_in_its_evaluator():
    assert importers("mteb") == {"csetrain/eval/mteb.py", "csetrain/eval/mteb_encoder.py"}


def test_peft_only_in_the_lora_module():
    assert importers("peft") == {"csetrain/modeling/lora.py"}


def test_torch_cuda_only_in_runtime():
    assert {p for p, t in sources().items() if uses_torch_cuda(t)} == {"csetrain/runtime.py"}


def test_the_library_never_imports_the_app():
    library = {p for p in importers("csetrain.app") if not p.startswith(APP)}
    assert library - {ENTRY_POINT} == set()
