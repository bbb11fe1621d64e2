"""The package's modules import one another without circles (function-level imports included), and use only the
public names of the libraries they build on."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "semifinetune"


def imports_within_package(path: Path) -> set[str]:
    """Names of semifinetune modules that `path` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("semifinetune."):
            found.add(node.module.split(".")[1])
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return {p.stem: imports_within_package(p) & modules - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_the_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


# Libraries whose private names (a leading underscore) may change in any release: TRL 1.15 moved its loss kernel's
# `_ChunkedLogProbFunction`, which train.trainer_class once looked up; it now asks whether Triton is installed.
LIBRARIES = ("trl", "transformers", "peft", "huggingface_hub", "accelerate", "datasets")


def private_library_names(source: str) -> list[str]:
    """`module.name` for each private name of LIBRARIES that `source` imports or reads off an imported module."""
    tree, modules, found = ast.parse(source), {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
                    found += [alias.name] if any(part.startswith("_") for part in alias.name.split(".")) else []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in LIBRARIES:
            found += [node.module] if any(part.startswith("_") for part in node.module.split(".")) else []
            for alias in node.names:
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                found += [f"{node.module}.{alias.name}"] if alias.name.startswith("_") else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"{modules[root.id]}.{node.attr}")
    return found


def test_the_package_uses_no_private_names_of_its_libraries():
    found = {p.name: names for p in sorted(PACKAGE.glob("*.py")) if (names := private_library_names(p.read_text(encoding="utf-8")))}
    assert found == {}, f"private library names (they change without notice; use a public API or own code): {found}"


def test_the_check_finds_private_names():
    source = ("from trl.trainer import utils as trl_utils\nfrom trl.trainer.utils import _ChunkedLogProbFunction\n"
              "import transformers._internal\nx = getattr(trl_utils, 'ok') or trl_utils._ChunkedLogProbFunction\n")
    assert sorted(private_library_names(source)) == [
        "transformers._internal", "trl.trainer.utils._ChunkedLogProbFunction", "trl.trainer.utils._ChunkedLogProbFunction"]
    assert private_library_names("from trl import SFTTrainer\nSFTTrainer.__init__\nself._x = 1\n") == []


def test_the_build_configuration_names_every_package_folder():
    """setuptools prints a 30-line banner for a package folder missing from `packages`, and a deprecation banner for a
    `license` table, at every install of the project: pyproject.toml lists each folder and gives the license as text."""
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    folders = {".".join(p.relative_to(PACKAGE.parent).parts) for p in [PACKAGE, *PACKAGE.rglob("*")]
               if p.is_dir() and p.name != "__pycache__" and any(f.is_file() for f in p.iterdir())}
    assert set(config["tool"]["setuptools"]["packages"]) == folders
    assert isinstance(config["project"]["license"], str)
